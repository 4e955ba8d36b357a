/* Integration tests against the real PostgreSQL 15 server that ./run test
 * starts.  No mock of libpq or of the server: every assertion is about what
 * a real backend received and what a real callback saw. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "context.h"
#include "harness.h"

/* ------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------ */

/* Run the loop until cond (over st, refreshed from pool) holds, 10 s at
 * most (scaled). */
#define WAIT_STATS(pool, st, cond) WAIT_FOR(&loop, (pgtag_pool_stats((pool), &(st)), (cond)), 10000)

static void tagged(char *out, size_t len, const char *id, const char *sql) {
  snprintf(out, len, "/* requestId=%s */ %s", id, sql);
}

static int quiet_log_errors;
static void quiet_log(pgtag_log_level level, const char *msg, void *arg) {
  (void)msg;
  (void)arg;
  if (level >= PGTAG_LOG_ERROR)
    quiet_log_errors++;
}

static int free_tcp_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof addr;
  assert_int_equal(bind(s, (struct sockaddr *)&addr, sizeof addr), 0);
  getsockname(s, (struct sockaddr *)&addr, &len);
  close(s); /* nothing listens on that port now */
  return ntohs(addr.sin_port);
}

/* ------------------------------------------------------------------------
 * The tag reaches the server
 * ------------------------------------------------------------------------ */

static void server_sees_tag(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *ctx = pgtag_ctx_new("req-abc");
  rec r = {0};
  char want[256];

  assert_int_equal(query_in(pool, ctx, "SELECT current_query()", &r), PGTAG_OK);
  assert_int_equal(r.calls, 0);
  wait_rec(&r);
  assert_done(&r, ctx, PGTAG_OK);
  tagged(want, sizeof want, "req-abc", "SELECT current_query()");
  assert_sent_as(r.value, want);

  /* extra tags, and the same text in pg_stat_activity while it runs */
  pgtag_ctx_set(ctx, "route", "/orders/:id");
  pgtag_ctx_set(ctx, "tenant", "acme");
  rec r2 = {0};
  query_in(pool, ctx, "SELECT current_query()", &r2);
  wait_rec(&r2);
  assert_done(&r2, ctx, PGTAG_OK);
  assert_sent_as(
      r2.value, "/* requestId=req-abc route=%2Forders%2F:id tenant=acme */ SELECT current_query()");
  assert_int_equal(ctx->refs, 1); /* both captures released */
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* A line of the server's log, or the one after it, has tag and then sql. */
static int logged_with_tag(const char *tag, const char *sql) {
  char path[512], line[4096], prev_line[4096] = "";
  snprintf(path, sizeof path, "%s/server.log", getenv("PGHOST"));
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  int found = 0;
  while (!found && fgets(line, sizeof line, f) != NULL) {
    char *t = strstr(prev_line, tag);
    found = t != NULL && strstr(t, sql) != NULL;
    snprintf(prev_line, sizeof prev_line, "%s", line);
  }
  fclose(f);
  return found;
}

/* The two other places the issue promises the request ID: the server log
 * (log_min_duration_statement) and pg_stat_statements. */
static void tag_reaches_server_log_and_pg_stat_statements(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  /* an ID of this run's own: the log keeps earlier runs' lines */
  char id[64], tag[96];
  snprintf(id, sizeof id, "seen-in-log-%d-%llu", (int)getpid(), (unsigned long long)now_ms());
  snprintf(tag, sizeof tag, "/* requestId=%s */ ", id);
  pgtag_ctx *a = pgtag_ctx_new(id);
  rec acq = {0}, set = {0}, q = {0};

  acquire_in(pool, a, &acq);
  wait_rec(&acq);
  conn_query_in(acq.conn, a, "SET log_min_duration_statement = 0", &set);
  /* its own table, so its own pg_stat_statements entry: statements that
   * normalize alike share one entry, whose text is the first one seen */
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_log_probe (x int)");
  conn_query_in(acq.conn, a, "SELECT 'logged' FROM pgtag_log_probe", &q);
  wait_rec(&q);
  assert_done(&q, a, PGTAG_OK);
  pgtag_release(acq.conn);

  /* The statement's log line has the tag and the statement (through the
   * statement cache, after the EXECUTE, as a comment); the server may
   * write it after the result went out. */
  WAIT_FOR(&loop, logged_with_tag(tag, "SELECT 'logged' FROM pgtag_log_probe"), 10000);
  assert_true(logged_with_tag(tag, "SELECT 'logged' FROM pgtag_log_probe"));

  char text[512];
  admin_value("SELECT query FROM pg_stat_statements WHERE query LIKE '%FROM pgtag_log_probe'", text,
              sizeof text);
  /* through the statement cache, pg_stat_statements has the prepared text
   * (normalized: the constant became $1), untagged; the log line above
   * and pg_stat_activity carry the tag */
  assert_string_equal(text, "SELECT $1 FROM pgtag_log_probe");
  /* as text (no_cache), the comment stays in pg_stat_statements too */
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_log_probe2 (x int)");
  rec q2 = {0};
  pgtag_query_opts as_text = {.no_cache = 1};
  pgtag_ctx *prev = pgtag_ctx_enter(a);
  assert_int_equal(pgtag_query_ex(pool, "SELECT 'logged' FROM pgtag_log_probe2", 0, NULL, &as_text,
                                  rec_result, &q2),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
  wait_rec(&q2);
  assert_done(&q2, a, PGTAG_OK);
  admin_value("SELECT query FROM pg_stat_statements WHERE query LIKE '%FROM pgtag_log_probe2'",
              text, sizeof text);
  /* (the first run's ID: pg_stat_statements keeps the first text seen) */
  assert_memory_equal(text, "/* requestId=seen-in-log-", 25);
  assert_non_null(strstr(text, " */ SELECT $1 FROM pgtag_log_probe2"));
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
}

static void no_context_no_tag(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  rec r = {0};
  assert_null(pgtag_ctx_current());
  assert_int_equal(query_in(pool, NULL, "SELECT current_query()", &r), PGTAG_OK);
  wait_rec(&r);
  assert_done(&r, NULL, PGTAG_OK);
  assert_sent_as(r.value, "SELECT current_query()");
  test_pool_close(&loop, pool);
}

static void tag_styles_and_key(void **state) {
  (void)state;
  struct {
    pgtag_tag_style style;
    const char *key;
    const char *want;
  } cases[] = {
      {PGTAG_TAG_SQLCOMMENTER, NULL, "SELECT current_query() /*requestId='r1',route='%2Fx'*/"},
      {PGTAG_TAG_NONE, NULL, "SELECT current_query()"},
      {PGTAG_TAG_PREFIX, "rid", "/* rid=r1 route=%2Fx */ SELECT current_query()"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    if (i > 0)
      assert_int_equal(uv_loop_init(&loop), 0);
    pgtag_pool_config cfg;
    test_config(&cfg);
    cfg.tag_style = cases[i].style;
    if (cases[i].key)
      cfg.tag_key = cases[i].key;
    pgtag_pool *pool = test_pool_new(&loop, &cfg);
    pgtag_ctx *ctx = pgtag_ctx_new("r1");
    pgtag_ctx_set(ctx, "route", "/x");
    rec r = {0};
    query_in(pool, ctx, "SELECT current_query()", &r);
    wait_rec(&r);
    assert_done(&r, ctx, PGTAG_OK);
    assert_sent_as(r.value, cases[i].want);
    pgtag_ctx_unref(ctx);
    test_pool_close(&loop, pool);
  }
}

/* ------------------------------------------------------------------------
 * Context capture: operations carry the request, connections do not
 * ------------------------------------------------------------------------ */

static void connection_opened_by_a_serves_b_in_b(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *a = pgtag_ctx_new("request-A"), *b = pgtag_ctx_new("request-B");
  rec ra = {0}, rb = {0};
  char want[256];

  /* A's query opens the pool's only connection. */
  query_in(pool, a, "SELECT pg_backend_pid()", &ra);
  wait_rec(&ra);
  assert_done(&ra, a, PGTAG_OK);

  query_in(pool, b, "SELECT pg_backend_pid(), current_query()", &rb);
  wait_rec(&rb);
  assert_done(&rb, b, PGTAG_OK);
  assert_string_equal(rb.value, ra.value); /* same backend */
  tagged(want, sizeof want, "request-B", "SELECT pg_backend_pid(), current_query()");
  assert_sent_as(rb.value2, want);

  /* The same with held connections. */
  rec acq_a = {0}, acq_b = {0}, q = {0};
  acquire_in(pool, a, &acq_a);
  wait_rec(&acq_a);
  assert_done(&acq_a, a, PGTAG_OK);
  pgtag_release(acq_a.conn);
  acquire_in(pool, b, &acq_b);
  wait_rec(&acq_b);
  assert_done(&acq_b, b, PGTAG_OK);
  assert_ptr_equal(acq_b.conn.impl_, acq_a.conn.impl_); /* same connection */
  assert_true(acq_b.conn.gen_ != acq_a.conn.gen_);      /* a new handle */
  conn_query_in(acq_b.conn, b, "SELECT current_query()", &q);
  wait_rec(&q);
  assert_done(&q, b, PGTAG_OK);
  tagged(want, sizeof want, "request-B", "SELECT current_query()");
  assert_sent_as(q.value, want);
  pgtag_release(acq_b.conn);

  assert_int_equal(a->refs, 1);
  assert_int_equal(b->refs, 1);
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  test_pool_close(&loop, pool);
}

static void interleaved_requests(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *a = pgtag_ctx_new("slow-A"), *b = pgtag_ctx_new("fast-B");
  rec ra = {0}, rb = {0};
  char want[256];

  gate_shut(); /* A runs until B is done, however long B takes */
  query_in(pool, a, "SELECT 'a', current_query() FROM " GATE, &ra);
  query_in(pool, b, "SELECT 'b', current_query()", &rb);
  wait_rec(&rb);
  gate_open();
  assert_true(run_until(&loop, &completions, 2, 15000));
  assert_done(&ra, a, PGTAG_OK);
  assert_done(&rb, b, PGTAG_OK);
  assert_true(rb.order < ra.order); /* B finished first, still in B */
  tagged(want, sizeof want, "slow-A", "SELECT 'a', current_query() FROM " GATE);
  assert_sent_as(ra.value2, want);
  tagged(want, sizeof want, "fast-B", "SELECT 'b', current_query()");
  assert_sent_as(rb.value2, want);
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  test_pool_close(&loop, pool);
}

typedef struct {
  pgtag_pool *pool;
  pgtag_conn conn;
  rec first, second, third;
} chain;

static void chain_second(PGresult *res, const pgtag_error *err, void *arg) {
  chain *c = arg;
  rec_result(res, err, &c->first);
  /* no context handling here: the callback's context is inherited */
  assert_int_equal(pgtag_query(c->pool, "SELECT current_query()", 0, NULL, rec_result, &c->second),
                   PGTAG_OK);
}

static void held_third(PGresult *res, const pgtag_error *err, void *arg) {
  chain *c = arg;
  rec_result(res, err, &c->third);
  pgtag_release(c->conn);
}

static void held_second(PGresult *res, const pgtag_error *err, void *arg) {
  chain *c = arg;
  rec_result(res, err, &c->second);
  pgtag_conn_query(c->conn, "SELECT current_query()", 0, NULL, held_third, c);
}

static void held_first(pgtag_conn conn, const pgtag_error *err, void *arg) {
  chain *c = arg;
  rec_acquire(conn, err, &c->first);
  c->conn = conn;
  pgtag_conn_query(conn, "SELECT 1", 0, NULL, held_second, c);
}

static void chained_queries_keep_the_tag(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *a = pgtag_ctx_new("chain-A");
  chain c = {.pool = pool};
  char want[256];
  tagged(want, sizeof want, "chain-A", "SELECT current_query()");

  pgtag_ctx *prev = pgtag_ctx_enter(a);
  assert_int_equal(pgtag_query(pool, "SELECT 1", 0, NULL, chain_second, &c), PGTAG_OK);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &c.second.calls, 1, 15000));
  assert_done(&c.first, a, PGTAG_OK);
  assert_done(&c.second, a, PGTAG_OK);
  assert_sent_as(c.second.value, want);

  chain h = {.pool = pool};
  prev = pgtag_ctx_enter(a);
  assert_int_equal(pgtag_acquire(pool, held_first, &h), PGTAG_OK);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &h.third.calls, 1, 15000));
  assert_done(&h.first, a, PGTAG_OK);
  assert_done(&h.second, a, PGTAG_OK);
  assert_done(&h.third, a, PGTAG_OK);
  assert_sent_as(h.third.value, want);
  pgtag_stats st;
  WAIT_STATS(pool, st, st.held == 0);
  assert_int_equal(st.held, 0);
  assert_int_equal(a->refs, 1);
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
}

static void context_released_exactly_once(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *a = pgtag_ctx_new("refs");
  rec r = {0}, acq = {0};

  query_in(pool, a, "SELECT 1", &r);
  assert_int_equal(a->refs, 2);
  wait_rec(&r);
  assert_int_equal(a->refs, 1);

  acquire_in(pool, a, &acq);
  wait_rec(&acq);
  assert_done(&acq, a, PGTAG_OK);
  assert_int_equal(a->refs, 2); /* the held connection records its request */
  pgtag_release(acq.conn);
  assert_int_equal(a->refs, 1);

  /* The caller may drop its own reference right after submitting: pgtag
   * keeps the context alive until the callback is over, then frees it
   * (ASan reports a leak or a use after free otherwise). */
  pgtag_ctx *only = pgtag_ctx_new("only-pgtag-holds-it");
  rec r2 = {0};
  query_in(pool, only, "SELECT current_query()", &r2);
  pgtag_ctx_unref(only);
  wait_rec(&r2);
  assert_int_equal(r2.code, PGTAG_OK);
  assert_non_null(strstr(r2.value, "only-pgtag-holds-it"));
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
}

static int log_calls, log_calls_with_ctx;
static void ctx_checking_log(pgtag_log_level level, const char *msg, void *arg) {
  (void)level;
  (void)msg;
  (void)arg;
  log_calls++;
  if (pgtag_ctx_current() != NULL)
    log_calls_with_ctx++;
}

static void pool_work_runs_without_context(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.log = ctx_checking_log;
  cfg.log_level = PGTAG_LOG_DEBUG;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *a = pgtag_ctx_new("no-leak-into-pool");
  rec r = {0}, pid = {0};
  log_calls = log_calls_with_ctx = 0;

  query_in(pool, a, "SELECT pg_backend_pid()", &pid); /* opens a connection */
  wait_rec(&pid);
  assert_done(&pid, a, PGTAG_OK);
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", atoi(pid.value));
  admin_exec(sql); /* the pool notices, logs, reconnects: all without a context */
  pgtag_stats st;
  WAIT_STATS(pool, st, st.conns_lost == 1);
  assert_int_equal(st.conns_lost, 1);
  query_in(pool, a, "SELECT 1", &r);
  wait_rec(&r);
  assert_done(&r, a, PGTAG_OK);
  assert_true(log_calls >= 2); /* connected, lost, connected */
  assert_int_equal(log_calls_with_ctx, 0);
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
}

/* ------------------------------------------------------------------------
 * Errors reach the callback in the submitting request's context
 * ------------------------------------------------------------------------ */

static void syntax_error_in_context(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *a = pgtag_ctx_new("err-A");
  rec r = {0}, ok = {0}, acq = {0}, div = {0};

  query_in(pool, a, "SELEC 1", &r);
  wait_rec(&r);
  assert_done(&r, a, PGTAG_ESERVER);
  assert_string_equal(r.sqlstate, "42601");
  assert_true(r.has_res);
  assert_non_null(strstr(r.message, "syntax error"));

  /* the connection stays good */
  query_in(pool, a, "SELECT 7", &ok);
  wait_rec(&ok);
  assert_done(&ok, a, PGTAG_OK);
  assert_string_equal(ok.value, "7");

  acquire_in(pool, a, &acq);
  wait_rec(&acq);
  conn_query_in(acq.conn, a, "SELECT 1/0", &div);
  wait_rec(&div);
  assert_done(&div, a, PGTAG_ESERVER);
  assert_string_equal(div.sqlstate, "22012");
  pgtag_release(acq.conn);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.total, 1);
  assert_int_equal(st.errors, 2);
  assert_int_equal(a->refs, 1);
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
}

static int wait_for_activity(const char *like) {
  char sql[512];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%s'",
           like);
  WAIT_FOR(&loop, admin_int(sql) > 0, 10000);
  return admin_int(sql) > 0;
}

static void terminated_backend_in_context(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.log = quiet_log;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *a = pgtag_ctx_new("victim-1");
  rec r = {0}, after = {0};

  query_in(pool, a, "SELECT pg_sleep(30)", &r);
  /* the DBA's view: the running query carries the request ID */
  assert_true(wait_for_activity("/* requestId=victim-1 */ %"));
  admin_exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
             "WHERE query LIKE '/* requestId=victim-1 */%'");
  wait_rec(&r);
  assert_done(&r, a, PGTAG_ECONN);
  assert_string_equal(r.sqlstate, "57P01");
  assert_int_equal(a->refs, 1);

  /* the pool replaces the connection by itself */
  query_in(pool, a, "SELECT 'back'", &after);
  wait_rec(&after);
  assert_done(&after, a, PGTAG_OK);
  assert_string_equal(after.value, "back");
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
}

static void terminated_held_connection(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.log = quiet_log;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *a = pgtag_ctx_new("victim-2");
  rec acq = {0}, sleep = {0}, late = {0};

  acquire_in(pool, a, &acq);
  wait_rec(&acq);
  int pid = pgtag_conn_backend_pid(acq.conn);
  assert_true(pid > 0);
  conn_query_in(acq.conn, a, "SELECT pg_sleep(30)", &sleep);
  assert_true(wait_for_activity("/* requestId=victim-2 */ %"));
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", pid);
  admin_exec(sql);
  wait_rec(&sleep);
  assert_done(&sleep, a, PGTAG_ECONN);
  assert_string_equal(sleep.sqlstate, "57P01");

  /* the holder keeps a valid handle; using it fails cleanly, later */
  assert_int_equal(pgtag_conn_backend_pid(acq.conn), 0);
  assert_int_equal(conn_query_in(acq.conn, a, "SELECT 1", &late), PGTAG_OK);
  assert_int_equal(late.calls, 0);
  wait_rec(&late);
  assert_done(&late, a, PGTAG_ECONN);
  pgtag_release(acq.conn);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.held, 0);
  assert_int_equal(a->refs, 1);
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
}

static void idle_connection_killed_is_noticed(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.log = quiet_log;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  rec pid = {0}, again = {0};
  pgtag_stats st;

  query_in(pool, NULL, "SELECT pg_backend_pid()", &pid);
  wait_rec(&pid);
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.idle, 1);
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", atoi(pid.value));
  admin_exec(sql);
  WAIT_STATS(pool, st, st.total == 0);
  assert_int_equal(st.total, 0);
  query_in(pool, NULL, "SELECT pg_backend_pid()", &again);
  wait_rec(&again);
  assert_done(&again, NULL, PGTAG_OK);
  assert_string_not_equal(again.value, pid.value);
  test_pool_close(&loop, pool);
}

/* ------------------------------------------------------------------------
 * Hostile input
 * ------------------------------------------------------------------------ */

static void hostile_request_ids_change_nothing(void **state) {
  (void)state;
  static char big[10241];
  memset(big, 'A', sizeof big - 1);
  memcpy(big + 100, "*/ DROP TABLE pgtag_victim; --", 30);
  const char *hostile[] = {"*/ DROP TABLE pgtag_victim; --",
                           "/*",
                           "*/",
                           "/* */ */ DROP TABLE pgtag_victim; /*",
                           "'; DROP TABLE pgtag_victim; --",
                           "\"; DROP TABLE pgtag_victim; --",
                           "line\n*/ DROP TABLE pgtag_victim;\n--",
                           "\\*/ DROP TABLE pgtag_victim; --",
                           "$$; DROP TABLE pgtag_victim; $$",
                           "%2A%2F DROP",
                           "\xc3\xa9\xff\x01",
                           big};
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_victim (x int)");
  for (int style = 0; style < 2; style++) {
    if (style > 0)
      assert_int_equal(uv_loop_init(&loop), 0);
    pgtag_pool_config cfg;
    test_config(&cfg);
    cfg.tag_style = style == 0 ? PGTAG_TAG_PREFIX : PGTAG_TAG_SQLCOMMENTER;
    pgtag_pool *pool = test_pool_new(&loop, &cfg);
    for (size_t i = 0; i < sizeof hostile / sizeof *hostile; i++) {
      pgtag_ctx *ctx = pgtag_ctx_new(hostile[i]);
      pgtag_ctx_set(ctx, "route", hostile[i]);
      rec r = {0};
      query_in(pool, ctx, "SELECT 42, current_query()", &r);
      wait_rec(&r);
      assert_done(&r, ctx, PGTAG_OK);
      assert_string_equal(r.value, "42");
      /* the tag's comment, closed exactly where pgtag closed it, and the
       * statement (through the statement cache: its EXECUTE, with the
       * statement as a comment of its own) */
      char want[4096];
      const char *q = r.value2;
      if (style == 0) {
        const char *end = strstr(q, "*/");
        assert_non_null(end);
        snprintf(want, sizeof want, "%.*s SELECT 42, current_query()", (int)(end + 2 - q), q);
        assert_memory_equal(q, "/* requestId=", 13);
      } else {
        const char *tag = strstr(q, "/*requestId=");
        assert_non_null(tag);
        assert_ptr_equal(strstr(tag, "*/"), q + strlen(q) - 2); /* the tag ends the text */
        snprintf(want, sizeof want, "SELECT 42, current_query() %s", tag);
      }
      assert_sent_as(q, want);
      pgtag_ctx_unref(ctx);
    }
    test_pool_close(&loop, pool);
  }
  assert_int_equal(admin_int("SELECT count(*) FROM pg_class WHERE relname = 'pgtag_victim'"), 1);
}

static void bad_arguments_are_refused(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  pgtag_pool *pool = NULL;
  rec r = {0};
  quiet_log_errors = 0;

  test_config(&cfg);
  cfg.log = quiet_log;
  assert_int_equal(pgtag_pool_new(NULL, &cfg, &pool), PGTAG_EINVAL);
  assert_int_equal(pgtag_pool_new(&loop, NULL, &pool), PGTAG_EINVAL);
  assert_int_equal(pgtag_pool_new(&loop, &cfg, NULL), PGTAG_EINVAL);
#define BAD(stmt)                                                       \
  do {                                                                  \
    test_config(&cfg);                                                  \
    cfg.log = quiet_log;                                                \
    stmt;                                                               \
    pool = NULL;                                                        \
    assert_int_equal(pgtag_pool_new(&loop, &cfg, &pool), PGTAG_EINVAL); \
    assert_null(pool);                                                  \
  } while (0)
  BAD(cfg.conninfo = NULL);
  BAD(cfg.conninfo = "host");
  BAD(cfg.conninfo = "nosuchoption=1");
  BAD(cfg.conninfo = "host='unterminated");
  BAD(cfg.max_conns = 0);
  BAD(cfg.max_conns = -3);
  BAD(cfg.min_conns = 5);
  BAD(cfg.min_conns = -1);
  BAD(cfg.acquire_timeout_ms = -1);
  BAD(cfg.max_waiting = -1);
  BAD(cfg.connect_timeout_ms = -1);
  BAD(cfg.idle_timeout_ms = -1);
  BAD(cfg.max_lifetime_ms = -1);
  BAD(cfg.tag_style = (pgtag_tag_style)42);
  BAD(cfg.tag_key = "");
  BAD(cfg.tag_key = "bad key");
  BAD(cfg.tag_key = "*/");
  BAD(cfg.log_level = (pgtag_log_level)9);
#undef BAD
  assert_true(quiet_log_errors >= 18); /* each refusal says why */

  test_config(&cfg);
  cfg.log = quiet_log;
  pool = test_pool_new(&loop, &cfg);
  const char *vals[1] = {"1"};
  assert_int_equal(pgtag_query(NULL, "SELECT 1", 0, NULL, rec_result, &r), PGTAG_EINVAL);
  assert_int_equal(pgtag_query(pool, NULL, 0, NULL, rec_result, &r), PGTAG_EINVAL);
  assert_int_equal(pgtag_query(pool, "SELECT 1", 0, NULL, NULL, &r), PGTAG_EINVAL);
  assert_int_equal(pgtag_query(pool, "SELECT 1", -1, vals, rec_result, &r), PGTAG_EINVAL);
  assert_int_equal(pgtag_query(pool, "SELECT $1", 1, NULL, rec_result, &r), PGTAG_EINVAL);
  assert_int_equal(pgtag_acquire(NULL, rec_acquire, &r), PGTAG_EINVAL);
  assert_int_equal(pgtag_acquire(pool, NULL, &r), PGTAG_EINVAL);
  pgtag_conn none = {0};
  assert_int_equal(pgtag_conn_query(none, "SELECT 1", 0, NULL, rec_result, &r), PGTAG_EINVAL);
  assert_int_equal(pgtag_release(none), PGTAG_EINVAL);
  assert_false(pgtag_conn_held(none));
  pgtag_pool_stats(NULL, NULL);
  pgtag_pool_close(NULL, NULL, NULL);
  assert_int_equal(pgtag_conn_backend_pid(none), 0);

  /* a released connection is no longer the caller's */
  rec acq = {0};
  acquire_in(pool, NULL, &acq);
  wait_rec(&acq);
  assert_int_equal(pgtag_conn_query(acq.conn, NULL, 0, NULL, rec_result, &r), PGTAG_EINVAL);
  assert_int_equal(pgtag_conn_query(acq.conn, "SELECT $1", 1, NULL, rec_result, &r), PGTAG_EINVAL);
  assert_true(pgtag_conn_held(acq.conn));
  assert_int_equal(pgtag_release(acq.conn), PGTAG_OK);
  assert_false(pgtag_conn_held(acq.conn));
  int errors_before = quiet_log_errors;
  assert_int_equal(pgtag_release(acq.conn), PGTAG_EINVAL); /* twice: logged, ignored */
  assert_int_equal(quiet_log_errors, errors_before + 1);
  assert_int_equal(pgtag_conn_query(acq.conn, "SELECT 1", 0, NULL, rec_result, &r), PGTAG_EINVAL);
  run_for(&loop, 50);           /* a time for a callback that must not come */
  assert_int_equal(r.calls, 0); /* no refusal is followed by a callback */
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.idle, 1);
  assert_int_equal(st.held, 0);
  test_pool_close(&loop, pool);
}

static void parameters_nulls_and_big_values(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *a = pgtag_ctx_new("params");
  rec r = {0}, big = {0};
  const char *vals[3] = {"40", "2", NULL};

  pgtag_ctx *prev = pgtag_ctx_enter(a);
  /* the values live on this stack frame only until the call returns */
  {
    char v0[8], v1[8];
    snprintf(v0, sizeof v0, "%s", vals[0]);
    snprintf(v1, sizeof v1, "%s", vals[1]);
    const char *mine[3] = {v0, v1, NULL};
    assert_int_equal(pgtag_query(pool, "SELECT $1::int + $2::int, $3::text IS NULL", 3, mine,
                                 rec_result, &r),
                     PGTAG_OK);
    memset(v0, 'X', sizeof v0 - 1);
    memset(v1, 'X', sizeof v1 - 1);
  }
  size_t n = 1 << 20;
  char *payload = malloc(n + 1);
  memset(payload, 'p', n);
  payload[n] = '\0';
  const char *bigv[1] = {payload};
  assert_int_equal(pgtag_query(pool, "SELECT length($1)", 1, bigv, rec_result, &big), PGTAG_OK);
  memset(payload, 0, n);
  free(payload);
  pgtag_ctx_leave(prev);

  assert_true(run_until(&loop, &completions, 2, 15000));
  assert_done(&r, a, PGTAG_OK);
  assert_string_equal(r.value, "42");
  assert_string_equal(r.value2, "t");
  assert_done(&big, a, PGTAG_OK);
  assert_string_equal(big.value, "1048576");
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
}

/* ------------------------------------------------------------------------
 * The pool: waiting, limits, order, reset, close
 * ------------------------------------------------------------------------ */

static void acquire_timeout(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  cfg.acquire_timeout_ms = 200;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *a = pgtag_ctx_new("holder"), *b = pgtag_ctx_new("waiter-B"),
            *c = pgtag_ctx_new("waiter-C");
  rec ra = {0}, rb = {0}, rc = {0};

  acquire_in(pool, a, &ra);
  wait_rec(&ra);
  uint64_t t0 = now_ms();
  assert_int_equal(acquire_in(pool, b, &rb), PGTAG_OK);
  assert_int_equal(query_in(pool, c, "SELECT 1", &rc), PGTAG_OK);
  assert_true(run_until(&loop, &completions, 3, 5000));
  uint64_t waited = now_ms() - t0;
  assert_done(&rb, b, PGTAG_ETIMEDOUT);
  assert_done(&rc, c, PGTAG_ETIMEDOUT);
  assert_null(rb.conn.impl_);
  assert_false(pgtag_conn_held(rb.conn));
  assert_true(waited >= 180 && waited < 2000);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.timeouts, 2);
  assert_int_equal(st.waiting, 0);
  assert_int_equal(b->refs, 1);
  assert_int_equal(c->refs, 1);
  pgtag_release(ra.conn);
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  pgtag_ctx_unref(c);
  test_pool_close(&loop, pool);
}

static void max_waiting_refuses_at_once(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  cfg.max_waiting = 2;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  rec hold = {0}, b = {0}, c = {0}, d = {0}, e = {0};

  acquire_in(pool, NULL, &hold);
  wait_rec(&hold);
  assert_int_equal(query_in(pool, NULL, "SELECT 'b'", &b), PGTAG_OK);
  assert_int_equal(acquire_in(pool, NULL, &c), PGTAG_OK);
  assert_int_equal(query_in(pool, NULL, "SELECT 'd'", &d), PGTAG_EQUEUEFULL);
  assert_int_equal(acquire_in(pool, NULL, &e), PGTAG_EQUEUEFULL);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.waiting, 2);
  in_submit = 1;
  pgtag_release(hold.conn);
  in_submit = 0;
  assert_true(run_until(&loop, &c.calls, 1, 5000));
  assert_done(&b, NULL, PGTAG_OK);
  assert_done(&c, NULL, PGTAG_OK);
  pgtag_release(c.conn);
  run_for(&loop, 50); /* a time for callbacks that must not come */
  assert_int_equal(d.calls, 0);
  assert_int_equal(e.calls, 0);
  test_pool_close(&loop, pool);
}

typedef struct {
  rec r;
  int id;
} fifo_item;

static int fifo_seen[16], fifo_n;

static void fifo_query(PGresult *res, const pgtag_error *err, void *arg) {
  fifo_item *it = arg;
  rec_result(res, err, &it->r);
  fifo_seen[fifo_n++] = it->id;
}

static void fifo_acquire(pgtag_conn conn, const pgtag_error *err, void *arg) {
  fifo_item *it = arg;
  rec_acquire(conn, err, &it->r);
  fifo_seen[fifo_n++] = it->id;
  pgtag_release(conn);
}

static void waiters_are_served_in_order(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  rec hold = {0};
  fifo_item items[8];
  pgtag_ctx *ctxs[8];
  fifo_n = 0;

  acquire_in(pool, NULL, &hold);
  wait_rec(&hold);
  for (int i = 0; i < 8; i++) {
    char id[24];
    snprintf(id, sizeof id, "fifo-%d", i);
    ctxs[i] = pgtag_ctx_new(id);
    memset(&items[i], 0, sizeof items[i]);
    items[i].id = i;
    pgtag_ctx *prev = pgtag_ctx_enter(ctxs[i]);
    if (i % 2)
      assert_int_equal(pgtag_acquire(pool, fifo_acquire, &items[i]), PGTAG_OK);
    else
      assert_int_equal(pgtag_query(pool, "SELECT current_query()", 0, NULL, fifo_query, &items[i]),
                       PGTAG_OK);
    pgtag_ctx_leave(prev);
  }
  in_submit = 1; /* no waiter's callback may run inside the release */
  pgtag_release(hold.conn);
  in_submit = 0;
  assert_true(run_until(&loop, &fifo_n, 8, 10000));
  for (int i = 0; i < 8; i++) {
    assert_int_equal(fifo_seen[i], i);
    assert_done(&items[i].r, ctxs[i], PGTAG_OK);
    if (i % 2 == 0) {
      char want[128];
      snprintf(want, sizeof want, "/* requestId=fifo-%d */ SELECT current_query()", i);
      assert_sent_as(items[i].r.value, want);
    }
  }
  for (int i = 0; i < 8; i++)
    pgtag_ctx_unref(ctxs[i]);
  test_pool_close(&loop, pool);
}

static void release_rolls_back(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  rec acq = {0}, begin = {0}, ins = {0};
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_rb (x int); TRUNCATE pgtag_rb");

  /* left open: queued statements still run, then the release rolls back */
  acquire_in(pool, NULL, &acq);
  wait_rec(&acq);
  conn_query_in(acq.conn, NULL, "BEGIN", &begin);
  conn_query_in(acq.conn, NULL, "INSERT INTO pgtag_rb VALUES (1)", &ins);
  pgtag_release(acq.conn);
  assert_true(run_until(&loop, &ins.calls, 1, 5000));
  assert_done(&begin, NULL, PGTAG_OK);
  assert_done(&ins, NULL, PGTAG_OK);

  rec acq2 = {0}, check = {0};
  acquire_in(pool, NULL, &acq2);
  wait_rec(&acq2);
  assert_ptr_equal(acq2.conn.impl_, acq.conn.impl_);
  char sql[128], backend_state[64];
  snprintf(sql, sizeof sql, "SELECT state FROM pg_stat_activity WHERE pid = %d",
           pgtag_conn_backend_pid(acq2.conn));
  admin_value(sql, backend_state, sizeof backend_state);
  assert_string_equal(backend_state, "idle"); /* not "idle in transaction" */
  conn_query_in(acq2.conn, NULL, "SELECT count(*) FROM pgtag_rb", &check);
  wait_rec(&check);
  assert_done(&check, NULL, PGTAG_OK);
  assert_string_equal(check.value, "0");

  /* left failed: the next holder does not inherit 25P02 */
  rec b2 = {0}, bad = {0};
  conn_query_in(acq2.conn, NULL, "BEGIN", &b2);
  conn_query_in(acq2.conn, NULL, "SELEC", &bad);
  assert_true(run_until(&loop, &bad.calls, 1, 5000));
  assert_int_equal(bad.code, PGTAG_ESERVER);
  pgtag_release(acq2.conn);
  rec acq3 = {0}, fine = {0};
  acquire_in(pool, NULL, &acq3);
  wait_rec(&acq3);
  conn_query_in(acq3.conn, NULL, "SELECT 'clean'", &fine);
  wait_rec(&fine);
  assert_done(&fine, NULL, PGTAG_OK);
  pgtag_release(acq3.conn);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.total, 1); /* reset, not replaced */
  test_pool_close(&loop, pool);
}

static void release_after_queued_queries(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *a = pgtag_ctx_new("queued");
  rec acq = {0}, q[3] = {{0}};

  acquire_in(pool, a, &acq);
  wait_rec(&acq);
  conn_query_in(acq.conn, a, "SELECT 1", &q[0]);
  conn_query_in(acq.conn, a, "SELECT 2", &q[1]);
  conn_query_in(acq.conn, a, "SELECT 3", &q[2]);
  pgtag_release(acq.conn);
  assert_int_equal(conn_query_in(acq.conn, a, "SELECT 4", &q[0]), PGTAG_EINVAL);
  assert_true(run_until(&loop, &q[2].calls, 1, 5000));
  for (int i = 0; i < 3; i++) {
    char want[12];
    snprintf(want, sizeof want, "%d", i + 1);
    assert_done(&q[i], a, PGTAG_OK);
    assert_string_equal(q[i].value, want);
    if (i > 0)
      assert_true(q[i].order > q[i - 1].order);
  }
  pgtag_stats st;
  WAIT_STATS(pool, st, st.held == 0 && st.idle == 1);
  assert_int_equal(st.held, 0);
  assert_int_equal(st.idle, 1);
  assert_int_equal(a->refs, 1);
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
}

static void count_close(void *arg) { (*(int *)arg)++; }

static void close_with_waiters_and_holders(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 2;
  cfg.log = quiet_log;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *a = pgtag_ctx_new("holder-A"), *b = pgtag_ctx_new("waiter-B"),
            *c = pgtag_ctx_new("waiter-C"), *q = pgtag_ctx_new("running-Q");
  rec ra = {0}, rb = {0}, rc = {0}, rq = {0}, late = {0}, still = {0};
  int closed = 0;

  acquire_in(pool, a, &ra);
  gate_shut(); /* Q runs until the test has seen it and closed the pool */
  query_in(pool, q, "SELECT 'q' FROM " GATE, &rq);
  assert_true(wait_for_activity("/* requestId=running-Q */%"));
  assert_int_equal(ra.calls, 1);
  acquire_in(pool, b, &rb);
  query_in(pool, c, "SELECT 1", &rc);

  in_submit = 1; /* no callback may run inside pgtag_pool_close either */
  pgtag_pool_close(pool, count_close, &closed);
  in_submit = 0;
  assert_int_equal(rb.calls, 0);
  assert_int_equal(rc.calls, 0);
  assert_int_equal(query_in(pool, NULL, "SELECT 1", &late), PGTAG_ECLOSED);
  assert_int_equal(acquire_in(pool, NULL, &late), PGTAG_ECLOSED);
  pgtag_pool_close(pool, NULL, NULL); /* twice: logged, ignored */

  assert_true(run_until(&loop, &rc.calls, 1, 5000));
  assert_done(&rb, b, PGTAG_ECLOSED);
  assert_done(&rc, c, PGTAG_ECLOSED);
  /* the holder may keep using its connection until it releases it */
  conn_query_in(ra.conn, a, "SELECT 'still'", &still);
  wait_rec(&still);
  assert_done(&still, a, PGTAG_OK);
  assert_int_equal(rq.calls, 0);
  gate_open();
  wait_rec(&rq);
  assert_done(&rq, q, PGTAG_OK);
  assert_string_equal(rq.value, "q");
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.total, 1); /* the running query's connection closed */
  assert_int_equal(late.calls, 0);
  assert_int_equal(closed, 0); /* a holder still has a connection */
  pgtag_release(ra.conn);
  /* the pool frees itself once the last handle is closed */
  assert_true(run_until(&loop, &closed, 1, 5000));
  uv_run(&loop, UV_RUN_NOWAIT);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(a->refs + b->refs + c->refs + q->refs, 4);
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  pgtag_ctx_unref(c);
  pgtag_ctx_unref(q);
}

static void min_conns_and_idle_timeout(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.min_conns = 2;
  cfg.max_conns = 4;
  cfg.idle_timeout_ms = 150;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_stats st;
  rec r[4] = {{0}};

  WAIT_STATS(pool, st, st.idle == 2);
  assert_int_equal(st.idle, 2);
  gate_shut(); /* the four run at once, however slow the machine */
  for (int i = 0; i < 4; i++)
    query_in(pool, NULL, "SELECT 1 FROM " GATE, &r[i]);
  WAIT_STATS(pool, st, st.busy == 4);
  gate_open();
  assert_true(run_until(&loop, &completions, 4, 10000));
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.connects, 4); /* grew to max_conns for the burst */
  WAIT_STATS(pool, st, st.total == 2);
  assert_int_equal(st.total, 2); /* shrank back, never below min_conns */
  run_for(&loop, 300);           /* twice the idle timeout: it must not shrink below */
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.total, 2);
  test_pool_close(&loop, pool);
}

/* ------------------------------------------------------------------------
 * Servers that are not there, or never answer
 * ------------------------------------------------------------------------ */

static void unreachable_server_times_out_with_reason(void **state) {
  (void)state;
  char conninfo[128];
  snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d user=postgres", free_tcp_port());
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.conninfo = conninfo;
  cfg.acquire_timeout_ms = 400;
  cfg.log = quiet_log;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *a = pgtag_ctx_new("no-server");
  rec r = {0};
  query_in(pool, a, "SELECT 1", &r);
  wait_rec(&r);
  assert_done(&r, a, PGTAG_ETIMEDOUT);
  assert_non_null(strstr(r.message, "last connection error"));
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_true(st.connect_failures >= 1);
  assert_true(st.connect_failures <= 5); /* backoff, not a storm */
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
}

static void hung_server_connect_timeout(void **state) {
  (void)state;
  /* A listener that accepts (the kernel completes the handshake) and never
   * says a word. */
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof addr;
  assert_int_equal(bind(s, (struct sockaddr *)&addr, sizeof addr), 0);
  assert_int_equal(listen(s, 16), 0);
  getsockname(s, (struct sockaddr *)&addr, &len);

  char conninfo[128];
  snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d user=postgres sslmode=disable",
           ntohs(addr.sin_port));
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.conninfo = conninfo;
  cfg.connect_timeout_ms = 150;
  cfg.acquire_timeout_ms = 1000;
  cfg.log = quiet_log;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *a = pgtag_ctx_new("hung");
  rec r = {0};
  uint64_t t0 = now_ms();
  acquire_in(pool, a, &r);
  wait_rec(&r);
  assert_done(&r, a, PGTAG_ETIMEDOUT);
  assert_true(now_ms() - t0 < 3000);
  assert_non_null(strstr(r.message, "timed out after 150 ms"));
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_true(st.connect_failures >= 1);
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
  close(s);
}

/* libpq tries the first host, fails, and moves to a new socket for the
 * second: the poll must follow it.  Over TCP with the default sslmode
 * (prefer), so the SSL negotiation path runs too. */
static void multi_host_conninfo_follows_the_socket(void **state) {
  (void)state;
  const char *port = getenv("PGPORT");
  assert_non_null(port);
  char conninfo[256];
  snprintf(conninfo, sizeof conninfo,
           "host=127.0.0.1,127.0.0.1 port=%d,%s user=postgres dbname=postgres", free_tcp_port(),
           port);
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.conninfo = conninfo;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *a = pgtag_ctx_new("second-host");
  rec r = {0};
  query_in(pool, a, "SELECT inet_server_port()::text, current_query()", &r);
  wait_rec(&r);
  assert_done(&r, a, PGTAG_OK);
  assert_string_equal(r.value, port);
  assert_sent_as(r.value2,
                 "/* requestId=second-host */ SELECT inet_server_port()::text, current_query()");
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
}

static void max_lifetime_retires_connections(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_lifetime_ms = 150;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  rec first = {0}, second = {0};
  pgtag_stats st;
  query_in(pool, NULL, "SELECT pg_backend_pid()", &first);
  wait_rec(&first);
  WAIT_STATS(pool, st, st.total == 0);
  assert_int_equal(st.total, 0);
  query_in(pool, NULL, "SELECT pg_backend_pid()", &second);
  wait_rec(&second);
  assert_done(&second, NULL, PGTAG_OK);
  assert_string_not_equal(second.value, first.value);
  test_pool_close(&loop, pool);
}

/* Many requests of every kind at once over a small pool: each gets exactly
 * one callback per operation, in its own context, with its own tag. */
#define BURST 300

typedef struct {
  pgtag_ctx *ctx;
  int kind;
  int calls, acquires, wrong;
  char id[32];
  pgtag_conn conn;
} burst_req;

static int burst_done;

static void burst_check(burst_req *b, PGresult *res, const pgtag_error *err, pgtag_errcode want) {
  b->calls++;
  if (pgtag_ctx_current() != b->ctx || in_submit)
    b->wrong++;
  if ((err ? err->code : PGTAG_OK) != want)
    b->wrong++;
  if (want == PGTAG_OK && b->kind < 2) {
    char expect[128];
    snprintf(expect, sizeof expect, "/* requestId=%s */ SELECT current_query()", b->id);
    if (res == NULL || !sent_as(PQgetvalue(res, 0, 0), expect))
      b->wrong++;
  }
  if (want == PGTAG_ESERVER && (err == NULL || strcmp(err->sqlstate, "22012") != 0))
    b->wrong++;
  burst_done++;
}

static void burst_result(PGresult *res, const pgtag_error *err, void *arg) {
  burst_req *b = arg;
  burst_check(b, res, err, b->kind == 2 ? PGTAG_ESERVER : PGTAG_OK);
  if (b->kind == 1)
    pgtag_release(b->conn);
}

static void burst_acquired(pgtag_conn conn, const pgtag_error *err, void *arg) {
  burst_req *b = arg;
  b->acquires++;
  if (err != NULL || pgtag_ctx_current() != b->ctx) {
    b->wrong++;
    burst_done++;
    return;
  }
  b->conn = conn;
  pgtag_conn_query(conn, "SELECT current_query()", 0, NULL, burst_result, b);
}

static void burst_every_callback_once(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 4;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  static burst_req reqs[BURST];
  burst_done = 0;
  for (int i = 0; i < BURST; i++) {
    burst_req *b = &reqs[i];
    memset(b, 0, sizeof *b);
    snprintf(b->id, sizeof b->id, "burst-%d", i);
    b->ctx = pgtag_ctx_new(b->id);
    b->kind = i % 4;
    pgtag_ctx *prev = pgtag_ctx_enter(b->ctx);
    char num[16];
    snprintf(num, sizeof num, "%d", i);
    const char *vals[1] = {num};
    pgtag_errcode rc;
    in_submit = 1;
    switch (b->kind) {
    case 0:
      rc = pgtag_query(pool, "SELECT current_query()", 0, NULL, burst_result, b);
      break;
    case 1:
      rc = pgtag_acquire(pool, burst_acquired, b);
      break;
    case 2:
      rc = pgtag_query(pool, "SELECT 1/0", 0, NULL, burst_result, b);
      break;
    default:
      rc = pgtag_query(pool, "SELECT $1::int", 1, vals, burst_result, b);
      break;
    }
    in_submit = 0;
    pgtag_ctx_leave(prev);
    assert_int_equal(rc, PGTAG_OK);
  }
  assert_int_equal(burst_done, 0);
  assert_true(run_until(&loop, &burst_done, BURST, 30000));
  run_for(&loop, 50); /* a time for second callbacks that must not come */
  for (int i = 0; i < BURST; i++) {
    burst_req *b = &reqs[i];
    assert_int_equal(b->calls, 1);
    assert_int_equal(b->acquires, b->kind == 1 ? 1 : 0);
    assert_int_equal(b->wrong, 0);
    assert_int_equal(b->ctx->refs, 1);
    pgtag_ctx_unref(b->ctx);
  }
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.queries, BURST);
  assert_int_equal(st.acquired, BURST / 4);
  assert_int_equal(st.errors, BURST / 4);
  assert_int_equal(st.waiting, 0);
  assert_int_equal(st.held, 0);
  assert_true(st.total <= 4);
  test_pool_close(&loop, pool);
}

/* The server goes away under idle connections and comes back: the pool
 * notices without being used, refills to min_conns, and serves. */
static void server_restart_is_survived(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.min_conns = 2;
  cfg.log = quiet_log;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_stats st;
  const char *modes[] = {"fast", "immediate"};
  for (int m = 0; m < 2; m++) {
    WAIT_STATS(pool, st, st.idle == 2 && st.connects >= (uint64_t)(2 + 2 * m));
    assert_int_equal(st.idle, 2);
    server_restart(modes[m]);
    /* replaced without anyone asking */
    WAIT_STATS(pool, st, st.idle == 2 && st.connects >= (uint64_t)(4 + 2 * m));
    assert_true(st.connects >= (uint64_t)(4 + 2 * m));
    pgtag_ctx *a = pgtag_ctx_new(modes[m]);
    rec r = {0};
    query_in(pool, a, "SELECT current_query()", &r);
    wait_rec(&r);
    assert_done(&r, a, PGTAG_OK);
    assert_non_null(strstr(r.value, modes[m]));
    pgtag_ctx_unref(a);
  }
  test_pool_close(&loop, pool);
}

static void copy_is_refused_and_the_connection_replaced(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  cfg.log = quiet_log;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *a = pgtag_ctx_new("copy");
  rec r = {0}, after = {0};
  query_in(pool, a, "COPY (SELECT 1) TO STDOUT", &r);
  wait_rec(&r);
  assert_done(&r, a, PGTAG_EINVAL);
  assert_false(r.has_res);
  query_in(pool, a, "SELECT 'fine'", &after);
  wait_rec(&after);
  assert_done(&after, a, PGTAG_OK);
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
}

/* A held connection whose backend died occupies no server slot: with
 * max_conns 1, others are served while its holder has not released it. */
static void lost_held_connection_frees_its_slot(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  cfg.log = quiet_log;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  rec acq = {0}, other = {0};
  acquire_in(pool, NULL, &acq);
  wait_rec(&acq);
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", pgtag_conn_backend_pid(acq.conn));
  admin_exec(sql);
  WAIT_FOR(&loop, pgtag_conn_backend_pid(acq.conn) == 0, 10000);
  assert_int_equal(pgtag_conn_backend_pid(acq.conn), 0);
  query_in(pool, NULL, "SELECT 'served'", &other);
  wait_rec(&other);
  assert_done(&other, NULL, PGTAG_OK);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.held, 1);
  assert_int_equal(st.total, 1);
  pgtag_release(acq.conn);
  test_pool_close(&loop, pool);
}

static void close_pool_cb(uv_timer_t *t) {
  pgtag_pool_close(t->data, NULL, NULL);
  uv_close((uv_handle_t *)t, NULL);
}

/* With no acquire timeout, a waiter behind a backoff keeps the loop alive:
 * uv_run must not return while it still waits for its callback. */
static void waiter_keeps_the_loop_alive_during_backoff(void **state) {
  (void)state;
  char conninfo[128];
  snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d user=postgres", free_tcp_port());
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.conninfo = conninfo;
  cfg.acquire_timeout_ms = 0;
  cfg.min_conns = 1; /* its attempt fails and arms the backoff before anyone waits */
  cfg.log = quiet_log;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  rec r = {0};
  pgtag_stats st;
  for (int i = 0; i < 400; i++) { /* the first retry comes 50 to 100 ms after this */
    pgtag_pool_stats(pool, &st);
    if (st.connect_failures > 0)
      break;
    run_for(&loop, 2);
  }
  assert_int_equal(st.connect_failures, 1);
  uv_timer_t closer;
  uv_timer_init(&loop, &closer);
  closer.data = pool;
  uv_timer_start(&closer, close_pool_cb, 600, 0);
  uv_unref((uv_handle_t *)&closer); /* only pgtag may keep the loop running */
  query_in(pool, NULL, "SELECT 1", &r);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_done(&r, NULL, PGTAG_ECLOSED);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(server_sees_tag, loop_setup),
      cmocka_unit_test_setup(no_context_no_tag, loop_setup),
      cmocka_unit_test_setup(tag_reaches_server_log_and_pg_stat_statements, loop_setup),
      cmocka_unit_test_setup(tag_styles_and_key, loop_setup),
      cmocka_unit_test_setup(connection_opened_by_a_serves_b_in_b, loop_setup),
      cmocka_unit_test_setup(interleaved_requests, loop_setup),
      cmocka_unit_test_setup(chained_queries_keep_the_tag, loop_setup),
      cmocka_unit_test_setup(context_released_exactly_once, loop_setup),
      cmocka_unit_test_setup(pool_work_runs_without_context, loop_setup),
      cmocka_unit_test_setup(syntax_error_in_context, loop_setup),
      cmocka_unit_test_setup(terminated_backend_in_context, loop_setup),
      cmocka_unit_test_setup(terminated_held_connection, loop_setup),
      cmocka_unit_test_setup(idle_connection_killed_is_noticed, loop_setup),
      cmocka_unit_test_setup(hostile_request_ids_change_nothing, loop_setup),
      cmocka_unit_test_setup(bad_arguments_are_refused, loop_setup),
      cmocka_unit_test_setup(parameters_nulls_and_big_values, loop_setup),
      cmocka_unit_test_setup(acquire_timeout, loop_setup),
      cmocka_unit_test_setup(max_waiting_refuses_at_once, loop_setup),
      cmocka_unit_test_setup(waiters_are_served_in_order, loop_setup),
      cmocka_unit_test_setup(release_rolls_back, loop_setup),
      cmocka_unit_test_setup(release_after_queued_queries, loop_setup),
      cmocka_unit_test_setup(close_with_waiters_and_holders, loop_setup),
      cmocka_unit_test_setup(min_conns_and_idle_timeout, loop_setup),
      cmocka_unit_test_setup(unreachable_server_times_out_with_reason, loop_setup),
      cmocka_unit_test_setup(hung_server_connect_timeout, loop_setup),
      cmocka_unit_test_setup(multi_host_conninfo_follows_the_socket, loop_setup),
      cmocka_unit_test_setup(max_lifetime_retires_connections, loop_setup),
      cmocka_unit_test_setup(burst_every_callback_once, loop_setup),
      cmocka_unit_test_setup(server_restart_is_survived, loop_setup),
      cmocka_unit_test_setup(copy_is_refused_and_the_connection_replaced, loop_setup),
      cmocka_unit_test_setup(lost_held_connection_frees_its_slot, loop_setup),
      cmocka_unit_test_setup(waiter_keeps_the_loop_alive_during_backoff, loop_setup),
  };
  /* its own server: it restarts it, stops it, kills its backends */
  return cmocka_run_group_tests(tests, own_server_setup, own_server_teardown);
}
