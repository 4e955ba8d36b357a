/* Auto-pipelining against the real server: queries of different requests
 * sharing one connection get their own results, in their own contexts;
 * one failing aborts nothing else; statements that change transaction
 * state keep a connection to themselves; acquires wait their turn; a
 * timeout, a cancel or a lost connection in the middle of a pipeline. */
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

static uv_loop_t loop;

static int setup(void **state) {
  (void)state;
  completions = 0;
  return uv_loop_init(&loop);
}

static pgtag_pool *pipelined_pool(int max_conns, int depth, int statement_timeout_ms) {
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = max_conns;
  cfg.min_conns = max_conns;
  cfg.pipeline_depth = depth;
  cfg.statement_timeout_ms = statement_timeout_ms;
  cfg.log_level = PGTAG_LOG_ERROR;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_stats st;
  for (int i = 0; i < 250; i++) { /* connected before the test starts */
    pgtag_pool_stats(pool, &st);
    if (st.idle == max_conns)
      break;
    run_for(&loop, 10);
  }
  return pool;
}

/* The one connection of a pool of one. */
static struct conn *only_conn(pgtag_pool *pool) {
  assert_false(queue_empty(&pool->conns));
  return queue_data(queue_head(&pool->conns), struct conn, node);
}

static void results_go_to_their_own_requests(void **state) {
  (void)state;
  enum { N = 40 };
  pgtag_pool *pool = pipelined_pool(1, 8, 0);
  pgtag_ctx *ctx[N];
  rec r[N];
  memset(r, 0, sizeof r);

  for (int i = 0; i < N; i++) {
    char id[32], param[16];
    snprintf(id, sizeof id, "piped-%d", i);
    snprintf(param, sizeof param, "%d", i);
    ctx[i] = pgtag_ctx_new(id);
    if (i == 13)
      query_param_in(pool, ctx[i], "SELECT $1::int / 0", param, &r[i]);
    else
      query_param_in(pool, ctx[i], "SELECT current_query(), $1::int", param, &r[i]);
  }
  /* 8 on the wire at once, the rest waiting for room */
  assert_true(only_conn(pool)->inflight != NULL);
  assert_int_equal(only_conn(pool)->npiped, 7);

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
    assert_string_equal(r[i].value, want);
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

/* A batch is one implicit transaction: when one query in it fails, the
 * writes before it are rolled back with it and run again alone, so each
 * takes effect exactly once. */
static void writes_in_a_failed_batch_happen_once(void **state) {
  (void)state;
  pgtag_pool *pool = pipelined_pool(1, 16, 0);
  rec first = {0}, w[7];
  memset(w, 0, sizeof w);
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_once (x int); TRUNCATE pgtag_once");

  query_in(pool, NULL, "SELECT pg_sleep(0.1)", &first); /* the rest queue behind */
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
  assert_int_equal(admin_int("SELECT count(DISTINCT x) FROM pgtag_once"), 6);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.queries, 8);
  assert_int_equal(st.query_time.count, 8);
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
  assert_int_equal(only_conn(pool)->npiped, 0);
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

  query_in(pool, NULL, "SELECT pg_sleep(0.2)", &before[0]);
  query_in(pool, NULL, "SELECT 1", &before[1]);
  query_in(pool, NULL, "SELECT 2", &before[2]);
  acquire_in(pool, NULL, &acq);
  query_in(pool, NULL, "SELECT 3", &after[0]); /* behind the acquire: not piped */
  query_in(pool, NULL, "SELECT 4", &after[1]);
  query_in(pool, NULL, "SELECT 5", &after[2]);
  assert_int_equal(only_conn(pool)->npiped, 2);
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

  query_in(pool, slow, "SELECT pg_sleep(30)", &head);
  for (int i = 0; i < 5; i++) {
    char p[12];
    snprintf(p, sizeof p, "%d", i);
    query_param_in(pool, quick, "SELECT $1::text", p, &tail[i]);
  }
  assert_int_equal(only_conn(pool)->npiped, 5);
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

  query_in(pool, gone, "SELECT pg_sleep(30)", &r[0]);
  query_in(pool, stays, "SELECT 'a'", &r[1]);
  query_in(pool, gone, "SELECT pg_sleep(31)", &r[2]);
  query_in(pool, stays, "SELECT 'b'", &r[3]);
  query_in(pool, gone, "SELECT pg_sleep(32)", &r[4]);
  query_in(pool, stays, "SELECT 'c'", &r[5]);
  assert_int_equal(only_conn(pool)->npiped, 5);
  run_for(&loop, 100);
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

  query_in(pool, ctx, "SELECT pg_backend_pid()::text", &pid);
  assert_true(run_until(&loop, &pid.calls, 1, 5000));
  query_in(pool, ctx, "SELECT pg_sleep(5)", &r[0]);
  for (int i = 1; i < 6; i++)
    query_in(pool, ctx, "SELECT 1", &r[i]);
  run_for(&loop, 100);
  snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", atoi(pid.value));
  admin_exec(sql);
  assert_true(run_until(&loop, &completions, 7, 5000));
  run_for(&loop, 50);
  for (int i = 0; i < 6; i++)
    assert_done(&r[i], ctx, PGTAG_ECONN); /* exactly once each */
  query_in(pool, ctx, "SELECT 'recovered'", &after);
  assert_true(run_until(&loop, &after.calls, 1, 5000));
  assert_done(&after, ctx, PGTAG_OK);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(results_go_to_their_own_requests, setup),
      cmocka_unit_test_setup(writes_in_a_failed_batch_happen_once, setup),
      cmocka_unit_test_setup(transaction_statements_keep_a_connection_to_themselves, setup),
      cmocka_unit_test_setup(acquire_waits_its_turn, setup),
      cmocka_unit_test_setup(timeout_of_the_first_spares_the_rest, setup),
      cmocka_unit_test_setup(cancel_reaches_queries_waiting_in_the_pipeline, setup),
      cmocka_unit_test_setup(lost_connection_fails_each_pipelined_query_once, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
