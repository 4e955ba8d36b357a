/* Read replicas on a real primary and streaming standby: read-only
 * queries land on the standby with their own tags; a standby whose replay
 * is paused while the primary writes falls behind the lag limit and reads
 * move to the primary, then come back; a request that wrote reads from the
 * primary; a standby that is down is skipped; a large write after a quiet
 * spell does not read as the quiet spell's length of lag; a read whose
 * replica connection dies is retried elsewhere; a read-only transaction
 * runs on the replica; a promoted replica is noticed; per-query options
 * (pgtag_cluster_query_ex) apply on the replica and the primary. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static server_pair pair;
static char standby2[512]; /* a second standby of the same primary */
static int standby2_port;

static int group_setup(void **state) {
  (void)state;
  pair_start(&pair);
  char path[600];
  snprintf(path, sizeof path, "'%s/p'", pair.dir);
  pair_ctl(&pair, "s2", "standby", path);
  snprintf(path, sizeof path, "%s/s2", pair.dir);
  standby2_port = dir_port(path);
  snprintf(standby2, sizeof standby2, "host=%s/s2 port=%d user=postgres dbname=postgres", pair.dir,
           standby2_port);
  admin_exec_on(pair.primary, "CREATE TABLE replicated (id serial, note text)");
  admin_exec_on(pair.primary, "CREATE TABLE burst (id int, note text)");
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  pair_ctl(&pair, "s2", "stop", "immediate");
  pair_stop(&pair);
  return 0;
}

static pgtag_cluster *cluster_of(const char *const *replicas, int n, int max_lag_ms) {
  pgtag_cluster_config cfg;
  pgtag_cluster_config_init(&cfg);
  test_config(&cfg.primary);
  cfg.primary.conninfo = pair.primary;
  cfg.primary.name = "app";
  cfg.primary.log_level = PGTAG_LOG_ERROR;
  cfg.replicas = replicas;
  cfg.nreplicas = n;
  cfg.max_replica_lag_ms = max_lag_ms;
  cfg.lag_check_interval_ms = 50;
  pgtag_cluster *c = NULL;
  assert_int_equal(pgtag_cluster_new(&loop, &cfg, &c), PGTAG_OK);
  return c;
}

static pgtag_cluster *cluster_new(int max_lag_ms) {
  static const char *replicas[1];
  replicas[0] = pair.standby;
  return cluster_of(replicas, 1, max_lag_ms);
}

static void on_closed(void *arg) { *(int *)arg = 1; }

/* Close, wait for done, and check the loop is left with nothing. */
static void cluster_close(pgtag_cluster *c) {
  int done = 0;
  pgtag_cluster_close(c, on_closed, &done);
  assert_true(run_until(&loop, &done, 1, 10000));
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* Wait until replica 0's lag satisfies want (1: sampled and within limit,
 * 0: sampled and beyond it, -1: not healthy). */
static int lag_is(pgtag_cluster *c, int limit, int want) {
  int lag = pgtag_cluster_replica_lag_ms(c, 0);
  return (want == 1 && lag >= 0 && lag <= limit) || (want == 0 && lag > limit) ||
         (want == -1 && lag < 0);
}

static int wait_lag(pgtag_cluster *c, int limit, int want, int timeout_ms) {
  WAIT_FOR(&loop, lag_is(c, limit, want), timeout_ms);
  return lag_is(c, limit, want);
}

/* Which server ran a query: its port.  Read-only, in ctx. */
static void read_in(pgtag_cluster *c, pgtag_ctx *ctx, rec *r) {
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  assert_int_equal(SUBMIT(pgtag_cluster_query(c, PGTAG_READ_ONLY,
                                              "SELECT current_setting('port'), current_query()", 0,
                                              NULL, rec_result, r)),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
}

static void write_in(pgtag_cluster *c, pgtag_ctx *ctx, rec *r) {
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  assert_int_equal(SUBMIT(pgtag_cluster_query(c, 0,
                                              "INSERT INTO replicated (note) VALUES ('w') "
                                              "RETURNING current_setting('port')",
                                              0, NULL, rec_result, r)),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
}

static void reads_land_on_the_replica_with_their_tags(void **state) {
  (void)state;
  pgtag_cluster *c = cluster_new(1000);
  assert_true(wait_lag(c, 1000, 1, 5000));
  enum { N = 20 };
  pgtag_ctx *ctx[N];
  rec r[N], w = {0};
  memset(r, 0, sizeof r);
  for (int i = 0; i < N; i++) {
    char id[32];
    snprintf(id, sizeof id, "reader-%d", i);
    ctx[i] = pgtag_ctx_new(id);
    read_in(c, ctx[i], &r[i]);
  }
  pgtag_ctx *writer = pgtag_ctx_new("writer");
  write_in(c, writer, &w);
  assert_true(run_until(&loop, &completions, N + 1, 10000));
  for (int i = 0; i < N; i++) {
    assert_done(&r[i], ctx[i], PGTAG_OK);
    assert_int_equal(atoi(r[i].value), pair.standby_port);
    char tag[64];
    snprintf(tag, sizeof tag, "/* requestId=reader-%d */", i);
    assert_non_null(strstr(r[i].value2, tag)); /* the standby saw its own tag */
    pgtag_ctx_unref(ctx[i]);
  }
  assert_done(&w, writer, PGTAG_OK);
  assert_int_equal(atoi(w.value), pair.primary_port); /* writes on the primary */
  pgtag_ctx_unref(writer);
  pgtag_stats st;
  pgtag_pool_stats(pgtag_cluster_replica(c, 0), &st);
  assert_true(st.queries >= N);
  cluster_close(c);
}

static void a_request_that_wrote_reads_its_writes(void **state) {
  (void)state;
  pgtag_cluster *c = cluster_new(1000);
  assert_true(wait_lag(c, 1000, 1, 5000));
  pgtag_ctx *a = pgtag_ctx_new("ryw-a"), *b = pgtag_ctx_new("ryw-b");
  rec before = {0}, w = {0};
  read_in(c, a, &before);
  assert_true(run_until(&loop, &completions, 1, 5000));
  assert_int_equal(atoi(before.value), pair.standby_port);
  write_in(c, a, &w);
  assert_true(run_until(&loop, &completions, 2, 5000));
  assert_done(&w, a, PGTAG_OK);
  rec after = {0}, other = {0};
  read_in(c, a, &after); /* a wrote: the primary */
  read_in(c, b, &other); /* b did not: the replica */
  assert_true(run_until(&loop, &completions, 4, 5000));
  assert_done(&after, a, PGTAG_OK);
  assert_done(&other, b, PGTAG_OK);
  assert_int_equal(atoi(after.value), pair.primary_port);
  assert_int_equal(atoi(other.value), pair.standby_port);

  /* a transaction taken through the cluster counts as a write */
  pgtag_ctx *t = pgtag_ctx_new("ryw-tx");
  rec acq = {0}, read_after = {0};
  pgtag_ctx *prev = pgtag_ctx_enter(t);
  assert_int_equal(pgtag_cluster_acquire(c, rec_acquire, &acq), PGTAG_OK);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &completions, 5, 5000));
  assert_done(&acq, t, PGTAG_OK);
  pgtag_release(acq.conn);
  read_in(c, t, &read_after);
  assert_true(run_until(&loop, &completions, 6, 5000));
  assert_int_equal(atoi(read_after.value), pair.primary_port);
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  pgtag_ctx_unref(t);
  cluster_close(c);
}

/* Replay paused on the standby by the test below, resumed in its teardown
 * should it fail before it does: the tests after it need a standby that
 * keeps up. */
static int replay_paused;

static int resume_replay(void **state) {
  (void)state;
  if (replay_paused) {
    PGconn *c = PQconnectdb(pair.standby);
    PQclear(PQexec(c, "SELECT pg_wal_replay_resume()"));
    PQfinish(c);
  }
  replay_paused = 0;
  return 0;
}

static void a_lagging_replica_is_skipped_until_it_catches_up(void **state) {
  (void)state;
  enum { LIMIT = 300 };
  pgtag_cluster *c = cluster_new(LIMIT);
  assert_true(wait_lag(c, LIMIT, 1, 5000));
  replay_paused = 1;
  admin_exec_on(pair.standby, "SELECT pg_wal_replay_pause()");
  /* the primary writes on while the standby replays nothing */
  uint64_t end = wait_deadline(5000);
  int lagging = 0;
  while (!lagging && now_ms() < end) {
    admin_exec_on(pair.primary, "INSERT INTO replicated (note) VALUES ('while paused')");
    lagging = wait_lag(c, LIMIT, 0, 100);
  }
  assert_true(lagging);
  rec r = {0};
  pgtag_ctx *ctx = pgtag_ctx_new("lag-1");
  read_in(c, ctx, &r);
  assert_true(run_until(&loop, &completions, 1, 5000));
  assert_done(&r, ctx, PGTAG_OK);
  assert_int_equal(atoi(r.value), pair.primary_port); /* moved to the primary */

  admin_exec_on(pair.standby, "SELECT pg_wal_replay_resume()");
  replay_paused = 0;
  assert_true(wait_lag(c, LIMIT, 1, 5000));
  rec back = {0};
  pgtag_ctx *ctx2 = pgtag_ctx_new("lag-2");
  read_in(c, ctx2, &back);
  assert_true(run_until(&loop, &completions, 2, 5000));
  assert_done(&back, ctx2, PGTAG_OK);
  assert_int_equal(atoi(back.value), pair.standby_port); /* and back */
  pgtag_ctx_unref(ctx);
  pgtag_ctx_unref(ctx2);
  cluster_close(c);
}

/* Two replicas: reads go to the one with less outstanding, so 40 slow
 * reads sent at once split 20 and 20. */
static void reads_spread_over_replicas_by_load(void **state) {
  (void)state;
  const char *replicas[] = {pair.standby, standby2};
  pgtag_cluster *c = cluster_of(replicas, 2, 1000);
  WAIT_FOR(&loop,
           pgtag_cluster_replica_lag_ms(c, 0) >= 0 && pgtag_cluster_replica_lag_ms(c, 1) >= 0,
           10000);
  assert_true(pgtag_cluster_replica_lag_ms(c, 0) >= 0);
  assert_true(pgtag_cluster_replica_lag_ms(c, 1) >= 0);
  enum { N = 40 };
  rec r[N];
  memset(r, 0, sizeof r);
  pgtag_ctx *ctx = pgtag_ctx_new("spread");
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  for (int i = 0; i < N; i++)
    assert_int_equal(pgtag_cluster_query(c, PGTAG_READ_ONLY,
                                         "SELECT current_setting('port') FROM pg_sleep(0.02)", 0,
                                         NULL, rec_result, &r[i]),
                     PGTAG_OK);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &completions, N, 10000));
  int on1 = 0, on2 = 0;
  for (int i = 0; i < N; i++) {
    assert_done(&r[i], ctx, PGTAG_OK);
    on1 += atoi(r[i].value) == pair.standby_port;
    on2 += atoi(r[i].value) == standby2_port;
  }
  assert_int_equal(on1, N / 2);
  assert_int_equal(on2, N / 2);
  pgtag_ctx_unref(ctx);
  cluster_close(c);
}

/* A WAL position as text, e.g. "0/3000148", from a fresh connection. */
static void lsn_on(const char *conninfo, const char *sql, char *out, size_t len) {
  PGconn *conn = PQconnectdb(conninfo);
  PGresult *res = PQexec(conn, sql);
  if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
    fail_msg("%s: %s", sql, PQerrorMessage(conn));
  snprintf(out, len, "%s", PQgetvalue(res, 0, 0));
  PQclear(res);
  PQfinish(conn);
}

/* Wait, running the loop, until the standby has replayed everything the
 * primary has written so far. */
static int standby_caught_up(int timeout_ms) {
  char lsn[64], sql[160];
  lsn_on(pair.primary, "SELECT pg_current_wal_insert_lsn()", lsn, sizeof lsn);
  snprintf(sql, sizeof sql, "SELECT (pg_last_wal_replay_lsn() >= '%s')::int", lsn);
  WAIT_FOR(&loop, admin_int_on(pair.standby, sql) == 1, timeout_ms);
  return admin_int_on(pair.standby, sql) == 1;
}

/* What the cluster said of replica 0 after every loop iteration of a
 * write that began at since. */
typedef struct {
  pgtag_cluster *c;
  uint64_t since;
  int worst_excess; /* lag reported minus time since the write began */
  int worst_lag, worst_lag_at;
  int readings, behind; /* readings taken; of them, with lag > 0 */
} lag_watch;

static void on_check(uv_check_t *h) {
  lag_watch *w = h->data;
  int lag = pgtag_cluster_replica_lag_ms(w->c, 0);
  if (lag < 0)
    return;
  int into = (int)(now_ms() - w->since);
  w->readings++;
  w->behind += lag > 0;
  if (lag - into > w->worst_excess)
    w->worst_excess = lag - into;
  if (lag > w->worst_lag) {
    w->worst_lag = lag;
    w->worst_lag_at = into;
  }
}

/* The primary is quiet for a few seconds, then writes 300,000 rows while
 * the cluster samples the standby.  Nothing the standby has to replay is
 * older than that write (it had replayed everything before it), so no
 * honest lag exceeds the time since the write began: a lag above that is
 * made up, and above the limit it sends the reads to the primary just as
 * it is busy writing.  The old measure, the time since the last commit
 * replayed, read the quiet spell as lag. */
static void a_burst_after_a_quiet_spell_is_not_read_as_lag(void **state) {
  (void)state;
  enum { LIMIT = 1000, QUIET_MS = 3000, ROWS = 300000, SLACK_MS = 250 };
  pgtag_cluster *c = cluster_new(LIMIT);
  admin_exec_on(pair.primary, "INSERT INTO replicated (note) VALUES ('before the quiet')");
  assert_true(wait_lag(c, LIMIT, 1, 5000));
  run_for(&loop, QUIET_MS); /* the quiet spell, on purpose, while the cluster samples */

  /* the standby has replayed all the primary wrote, and says so */
  assert_true(standby_caught_up(10000));
  assert_true(wait_lag(c, 0, 1, 5000));

  lag_watch w = {.c = c, .since = now_ms(), .worst_excess = -QUIET_MS};
  uv_check_t check;
  uv_check_init(&loop, &check);
  check.data = &w;
  uv_check_start(&check, on_check);
  rec ins = {0};
  char sql[128];
  snprintf(sql, sizeof sql,
           "INSERT INTO burst SELECT g, repeat('x', 50) FROM generate_series(1, %d) g", ROWS);
  assert_int_equal(SUBMIT(pgtag_cluster_query(c, 0, sql, 0, NULL, rec_result, &ins)), PGTAG_OK);
  assert_true(run_until(&loop, &completions, 1, 60000));
  assert_done(&ins, NULL, PGTAG_OK);
  int write_ms = (int)(now_ms() - w.since);
  /* sampled on until the standby has replayed it all (autovacuum may be
   * writing by then: within the limit, not necessarily 0) */
  assert_true(standby_caught_up(30000));
  assert_true(wait_lag(c, LIMIT, 1, 5000));
  uv_close((uv_handle_t *)&check, NULL);
  print_message("      write %d ms; %d readings, %d behind; most %d ms, %d ms in; "
                "worst excess over time since the write began %d ms\n",
                write_ms, w.readings, w.behind, w.worst_lag, w.worst_lag_at, w.worst_excess);
  if (w.worst_excess > SLACK_MS)
    fail_msg("the standby was reported %d ms behind %d ms into the write: %d ms more "
             "than the write had been going on",
             w.worst_lag, w.worst_lag_at, w.worst_excess);
  assert_true(w.readings > 0);

  /* and the reads stayed with it: it has every row */
  rec r = {0};
  pgtag_ctx *ctx = pgtag_ctx_new("after-burst");
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  assert_int_equal(SUBMIT(pgtag_cluster_query(c, PGTAG_READ_ONLY,
                                              "SELECT current_setting('port'), count(*) FROM burst",
                                              0, NULL, rec_result, &r)),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &completions, 2, 10000));
  assert_done(&r, ctx, PGTAG_OK);
  assert_int_equal(atoi(r.value), pair.standby_port);
  assert_int_equal(atoi(r.value2), ROWS);
  pgtag_ctx_unref(ctx);
  cluster_close(c);
}

/* Every log line of a cluster's pools, kept for the tests to read. */
static char logged[16][512];
static int nlogged;

static void keep_log(pgtag_log_level level, const char *msg, void *arg) {
  (void)level;
  (void)arg;
  if (nlogged < 16)
    snprintf(logged[nlogged++], sizeof logged[0], "%s", msg);
}

static int logged_saying(const char *a, const char *b) {
  int n = 0;
  for (int i = 0; i < nlogged; i++)
    n += strstr(logged[i], a) != NULL && strstr(logged[i], b) != NULL;
  return n;
}

/* A read whose replica connection dies under it (pg_terminate_backend on
 * the standby) is sent once more, to the primary here, in its request's
 * context and with its tag; the caller hears only the second outcome.  An
 * error the server reports is the caller's answer, not retried. */
static void a_read_that_loses_its_replica_is_retried_elsewhere(void **state) {
  (void)state;
  pgtag_cluster *c = cluster_new(1000);
  assert_true(wait_lag(c, 1000, 1, 5000));
  pgtag_ctx *ctx = pgtag_ctx_new("retried-read");
  rec r = {0}, bad = {0};
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  /* sleeps on the standby only, until it is terminated */
  assert_int_equal(SUBMIT(pgtag_cluster_query(c, PGTAG_READ_ONLY,
                                              "SELECT current_setting('port'), current_query(), "
                                              "CASE WHEN pg_is_in_recovery() THEN pg_sleep(60) END",
                                              0, NULL, rec_result, &r)),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
  const char *running = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                        "AND query LIKE '/* requestId=retried-read */%'";
  WAIT_FOR(&loop, admin_int_on(pair.standby, running) == 1, 10000);
  assert_int_equal(admin_int_on(pair.standby, running), 1);
  admin_exec_on(pair.standby, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE query LIKE '/* requestId=retried-read */%'");
  assert_true(run_until(&loop, &completions, 1, 10000));
  assert_done(&r, ctx, PGTAG_OK); /* once, in its context */
  assert_int_equal(atoi(r.value), pair.primary_port);
  assert_non_null(strstr(r.value2, "/* requestId=retried-read */"));
  pgtag_stats st;
  pgtag_pool_stats(pgtag_cluster_replica(c, 0), &st);
  assert_int_equal(st.reads_retried, 1);
  /* the server's own error: not retried */
  assert_true(wait_lag(c, 1000, 1, 10000)); /* the replica's pool has reconnected */
  prev = pgtag_ctx_enter(ctx);
  assert_int_equal(SUBMIT(pgtag_cluster_query(c, PGTAG_READ_ONLY, "SELECT 1/0", 0, NULL, rec_result,
                                              &bad)),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &completions, 2, 5000));
  assert_done(&bad, ctx, PGTAG_ESERVER);
  assert_string_equal(bad.sqlstate, "22012");
  pgtag_pool_stats(pgtag_cluster_replica(c, 0), &st);
  assert_int_equal(st.reads_retried, 1);
  pgtag_ctx_unref(ctx);
  cluster_close(c);
}

/* pgtag_cluster_acquire_ex with PGTAG_READ_ONLY: a held connection on the
 * replica, on which the server refuses writes, and the request is not
 * counted as a writer: its next read still goes to the replica. */
static void a_read_only_transaction_runs_on_the_replica(void **state) {
  (void)state;
  pgtag_cluster *c = cluster_new(1000);
  assert_true(wait_lag(c, 1000, 1, 5000));
  pgtag_ctx *ctx = pgtag_ctx_new("ro-tx");
  rec acq = {0}, port = {0}, write = {0}, after = {0}, flags = {0};
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  assert_int_equal(pgtag_cluster_acquire_ex(c, 0x100, rec_acquire, &flags), PGTAG_EINVAL);
  assert_int_equal(pgtag_cluster_acquire_ex(c, PGTAG_READ_ONLY, rec_acquire, &acq), PGTAG_OK);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &completions, 1, 5000));
  assert_done(&acq, ctx, PGTAG_OK);
  assert_int_equal(conn_query_in(acq.conn, ctx, "SELECT current_setting('port')", &port), PGTAG_OK);
  assert_int_equal(conn_query_in(acq.conn, ctx, "INSERT INTO replicated (note) VALUES ('ro')",
                                 &write),
                   PGTAG_OK);
  assert_true(run_until(&loop, &completions, 3, 5000));
  assert_done(&port, ctx, PGTAG_OK);
  assert_int_equal(atoi(port.value), pair.standby_port);
  assert_done(&write, ctx, PGTAG_ESERVER);
  assert_string_equal(write.sqlstate, "25006"); /* read-only transaction */
  pgtag_stats st;
  pgtag_pool_stats(pgtag_cluster_replica(c, 0), &st);
  assert_int_equal(st.conns_lost, 0); /* a standby's refusal is no failover */
  pgtag_release(acq.conn);
  read_in(c, ctx, &after);
  assert_true(run_until(&loop, &completions, 4, 5000));
  assert_int_equal(atoi(after.value), pair.standby_port);
  assert_int_equal(flags.calls, 0);
  pgtag_ctx_unref(ctx);
  cluster_close(c);
}

/* A replica promoted under the cluster: said once, counted, and reads go
 * elsewhere.  Promotes the second standby (stopped at teardown). */
static void a_promoted_replica_is_noticed(void **state) {
  (void)state;
  static const char *replicas[1];
  replicas[0] = standby2;
  pgtag_cluster_config cfg;
  pgtag_cluster_config_init(&cfg);
  test_config(&cfg.primary);
  cfg.primary.conninfo = pair.primary;
  cfg.primary.name = "app";
  cfg.primary.log = keep_log;
  cfg.primary.log_level = PGTAG_LOG_WARN;
  cfg.replicas = replicas;
  cfg.nreplicas = 1;
  cfg.lag_check_interval_ms = 50;
  nlogged = 0;
  pgtag_cluster *c = NULL;
  assert_int_equal(pgtag_cluster_new(&loop, &cfg, &c), PGTAG_OK);
  assert_true(wait_lag(c, 1000, 1, 5000));
  pair_ctl(&pair, "s2", "promote", NULL);
  pgtag_stats st = {0};
  WAIT_FOR(&loop, (pgtag_pool_stats(pgtag_cluster_replica(c, 0), &st), st.left_recovery != 0),
           10000);
  assert_int_equal(st.left_recovery, 1);
  assert_int_equal(logged_saying("not in recovery any more", "no read goes to it"), 1);
  assert_int_equal(pgtag_cluster_replica_lag_ms(c, 0), -1);
  pgtag_ctx *ctx = pgtag_ctx_new("after-promotion");
  rec r = {0};
  read_in(c, ctx, &r);
  assert_true(run_until(&loop, &completions, 1, 5000));
  assert_done(&r, ctx, PGTAG_OK);
  assert_int_equal(atoi(r.value), pair.primary_port);
  /* said once, not at every sample: an absence, so a span of time (four
   * samples at 50 ms) is what there is to wait for */
  run_for(&loop, 200);
  pgtag_pool_stats(pgtag_cluster_replica(c, 0), &st);
  assert_int_equal(st.left_recovery, 1);
  assert_int_equal(logged_saying("not in recovery any more", "no read goes to it"), 1);
  pgtag_ctx_unref(ctx);
  cluster_close(c);
}

static void bad_cluster_arguments(void **state) {
  (void)state;
  pgtag_cluster_config cfg;
  pgtag_cluster_config_init(&cfg);
  test_config(&cfg.primary);
  pgtag_cluster *c = NULL;
  const char *bad[] = {"nosuchkeyword=1"};
  const char *null_one[] = {NULL};
  assert_int_equal(pgtag_cluster_new(NULL, &cfg, &c), PGTAG_EINVAL);
  assert_int_equal(pgtag_cluster_new(&loop, NULL, &c), PGTAG_EINVAL);
  assert_int_equal(pgtag_cluster_new(&loop, &cfg, NULL), PGTAG_EINVAL);
  cfg.nreplicas = -1;
  assert_int_equal(pgtag_cluster_new(&loop, &cfg, &c), PGTAG_EINVAL);
  cfg.nreplicas = 1;
  cfg.replicas = null_one;
  assert_int_equal(pgtag_cluster_new(&loop, &cfg, &c), PGTAG_EINVAL);
  cfg.replicas = bad;
  assert_int_equal(pgtag_cluster_new(&loop, &cfg, &c), PGTAG_EINVAL);
  cfg.replicas = (const char *[]){pair.standby};
  cfg.max_replica_lag_ms = 0;
  assert_int_equal(pgtag_cluster_new(&loop, &cfg, &c), PGTAG_EINVAL);
  cfg.max_replica_lag_ms = 100;
  cfg.primary.max_conns = 0; /* the pool's own checks */
  assert_int_equal(pgtag_cluster_new(&loop, &cfg, &c), PGTAG_EINVAL);
  assert_null(c);
  rec r = {0};
  assert_int_equal(pgtag_cluster_query(NULL, 0, "SELECT 1", 0, NULL, rec_result, &r), PGTAG_EINVAL);
  assert_null(pgtag_cluster_primary(NULL));
  assert_null(pgtag_cluster_replica(NULL, 0));
  assert_int_equal(pgtag_cluster_replica_lag_ms(NULL, 0), -1);
  pgtag_cluster_close(NULL, NULL, NULL);
  assert_int_equal(r.calls, 0);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* pgtag_cluster_query_ex: the options apply on whichever pool runs the
 * query.  A read-only query with a 100 ms statement timeout times out on
 * the replica, one that writes on the primary (whose pools have no timeout
 * of their own), each counted by that pool; after the write the request's
 * reads, options and all, go to the primary. */
static void query_options_apply_on_the_replica_and_the_primary(void **state) {
  (void)state;
  pgtag_cluster *c = cluster_new(1000);
  assert_true(wait_lag(c, 1000, 1, 5000));
  pgtag_pool *primary = pgtag_cluster_primary(c), *replica = pgtag_cluster_replica(c, 0);
  const pgtag_query_opts quick = {.timeout_ms = 100};
  const pgtag_query_opts roomy = {.timeout_ms = 30000, .no_cache = 1};
  pgtag_ctx *ctx = pgtag_ctx_new("opts");
  rec slow_read = {0}, read = {0}, plain = {0}, slow_write = {0}, read_after = {0};

  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  uint64_t start = now_ms();
  assert_int_equal(SUBMIT(pgtag_cluster_query_ex(c, PGTAG_READ_ONLY, "SELECT pg_sleep(30)", 0, NULL,
                                                 &quick, rec_result, &slow_read)),
                   PGTAG_OK);
  /* the function, not the macro, for callers that cannot use macros */
  assert_int_equal(SUBMIT((pgtag_cluster_query_ex)(c, PGTAG_READ_ONLY,
                                                   "SELECT current_setting('port')", 0, NULL,
                                                   &roomy, rec_result, &read)),
                   PGTAG_OK);
  assert_int_equal(SUBMIT(pgtag_cluster_query_ex(c, PGTAG_READ_ONLY,
                                                 "SELECT current_setting('port')", 0, NULL, NULL,
                                                 rec_result, &plain)),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &completions, 3, 10000));
  assert_true(now_ms() - start < 10000); /* not the 30 s the sleep asked for */
  assert_done(&slow_read, ctx, PGTAG_ETIMEDOUT);
  assert_done(&read, ctx, PGTAG_OK);
  assert_int_equal(atoi(read.value), pair.standby_port);
  assert_done(&plain, ctx, PGTAG_OK);
  assert_int_equal(atoi(plain.value), pair.standby_port);
  pgtag_stats st;
  pgtag_pool_stats(replica, &st);
  assert_int_equal(st.statement_timeouts, 1);
  pgtag_pool_stats(primary, &st);
  assert_int_equal(st.statement_timeouts, 0);

  prev = pgtag_ctx_enter(ctx);
  assert_int_equal(SUBMIT(pgtag_cluster_query_ex(c, 0,
                                                 "INSERT INTO replicated (note) "
                                                 "SELECT 'slow' FROM pg_sleep(30)",
                                                 0, NULL, &quick, rec_result, &slow_write)),
                   PGTAG_OK);
  assert_int_equal(SUBMIT(pgtag_cluster_query_ex(c, PGTAG_READ_ONLY,
                                                 "SELECT current_setting('port')", 0, NULL, &roomy,
                                                 rec_result, &read_after)),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &completions, 5, 10000));
  assert_done(&slow_write, ctx, PGTAG_ETIMEDOUT);
  assert_done(&read_after, ctx, PGTAG_OK);
  assert_int_equal(atoi(read_after.value), pair.primary_port); /* reads its writes */
  pgtag_pool_stats(primary, &st);
  assert_int_equal(st.statement_timeouts, 1);
  pgtag_pool_stats(replica, &st);
  assert_int_equal(st.statement_timeouts, 1);

  rec bad = {0};
  assert_int_equal(pgtag_cluster_query_ex(NULL, 0, "SELECT 1", 0, NULL, &quick, rec_result, &bad),
                   PGTAG_EINVAL);
  assert_int_equal(bad.calls, 0);
  pgtag_ctx_unref(ctx);
  cluster_close(c);
}

/* Runs last: it stops the standby. */
static void a_replica_that_is_down_is_skipped(void **state) {
  (void)state;
  pgtag_cluster *c = cluster_new(1000);
  assert_true(wait_lag(c, 1000, 1, 5000));
  rec r = {0}, flags = {0};
  pgtag_ctx *ctx = pgtag_ctx_new("down");
  /* unknown flags are refused */
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  assert_int_equal(pgtag_cluster_query(c, 0x100, "SELECT 1", 0, NULL, rec_result, &flags),
                   PGTAG_EINVAL);
  pgtag_ctx_leave(prev);
  pair_ctl(&pair, "s", "stop", "immediate");
  assert_true(wait_lag(c, 1000, -1, 5000));
  read_in(c, ctx, &r);
  assert_true(run_until(&loop, &completions, 1, 5000));
  assert_done(&r, ctx, PGTAG_OK);
  assert_int_equal(atoi(r.value), pair.primary_port);
  assert_int_equal(flags.calls, 0);
  pgtag_ctx_unref(ctx);
  cluster_close(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(reads_land_on_the_replica_with_their_tags, loop_setup),
      cmocka_unit_test_setup(a_request_that_wrote_reads_its_writes, loop_setup),
      cmocka_unit_test_setup_teardown(a_lagging_replica_is_skipped_until_it_catches_up, loop_setup,
                                      resume_replay),
      cmocka_unit_test_setup(reads_spread_over_replicas_by_load, loop_setup),
      cmocka_unit_test_setup(a_burst_after_a_quiet_spell_is_not_read_as_lag, loop_setup),
      cmocka_unit_test_setup(a_read_that_loses_its_replica_is_retried_elsewhere, loop_setup),
      cmocka_unit_test_setup(a_read_only_transaction_runs_on_the_replica, loop_setup),
      cmocka_unit_test_setup(a_promoted_replica_is_noticed, loop_setup),
      cmocka_unit_test_setup(bad_cluster_arguments, loop_setup),
      cmocka_unit_test_setup(query_options_apply_on_the_replica_and_the_primary, loop_setup),
      cmocka_unit_test_setup(a_replica_that_is_down_is_skipped, loop_setup),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
