/* Leak detection against the real server: requests that end holding
 * connections, long holds, reclaiming (with a query running on the server),
 * and the misuse of dead handles. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

/* What one on_leak call saw, copied. */
typedef struct {
  pgtag_leak_kind kind;
  char pool[32];
  char request_id[300];
  char file[256];
  char func[64];
  char last_sql[256];
  char tags[256]; /* "k=v k=v" */
  char frames[8192];
  int line, backend_pid, reclaimed, nframes;
  uint64_t held_ms;
  pgtag_tx_state tx;
  pgtag_ctx *ctx_seen;
} report;

static report reports[16];
static int nreports;

static void on_leak(const pgtag_leak *l, void *arg) {
  (void)arg;
  assert_true(nreports < 16);
  report *r = &reports[nreports++];
  memset(r, 0, sizeof *r);
  r->kind = l->kind;
  snprintf(r->pool, sizeof r->pool, "%s", l->pool_name);
  snprintf(r->request_id, sizeof r->request_id, "%s", l->request_id ? l->request_id : "(null)");
  snprintf(r->file, sizeof r->file, "%s", l->file);
  snprintf(r->func, sizeof r->func, "%s", l->func);
  snprintf(r->last_sql, sizeof r->last_sql, "%s", l->last_sql);
  for (int i = 0, n = 0; i < l->ntags; i++)
    n += snprintf(r->tags + n, sizeof r->tags - (size_t)n, "%s%s=%s", i ? " " : "", l->tags[i].key,
                  l->tags[i].value);
  for (int i = 0, n = 0; i < l->nframes && n < (int)sizeof r->frames; i++)
    n += snprintf(r->frames + n, sizeof r->frames - (size_t)n, "%s\n", l->frames[i]);
  r->line = l->line;
  r->backend_pid = l->backend_pid;
  r->reclaimed = l->reclaimed;
  r->nframes = l->nframes;
  r->held_ms = l->held_ms;
  r->tx = l->tx_state;
  r->ctx_seen = pgtag_ctx_current();
}

static int setup(void **state) {
  nreports = 0;
  return loop_setup(state);
}

static void leak_config(pgtag_pool_config *cfg) {
  test_config(cfg);
  cfg->on_leak = on_leak;
}

static void wait_reports(int n) {
  assert_true(run_until(&loop, &nreports, n, 10000 * time_scale()));
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int pid_of(pgtag_conn conn) { return pgtag_conn_backend_pid(conn); }

/* ------------------------------------------------------------------------ */

static void request_end_reports_once(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  leak_config(&cfg);
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("leak-ended-1");
  pgtag_ctx_set(ctx, "route", "/orders");
  rec acq = {0}, begin = {0}, upd = {0};

  int line = __LINE__ + 1;
  acquire_in(pool, ctx, &acq);
  wait_rec(&acq);
  assert_done(&acq, ctx, PGTAG_OK);
  int pid = pid_of(acq.conn);
  conn_query_in(acq.conn, ctx, "BEGIN", &begin);
  conn_query_in(acq.conn, ctx, "SELECT 'the last one'", &upd);
  wait_rec(&upd);
  run_for(&loop, 30);            /* a time for a report that must not come */
  assert_int_equal(nreports, 0); /* held, but the request is running */

  pgtag_ctx_end(ctx);
  assert_int_equal(nreports, 0); /* never inside pgtag_ctx_end */
  wait_reports(1);
  report *r = &reports[0];
  assert_int_equal(r->kind, PGTAG_LEAK_REQUEST_ENDED);
  assert_string_equal(r->pool, "test");
  assert_string_equal(r->request_id, "leak-ended-1");
  assert_string_equal(r->tags, "route=/orders");
  assert_true(ends_with(r->file, "test_leak.c"));
  assert_int_equal(r->line, line);
  assert_string_equal(r->func, "request_end_reports_once");
  assert_int_equal(r->backend_pid, pid);
  assert_string_equal(r->last_sql, "SELECT 'the last one'"); /* no tag */
  assert_int_equal(r->tx, PGTAG_TX_INTRANS);
  assert_int_equal(r->reclaimed, 0);
  assert_int_equal(r->nframes, 0);
  assert_ptr_equal(r->ctx_seen, ctx); /* the hook runs in the leaking request */

  /* once: dropping the last reference later does not report it again */
  pgtag_ctx_ref(ctx);
  pgtag_ctx_unref(ctx);
  pgtag_ctx_end(ctx);
  run_for(&loop, 50); /* a time for a second report that must not come */
  assert_int_equal(nreports, 1);
  assert_true(pgtag_conn_held(acq.conn)); /* REPORT leaves it with its holder */

  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.leaks_ended, 1);
  assert_int_equal(st.held, 1);

  /* released late: reported as returned, inside the release */
  assert_int_equal(pgtag_release(acq.conn), PGTAG_OK);
  assert_int_equal(nreports, 2);
  assert_int_equal(reports[1].kind, PGTAG_LEAK_RETURNED);
  assert_string_equal(reports[1].request_id, "leak-ended-1");
  assert_int_equal(reports[1].line, line);
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.leaks_returned, 1);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

static void several_connections_in_several_pools(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  leak_config(&cfg);
  cfg.name = "first";
  pgtag_pool *p1 = test_pool_new(&loop, &cfg);
  cfg.name = "second";
  pgtag_pool *p2 = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("leak-many");
  rec a = {0}, b = {0}, c = {0};

  acquire_in(p1, ctx, &a);
  acquire_in(p1, ctx, &b);
  acquire_in(p2, ctx, &c);
  assert_true(run_until(&loop, &completions, 3, 5000));
  pgtag_ctx_end(ctx);
  wait_reports(3);
  run_for(&loop, 50); /* a time for a fourth report that must not come */
  assert_int_equal(nreports, 3);
  int first = 0, second = 0, pids = 0;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(reports[i].kind, PGTAG_LEAK_REQUEST_ENDED);
    assert_string_equal(reports[i].request_id, "leak-many");
    first += strcmp(reports[i].pool, "first") == 0;
    second += strcmp(reports[i].pool, "second") == 0;
    int p = reports[i].backend_pid;
    pids += p == pid_of(a.conn) || p == pid_of(b.conn) || p == pid_of(c.conn);
  }
  assert_int_equal(first, 2);
  assert_int_equal(second, 1);
  assert_int_equal(pids, 3);

  pgtag_release(a.conn);
  pgtag_release(b.conn);
  pgtag_release(c.conn);
  assert_int_equal(nreports, 6);
  pgtag_ctx_unref(ctx);
  pgtag_pool_close(p2, NULL, NULL);
  test_pool_close(&loop, p1);
}

typedef struct {
  pgtag_ctx *ctx;
  rec acq;
} end_then_release;

static void end_then_release_cb(pgtag_conn conn, const pgtag_error *err, void *arg) {
  end_then_release *e = arg;
  rec_acquire(conn, err, &e->acq);
  pgtag_ctx_end(e->ctx); /* the wrong order, but in the same callback */
  pgtag_release(conn);
}

static void released_in_time_is_not_reported(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  leak_config(&cfg);
  cfg.leak_threshold_ms = 200;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("leak-none");
  rec acq = {0}, q = {0};

  acquire_in(pool, ctx, &acq);
  wait_rec(&acq);
  conn_query_in(acq.conn, ctx, "SELECT 1", &q);
  wait_rec(&q);
  assert_int_equal(pgtag_release(acq.conn), PGTAG_OK);
  pgtag_ctx_end(ctx);
  pgtag_ctx_unref(ctx);

  end_then_release e = {pgtag_ctx_new("leak-none-2"), {0}};
  pgtag_ctx *prev = pgtag_ctx_enter(e.ctx);
  assert_int_equal(pgtag_acquire(pool, end_then_release_cb, &e), PGTAG_OK);
  pgtag_ctx_leave(prev);
  wait_rec(&e.acq);
  run_for(&loop, 400); /* past the threshold too: no report may come */
  assert_int_equal(nreports, 0);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.leaks_ended + st.leaks_threshold + st.leaks_returned, 0);
  assert_int_equal(st.held, 0);
  pgtag_ctx_unref(e.ctx);
  test_pool_close(&loop, pool);
}

static void threshold_then_late_release(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  leak_config(&cfg);
  cfg.leak_threshold_ms = 150;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("leak-slow");
  rec acq = {0}, other = {0};

  acquire_in(pool, ctx, &acq);
  wait_rec(&acq);
  uint64_t t0 = now_ms();
  acquire_in(pool, NULL, &other); /* no request: the threshold still applies */
  wait_rec(&other);
  wait_reports(2);
  assert_true(now_ms() - t0 >= 100);
  run_for(&loop, 400); /* twice the threshold: once per acquisition, no more */
  assert_int_equal(nreports, 2);
  int mine = strcmp(reports[0].request_id, "leak-slow") == 0 ? 0 : 1;
  assert_int_equal(reports[mine].kind, PGTAG_LEAK_THRESHOLD);
  assert_true(reports[mine].held_ms >= 150);
  assert_int_equal(reports[mine].tx, PGTAG_TX_IDLE);
  assert_string_equal(reports[mine].last_sql, "");
  assert_string_equal(reports[1 - mine].request_id, "(null)");
  assert_true(pgtag_conn_held(acq.conn)); /* still the request's */

  assert_int_equal(pgtag_release(acq.conn), PGTAG_OK);
  assert_int_equal(nreports, 3);
  assert_int_equal(reports[2].kind, PGTAG_LEAK_RETURNED);
  assert_string_equal(reports[2].request_id, "leak-slow");
  assert_true(reports[2].held_ms >= 500);
  pgtag_release(other.conn);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.leaks_threshold, 2);
  assert_int_equal(st.leaks_returned, 2);
  assert_int_equal(st.leaks_ended, 0);
  pgtag_ctx_end(ctx);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

static void reclaim_serves_the_waiter(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  leak_config(&cfg);
  cfg.max_conns = 1;
  cfg.leak_policy = PGTAG_LEAK_RECLAIM;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_leak_rb (x int); TRUNCATE pgtag_leak_rb");
  pgtag_ctx *leaker = pgtag_ctx_new("leaker"), *next = pgtag_ctx_new("next-in-line");
  rec acq = {0}, begin = {0}, ins = {0}, wait = {0}, late = {0}, count = {0};

  acquire_in(pool, leaker, &acq);
  wait_rec(&acq);
  int pid = pid_of(acq.conn);
  conn_query_in(acq.conn, leaker, "BEGIN", &begin);
  conn_query_in(acq.conn, leaker, "INSERT INTO pgtag_leak_rb VALUES (1)", &ins);
  wait_rec(&ins);
  acquire_in(pool, next, &wait); /* max_conns 1: waits */
  run_for(&loop, 50);            /* a time for a grant that must not come */
  assert_int_equal(wait.calls, 0);

  pgtag_ctx_end(leaker);
  wait_rec(&wait);
  assert_done(&wait, next, PGTAG_OK);
  assert_int_equal(nreports, 1);
  assert_int_equal(reports[0].reclaimed, 1);
  assert_int_equal(reports[0].tx, PGTAG_TX_INTRANS);
  assert_int_equal(pid_of(wait.conn), pid); /* the same backend, rolled back */
  conn_query_in(wait.conn, next, "SELECT count(*) FROM pgtag_leak_rb", &count);
  wait_rec(&count);
  assert_done(&count, next, PGTAG_OK);
  assert_string_equal(count.value, "0");

  /* the leaker's handle is dead, and cannot reach the next request's */
  assert_false(pgtag_conn_held(acq.conn));
  assert_int_equal(pgtag_conn_backend_pid(acq.conn), 0);
  assert_int_equal(conn_query_in(acq.conn, leaker, "SELECT 'late'", &late), PGTAG_OK);
  wait_rec(&late);
  assert_done(&late, leaker, PGTAG_ERECLAIMED);
  assert_int_equal(pgtag_release(acq.conn), PGTAG_ERECLAIMED);
  assert_int_equal(pgtag_release(acq.conn), PGTAG_ERECLAIMED);
  assert_true(pgtag_conn_held(wait.conn));
  assert_int_equal(nreports, 1); /* a reclaimed connection is not "returned" */

  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.reclaimed, 1);
  assert_int_equal(st.leaks_ended, 1);
  assert_int_equal(st.held, 1);
  assert_int_equal(pgtag_release(wait.conn), PGTAG_OK);
  pgtag_ctx_unref(leaker);
  pgtag_ctx_unref(next);
  test_pool_close(&loop, pool);
}

static void reclaim_cancels_the_running_query(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  leak_config(&cfg);
  cfg.max_conns = 1;
  cfg.leak_policy = PGTAG_LEAK_RECLAIM;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *leaker = pgtag_ctx_new("sleeper"), *next = pgtag_ctx_new("after-sleeper");
  rec acq = {0}, sleep = {0}, queued = {0}, q = {0};
  char sql[160], activity[256];

  acquire_in(pool, leaker, &acq);
  wait_rec(&acq);
  int pid = pid_of(acq.conn);
  conn_query_in(acq.conn, leaker, "SELECT pg_sleep(30)", &sleep);
  conn_query_in(acq.conn, leaker, "SELECT 'never sent'", &queued);
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND "
           "wait_event = 'PgSleep' AND state = 'active'",
           pid);
  WAIT_FOR(&loop, admin_int(sql) == 1, 10000);
  assert_int_equal(admin_int(sql), 1);

  uint64_t t0 = now_ms();
  query_in(pool, next, "SELECT pg_backend_pid()::text", &q);
  pgtag_ctx_end(leaker);
  wait_rec(&q);
  assert_true(now_ms() - t0 < 10000); /* not the 30 s of the sleep */
  assert_done(&q, next, PGTAG_OK);
  assert_int_equal(atoi(q.value), pid);
  assert_done(&sleep, leaker, PGTAG_ERECLAIMED);
  assert_done(&queued, leaker, PGTAG_ERECLAIMED);
  assert_int_equal(reports[0].tx, PGTAG_TX_ACTIVE);
  assert_string_equal(reports[0].last_sql, "SELECT pg_sleep(30)");

  /* cancelled on the server, not just forgotten by the client */
  assert_int_equal(admin_int(sql), 0);
  snprintf(sql, sizeof sql, "SELECT state FROM pg_stat_activity WHERE pid = %d", pid);
  admin_value(sql, activity, sizeof activity);
  assert_string_equal(activity, "idle");
  pgtag_ctx_unref(leaker);
  pgtag_ctx_unref(next);
  test_pool_close(&loop, pool);
}

static void dropping_the_last_reference_ends_the_request(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  leak_config(&cfg);
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("dropped");
  rec acq = {0};

  acquire_in(pool, ctx, &acq);
  wait_rec(&acq);
  pgtag_ctx_unref(ctx); /* the application forgot the request */
  wait_reports(1);
  assert_int_equal(reports[0].kind, PGTAG_LEAK_REQUEST_ENDED);
  assert_string_equal(reports[0].request_id, "dropped");
  /* the connection keeps the context alive for the last report */
  assert_int_equal(pgtag_release(acq.conn), PGTAG_OK);
  assert_int_equal(nreports, 2);
  assert_string_equal(reports[1].request_id, "dropped");
  test_pool_close(&loop, pool); /* LSan: the context was freed */
}

static void request_ended_while_waiting(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  leak_config(&cfg);
  cfg.max_conns = 1;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("gone-while-waiting");
  rec hold = {0}, acq = {0};

  acquire_in(pool, NULL, &hold);
  wait_rec(&hold);
  acquire_in(pool, ctx, &acq);
  pgtag_ctx_end(ctx);
  run_for(&loop, 30);            /* a time for a report that must not come */
  assert_int_equal(nreports, 0); /* holds nothing yet */
  pgtag_release(hold.conn);
  wait_rec(&acq); /* granted to an ended request, and not released */
  wait_reports(1);
  assert_string_equal(reports[0].request_id, "gone-while-waiting");
  pgtag_release(acq.conn);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

static void on_closed(void *arg) { (*(int *)arg)++; }

static void close_takes_back_leaked_connections(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  leak_config(&cfg); /* PGTAG_LEAK_REPORT */
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *leaker = pgtag_ctx_new("leaked-at-shutdown");
  pgtag_ctx *busy = pgtag_ctx_new("still-working");
  rec acq = {0}, held = {0}, sleep = {0}, late = {0};
  int closed = 0;

  acquire_in(pool, leaker, &acq);
  acquire_in(pool, busy, &held);
  assert_true(run_until(&loop, &completions, 2, 5000));
  conn_query_in(acq.conn, leaker, "SELECT pg_sleep(30)", &sleep);
  pgtag_ctx_end(leaker);
  wait_reports(1);
  assert_int_equal(reports[0].reclaimed, 0);

  /* the leaked one is taken back (its query cancelled); the one whose
   * request still runs waits for its release */
  pgtag_pool_close(pool, on_closed, &closed);
  wait_rec(&sleep);
  assert_done(&sleep, leaker, PGTAG_ERECLAIMED);
  assert_int_equal(pgtag_release(acq.conn), PGTAG_ERECLAIMED);
  run_for(&loop, 100); /* a time for a close that must not finish yet */
  assert_int_equal(closed, 0);
  assert_true(pgtag_conn_held(held.conn));
  conn_query_in(held.conn, busy, "SELECT 'finishing'", &late);
  wait_rec(&late);
  assert_done(&late, busy, PGTAG_OK);
  assert_int_equal(pgtag_release(held.conn), PGTAG_OK);
  assert_true(run_until(&loop, &closed, 1, 5000));
  pgtag_ctx_unref(leaker);
  pgtag_ctx_unref(busy);
  uv_run(&loop, UV_RUN_NOWAIT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static int quiet_errors;
static void count_errors(pgtag_log_level level, const char *msg, void *arg) {
  (void)msg;
  (void)arg;
  if (level == PGTAG_LOG_ERROR)
    quiet_errors++;
}

static void dead_handles_are_refused(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  leak_config(&cfg);
  cfg.max_conns = 1;
  cfg.log = count_errors;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *a = pgtag_ctx_new("first-holder"), *b = pgtag_ctx_new("second-holder");
  rec acq = {0}, acq2 = {0}, q = {0}, stale = {0};

  acquire_in(pool, a, &acq);
  wait_rec(&acq);
  pgtag_conn copy = acq.conn;
  assert_int_equal(pgtag_release(acq.conn), PGTAG_OK);
  quiet_errors = 0;
  assert_int_equal(pgtag_release(copy), PGTAG_EINVAL); /* twice */
  assert_int_equal(quiet_errors, 1);

  /* the same connection now belongs to b: a's stale handle must not reach it */
  acquire_in(pool, b, &acq2);
  wait_rec(&acq2);
  assert_ptr_equal(acq2.conn.impl_, copy.impl_);
  assert_int_equal(conn_query_in(copy, a, "SELECT 'stale'", &stale), PGTAG_EINVAL);
  assert_int_equal(pgtag_release(copy), PGTAG_EINVAL);
  assert_int_equal(pgtag_conn_backend_pid(copy), 0);
  assert_true(pgtag_conn_held(acq2.conn));
  conn_query_in(acq2.conn, b, "SELECT 'mine'", &q);
  wait_rec(&q);
  assert_done(&q, b, PGTAG_OK);
  assert_int_equal(stale.calls, 0);
  assert_int_equal(pgtag_release(acq2.conn), PGTAG_OK);
  assert_int_equal(nreports, 0);
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  test_pool_close(&loop, pool);
}

static char logged[2048];
static void keep_warning(pgtag_log_level level, const char *msg, void *arg) {
  (void)arg;
  if (level == PGTAG_LOG_WARN && strstr(msg, "leak:") != NULL)
    snprintf(logged, sizeof logged, "%s", msg);
}

static void default_report_is_one_log_line(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.log = keep_warning;
  cfg.leak_backtrace = 1;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("logged-leak");
  rec acq = {0}, q = {0};
  char want[128];

  logged[0] = '\0';
  int line = __LINE__ + 1;
  acquire_in(pool, ctx, &acq);
  wait_rec(&acq);
  conn_query_in(acq.conn, ctx, "SELECT\n  'two lines'", &q);
  wait_rec(&q);
  pgtag_ctx_end(ctx);
  WAIT_FOR(&loop, logged[0] != '\0', 10000);
  assert_true(strncmp(logged, "request logged-leak: leak: the request ended while holding", 58) ==
              0);
  snprintf(want, sizeof want, "test_leak.c:%d in default_report_is_one_log_line()", line);
  assert_non_null(strstr(logged, want));
  assert_non_null(strstr(logged, "last query: SELECT 'two lines'"));
  assert_non_null(strstr(logged, "acquired from: "));
  assert_null(strchr(logged, '\n'));
  pgtag_release(acq.conn);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

static void backtrace_names_the_caller(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  leak_config(&cfg);
  cfg.leak_backtrace = 1;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("with-stack");
  rec acq = {0};

  acquire_in(pool, ctx, &acq);
  wait_rec(&acq);
  pgtag_ctx_end(ctx);
  wait_reports(1);
  assert_true(reports[0].nframes > 1);
  /* innermost first: the harness helper that called pgtag_acquire_at (the
   * test binary is linked with -rdynamic, so exported functions have names;
   * static ones show as offsets), never pgtag's own frames */
  assert_non_null(strstr(reports[0].frames, "(acquire_in_at+"));
  assert_true(strncmp(reports[0].frames, "./test_leak(acquire_in_at+", 26) == 0 ||
              strstr(reports[0].frames, "test_leak(acquire_in_at+") != NULL);
  assert_null(strstr(reports[0].frames, "pgtag_acquire_at"));
  pgtag_release(acq.conn);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

static void leak_config_is_checked(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  pgtag_pool *pool = NULL;
  test_config(&cfg);
  cfg.log = count_errors;
  cfg.leak_threshold_ms = -1;
  assert_int_equal(pgtag_pool_new(&loop, &cfg, &pool), PGTAG_EINVAL);
  cfg.leak_threshold_ms = 0;
  cfg.leak_policy = (pgtag_leak_policy)7;
  assert_int_equal(pgtag_pool_new(&loop, &cfg, &pool), PGTAG_EINVAL);
  assert_null(pool);
  assert_string_equal(pgtag_leak_kind_name(PGTAG_LEAK_RETURNED), "returned");
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(request_end_reports_once, setup),
      cmocka_unit_test_setup(several_connections_in_several_pools, setup),
      cmocka_unit_test_setup(released_in_time_is_not_reported, setup),
      cmocka_unit_test_setup(threshold_then_late_release, setup),
      cmocka_unit_test_setup(reclaim_serves_the_waiter, setup),
      cmocka_unit_test_setup(reclaim_cancels_the_running_query, setup),
      cmocka_unit_test_setup(dropping_the_last_reference_ends_the_request, setup),
      cmocka_unit_test_setup(request_ended_while_waiting, setup),
      cmocka_unit_test_setup(close_takes_back_leaked_connections, setup),
      cmocka_unit_test_setup(dead_handles_are_refused, setup),
      cmocka_unit_test_setup(default_report_is_one_log_line, setup),
      cmocka_unit_test_setup(backtrace_names_the_caller, setup),
      cmocka_unit_test_setup(leak_config_is_checked, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
