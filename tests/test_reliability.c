/* Reliability against the real server and real faults: statement
 * timeouts, a backend that stops answering, cancel by request, a server
 * that is down when the pool starts, restarts under load, connections
 * killed while idle, and inputs of hostile sizes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "context.h"
#include "harness.h"
#include "pool.h"

static void tcp_conninfo(char *out, size_t len) {
  const char *port = getenv("PGPORT");
  assert_non_null(port);
  snprintf(out, len, "host=127.0.0.1 port=%s user=postgres dbname=postgres", port);
}

/* Backend pid is active and waiting as said (a condition on
 * pg_stat_activity: wait_event = 'PgSleep' for pg_sleep, say).  What the
 * backend does, not its query text: that is the tagged EXECUTE of a
 * prepared statement when the statement cache sent it. */
#define SLEEPING "wait_event = 'PgSleep'"
#define LOCK_WAIT "wait_event_type = 'Lock'"
static int running(int pid, const char *waiting) {
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND state = 'active' "
           "AND %s",
           pid, waiting);
  return admin_int(sql);
}

static void wait_running(int pid, const char *waiting) {
  WAIT_FOR(&loop, running(pid, waiting) == 1, 10000);
  assert_int_equal(running(pid, waiting), 1);
}

/* ------------------------------------------------------------------------
 * Statement timeouts
 * ------------------------------------------------------------------------ */

static void statement_timeout_cancels_on_the_server(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  cfg.statement_timeout_ms = 300;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *a = pgtag_ctx_new("too-slow"), *b = pgtag_ctx_new("next");
  rec slow = {0}, pid = {0}, after = {0}, exempt = {0};

  query_in(pool, a, "SELECT pg_backend_pid()::text", &pid);
  wait_rec(&pid);
  uint64_t t0 = now_ms();
  query_in(pool, a, "SELECT pg_sleep(30)", &slow);
  query_in(pool, b, "SELECT 'served after'", &after); /* waits for the one connection */
  wait_rec(&slow);
  uint64_t took = now_ms() - t0;
  assert_done(&slow, a, PGTAG_ETIMEDOUT);
  assert_string_equal(slow.sqlstate, "57014");
  assert_true(slow.has_res); /* the server's error result */
  assert_non_null(strstr(slow.message, "longer than 300 ms"));
  assert_true(took >= 290 && took < 3000);
  assert_int_equal(running(atoi(pid.value), SLEEPING), 0);

  wait_rec(&after);
  assert_done(&after, b, PGTAG_OK);
  assert_string_equal(after.value, "served after");

  /* per query: no limit for this one, though the pool has one */
  pgtag_query_opts none = {.timeout_ms = -1};
  pgtag_ctx *prev = pgtag_ctx_enter(b);
  assert_int_equal(pgtag_query_ex(pool, "SELECT pg_sleep(0.5)::text", 0, NULL, &none, rec_result,
                                  &exempt),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
  wait_rec(&exempt);
  assert_done(&exempt, b, PGTAG_OK);

  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.statement_timeouts, 1);
  assert_int_equal(st.total, 1); /* the same connection, cleaned and reused */
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  test_pool_close(&loop, pool);
}

/* After a statement timeout or a cancel, the connection goes back to the
 * pool without a ROLLBACK outside any transaction (the server would warn
 * "there is no transaction in progress" each time); one released inside a
 * transaction is still rolled back.  Server notices reach the log hook at
 * INFO. */
static int no_tx_warnings;
static void count_no_tx(pgtag_log_level level, const char *msg, void *arg) {
  (void)level;
  (void)arg;
  if (strstr(msg, "no transaction in progress") != NULL)
    no_tx_warnings++;
}

static void no_rollback_outside_a_transaction(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  cfg.log = count_no_tx;
  cfg.log_level = PGTAG_LOG_INFO;
  no_tx_warnings = 0;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *a = pgtag_ctx_new("timed");
  rec slow = {0}, after = {0}, acq = {0}, begin = {0}, in_tx = {0}, check = {0};
  pgtag_query_opts opts = {.timeout_ms = 100};
  pgtag_ctx *prev = pgtag_ctx_enter(a);
  assert_int_equal(pgtag_query_ex(pool, "SELECT pg_sleep(5)", 0, NULL, &opts, rec_result, &slow),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
  wait_rec(&slow);
  assert_done(&slow, a, PGTAG_ETIMEDOUT);
  query_in(pool, a, "SELECT 'reused'", &after);
  wait_rec(&after);
  assert_done(&after, a, PGTAG_OK);
  /* released inside a transaction: rolled back before the next request */
  acquire_in(pool, a, &acq);
  wait_rec(&acq);
  conn_query_in(acq.conn, a, "BEGIN", &begin);
  conn_query_in(acq.conn, a, "SELECT txid_current()", &in_tx);
  wait_rec(&in_tx);
  pgtag_release(acq.conn);
  /* not in that transaction: no transaction ID assigned yet */
  query_in(pool, a, "SELECT coalesce(txid_current_if_assigned()::text, 'none')", &check);
  wait_rec(&check);
  assert_done(&check, a, PGTAG_OK);
  assert_string_equal(check.value, "none");
  assert_int_equal(no_tx_warnings, 0);
  pgtag_ctx_unref(a);
  test_pool_close(&loop, pool);
}

static void held_query_blocked_on_a_lock_times_out(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *ctx = pgtag_ctx_new("blocked");
  rec acq = {0}, begin = {0}, blocked = {0}, after = {0}, still = {0};
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_lock (x int)");
  admin_exec("BEGIN; LOCK TABLE pgtag_lock IN ACCESS EXCLUSIVE MODE");

  acquire_in(pool, ctx, &acq);
  wait_rec(&acq);
  int pid = pgtag_conn_backend_pid(acq.conn);
  conn_query_in(acq.conn, ctx, "BEGIN", &begin);
  pgtag_query_opts opts = {.timeout_ms = 250};
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  assert_int_equal(pgtag_conn_query_ex(acq.conn, "SELECT count(*) FROM pgtag_lock", 0, NULL, &opts,
                                       rec_result, &blocked),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
  conn_query_in(acq.conn, ctx, "SELECT 'queued behind'", &after);
  wait_rec(&blocked);
  assert_done(&blocked, ctx, PGTAG_ETIMEDOUT);
  assert_int_equal(running(pid, LOCK_WAIT), 0); /* gone from the server */

  /* the holder keeps its connection; its transaction failed, as on a
   * server-side statement_timeout */
  wait_rec(&after);
  assert_done(&after, ctx, PGTAG_ESERVER);
  assert_string_equal(after.sqlstate, "25P02");
  assert_true(pgtag_conn_held(acq.conn));
  admin_exec("COMMIT");
  pgtag_release(acq.conn); /* rolled back */
  rec acq2 = {0};
  acquire_in(pool, ctx, &acq2);
  wait_rec(&acq2);
  conn_query_in(acq2.conn, ctx, "SELECT 'clean again'", &still);
  wait_rec(&still);
  assert_done(&still, ctx, PGTAG_OK);
  pgtag_release(acq2.conn);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* The backend stopped by stopped_backend_is_given_up, continued in its
 * teardown should the test fail before it does: a stopped backend would
 * hold up every later test's pg_ctl. */
static int frozen;

static int continue_frozen(void **state) {
  (void)state;
  if (frozen > 0)
    kill(frozen, SIGCONT);
  frozen = 0;
  return 0;
}

/* The backend is stopped (SIGSTOP): the query, and the cancel request,
 * go unanswered; the connection is given up after the grace period. */
static void stopped_backend_is_given_up(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.statement_timeout_ms = 200;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("frozen");
  rec pid = {0}, q = {0}, next = {0};

  query_in(pool, ctx, "SELECT pg_backend_pid()::text", &pid);
  wait_rec(&pid);
  int backend = atoi(pid.value);
  frozen = backend;
  assert_int_equal(kill(backend, SIGSTOP), 0);
  uint64_t t0 = now_ms();
  query_in(pool, ctx, "SELECT 'into the void'", &q);
  wait_rec(&q);
  uint64_t took = now_ms() - t0;
  continue_frozen(NULL);
  assert_done(&q, ctx, PGTAG_ETIMEDOUT);
  assert_non_null(strstr(q.message, "connection was closed"));
  assert_true(took >= 200 + CANCEL_GRACE_MS - 100 && took < 200 + CANCEL_GRACE_MS + 3000);

  query_in(pool, ctx, "SELECT 'a new connection'", &next);
  wait_rec(&next);
  assert_done(&next, ctx, PGTAG_OK);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* ------------------------------------------------------------------------
 * Cancel by request
 * ------------------------------------------------------------------------ */

static void cancel_everything_a_request_runs(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 3;
  cfg.pipeline_depth = 1; /* the waiting query waits (test_pipeline has the rest) */
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *gone = pgtag_ctx_new("client-went-away"), *other = pgtag_ctx_new("other");
  rec held = {0}, sleep_held = {0}, queued = {0}, sleep_one = {0}, waiting = {0};
  rec other_held = {0}, other_q = {0}, after = {0};

  acquire_in(pool, gone, &held);
  acquire_in(pool, other, &other_held);
  assert_true(run_until(&loop, &completions, 2, 5000));
  int pid = pgtag_conn_backend_pid(held.conn);
  conn_query_in(held.conn, gone, "SELECT pg_sleep(30)", &sleep_held);
  conn_query_in(held.conn, gone, "SELECT 'queued'", &queued);
  query_in(pool, gone, "SELECT pg_sleep(31)", &sleep_one); /* the third connection */
  query_in(pool, gone, "SELECT 'waiting'", &waiting);      /* no connection left */
  conn_query_in(other_held.conn, other, "SELECT pg_sleep(0.3)::text", &other_q);
  wait_running(pid, SLEEPING);
  /* Running, not merely sent: a cancel that reaches a backend before it
   * has read its query is lost (PostgreSQL's race, not ours), the query
   * then runs its 31 s and the pool gives the connection up. */
  char second[256];
  snprintf(second, sizeof second,
           "SELECT count(*) FROM pg_stat_activity WHERE " SLEEPING " AND pid NOT IN (%d, %d)", pid,
           pgtag_conn_backend_pid(other_held.conn));
  WAIT_FOR(&loop, admin_int(second) == 1, 10000);
  assert_int_equal(admin_int(second), 1);

  in_submit = 1;
  assert_int_equal(pgtag_ctx_cancel(gone), 4);
  in_submit = 0;
  assert_true(run_until(&loop, &completions, 7, 10000));
  assert_done(&sleep_held, gone, PGTAG_ECANCELED);
  assert_string_equal(sleep_held.sqlstate, "57014");
  assert_done(&queued, gone, PGTAG_ECANCELED);
  assert_done(&sleep_one, gone, PGTAG_ECANCELED);
  assert_done(&waiting, gone, PGTAG_ECANCELED);
  assert_done(&other_q, other, PGTAG_OK); /* another request is not touched */
  assert_int_equal(admin_int("SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                             "'%pg_sleep(3_)' AND state = 'active'"),
                   0);

  /* its connection stays held, and works */
  assert_true(pgtag_conn_held(held.conn));
  conn_query_in(held.conn, gone, "SELECT 'still mine'", &after);
  wait_rec(&after);
  assert_done(&after, gone, PGTAG_OK);
  assert_int_equal(pgtag_ctx_cancel(gone), 0);
  assert_int_equal(pgtag_ctx_cancel(NULL), 0);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.canceled, 4);
  pgtag_release(held.conn);
  pgtag_release(other_held.conn);
  pgtag_ctx_unref(gone);
  pgtag_ctx_unref(other);
  test_pool_close(&loop, pool);
}

/* ------------------------------------------------------------------------
 * Server down, restarts, killed connections
 * ------------------------------------------------------------------------ */

static void server_down_at_start_then_up(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.acquire_timeout_ms = 800;
  cfg.reconnect_base_ms = 100;
  cfg.reconnect_max_ms = 400;
  cfg.log_level = PGTAG_LOG_ERROR; /* the failed attempts are expected */
  server_ctl("stop", NULL);
  pgtag_pool *pool = test_pool_new(&loop, &cfg); /* creation does not need the server */
  pgtag_ctx *ctx = pgtag_ctx_new("during-outage");
  rec q = {0};

  query_in(pool, ctx, "SELECT 1", &q);
  wait_rec(&q);
  assert_done(&q, ctx, PGTAG_ETIMEDOUT);
  assert_non_null(strstr(q.message, "last connection error"));

  /* keep a request waiting for 2.5 s and count the attempts: with backoff
   * (100 ms doubling to 400 ms, each delay from its upper half) that is 6
   * to 15, where a retry loop would make thousands */
  pgtag_stats before, after;
  pgtag_pool_stats(pool, &before);
  for (int i = 0; i < 3; i++) {
    rec w = {0};
    query_in(pool, ctx, "SELECT 1", &w);
    wait_rec(&w);
    assert_done(&w, ctx, PGTAG_ETIMEDOUT);
  }
  pgtag_pool_stats(pool, &after);
  uint64_t attempts = after.connect_failures - before.connect_failures;
  print_message("connection attempts in 2.4 s of outage: %llu\n", (unsigned long long)attempts);
  assert_true(attempts >= 4 && attempts <= 16);

  /* The server is back, the pool does not know it yet (its last attempts
   * failed, the next is up to reconnect_max_ms away): a request is served.
   * (Submitted before pg_ctl returned, as it once was, it timed out
   * whenever pg_ctl took most of the 800 ms, the loop blocked meanwhile.) */
  server_ctl("up", NULL);
  pgtag_pool_stats(pool, &after);
  assert_int_equal(after.connects, 0);
  rec back = {0};
  uint64_t t0 = now_ms();
  query_in(pool, ctx, "SELECT 'back'", &back);
  wait_rec(&back);
  assert_done(&back, ctx, PGTAG_OK);
  assert_true(now_ms() - t0 < 2000);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

typedef struct load load;
typedef struct {
  load *l;
  pgtag_ctx *ctx;
  int calls;
} load_req;

struct load {
  pgtag_pool *pool;
  int submitted, completed, ok, econn, etimedout, other, wrong_ctx, twice;
  int stop;
  uint64_t last_ok; /* now_ms() of the last success */
  char other_msg[256];
};

static void load_submit(load *l);

static void load_done(PGresult *res, const pgtag_error *err, void *arg) {
  load_req *r = arg;
  load *l = r->l;
  if (++r->calls > 1)
    l->twice++;
  if (pgtag_ctx_current() != r->ctx)
    l->wrong_ctx++;
  l->completed++;
  if (err == NULL) {
    /* the server saw this request's own ID */
    char want[128];
    snprintf(want, sizeof want, "/* requestId=%s */", pgtag_ctx_request_id(r->ctx));
    if (strncmp(PQgetvalue(res, 0, 0), want, strlen(want)) != 0)
      l->wrong_ctx++;
    l->ok++;
    l->last_ok = now_ms();
  } else if (err->code == PGTAG_ECONN) {
    l->econn++;
  } else if (err->code == PGTAG_ETIMEDOUT) {
    l->etimedout++;
  } else {
    l->other++;
    snprintf(l->other_msg, sizeof l->other_msg, "%s: %s", pgtag_strerror(err->code), err->message);
  }
  pgtag_ctx_end(r->ctx);
  pgtag_ctx_unref(r->ctx);
  free(r);
  if (!l->stop)
    load_submit(l);
}

static void load_submit(load *l) {
  load_req *r = calloc(1, sizeof *r);
  r->l = l;
  r->ctx = pgtag_ctx_new(NULL);
  pgtag_ctx *prev = pgtag_ctx_enter(r->ctx);
  pgtag_errcode rc = pgtag_query(l->pool, "SELECT current_query()", 0, NULL, load_done, r);
  pgtag_ctx_leave(prev);
  if (rc != PGTAG_OK)
    fail_msg("submit refused: %s", pgtag_strerror(rc));
  l->submitted++;
}

/* Static: should the wait for it fail, the thread still writes here. */
typedef struct {
  const char *mode;
  volatile int done;
} restarter;
static restarter restarting;

static void *restart_thread(void *arg) {
  restarter *r = arg;
  server_restart(r->mode);
  r->done = 1;
  return NULL;
}

static void restart_under_load_at(int pipeline_depth) {
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 8;
  cfg.pipeline_depth = pipeline_depth;
  cfg.acquire_timeout_ms = 3000;
  cfg.reconnect_max_ms = 500;
  cfg.log_level = PGTAG_LOG_ERROR;
  load l = {0};
  l.pool = test_pool_new(&loop, &cfg);
  for (int i = 0; i < 64; i++)
    load_submit(&l);
  WAIT_FOR(&loop, l.ok > 64, 10000);
  assert_true(l.ok > 64);

  const char *modes[] = {"fast", "immediate"};
  for (int m = 0; m < 2; m++) {
    /* the loop keeps running while pg_ctl restarts the server */
    restarting = (restarter){modes[m], 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, restart_thread, &restarting), 0);
    WAIT_FOR(&loop, restarting.done, 120000); /* pg_ctl gives up after 60 s */
    assert_true(restarting.done);
    pthread_join(t, NULL);
    uint64_t back = now_ms();
    int ok_before = l.ok;
    WAIT_FOR(&loop, l.ok >= ok_before + 200, 10000);
    print_message("depth %d, after the %s restart: %d ok, %d ECONN, %d ETIMEDOUT so far; "
                  "200 more served %llu ms after the server was back\n",
                  pipeline_depth, modes[m], l.ok, l.econn, l.etimedout,
                  (unsigned long long)(l.last_ok - back));
    assert_true(l.ok >= ok_before + 200);
    assert_true(l.last_ok - back < 5000);
  }

  l.stop = 1;
  WAIT_FOR(&loop, l.completed == l.submitted, 20000);
  if (l.other > 0)
    fail_msg("%d unexpected outcomes, last: %s", l.other, l.other_msg);
  assert_int_equal(l.completed, l.submitted); /* every callback once */
  assert_int_equal(l.twice, 0);
  assert_int_equal(l.wrong_ctx, 0);

  /* no connection leaked through the restarts, on either side */
  pgtag_stats st;
  pgtag_pool_stats(l.pool, &st);
  assert_true(st.total <= 8);
  assert_int_equal(st.busy + st.held + st.waiting, 0);
  assert_true(admin_int("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                        "'client backend' AND pid <> pg_backend_pid()") <= 8);
  test_pool_close(&loop, l.pool);
  const char *left = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                     "'client backend' AND pid <> pg_backend_pid()";
  WAIT_FOR(NULL, admin_int(left) == 0, 10000); /* backends exit just after their client hangs up */
  assert_int_equal(admin_int(left), 0);
}

static void restart_under_load(void **state) {
  (void)state;
  restart_under_load_at(1);
}

/* The same with 64 requests pipelined 8 deep over the connections. */
static void restart_under_load_pipelined(void **state) {
  (void)state;
  restart_under_load_at(8);
}

/* The pool's one connection has the server's close in its socket. */
static int closed_by_the_server(pgtag_pool *pool) {
  assert_false(queue_empty(&pool->conns));
  struct conn *c = queue_data(queue_head(&pool->conns), struct conn, node);
  struct pollfd p = {.fd = PQsocket(c->pg), .events = POLLIN | POLLRDHUP};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP)) != 0;
}

/* A connection killed while idle, and picked up in the same loop turn,
 * before the poll could report it: over TCP the query would still go out. */
static void idle_connection_killed_in_the_same_turn(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  char conninfo[256], sql[96];
  test_config(&cfg);
  tcp_conninfo(conninfo, sizeof conninfo);
  cfg.conninfo = conninfo;
  cfg.max_conns = 2;
  cfg.log_level = PGTAG_LOG_ERROR;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("unlucky");
  rec pid = {0}, q = {0};

  query_in(pool, ctx, "SELECT pg_backend_pid()::text", &pid);
  wait_rec(&pid);
  pgtag_stats st;
  WAIT_FOR(&loop, (pgtag_pool_stats(pool, &st), st.idle == 1), 10000); /* idle, in the pool */
  assert_int_equal(st.idle, 1);
  snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", atoi(pid.value));
  admin_exec(sql);
  /* the FATAL and the close are in our socket; the loop has not run */
  WAIT_FOR(NULL, closed_by_the_server(pool), 10000);
  assert_true(closed_by_the_server(pool));
  uv_update_time(&loop);

  query_in(pool, ctx, "SELECT pg_backend_pid()::text", &q);
  wait_rec(&q);
  assert_done(&q, ctx, PGTAG_OK);
  assert_string_not_equal(q.value, pid.value);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

static void keepalive_defaults_and_conninfo_override(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  char conninfo[320];
  int cases[2][2] = {{30, 30}, {30, 7}}; /* tcp_keepalive_s, expected idle */
  for (int c = 0; c < 2; c++) {
    test_config(&cfg);
    tcp_conninfo(conninfo, sizeof conninfo);
    if (c == 1)
      strcat(conninfo, " keepalives_idle=7");
    cfg.conninfo = conninfo;
    cfg.tcp_keepalive_s = cases[c][0];
    pgtag_pool *pool = test_pool_new(&loop, &cfg);
    rec acq = {0};
    acquire_in(pool, NULL, &acq);
    wait_rec(&acq);
    assert_done(&acq, NULL, PGTAG_OK);
    int fd = PQsocket(((struct conn *)acq.conn.impl_)->pg), v = 0;
    socklen_t len = sizeof v;
    assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &v, &len), 0);
    assert_int_equal(v, 1);
    assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &v, &len), 0);
    assert_int_equal(v, cases[c][1]);
    assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &v, &len), 0);
    assert_int_equal(v, 5);
    assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &v, &len), 0);
    assert_int_equal(v, 3);
    assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &v, &len), 0);
    assert_int_equal(v, 45000);
    pgtag_release(acq.conn);
    test_pool_close(&loop, pool);
    assert_int_equal(uv_loop_init(&loop), 0);
  }
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ------------------------------------------------------------------------
 * Hostile sizes and arguments
 * ------------------------------------------------------------------------ */

static void ten_megabyte_query_and_parameter(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *ctx = pgtag_ctx_new("big");
  size_t n = 10 * 1024 * 1024;
  char *sql = malloc(n + 64), *param = malloc(n + 1);
  strcpy(sql, "SELECT length('");
  memset(sql + 15, 'x', n);
  strcpy(sql + 15 + n, "')::text");
  memset(param, 'y', n);
  param[n] = '\0';
  rec q = {0}, p = {0};

  query_in(pool, ctx, sql, &q);
  const char *vals[1] = {param};
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  assert_int_equal(pgtag_query(pool, "SELECT length($1)::text", 1, vals, rec_result, &p), PGTAG_OK);
  pgtag_ctx_leave(prev);
  free(sql); /* copied or sent by now: the caller may free */
  free(param);
  assert_true(run_until(&loop, &completions, 2, 30000));
  assert_done(&q, ctx, PGTAG_OK);
  assert_done(&p, ctx, PGTAG_OK);
  assert_int_equal(atoi(q.value), (int)n);
  assert_int_equal(atoi(p.value), (int)n);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

static int many_calls, many_wrong;
static void many_done(PGresult *res, const pgtag_error *err, void *arg) {
  (void)res;
  if (err != NULL || pgtag_ctx_current() != arg)
    many_wrong++;
  many_calls++;
}

static void ten_thousand_waiting(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_waiting = 10000;
  cfg.acquire_timeout_ms = 60000;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctxs[10];
  many_calls = many_wrong = 0;
  for (int i = 0; i < 10; i++)
    ctxs[i] = pgtag_ctx_new(NULL);
  for (int i = 0; i < 10000; i++) {
    pgtag_ctx *prev = pgtag_ctx_enter(ctxs[i % 10]);
    assert_int_equal(pgtag_query(pool, "SELECT 1", 0, NULL, many_done, ctxs[i % 10]), PGTAG_OK);
    pgtag_ctx_leave(prev);
  }
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.waiting, 10000);
  rec refused = {0};
  assert_int_equal(query_in(pool, NULL, "SELECT 1", &refused), PGTAG_EQUEUEFULL);
  assert_true(run_until(&loop, &many_calls, 10000, 60000));
  assert_int_equal(many_wrong, 0);
  run_for(&loop, 20); /* a time for callbacks beyond 10000, that must not come */
  assert_int_equal(many_calls, 10000);
  assert_int_equal(refused.calls, 0);
  for (int i = 0; i < 10; i++) {
    assert_int_equal(ctxs[i]->refs, 1);
    pgtag_ctx_unref(ctxs[i]);
  }
  test_pool_close(&loop, pool);
}

static int refusals_logged;
static void count_refusal(pgtag_log_level level, const char *msg, void *arg) {
  (void)arg;
  if (level == PGTAG_LOG_ERROR && strstr(msg, "pgtag_pool_new") != NULL)
    refusals_logged++;
}

static void bad_configuration_is_refused(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  pgtag_pool *pool = NULL;
  int expected = 0;

  /* each refusal is an error code and one logged reason, never a pool */
#define REFUSED(field, value)                                           \
  do {                                                                  \
    test_config(&cfg);                                                  \
    cfg.log = count_refusal;                                            \
    cfg.field = value;                                                  \
    assert_int_equal(pgtag_pool_new(&loop, &cfg, &pool), PGTAG_EINVAL); \
    assert_null(pool);                                                  \
    assert_int_equal(refusals_logged, ++expected);                      \
  } while (0)
  refusals_logged = 0;
  REFUSED(conninfo, "this is not a conninfo");
  REFUSED(conninfo, "postgresql://[::1");
  REFUSED(conninfo, "host=/tmp port='5432");
  REFUSED(conninfo, NULL);
  REFUSED(max_conns, 0);
  REFUSED(max_conns, -1);
  REFUSED(min_conns, 99);
  REFUSED(acquire_timeout_ms, -5);
  REFUSED(statement_timeout_ms, -1);
  REFUSED(reconnect_base_ms, -1);
  REFUSED(tcp_keepalive_s, -1);
  REFUSED(tag_key, "bad key");
  REFUSED(tag_style, (pgtag_tag_style)42);
  test_config(&cfg);
  cfg.log = count_refusal;
  cfg.reconnect_base_ms = 1000;
  cfg.reconnect_max_ms = 10;
  assert_int_equal(pgtag_pool_new(&loop, &cfg, &pool), PGTAG_EINVAL);
  assert_null(pool);
#undef REFUSED

  assert_int_equal(pgtag_pool_new(NULL, &cfg, &pool), PGTAG_EINVAL);
  assert_int_equal(pgtag_pool_new(&loop, NULL, &pool), PGTAG_EINVAL);
  assert_int_equal(pgtag_pool_new(&loop, &cfg, NULL), PGTAG_EINVAL);
  assert_int_equal(pgtag_query_ex(NULL, "SELECT 1", 0, NULL, NULL, rec_result, NULL), PGTAG_EINVAL);
  pgtag_conn none = {0};
  assert_int_equal(pgtag_conn_query_ex(none, "SELECT 1", 0, NULL, NULL, rec_result, NULL),
                   PGTAG_EINVAL);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(statement_timeout_cancels_on_the_server, loop_setup),
      cmocka_unit_test_setup(no_rollback_outside_a_transaction, loop_setup),
      cmocka_unit_test_setup(held_query_blocked_on_a_lock_times_out, loop_setup),
      cmocka_unit_test_setup_teardown(stopped_backend_is_given_up, loop_setup, continue_frozen),
      cmocka_unit_test_setup(cancel_everything_a_request_runs, loop_setup),
      cmocka_unit_test_setup(idle_connection_killed_in_the_same_turn, loop_setup),
      cmocka_unit_test_setup(keepalive_defaults_and_conninfo_override, loop_setup),
      cmocka_unit_test_setup(ten_megabyte_query_and_parameter, loop_setup),
      cmocka_unit_test_setup(ten_thousand_waiting, loop_setup),
      cmocka_unit_test_setup(bad_configuration_is_refused, loop_setup),
      /* these stop or restart the server: last */
      cmocka_unit_test_setup(restart_under_load, loop_setup),
      cmocka_unit_test_setup(restart_under_load_pipelined, loop_setup),
      cmocka_unit_test_setup(server_down_at_start_then_up, loop_setup),
  };
  /* its own server: it restarts it, stops it, kills its backends */
  return cmocka_run_group_tests(tests, own_server_setup, own_server_teardown);
}
