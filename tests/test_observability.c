/* Observability against the real server: sql/pgtag.sql reading the tags
 * back (both styles, hostile values), its activity, blocking and
 * statements views, per-request statistics, the N+1 detector, the slow
 * query log, Prometheus metrics and log lines naming their request. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static void install_sql(void) {
  char path[1024];
  snprintf(path, sizeof path, "%s/sql/pgtag.sql", PGTAG_SOURCE_DIR);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  static char script[65536];
  size_t n = fread(script, 1, sizeof script - 1, f);
  fclose(f);
  script[n] = '\0';
  admin_exec(script);
}

/* Its own server: it drops and creates pg_stat_statements and resets its
 * counts, which no other program may see half-way. */
static int group_setup(void **state) {
  if (own_server_setup(state) != 0)
    return -1;
  install_sql();
  install_sql(); /* idempotent */
  return 0;
}

static pgtag_errcode query_params_in(pgtag_pool *pool, pgtag_ctx *ctx, const char *sql,
                                     const char *param, rec *r) {
  const char *vals[1] = {param};
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  pgtag_errcode rc = pgtag_query(pool, sql, param ? 1 : 0, param ? vals : NULL, rec_result, r);
  pgtag_ctx_leave(prev);
  return rc;
}

/* ------------------------------------------------------------------------
 * SQL side
 * ------------------------------------------------------------------------ */

/* The server decodes its own query's tag: whatever the request ID, in
 * either style, pgtag.request_id(current_query()) gives it back. */
static void server_reads_back_hostile_ids(void **state) {
  (void)state;
  const char *ids[] = {
      "plain-id",       "*/ DROP TABLE x; /*",           "it's \"quoted\" \\ back",
      "new\nline\ttab", "caf\xc3\xa9 \xe2\x82\xac 100%", "%41 not a code",
      "' OR 1=1 --",
  };
  pgtag_pool_config cfg;
  test_config(&cfg);
  pgtag_pool *prefix = test_pool_new(&loop, &cfg);
  cfg.tag_style = PGTAG_TAG_SQLCOMMENTER;
  cfg.tag_key = "rid";
  pgtag_pool *commenter = test_pool_new(&loop, &cfg);

  for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
    pgtag_ctx *ctx = pgtag_ctx_new(ids[i]);
    pgtag_ctx_set(ctx, "route", ids[(i + 1) % 7]);
    rec a = {0}, b = {0};
    query_in(prefix, ctx,
             "SELECT pgtag.request_id(current_query()), pgtag.tags(current_query())->>'route'", &a);
    query_in(commenter, ctx,
             "SELECT pgtag.request_id(current_query(), 'rid'), "
             "pgtag.tags(current_query())->>'route';",
             &b);
    assert_true(run_until(&loop, &completions, 2 * (int)i + 2, 5000));
    assert_done(&a, ctx, PGTAG_OK);
    assert_done(&b, ctx, PGTAG_OK);
    assert_string_equal(a.value, ids[i]);
    assert_string_equal(a.value2, ids[(i + 1) % 7]);
    assert_string_equal(b.value, ids[i]);
    assert_string_equal(b.value2, ids[(i + 1) % 7]);
    pgtag_ctx_unref(ctx);
  }

  /* not UTF-8 once decoded: returned still encoded, never an error */
  char v[256];
  admin_value("SELECT pgtag.request_id('/* requestId=%FF%FEx */ SELECT 1')", v, sizeof v);
  assert_string_equal(v, "%FF%FEx");
  admin_value("SELECT coalesce(pgtag.request_id('SELECT 1 /* not ours */'), 'none')", v, sizeof v);
  assert_string_equal(v, "none");
  admin_value("SELECT pgtag.strip('/* requestId=a */ SELECT 1 /* theirs */')", v, sizeof v);
  assert_string_equal(v, "SELECT 1 /* theirs */");
  admin_value("SELECT pgtag.strip('SELECT 2 /*requestId=''a'',route=''b''*/;')", v, sizeof v);
  assert_string_equal(v, "SELECT 2;");
  pgtag_pool_close(commenter, NULL, NULL);
  test_pool_close(&loop, prefix);
}

static void activity_shows_the_request(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *ctx = pgtag_ctx_new("watch-me");
  pgtag_ctx_set(ctx, "route", "GET /slow");
  rec q = {0};
  char v[256];

  /* the row is read while the query runs: it runs until the test has read
   * it (a pg_sleep(1) once did, and on a busy machine the wait for its row
   * outlasted it) */
  gate_shut();
  query_in(pool, ctx, "SELECT 'watched' FROM " GATE, &q);
  const char *sql = "SELECT state || '|' || (tags->>'route') || '|' || "
                    "(query_age >= '0'::interval) || '|' || query FROM pgtag.activity "
                    "WHERE request_id = 'watch-me' AND state = 'active'";
  WAIT_FOR(&loop, (admin_value(sql, v, sizeof v), v[0] != '\0'), 10000);
  const char *prefix = "active|GET /slow|true|";
  assert_memory_equal(v, prefix, strlen(prefix));
  /* the statement as sent, tag stripped: the text, or its EXECUTE when the
   * statement cache sent it */
  assert_sent_as(v + strlen(prefix), "SELECT 'watched' FROM " GATE);
  assert_int_equal(q.calls, 0);
  gate_open();
  wait_rec(&q);
  assert_done(&q, ctx, PGTAG_OK);

  /* Back in the pool, its backend serves no request: no request_id, no
   * age that grows like a stuck query's, only what it ran last. */
  const char *idle = "SELECT count(*) FROM pgtag.activity "
                     "WHERE last_request_id = 'watch-me' AND state = 'idle'";
  WAIT_FOR(&loop, admin_int(idle) > 0, 10000);
  admin_value("SELECT coalesce(request_id, 'none') || '|' || tags::text || '|' || "
              "(query_age IS NULL) || '|' || (idle_for >= '0'::interval) "
              "FROM pgtag.activity WHERE last_request_id = 'watch-me'",
              v, sizeof v);
  assert_string_equal(v, "none|{}|true|true");
  admin_value("SELECT query FROM pgtag.activity WHERE last_request_id = 'watch-me'", v, sizeof v);
  assert_sent_as(v, "SELECT 'watched' FROM " GATE);
  assert_int_equal(admin_int("SELECT count(*) FROM pgtag.activity "
                             "WHERE request_id IS NOT NULL AND last_request_id = 'watch-me'"),
                   0);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

static void blocking_names_both_requests(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *holder = pgtag_ctx_new("holds-the-row"), *waiter = pgtag_ctx_new("waits-for-it");
  rec acq = {0}, begin = {0}, upd = {0}, blocked = {0}, commit = {0};
  char v[512];
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_row (id int PRIMARY KEY, n int);"
             "INSERT INTO pgtag_row VALUES (1, 0) ON CONFLICT DO NOTHING");

  acquire_in(pool, holder, &acq);
  wait_rec(&acq);
  conn_query_in(acq.conn, holder, "BEGIN", &begin);
  conn_query_in(acq.conn, holder, "UPDATE pgtag_row SET n = n + 1 WHERE id = 1", &upd);
  wait_rec(&upd);
  query_in(pool, waiter, "UPDATE pgtag_row SET n = n + 10 WHERE id = 1", &blocked);

  const char *sql = "SELECT count(*) FROM pgtag.blocking WHERE blocked_request_id = 'waits-for-it'";
  WAIT_FOR(&loop, admin_int(sql) > 0, 10000);
  admin_value("SELECT blocked_request_id || '|' || blocking_request_id || '|' || "
              "(lock_wait IS NOT NULL) || '|' || blocking_state "
              "FROM pgtag.blocking WHERE blocked_request_id = 'waits-for-it'",
              v, sizeof v);
  assert_string_equal(v, "waits-for-it|holds-the-row|true|idle in transaction");
  admin_value("SELECT blocked_query FROM pgtag.blocking WHERE blocked_request_id = 'waits-for-it'",
              v, sizeof v);
  assert_sent_as(v, "UPDATE pgtag_row SET n = n + 10 WHERE id = 1");
  admin_value("SELECT blocking_query FROM pgtag.blocking "
              "WHERE blocked_request_id = 'waits-for-it'",
              v, sizeof v);
  assert_sent_as(v, "UPDATE pgtag_row SET n = n + 1 WHERE id = 1");
  assert_int_equal(blocked.calls, 0);
  conn_query_in(acq.conn, holder, "COMMIT", &commit);
  wait_rec(&blocked);
  assert_done(&blocked, waiter, PGTAG_OK);
  assert_int_equal(admin_int("SELECT count(*) FROM pgtag.blocking"), 0);
  pgtag_release(acq.conn);
  pgtag_ctx_unref(holder);
  pgtag_ctx_unref(waiter);
  test_pool_close(&loop, pool);
}

static void statements_view_only_with_the_extension(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *ctx = pgtag_ctx_new("sampled");
  rec q = {0};
  char v[256];

  admin_exec("SELECT pg_stat_statements_reset()");
  /* Sent as text, the statement keeps a sample request ID there... */
  const char *vals[1] = {"1"};
  pgtag_query_opts text = {.no_cache = 1};
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  assert_int_equal(pgtag_query_ex(pool, "SELECT $1::int AS pgtag_sample_marker", 1, vals, &text,
                                  rec_result, &q),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
  wait_rec(&q);
  assert_done(&q, ctx, PGTAG_OK);
  admin_value("SELECT sample_request_id || '|' || calls || '|' || query FROM pgtag.statements "
              "WHERE query LIKE '%pgtag_sample_marker'",
              v, sizeof v);
  assert_string_equal(v, "sampled|1|SELECT $1::int AS pgtag_sample_marker");
  /* ...through the statement cache it is the prepared text, untagged:
   * pg_stat_statements counts the EXECUTEs there, the log and
   * pg_stat_activity keep every request ID */
  rec c1 = {0}, c2 = {0};
  /* (a statement of its own shape: pg_stat_statements ignores aliases) */
  query_params_in(pool, ctx, "SELECT ($1::int * 2)::bigint AS pgtag_cached_marker", "1", &c1);
  query_params_in(pool, ctx, "SELECT ($1::int * 2)::bigint AS pgtag_cached_marker", "2", &c2);
  wait_rec(&c2);
  assert_done(&c2, ctx, PGTAG_OK);
  admin_value("SELECT coalesce(sample_request_id, 'none') || '|' || calls || '|' || query "
              "FROM pgtag.statements WHERE query LIKE '%pgtag_cached_marker'",
              v, sizeof v);
  assert_string_equal(v, "none|2|SELECT ($1::int * $2)::bigint AS pgtag_cached_marker");

  /* without pg_stat_statements: no statements view, the others work */
  admin_exec("DROP EXTENSION pg_stat_statements CASCADE");
  install_sql();
  assert_int_equal(admin_int("SELECT count(*) FROM pg_views WHERE schemaname = 'pgtag' "
                             "AND viewname = 'statements'"),
                   0);
  assert_true(admin_int("SELECT count(*) FROM pgtag.activity") >= 1);
  assert_int_equal(admin_int("SELECT count(*) FROM pgtag.blocking"), 0);
  admin_exec("CREATE EXTENSION pg_stat_statements");
  install_sql();
  assert_int_equal(admin_int("SELECT count(*) FROM pg_views WHERE schemaname = 'pgtag' "
                             "AND viewname = 'statements'"),
                   1);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* ------------------------------------------------------------------------
 * Application side
 * ------------------------------------------------------------------------ */

static void request_statistics(void **state) {
  (void)state;
  pgtag_pool *p1 = test_pool_new(&loop, NULL);
  pgtag_pool *p2 = test_pool_new(&loop, NULL);
  pgtag_ctx *ctx = pgtag_ctx_new("measured"), *other = pgtag_ctx_new("other");
  rec a = {0}, b = {0}, c = {0}, d = {0};
  pgtag_request_stats st;

  pgtag_ctx_stats(ctx, &st);
  assert_int_equal(st.queries, 0);
  assert_string_equal(st.slowest_sql, "");
  query_in(p1, ctx, "SELECT 1", &a);
  query_in(p2, ctx, "SELECT pg_sleep(0.2)", &b);
  query_in(p1, ctx, "SELECT 1/0", &c);
  query_in(p1, other, "SELECT pg_sleep(0.3)", &d);
  assert_true(run_until(&loop, &completions, 4, 5000));
  pgtag_ctx_stats(ctx, &st);
  assert_int_equal(st.queries, 3);
  assert_int_equal(st.errors, 1);
  assert_true(st.db_time_us >= 200000 && st.db_time_us < 2000000);
  assert_true(st.slowest_us >= 200000);
  assert_string_equal(st.slowest_sql, "SELECT pg_sleep(0.2)");
  pgtag_ctx_stats(other, &st);
  assert_int_equal(st.queries, 1);
  pgtag_ctx_stats(NULL, &st);
  assert_int_equal(st.queries, 0);
  pgtag_ctx_unref(ctx);
  pgtag_ctx_unref(other);
  pgtag_pool_close(p2, NULL, NULL);
  test_pool_close(&loop, p1);
}

typedef struct {
  int calls;
  char request_id[64];
  char sql[256];
  uint64_t count;
  pgtag_ctx *ctx_seen;
} n1_report;

static void on_n1(const char *request_id, const char *sql, uint64_t count, void *arg) {
  n1_report *r = arg;
  r->calls++;
  snprintf(r->request_id, sizeof r->request_id, "%s", request_id);
  snprintf(r->sql, sizeof r->sql, "%s", sql);
  r->count = count;
  r->ctx_seen = pgtag_ctx_current();
}

static void n_plus_one_is_reported_once(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  n1_report r = {0};
  test_config(&cfg);
  cfg.n_plus_one_threshold = 3;
  cfg.on_n_plus_one = on_n1;
  cfg.on_n_plus_one_arg = &r;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("n-plus-one"), *calm = pgtag_ctx_new("calm");
  rec q[12];
  memset(q, 0, sizeof q);

  for (int i = 0; i < 6; i++) {
    char id[12];
    snprintf(id, sizeof id, "%d", i);
    query_params_in(pool, ctx, "SELECT $1::int AS item", id, &q[i]); /* one per item */
  }
  query_in(pool, ctx, "SELECT 'other'", &q[6]);
  query_in(pool, ctx, "SELECT 'other'", &q[7]);
  for (int i = 8; i < 11; i++)
    query_params_in(pool, calm, "SELECT $1::int AS item", "1", &q[i]); /* 3: not over */
  assert_true(run_until(&loop, &completions, 11, 5000));
  assert_int_equal(r.calls, 1);
  assert_string_equal(r.request_id, "n-plus-one");
  assert_string_equal(r.sql, "SELECT $1::int AS item");
  assert_int_equal(r.count, 4);
  assert_ptr_equal(r.ctx_seen, ctx);
  pgtag_ctx_unref(ctx);
  pgtag_ctx_unref(calm);
  test_pool_close(&loop, pool);
}

static char lines[16][1024];
static int nlines;
static void keep_lines(pgtag_log_level level, const char *msg, void *arg) {
  (void)arg;
  if (level >= PGTAG_LOG_WARN && nlines < 16)
    snprintf(lines[nlines++], sizeof lines[0], "%s", msg);
}

static void slow_queries_and_reports_are_logged_with_the_request(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.slow_query_ms = 100;
  cfg.n_plus_one_threshold = 1; /* no hook: a log line */
  cfg.log = keep_lines;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("evil\nid: forged line");
  rec fast = {0}, slow = {0}, again = {0};
  nlines = 0;

  query_in(pool, ctx, "SELECT 'fast'", &fast);
  wait_rec(&fast);
  assert_int_equal(nlines, 0);
  query_in(pool, ctx, "SELECT pg_sleep(0.15)", &slow);
  wait_rec(&slow);
  assert_int_equal(nlines, 1);
  assert_true(strncmp(lines[0], "request evil id: forged line: slow query: 1", 43) == 0);
  assert_non_null(strstr(lines[0], " ms on backend "));
  assert_non_null(strstr(lines[0], ": SELECT pg_sleep(0.15)"));
  query_in(pool, ctx, "SELECT 'fast'", &again);
  wait_rec(&again);
  assert_int_equal(nlines, 2);
  assert_string_equal(lines[1], "request evil id: forged line: N+1: the same statement ran 2 "
                                "times in this request: SELECT 'fast'");
  for (int i = 0; i < nlines; i++)
    assert_null(strchr(lines[i], '\n'));
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* One sample line of the exposition format: name{labels} value. */
typedef struct {
  char name[96];
  char labels[256];
  double value;
} sample;

static int parse_metrics(const char *text, sample *out, int max) {
  int n = 0;
  char typed[64][96];
  int ntyped = 0;
  const char *p = text;
  while (*p != '\0') {
    const char *end = strchr(p, '\n');
    assert_non_null(end); /* every line ends with a newline */
    char line[512];
    size_t len = (size_t)(end - p);
    assert_true(len < sizeof line);
    memcpy(line, p, len);
    line[len] = '\0';
    p = end + 1;
    if (strncmp(line, "# HELP ", 7) == 0)
      continue;
    if (strncmp(line, "# TYPE ", 7) == 0) {
      char name[96], type[32];
      assert_int_equal(sscanf(line + 7, "%95s %31s", name, type), 2);
      assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                  strcmp(type, "histogram") == 0);
      for (int i = 0; i < ntyped; i++) /* no family twice */
        assert_string_not_equal(typed[i], name);
      assert_true(ntyped < 64);
      snprintf(typed[ntyped++], sizeof typed[0], "%s", name);
      continue;
    }
    assert_true(n < max);
    sample *s = &out[n++];
    const char *brace = strchr(line, '{'), *close = strrchr(line, '}');
    assert_non_null(brace);
    assert_non_null(close);
    snprintf(s->name, sizeof s->name, "%.*s", (int)(brace - line), line);
    snprintf(s->labels, sizeof s->labels, "%.*s", (int)(close - brace - 1), brace + 1);
    assert_int_equal(close[1], ' ');
    char *num_end;
    s->value = strtod(close + 2, &num_end);
    assert_int_equal(*num_end, '\0');
    /* a TYPE line came first for its family */
    int known = 0;
    for (int i = 0; i < ntyped; i++) {
      size_t tl = strlen(typed[i]);
      known |= strncmp(s->name, typed[i], tl) == 0 &&
               (s->name[tl] == '\0' || strcmp(s->name + tl, "_bucket") == 0 ||
                strcmp(s->name + tl, "_sum") == 0 || strcmp(s->name + tl, "_count") == 0);
    }
    assert_true(known);
  }
  return n;
}

static double find(const sample *s, int n, const char *name, const char *labels) {
  for (int i = 0; i < n; i++)
    if (strcmp(s[i].name, name) == 0 && strcmp(s[i].labels, labels) == 0)
      return s[i].value;
  fail_msg("no sample %s{%s}", name, labels);
  return -1;
}

static void metrics_in_prometheus_format(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.name = "we\"ird\\name";
  cfg.max_conns = 2;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  rec q[4], acq = {0};
  memset(q, 0, sizeof q);

  query_in(pool, NULL, "SELECT 1", &q[0]);
  query_in(pool, NULL, "SELECT pg_sleep(0.05)", &q[1]);
  query_in(pool, NULL, "SELEC 1", &q[2]);
  acquire_in(pool, NULL, &acq);
  assert_true(run_until(&loop, &completions, 4, 5000));

  static char text[16384];
  int len = pgtag_pool_metrics(pool, text, sizeof text);
  assert_int_equal(len, (int)strlen(text));
  static sample s[128];
  int n = parse_metrics(text, s, 128);
  const char *L = "pool=\"we\\\"ird\\\\name\"";
  char lab[128];
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(find(s, n, "pgtag_queries_total", L), 3);
  assert_int_equal(find(s, n, "pgtag_acquired_total", L), 1);
  snprintf(lab, sizeof lab, "%s,code=\"server\"", L);
  assert_int_equal(find(s, n, "pgtag_errors_total", lab), 1);
  snprintf(lab, sizeof lab, "%s,state=\"held\"", L);
  assert_int_equal(find(s, n, "pgtag_connections", lab), 1);
  snprintf(lab, sizeof lab, "%s,state=\"idle\"", L);
  assert_int_equal(find(s, n, "pgtag_connections", lab), st.idle);
  assert_int_equal(find(s, n, "pgtag_connections_max", L), 2);
  assert_int_equal(find(s, n, "pgtag_connects_total", L), (double)st.connects);

  /* histograms: cumulative buckets, +Inf equal to the count */
  const char *hists[] = {"pgtag_query_duration_seconds", "pgtag_acquire_wait_seconds"};
  for (int h = 0; h < 2; h++) {
    char bucket[128], count[128];
    snprintf(bucket, sizeof bucket, "%s_bucket", hists[h]);
    snprintf(count, sizeof count, "%s_count", hists[h]);
    double prev = 0;
    int buckets = 0;
    for (int i = 0; i < n; i++) {
      if (strcmp(s[i].name, bucket) != 0)
        continue;
      assert_true(s[i].value >= prev);
      prev = s[i].value;
      buckets++;
    }
    assert_int_equal(buckets, PGTAG_HISTOGRAM_BUCKETS + 1);
    snprintf(lab, sizeof lab, "%s,le=\"+Inf\"", L);
    assert_true(find(s, n, bucket, lab) == find(s, n, count, L));
  }
  assert_int_equal(find(s, n, "pgtag_query_duration_seconds_count", L), 3);
  assert_true(find(s, n, "pgtag_query_duration_seconds_sum", L) >= 0.05);
  snprintf(lab, sizeof lab, "%s,le=\"0.025\"", L);
  assert_true(find(s, n, "pgtag_query_duration_seconds_bucket", lab) <= 2); /* the sleep is above */
  assert_int_equal(find(s, n, "pgtag_acquire_wait_seconds_count", L), 4);

  /* a small buffer: cut, terminated, and the full length returned */
  char small[64];
  assert_int_equal(pgtag_pool_metrics(pool, small, sizeof small), len);
  assert_int_equal(strlen(small), sizeof small - 1);
  assert_int_equal(pgtag_pool_metrics(pool, NULL, 0), len);
  assert_int_equal(pgtag_pool_metrics(NULL, text, sizeof text), -1);
  assert_int_equal(pgtag_histogram_bound_us(0), 100);
  assert_int_equal(pgtag_histogram_bound_us(PGTAG_HISTOGRAM_BUCKETS), 0);

  /* several pools' snapshots: each family once, a sample per pool */
  pgtag_stats two[2] = {st, st};
  two[1].queries = 42;
  const char *names[2] = {"w0", "w1"};
  len = pgtag_stats_metrics(two, names, 2, text, sizeof text);
  assert_int_equal(len, (int)strlen(text));
  static sample s2[256];
  n = parse_metrics(text, s2, 256);
  assert_int_equal(find(s2, n, "pgtag_queries_total", "pool=\"w0\""), 3);
  assert_int_equal(find(s2, n, "pgtag_queries_total", "pool=\"w1\""), 42);
  assert_int_equal(find(s2, n, "pgtag_connections_max", "pool=\"w1\""), 2);
  const char *type = strstr(text, "# TYPE pgtag_queries_total counter\n");
  assert_non_null(type);
  assert_null(strstr(type + 1, "# TYPE pgtag_queries_total"));
  assert_int_equal(pgtag_stats_metrics(NULL, names, 2, text, sizeof text), -1);
  assert_int_equal(pgtag_stats_metrics(two, names, -1, text, sizeof text), -1);
  /* no pools: the families, no samples */
  len = pgtag_stats_metrics(NULL, NULL, 0, text, sizeof text);
  assert_int_equal(len, (int)strlen(text));
  assert_int_equal(parse_metrics(text, s2, 256), 0);
  pgtag_release(acq.conn);
  test_pool_close(&loop, pool);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(server_reads_back_hostile_ids, loop_setup),
      cmocka_unit_test_setup(activity_shows_the_request, loop_setup),
      cmocka_unit_test_setup(blocking_names_both_requests, loop_setup),
      cmocka_unit_test_setup(statements_view_only_with_the_extension, loop_setup),
      cmocka_unit_test_setup(request_statistics, loop_setup),
      cmocka_unit_test_setup(n_plus_one_is_reported_once, loop_setup),
      cmocka_unit_test_setup(slow_queries_and_reports_are_logged_with_the_request, loop_setup),
      cmocka_unit_test_setup(metrics_in_prometheus_format, loop_setup),
  };
  return cmocka_run_group_tests(tests, group_setup, own_server_teardown);
}
