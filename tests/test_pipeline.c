/* Auto-pipelining against the real server: queries of different requests
 * sharing one connection get their own results, in their own contexts;
 * one failing aborts nothing else; statements that change transaction
 * state keep a connection to themselves; acquires wait their turn; a
 * timeout, a cancel or a lost connection in the middle of a pipeline.
 *
 * A statement joins a pipeline only behind statements the pool has seen
 * run fast (pipeline.h).  The tests of what happens inside a pipeline run
 * their statements once first (warm), with a pipeline_fast_ms so large
 * that a fresh backend's slow first run, or a loaded machine, cannot keep
 * them out; then they make one statement slow through its parameter: a
 * known-fast statement that turns slow while others wait behind it, the
 * case the rules cannot foresee.  The rules themselves are tested with the
 * defaults (the last tests). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "harness.h"
#include "pool.h"

static pgtag_pool *pipelined_pool(int max_conns, int depth, int statement_timeout_ms) {
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = max_conns;
  cfg.min_conns = max_conns;
  cfg.pipeline_depth = depth;
  cfg.pipeline_fast_ms = 600000; /* see the top of the file */
  cfg.statement_timeout_ms = statement_timeout_ms;
  cfg.log_level = PGTAG_LOG_ERROR;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_stats st; /* connected before the test starts */
  WAIT_FOR(&loop, (pgtag_pool_stats(pool, &st), st.idle == max_conns), 10000);
  assert_int_equal(st.idle, max_conns);
  return pool;
}

/* The one connection of a pool of one. */
static struct conn *only_conn(pgtag_pool *pool) {
  assert_false(queue_empty(&pool->conns));
  return queue_data(queue_head(&pool->conns), struct conn, node);
}

/* Statements on the one connection's pipeline: sent, or staged to go out
 * before the loop blocks. */
static int in_pipeline(pgtag_pool *pool) {
  return only_conn(pool)->nwire + only_conn(pool)->nstaged;
}

/* Wait until the one connection's backend runs a pg_sleep: the statements
 * behind it in the pipeline have gone out, and a cancel reaches a backend
 * that has read its query. */
static void wait_sleeping(pgtag_pool *pool) {
  char sql[160];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND wait_event = 'PgSleep'",
           PQbackendPID(only_conn(pool)->pg));
  WAIT_FOR(&loop, admin_int(sql) == 1, 10000);
  assert_int_equal(admin_int(sql), 1);
}

/* Run each statement once (with parameter "0" when it takes one), so the
 * pool knows it as fast. */
static void warm(pgtag_pool *pool, const char *const *sqls, int n) {
  for (int i = 0; i < n; i++) {
    rec r = {0};
    if (strchr(sqls[i], '$') != NULL)
      query_param_in(pool, NULL, sqls[i], "0", &r);
    else
      query_in(pool, NULL, sqls[i], &r);
    assert_true(run_until(&loop, &r.calls, 1, 5000));
  }
}

static void results_go_to_their_own_requests(void **state) {
  (void)state;
  enum { N = 40 };
  pgtag_pool *pool = pipelined_pool(1, 8, 0);
  pgtag_ctx *ctx[N];
  rec r[N];
  memset(r, 0, sizeof r);
  const char *const stmts[] = {"SELECT current_query(), $1::int", "SELECT 10 / $1::int"};
  warm(pool, stmts, 2);
  completions = 0;

  for (int i = 0; i < N; i++) {
    char id[32], param[16];
    snprintf(id, sizeof id, "piped-%d", i);
    snprintf(param, sizeof param, "%d", i);
    ctx[i] = pgtag_ctx_new(id);
    if (i == 13)
      query_param_in(pool, ctx[i], "SELECT 10 / $1::int", "0", &r[i]);
    else
      query_param_in(pool, ctx[i], "SELECT current_query(), $1::int", param, &r[i]);
  }
  /* 8 in the pipeline at once, the rest waiting for room */
  assert_int_equal(in_pipeline(pool), 8);

  assert_true(run_until(&loop, &completions, N, 10000));
  for (int i = 0; i < N; i++) {
    if (i == 13) {
      assert_done(&r[i], ctx[i], PGTAG_ESERVER);
      assert_string_equal(r[i].sqlstate, "22012");
      continue;
    }
    char want[96], n[16];
    assert_done(&r[i], ctx[i], PGTAG_OK);
    snprintf(want, sizeof want, "/* requestId=piped-%d */ SELECT current_query(), $1::int", i);
    snprintf(n, sizeof n, "%d", i);
    assert_sent_as(r[i].value, want);
    assert_string_equal(r[i].value2, n);
  }

  /* Without a failure, results come back in the order sent (a batch with a
   * failure has its other queries run again, after what was sent since). */
  int base = completions;
  rec again[N];
  memset(again, 0, sizeof again);
  for (int i = 0; i < N; i++) {
    char param[16];
    snprintf(param, sizeof param, "%d", i);
    query_param_in(pool, ctx[i], "SELECT current_query(), $1::int", param, &again[i]);
  }
  assert_true(run_until(&loop, &completions, base + N, 10000));
  for (int i = 0; i < N; i++) {
    assert_done(&again[i], ctx[i], PGTAG_OK);
    assert_int_equal(again[i].order, base + i + 1);
  }
  for (int i = 0; i < N; i++)
    pgtag_ctx_unref(ctx[i]);
  test_pool_close(&loop, pool);
}

/* Writes pipelined behind one another each have a sync point of their
 * own: one failing takes nothing else with it, and each takes effect
 * exactly once. */
static void writes_in_a_pipeline_happen_once(void **state) {
  (void)state;
  pgtag_pool *pool = pipelined_pool(1, 16, 0);
  rec first = {0}, w[7];
  memset(w, 0, sizeof w);
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_once (x int); TRUNCATE pgtag_once");
  const char *const stmts[] = {"SELECT pg_sleep($1::float8)",
                               "INSERT INTO pgtag_once VALUES ($1::int)",
                               "INSERT INTO pgtag_once VALUES ($1::int / 0)"};
  warm(pool, stmts, 1);
  completions = 0;

  query_param_in(pool, NULL, stmts[0], "0.1", &first); /* the rest queue behind */
  for (int i = 0; i < 7; i++) {
    char v[8];
    snprintf(v, sizeof v, "%d", i);
    if (i == 3)
      query_param_in(pool, NULL, "INSERT INTO pgtag_once VALUES ($1::int / 0)", v, &w[i]);
    else
      query_param_in(pool, NULL, "INSERT INTO pgtag_once VALUES ($1::int)", v, &w[i]);
  }
  assert_true(run_until(&loop, &completions, 8, 10000));
  for (int i = 0; i < 7; i++)
    assert_done(&w[i], NULL, i == 3 ? PGTAG_ESERVER : PGTAG_OK);
  assert_int_equal(admin_int("SELECT count(*) FROM pgtag_once"), 6);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.queries, 9); /* the warm-up's, the sleep, the seven */
  assert_int_equal(st.query_time.count, 9);

  /* Now that they are known, they go out together: still each alone.
   * (The sleep above made its statement a slow one: another text.) */
  const char *const sleep2[] = {"SELECT pg_sleep($1::float8), 2"};
  warm(pool, sleep2, 1);
  memset(w, 0, sizeof w);
  admin_exec("TRUNCATE pgtag_once");
  completions = 0;
  query_param_in(pool, NULL, sleep2[0], "0.05", &first);
  for (int i = 0; i < 7; i++) {
    char v[12]; /* any int: the compiler cannot see i is small */
    snprintf(v, sizeof v, "%d", i);
    query_param_in(pool, NULL, stmts[i == 3 ? 2 : 1], v, &w[i]);
  }
  assert_int_equal(in_pipeline(pool), 8);
  assert_true(run_until(&loop, &completions, 8, 10000));
  for (int i = 0; i < 7; i++)
    assert_done(&w[i], NULL, i == 3 ? PGTAG_ESERVER : PGTAG_OK);
  assert_int_equal(admin_int("SELECT count(*) FROM pgtag_once"), 6);
  assert_int_equal(admin_int("SELECT count(DISTINCT x) FROM pgtag_once"), 6);
  test_pool_close(&loop, pool);
}

static void transaction_statements_keep_a_connection_to_themselves(void **state) {
  (void)state;
  pgtag_pool *pool = pipelined_pool(1, 8, 0);
  pgtag_ctx *a = pgtag_ctx_new("opens-a-transaction"), *b = pgtag_ctx_new("writes");
  rec begin = {0}, ins[5], count = {0};
  memset(ins, 0, sizeof ins);
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_piped (x int); TRUNCATE pgtag_piped");

  /* a one-shot BEGIN (a misuse, but one pgtag must survive): the inserts
   * behind it must not end up inside that transaction */
  query_in(pool, a, "  begin", &begin);
  for (int i = 0; i < 5; i++)
    query_in(pool, b, "INSERT INTO pgtag_piped VALUES (1)", &ins[i]);
  assert_int_equal(in_pipeline(pool), 1);
  assert_true(run_until(&loop, &completions, 6, 5000));
  assert_done(&begin, a, PGTAG_OK);
  for (int i = 0; i < 5; i++)
    assert_done(&ins[i], b, PGTAG_OK);
  query_in(pool, b, "SELECT count(*) FROM pgtag_piped", &count);
  assert_true(run_until(&loop, &count.calls, 1, 5000));
  assert_string_equal(count.value, "5");
  assert_int_equal(admin_int("SELECT count(*) FROM pgtag_piped"), 5); /* committed */
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  test_pool_close(&loop, pool);
}

static void acquire_waits_its_turn(void **state) {
  (void)state;
  pgtag_pool *pool = pipelined_pool(1, 8, 0);
  rec before[3], acq = {0}, after[3], held = {0};
  memset(before, 0, sizeof before);
  memset(after, 0, sizeof after);

  const char *const stmts[] = {"SELECT pg_sleep($1::float8)", "SELECT 1", "SELECT 2"};
  warm(pool, stmts, 3);
  completions = 0;
  query_param_in(pool, NULL, stmts[0], "0.2", &before[0]);
  query_in(pool, NULL, "SELECT 1", &before[1]);
  query_in(pool, NULL, "SELECT 2", &before[2]);
  acquire_in(pool, NULL, &acq);
  query_in(pool, NULL, "SELECT 3", &after[0]); /* behind the acquire: not piped */
  query_in(pool, NULL, "SELECT 4", &after[1]);
  query_in(pool, NULL, "SELECT 5", &after[2]);
  assert_int_equal(in_pipeline(pool), 3);
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  for (int i = 0; i < 3; i++)
    assert_true(before[i].order < acq.order);
  assert_int_equal(after[0].calls, 0);
  conn_query_in(acq.conn, NULL, "SELECT 'mine alone'", &held);
  assert_true(run_until(&loop, &held.calls, 1, 5000));
  assert_done(&held, NULL, PGTAG_OK);
  assert_int_equal(after[0].calls, 0);
  pgtag_release(acq.conn);
  assert_true(run_until(&loop, &after[2].calls, 1, 5000));
  for (int i = 0; i < 3; i++) {
    assert_done(&after[i], NULL, PGTAG_OK);
    assert_true(after[i].order > held.order);
  }
  test_pool_close(&loop, pool);
}

static void timeout_of_the_first_spares_the_rest(void **state) {
  (void)state;
  pgtag_pool *pool = pipelined_pool(1, 8, 300);
  pgtag_ctx *slow = pgtag_ctx_new("slow-head"), *quick = pgtag_ctx_new("quick-tail");
  rec head = {0}, tail[5];
  memset(tail, 0, sizeof tail);

  const char *const stmts[] = {"SELECT pg_sleep($1::float8)", "SELECT $1::text"};
  warm(pool, stmts, 2);
  completions = 0;
  query_param_in(pool, slow, stmts[0], "30", &head);
  for (int i = 0; i < 5; i++) {
    char p[12];
    snprintf(p, sizeof p, "%d", i);
    query_param_in(pool, quick, "SELECT $1::text", p, &tail[i]);
  }
  assert_int_equal(in_pipeline(pool), 6);
  assert_true(run_until(&loop, &completions, 6, 10000));
  assert_done(&head, slow, PGTAG_ETIMEDOUT);
  for (int i = 0; i < 5; i++) {
    char p[12];
    snprintf(p, sizeof p, "%d", i);
    assert_done(&tail[i], quick, PGTAG_OK);
    assert_string_equal(tail[i].value, p);
  }
  pgtag_ctx_unref(slow);
  pgtag_ctx_unref(quick);
  test_pool_close(&loop, pool);
}

static void cancel_reaches_queries_waiting_in_the_pipeline(void **state) {
  (void)state;
  pgtag_pool *pool = pipelined_pool(1, 8, 0);
  pgtag_ctx *gone = pgtag_ctx_new("gone"), *stays = pgtag_ctx_new("stays");
  rec r[6];
  memset(r, 0, sizeof r);

  const char *const stmts[] = {"SELECT pg_sleep($1::float8)", "SELECT $1::text"};
  warm(pool, stmts, 2);
  completions = 0;
  query_param_in(pool, gone, stmts[0], "30", &r[0]);
  query_param_in(pool, stays, stmts[1], "a", &r[1]);
  query_param_in(pool, gone, stmts[0], "31", &r[2]);
  query_param_in(pool, stays, stmts[1], "b", &r[3]);
  query_param_in(pool, gone, stmts[0], "32", &r[4]);
  query_param_in(pool, stays, stmts[1], "c", &r[5]);
  assert_int_equal(in_pipeline(pool), 6);
  wait_sleeping(pool);
  assert_int_equal(pgtag_ctx_cancel(gone), 3);
  assert_true(run_until(&loop, &completions, 6, 15000));
  for (int i = 0; i < 6; i += 2)
    assert_done(&r[i], gone, PGTAG_ECANCELED);
  assert_done(&r[1], stays, PGTAG_OK);
  assert_done(&r[3], stays, PGTAG_OK);
  assert_done(&r[5], stays, PGTAG_OK);
  assert_string_equal(r[5].value, "c");
  pgtag_ctx_unref(gone);
  pgtag_ctx_unref(stays);
  test_pool_close(&loop, pool);
}

static void lost_connection_fails_each_pipelined_query_once(void **state) {
  (void)state;
  pgtag_pool *pool = pipelined_pool(1, 8, 0);
  pgtag_ctx *ctx = pgtag_ctx_new("cut-off");
  rec pid = {0}, r[6], after = {0};
  char sql[96];
  memset(r, 0, sizeof r);

  const char *const stmts[] = {"SELECT pg_sleep($1::float8)", "SELECT 1"};
  warm(pool, stmts, 2);
  completions = 0;
  query_in(pool, ctx, "SELECT pg_backend_pid()::text", &pid);
  assert_true(run_until(&loop, &pid.calls, 1, 5000));
  query_param_in(pool, ctx, stmts[0], "5", &r[0]);
  for (int i = 1; i < 6; i++)
    query_in(pool, ctx, "SELECT 1", &r[i]);
  assert_int_equal(in_pipeline(pool), 6);
  wait_sleeping(pool);
  snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", atoi(pid.value));
  admin_exec(sql);
  assert_true(run_until(&loop, &completions, 7, 5000));
  run_for(&loop, 50); /* a time for second callbacks that must not come */
  for (int i = 0; i < 6; i++)
    assert_done(&r[i], ctx, PGTAG_ECONN); /* exactly once each */
  query_in(pool, ctx, "SELECT 'recovered'", &after);
  assert_true(run_until(&loop, &after.calls, 1, 5000));
  assert_done(&after, ctx, PGTAG_OK);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* ------------------------------------------------------------------------
 * What a pipelined statement means: what it would mean on a connection of
 * its own
 * ------------------------------------------------------------------------ */

/* Single-statement writes of different requests, pipelined on one
 * connection, each run in a transaction of their own. */
static void writes_of_different_requests_never_share_a_transaction(void **state) {
  (void)state;
  enum { N = 12 };
  pgtag_pool *pool = pipelined_pool(1, 16, 0);
  admin_exec(
      "CREATE TABLE IF NOT EXISTS pgtag_xact (id int PRIMARY KEY, v int); "
      "TRUNCATE pgtag_xact; INSERT INTO pgtag_xact SELECT g, 0 FROM generate_series(1, 12) g");
  const char *const stmts[] = {
      "UPDATE pgtag_xact SET v = v + 1 WHERE id = $1::int RETURNING pg_current_xact_id()::text"};
  warm(pool, stmts, 1);
  completions = 0;
  pgtag_ctx *ctx[N];
  rec r[N];
  memset(r, 0, sizeof r);
  for (int i = 0; i < N; i++) {
    char id[32], row[8];
    snprintf(id, sizeof id, "writer-%d", i);
    snprintf(row, sizeof row, "%d", i + 1);
    ctx[i] = pgtag_ctx_new(id);
    query_param_in(pool, ctx[i], stmts[0], row, &r[i]);
  }
  assert_int_equal(in_pipeline(pool), N); /* pipelined, all of them */
  assert_true(run_until(&loop, &completions, N, 10000));
  for (int i = 0; i < N; i++) {
    assert_done(&r[i], ctx[i], PGTAG_OK);
    for (int j = 0; j < i; j++)
      if (strcmp(r[i].value, r[j].value) == 0)
        fail_msg("requests %d and %d ran in one transaction (%s)", j, i, r[i].value);
    pgtag_ctx_unref(ctx[i]);
  }
  assert_int_equal(admin_int("SELECT sum(v) FROM pgtag_xact"), N);
  test_pool_close(&loop, pool);
}

/* A SELECT of a function that writes is taken for a read: in a batch it
 * meets the read-only transaction, fails there without effect, runs again
 * alone exactly once, and is never batched again.  A failing read after
 * it in the batch changes nothing. */
static void select_of_a_writing_function_runs_once(void **state) {
  (void)state;
  pgtag_pool *pool = pipelined_pool(1, 16, 0);
  admin_exec("DROP TABLE IF EXISTS pgtag_fx_log; "
             "CREATE TABLE pgtag_fx_log (id serial PRIMARY KEY, note text); "
             "CREATE OR REPLACE FUNCTION pgtag_fx(t text) RETURNS int LANGUAGE sql VOLATILE "
             "AS 'INSERT INTO pgtag_fx_log (note) VALUES (t) RETURNING id'");
  const char *const stmts[] = {"SELECT $1::text", "SELECT pgtag_fx($1)", "SELECT 10 / $1::int"};
  warm(pool, stmts, 3); /* pgtag_fx runs once here, alone: id 1 */
  completions = 0;
  pgtag_ctx *ctx = pgtag_ctx_new("calls-a-writer");
  rec before = {0}, fx = {0}, after = {0}, again = {0};
  query_param_in(pool, ctx, stmts[0], "before", &before);
  query_param_in(pool, ctx, stmts[1], "in a batch", &fx);
  query_param_in(pool, ctx, stmts[2], "0", &after); /* fails: 22012 */
  assert_int_equal(in_pipeline(pool), 3);
  assert_true(run_until(&loop, &completions, 3, 10000));
  assert_done(&before, ctx, PGTAG_OK);
  assert_done(&fx, ctx, PGTAG_OK);
  assert_done(&after, ctx, PGTAG_ESERVER);
  assert_string_equal(after.sqlstate, "22012");
  assert_string_equal(fx.value, "2"); /* ran once: no id was used up */
  assert_int_equal(admin_int("SELECT count(*) FROM pgtag_fx_log"), 2);
  assert_int_equal(admin_int("SELECT last_value FROM pgtag_fx_log_id_seq"), 2);
  /* remembered: it goes alone now, and runs once */
  query_param_in(pool, ctx, stmts[0], "before", &before);
  query_param_in(pool, ctx, stmts[1], "alone", &again);
  assert_true(run_until(&loop, &again.calls, 1, 5000));
  assert_string_equal(again.value, "3");
  assert_int_equal(admin_int("SELECT last_value FROM pgtag_fx_log_id_seq"), 3);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* The read that wrote, sent again alone, is a write now: it is done once
 * its sync point says it committed, not when its result arrives.  Here
 * its commit fails (a deferred unique constraint): its request is told
 * so, and nothing else is.  So are a write's and a held connection's. */
static void a_read_that_wrote_is_done_when_it_commits(void **state) {
  (void)state;
  pgtag_pool *pool = pipelined_pool(1, 16, 0);
  admin_exec("DROP TABLE IF EXISTS pgtag_fx_defer; "
             "CREATE TABLE pgtag_fx_defer (k int UNIQUE DEFERRABLE INITIALLY DEFERRED); "
             "CREATE OR REPLACE FUNCTION pgtag_fx_defer(k int) RETURNS int LANGUAGE sql "
             "VOLATILE AS 'INSERT INTO pgtag_fx_defer VALUES (k) RETURNING k'");
  const char *const stmts[] = {"SELECT $1::text", "SELECT pgtag_fx_defer($1::int)"};
  warm(pool, stmts, 2); /* k = 0, alone */
  completions = 0;
  pgtag_ctx *ctx = pgtag_ctx_new("writes-at-commit");
  rec before = {0}, fx = {0}, next = {0};
  query_param_in(pool, ctx, stmts[0], "before", &before);
  query_param_in(pool, ctx, stmts[1], "0", &fx); /* a duplicate, seen at commit */
  assert_int_equal(in_pipeline(pool), 2);
  assert_true(run_until(&loop, &completions, 2, 10000));
  assert_done(&before, ctx, PGTAG_OK);
  assert_done(&fx, ctx, PGTAG_ESERVER);
  assert_string_equal(fx.sqlstate, "23505");
  assert_int_equal(admin_int("SELECT count(*) FROM pgtag_fx_defer"), 1);
  query_param_in(pool, ctx, stmts[0], "next", &next);
  assert_true(run_until(&loop, &next.calls, 1, 5000));
  assert_done(&next, ctx, PGTAG_OK);
  assert_string_equal(next.value, "next");

  /* a write known to be fast, a read pipelined behind it: the write's
   * failed commit comes before the read's result */
  const char *insert = "INSERT INTO pgtag_fx_defer VALUES ($1::int)";
  rec write = {0}, behind = {0}, acq = {0}, held = {0};
  query_param_in(pool, ctx, insert, "7", &write);
  assert_true(run_until(&loop, &write.calls, 1, 5000));
  assert_done(&write, ctx, PGTAG_OK);
  memset(&write, 0, sizeof write);
  completions = 0;
  query_param_in(pool, ctx, insert, "0", &write);
  query_param_in(pool, ctx, stmts[0], "behind", &behind);
  assert_int_equal(in_pipeline(pool), 2);
  assert_true(run_until(&loop, &completions, 2, 5000));
  assert_done(&write, ctx, PGTAG_ESERVER);
  assert_string_equal(write.sqlstate, "23505");
  assert_done(&behind, ctx, PGTAG_OK);
  assert_string_equal(behind.value, "behind");
  acquire_in(pool, ctx, &acq);
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  conn_query_in(acq.conn, ctx, "INSERT INTO pgtag_fx_defer VALUES (0)", &held);
  assert_true(run_until(&loop, &held.calls, 1, 5000));
  assert_done(&held, ctx, PGTAG_ESERVER);
  assert_string_equal(held.sqlstate, "23505");
  memset(&next, 0, sizeof next);
  conn_query_in(acq.conn, ctx, "SELECT count(*) FROM pgtag_fx_defer", &next);
  assert_true(run_until(&loop, &next.calls, 1, 5000));
  assert_done(&next, ctx, PGTAG_OK);
  assert_string_equal(next.value, "2");
  pgtag_release(acq.conn);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* One batch of three reads of different requests; each must succeed. */
static void batch_of_three(pgtag_pool *pool, const char *sql) {
  rec r[3];
  memset(r, 0, sizeof r);
  int base = completions;
  for (int i = 0; i < 3; i++) {
    char v[12];
    snprintf(v, sizeof v, "%d", i);
    query_param_in(pool, NULL, sql, v, &r[i]);
  }
  assert_int_equal(in_pipeline(pool), 3);
  assert_true(run_until(&loop, &completions, base + 3, 5000));
  for (int i = 0; i < 3; i++) {
    char v[12];
    snprintf(v, sizeof v, "%d", i);
    assert_done(&r[i], NULL, PGTAG_OK);
    assert_string_equal(r[i].value, v);
  }
}

/* Statements on a held connection that throw away prepared statements,
 * or take the name of the one pgtag prepares to open batches: batches on
 * that connection afterwards still run, and run right. */
static void batch_opener_survives_what_a_holder_does(void **state) {
  (void)state;
  pgtag_pool *pool = pipelined_pool(1, 8, 0);
  const char *const stmts[] = {"SELECT $1::text"};
  warm(pool, stmts, 1);
  batch_of_three(pool, stmts[0]); /* prepares the opener */
  const char *const wipe[] = {"DEALLOCATE ALL", "DISCARD ALL",
                              "PREPARE pgtag_batch_opener(text) AS SELECT 1, 2, 3"};
  for (int w = 0; w < 3; w++) {
    rec acq = {0}, done = {0};
    acquire_in(pool, NULL, &acq);
    assert_true(run_until(&loop, &acq.calls, 1, 5000));
    if (w == 2) { /* the name taken: first the opener must be gone */
      conn_query_in(acq.conn, NULL, "DEALLOCATE ALL", &done);
      assert_true(run_until(&loop, &done.calls, 1, 5000));
      memset(&done, 0, sizeof done);
    }
    conn_query_in(acq.conn, NULL, wipe[w], &done);
    assert_true(run_until(&loop, &done.calls, 1, 5000));
    assert_int_equal(done.code, PGTAG_OK);
    assert_int_equal(pgtag_release(acq.conn), PGTAG_OK);
    batch_of_three(pool, stmts[0]); /* the opener fails: the reads go again */
    batch_of_three(pool, stmts[0]); /* prepared again, or sent as text */
  }
  assert_int_equal(only_conn(pool)->opener, -1); /* the name is taken: text */
  test_pool_close(&loop, pool);
}

/* A read's result is delivered when it arrives: a fast read does not wait
 * for a slow one sent behind it, even in one batch.  Default settings. */
static void read_result_arrives_while_a_slow_read_of_its_batch_runs(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = cfg.min_conns = 1;
  cfg.log_level = PGTAG_LOG_ERROR;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  const char *const stmts[] = {"SELECT $1::text"};
  warm(pool, stmts, 1);
  completions = 0;
  rec fast = {0}, slow = {0};
  pgtag_ctx *a = pgtag_ctx_new("fast"), *b = pgtag_ctx_new("slow");
  gate_shut(); /* the slow read runs until the test has seen the fast one's result */
  query_param_in(pool, a, stmts[0], "fast", &fast);
  query_in(pool, b, "SELECT 'slow' FROM " GATE, &slow);
  assert_true(run_until(&loop, &fast.calls, 1, 5000));
  assert_done(&fast, a, PGTAG_OK);
  assert_int_equal(slow.calls, 0); /* still running */
  gate_open();
  assert_true(run_until(&loop, &slow.calls, 1, 5000));
  assert_done(&slow, b, PGTAG_OK);
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  test_pool_close(&loop, pool);
}

/* A request's statistics count its own statement's time, not that of
 * another request's slow statement it waited behind on the connection. */
static void request_stats_charge_only_own_time(void **state) {
  (void)state;
  pgtag_pool *pool = pipelined_pool(1, 8, 0);
  const char *const stmts[] = {"SELECT pg_sleep($1::float8)", "SELECT $1::text"};
  warm(pool, stmts, 2);
  completions = 0;
  pgtag_ctx *a = pgtag_ctx_new("slow-one"), *b = pgtag_ctx_new("behind-it");
  rec slow = {0}, fast = {0};
  query_param_in(pool, a, stmts[0], "0.3", &slow);
  query_param_in(pool, b, stmts[1], "mine", &fast);
  assert_int_equal(in_pipeline(pool), 2);
  assert_true(run_until(&loop, &completions, 2, 5000));
  assert_done(&fast, b, PGTAG_OK);
  pgtag_request_stats sa, sb;
  pgtag_ctx_stats(a, &sa);
  pgtag_ctx_stats(b, &sb);
  assert_true(sa.db_time_us >= 300000);
  if (sb.db_time_us >= 150000)
    fail_msg("the read behind the sleep was charged %llu us", (unsigned long long)sb.db_time_us);
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  test_pool_close(&loop, pool);
}

/* No fast read ever sits on a connection behind a slow statement: the
 * pool learns which statements are slow and keeps others from joining
 * behind them.  Default settings; checked every loop iteration. */
typedef struct {
  pgtag_pool *pool;
  int behind_slow; /* samples with a statement on the wire behind the sleep */
  int sleeps, sleeps_done, fast, fast_done, wrong;
  uv_timer_t tick;
} hol_load;

static void hol_sample(uv_check_t *check) {
  hol_load *l = check->data;
  queue *q;
  queue_foreach (q, &l->pool->conns) {
    struct conn *c = queue_data(q, struct conn, node);
    int seen_slow = 0;
    queue *p;
    queue_foreach (p, &c->wire) {
      op *o = queue_data(p, op, node);
      if (seen_slow && o->kind == OP_QUERY)
        l->behind_slow++;
      if (o->kind == OP_QUERY && o->sql != NULL && strstr(o->sql, "pg_sleep") != NULL)
        seen_slow = 1;
    }
  }
}

static void hol_fast_done(PGresult *res, const pgtag_error *err, void *arg);

static void hol_submit_fast(hol_load *l) {
  const char *v[1] = {"x"};
  l->fast++;
  if (pgtag_query(l->pool, "SELECT $1::text", 1, v, hol_fast_done, l) != PGTAG_OK)
    l->wrong++;
}

static void hol_fast_done(PGresult *res, const pgtag_error *err, void *arg) {
  hol_load *l = arg;
  (void)res;
  l->fast_done++;
  l->wrong += err != NULL;
  if (l->sleeps < 8)
    hol_submit_fast(l);
}

static void hol_sleep_done(PGresult *res, const pgtag_error *err, void *arg) {
  hol_load *l = arg;
  (void)res;
  l->wrong += err != NULL;
  l->sleeps_done++;
}

static void hol_tick(uv_timer_t *t) {
  hol_load *l = t->data;
  if (++l->sleeps == 8) {
    uv_timer_stop(t);
    return;
  }
  pgtag_query(l->pool, "SELECT pg_sleep(0.2)", 0, NULL, hol_sleep_done, l);
}

static void fast_reads_never_wait_behind_a_slow_one(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg); /* default pipelining: depth 8, pipeline_fast_ms 5 */
  cfg.max_conns = cfg.min_conns = 2;
  cfg.log_level = PGTAG_LOG_ERROR;
  hol_load l;
  memset(&l, 0, sizeof l);
  l.pool = test_pool_new(&loop, &cfg);
  uv_check_t check;
  uv_check_init(&loop, &check);
  check.data = &l;
  uv_check_start(&check, hol_sample);
  uv_timer_init(&loop, &l.tick);
  l.tick.data = &l;
  uv_timer_start(&l.tick, hol_tick, 0, 100);
  for (int i = 0; i < 16; i++)
    hol_submit_fast(&l);
  assert_true(run_until(&loop, &l.sleeps, 8, 10000));
  assert_true(run_until(&loop, &l.fast_done, l.fast, 10000));
  assert_true(run_until(&loop, &l.sleeps_done, 7, 10000)); /* the last sleeps end */
  uv_close((uv_handle_t *)&check, NULL);
  uv_close((uv_handle_t *)&l.tick, NULL);
  print_message("%d fast reads beside 7 sleeps; %d samples with a statement behind a sleep\n",
                l.fast_done, l.behind_slow);
  assert_int_equal(l.wrong, 0);
  assert_true(l.fast_done > 100);
  assert_int_equal(l.behind_slow, 0);
  test_pool_close(&loop, l.pool);
}

/* Under the hot-row load that deadlocked batched writes (64 requests, one
 * single-row UPDATE each, 4 rows, a pool of 4, default settings): the
 * server never detects a deadlock, and every update applies once. */
typedef struct {
  pgtag_pool *pool;
  int submitted, done, failed, n;
} hot_load;

static void hot_submit(hot_load *l);

static void hot_done(PGresult *res, const pgtag_error *err, void *arg) {
  hot_load *l = arg;
  (void)res;
  l->done++;
  l->failed += err != NULL;
  if (l->submitted < l->n)
    hot_submit(l);
}

static void hot_submit(hot_load *l) {
  char row[8], rid[32];
  /* rows in random order, as requests touch them: two batches of
   * updates that share a transaction deadlock when their orders cross */
  static uint32_t x = 2463534242u;
  x ^= x << 13, x ^= x >> 17, x ^= x << 5;
  snprintf(row, sizeof row, "%u", x % 4 + 1);
  snprintf(rid, sizeof rid, "hot-%d", l->submitted);
  const char *v[1] = {row};
  pgtag_ctx *ctx = pgtag_ctx_new(rid);
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  l->submitted++;
  if (pgtag_query(l->pool, "UPDATE pgtag_hot SET v = v + 1 WHERE id = $1::int", 1, v, hot_done,
                  l) != PGTAG_OK)
    l->failed++;
  pgtag_ctx_leave(prev);
  pgtag_ctx_unref(ctx);
}

static int log_count(const char *needle) {
  char path[512], line[4096];
  snprintf(path, sizeof path, "%s/server.log", getenv("PGHOST"));
  FILE *f = fopen(path, "r");
  int n = 0;
  if (f == NULL)
    fail_msg("cannot read %s", path);
  while (fgets(line, sizeof line, f) != NULL)
    n += strstr(line, needle) != NULL;
  fclose(f);
  return n;
}

static void no_deadlock_under_hot_row_load(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg); /* max_conns 4, default pipelining */
  cfg.log_level = PGTAG_LOG_ERROR;
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_hot (id int PRIMARY KEY, v int); "
             "TRUNCATE pgtag_hot; INSERT INTO pgtag_hot SELECT g, 0 FROM generate_series(1, 4) g");
  int deadlocks_before = log_count("deadlock detected");
  hot_load l;
  memset(&l, 0, sizeof l);
  l.n = 3000;
  l.pool = test_pool_new(&loop, &cfg);
  for (int i = 0; i < 64; i++)
    hot_submit(&l);
  assert_true(run_until(&loop, &l.done, l.n, 60000));
  assert_int_equal(l.failed, 0);
  assert_int_equal(admin_int("SELECT sum(v) FROM pgtag_hot"), l.n);
  test_pool_close(&loop, l.pool);
  assert_int_equal(log_count("deadlock detected"), deadlocks_before);
}

/* Cancels and 1 ms statement timeouts among many pipelined requests, as
 * they were measured: every 7th request canceled 1 ms after it was
 * submitted, every 11th with a 1 ms timeout.  No other request fails.
 * Default settings, 4 connections, 64 requests at a time. */
typedef struct {
  pgtag_pool *pool;
  int submitted, done, n;
  int bystander_failures, wrong_ctx, targeted;
  char last_error[256];
} mix_load;

typedef struct {
  mix_load *l;
  pgtag_ctx *ctx;
  int kind; /* 0 bystander, 1 canceled, 2 timed */
  uv_timer_t timer;
} mix_req;

static void mix_submit(mix_load *l);

static void mix_req_closed(uv_handle_t *h) {
  mix_req *r = h->data;
  pgtag_ctx_unref(r->ctx);
  free(r);
}

static void mix_done(PGresult *res, const pgtag_error *err, void *arg) {
  mix_req *r = arg;
  mix_load *l = r->l;
  (void)res;
  l->done++;
  if (pgtag_ctx_current() != r->ctx)
    l->wrong_ctx++;
  if (r->kind == 0 && err != NULL) {
    l->bystander_failures++;
    snprintf(l->last_error, sizeof l->last_error, "%s (%s)", err->message,
             err->sqlstate ? err->sqlstate : "-");
  }
  uv_timer_stop(&r->timer);
  uv_close((uv_handle_t *)&r->timer, mix_req_closed);
  if (l->submitted < l->n)
    mix_submit(l);
}

static void mix_cancel(uv_timer_t *t) {
  mix_req *r = t->data;
  pgtag_ctx_cancel(r->ctx);
}

static void mix_submit(mix_load *l) {
  mix_req *r = calloc(1, sizeof *r);
  char id[32];
  int i = l->submitted++;
  snprintf(id, sizeof id, "mix-%d", i);
  r->l = l;
  r->ctx = pgtag_ctx_new(id);
  r->kind = i % 7 == 0 ? 1 : i % 11 == 0 ? 2 : 0;
  l->targeted += r->kind != 0;
  uv_timer_init(&loop, &r->timer);
  r->timer.data = r;
  if (r->kind == 1)
    uv_timer_start(&r->timer, mix_cancel, 1, 0);
  pgtag_query_opts opts = {.timeout_ms = r->kind == 2 ? 1 : 0};
  const char *v[1] = {"3000"};
  pgtag_ctx *prev = pgtag_ctx_enter(r->ctx);
  pgtag_query_ex(l->pool, "SELECT count(*) FROM generate_series(1, $1::int)", 1, v, &opts, mix_done,
                 r);
  pgtag_ctx_leave(prev);
}

/* A read waits, staged, for the batch that goes out before the loop
 * blocks, and its request is cancelled first: it fails without being sent,
 * and the connection it was staged on is free again.  (It stayed busy
 * with nothing to do, and pgtag_pool_close waited for it for ever: under
 * load a 1 ms cancel timer often fires between the staging and the
 * flush.) */
static void a_read_cancelled_before_it_went_out_frees_its_connection(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = cfg.min_conns = 1; /* default pipelining */
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_stats st;
  WAIT_FOR(&loop, (pgtag_pool_stats(pool, &st), st.idle == 1), 10000);
  assert_int_equal(st.idle, 1);
  pgtag_ctx *ctx = pgtag_ctx_new("staged"), *next = pgtag_ctx_new("next");
  rec r = {0}, after = {0};
  assert_int_equal(query_in(pool, ctx, "SELECT 'staged'", &r), PGTAG_OK);
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.busy, 1);
  assert_int_equal(pgtag_ctx_cancel(ctx), 1); /* before the loop has run */
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.busy, 0);
  assert_int_equal(st.idle, 1);
  assert_true(run_until(&loop, &r.calls, 1, 5000));
  assert_done(&r, ctx, PGTAG_ECANCELED);
  query_in(pool, next, "SELECT 'next'", &after); /* the connection serves on */
  assert_true(run_until(&loop, &after.calls, 1, 5000));
  assert_done(&after, next, PGTAG_OK);
  pgtag_ctx_unref(ctx);
  pgtag_ctx_unref(next);
  test_pool_close(&loop, pool);
}

static void cancels_and_timeouts_touch_only_their_own_request(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg); /* max_conns 4, default pipelining */
  cfg.log_level = PGTAG_LOG_ERROR;
  for (int round = 0; round < 3; round++) {
    mix_load l;
    memset(&l, 0, sizeof l);
    l.n = 4000;
    l.pool = test_pool_new(&loop, &cfg);
    for (int i = 0; i < 64; i++)
      mix_submit(&l);
    assert_true(run_until(&loop, &l.done, l.n, 120000));
    print_message("round %d: %d requests, %d canceled or timed, %d others failed %s\n", round,
                  l.done, l.targeted, l.bystander_failures, l.last_error);
    assert_int_equal(l.wrong_ctx, 0);
    assert_int_equal(l.bystander_failures, 0);
    test_pool_close(&loop, l.pool);
    if (round < 2)
      assert_int_equal(uv_loop_init(&loop), 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(results_go_to_their_own_requests, loop_setup),
      cmocka_unit_test_setup(writes_in_a_pipeline_happen_once, loop_setup),
      cmocka_unit_test_setup(transaction_statements_keep_a_connection_to_themselves, loop_setup),
      cmocka_unit_test_setup(acquire_waits_its_turn, loop_setup),
      cmocka_unit_test_setup(timeout_of_the_first_spares_the_rest, loop_setup),
      cmocka_unit_test_setup(cancel_reaches_queries_waiting_in_the_pipeline, loop_setup),
      cmocka_unit_test_setup(lost_connection_fails_each_pipelined_query_once, loop_setup),
      cmocka_unit_test_setup(writes_of_different_requests_never_share_a_transaction, loop_setup),
      cmocka_unit_test_setup(select_of_a_writing_function_runs_once, loop_setup),
      cmocka_unit_test_setup(a_read_that_wrote_is_done_when_it_commits, loop_setup),
      cmocka_unit_test_setup(batch_opener_survives_what_a_holder_does, loop_setup),
      cmocka_unit_test_setup(read_result_arrives_while_a_slow_read_of_its_batch_runs, loop_setup),
      cmocka_unit_test_setup(request_stats_charge_only_own_time, loop_setup),
      cmocka_unit_test_setup(fast_reads_never_wait_behind_a_slow_one, loop_setup),
      cmocka_unit_test_setup(no_deadlock_under_hot_row_load, loop_setup),
      cmocka_unit_test_setup(a_read_cancelled_before_it_went_out_frees_its_connection, loop_setup),
      cmocka_unit_test_setup(cancels_and_timeouts_touch_only_their_own_request, loop_setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
