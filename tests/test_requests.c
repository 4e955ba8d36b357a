/* A request's context that cannot get lost silently, against the real
 * server: deadlines bound every operation of a request; the context comes
 * back across libuv's own timers, thread pool and file system requests;
 * lost and leaked contexts are reported; every EINVAL says why. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static uv_loop_t loop;

static int setup(void **state) {
  (void)state;
  completions = 0;
  return uv_loop_init(&loop);
}

/* ------------------------------------------------------------------------
 * Deadlines
 * ------------------------------------------------------------------------ */

static int running_tagged(const char *id) {
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
           "AND query LIKE '/* requestId=%s */%%'", id);
  return admin_int(sql);
}

/* 100 ms on a request running pg_sleep(5): ETIMEDOUT in its context
 * within 250 ms, and the query gone from the server. */
static void deadline_cancels_the_running_query(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *ctx = pgtag_ctx_new("deadline-run");
  rec r = {0};
  assert_int_equal(pgtag_ctx_set_deadline(ctx, 100), PGTAG_OK);
  uint64_t t0 = now_ms();
  query_in(pool, ctx, "SELECT pg_sleep(5)", &r);
  assert_true(run_until(&loop, &r.calls, 1, 5000));
  uint64_t took = now_ms() - t0;
  assert_done(&r, ctx, PGTAG_ETIMEDOUT);
  assert_non_null(strstr(r.message, "deadline"));
  print_message("ETIMEDOUT after %llu ms for a 100 ms deadline\n", (unsigned long long)took);
  assert_true(took >= 95 && took < 250 * (uint64_t)time_scale());
  run_for(&loop, 500);
  assert_int_equal(running_tagged("deadline-run"), 0);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.deadlines, 1);
  assert_int_equal(st.statement_timeouts, 0);
  assert_int_equal(pgtag_ctx_time_left_ms(ctx), 0);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* Waiting for a connection: the waiter with a deadline fails at it
 * (within 50 ms), even behind one that waits on, and leaves the line. */
static void deadline_while_waiting_for_a_connection(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *holder = pgtag_ctx_new("holds-it"), *patient = pgtag_ctx_new("patient"),
            *hurried = pgtag_ctx_new("hurried");
  rec acq = {0}, first = {0}, second = {0};
  acquire_in(pool, holder, &acq);
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  query_in(pool, patient, "SELECT 'patient'", &first); /* no deadline, ahead */
  assert_int_equal(pgtag_ctx_set_deadline(hurried, 150), PGTAG_OK);
  uint64_t t0 = now_ms();
  query_in(pool, hurried, "SELECT 'hurried'", &second);
  assert_true(run_until(&loop, &second.calls, 1, 5000));
  uint64_t took = now_ms() - t0;
  assert_done(&second, hurried, PGTAG_ETIMEDOUT);
  print_message("ETIMEDOUT after %llu ms for a 150 ms deadline\n", (unsigned long long)took);
  assert_true(took >= 145 && took < 200 * (uint64_t)time_scale());
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.waiting, 1); /* the patient one waits on */
  assert_int_equal(first.calls, 0);
  pgtag_release(acq.conn);
  assert_true(run_until(&loop, &first.calls, 1, 5000));
  assert_done(&first, patient, PGTAG_OK);
  pgtag_ctx_unref(holder);
  pgtag_ctx_unref(patient);
  pgtag_ctx_unref(hurried);
  test_pool_close(&loop, pool);
}

/* Submitted after the deadline: failed through its callback (from the
 * loop), and never sent: its effect is nowhere, nor its text in
 * pg_stat_statements. */
static void after_the_deadline_nothing_is_sent(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *ctx = pgtag_ctx_new("too-late");
  rec q = {0}, acq = {0};
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_late (marker text)");
  admin_exec("DELETE FROM pgtag_late");
  assert_int_equal(pgtag_ctx_set_deadline(ctx, 1), PGTAG_OK);
  usleep(5000);
  assert_int_equal(query_in(pool, ctx, "INSERT INTO pgtag_late VALUES ('pgtag_never_sent')", &q),
                   PGTAG_OK);
  assert_int_equal(acquire_in(pool, ctx, &acq), PGTAG_OK);
  assert_int_equal(q.calls, 0); /* not inside the call */
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  assert_true(run_until(&loop, &q.calls, 1, 5000));
  assert_done(&q, ctx, PGTAG_ETIMEDOUT);
  assert_done(&acq, ctx, PGTAG_ETIMEDOUT);
  assert_int_equal(admin_int("SELECT count(*) FROM pgtag_late"), 0);
  assert_int_equal(admin_int("SELECT count(*) FROM pg_stat_statements "
                             "WHERE query LIKE '%pgtag_never_sent%'"),
                   0);
  /* a cleared deadline lets the request run again */
  assert_int_equal(pgtag_ctx_set_deadline(ctx, 0), PGTAG_OK);
  assert_int_equal(pgtag_ctx_time_left_ms(ctx), -1);
  memset(&q, 0, sizeof q);
  query_in(pool, ctx, "SELECT 'in time'", &q);
  assert_true(run_until(&loop, &q.calls, 1, 5000));
  assert_done(&q, ctx, PGTAG_OK);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* A held connection: its running query is cancelled at the deadline, the
 * query queued behind it fails unsent, and the connection stays held
 * until its holder releases it. */
static void deadline_on_a_held_connection(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *ctx = pgtag_ctx_new("held-deadline");
  rec acq = {0}, begin = {0}, slow = {0}, queued = {0};
  acquire_in(pool, ctx, &acq);
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  conn_query_in(acq.conn, ctx, "BEGIN", &begin);
  assert_true(run_until(&loop, &begin.calls, 1, 5000));
  assert_int_equal(pgtag_ctx_set_deadline(ctx, 150), PGTAG_OK);
  conn_query_in(acq.conn, ctx, "SELECT pg_sleep(5)", &slow);
  conn_query_in(acq.conn, ctx, "SELECT 'queued'", &queued);
  assert_true(run_until(&loop, &queued.calls, 1, 5000));
  assert_done(&slow, ctx, PGTAG_ETIMEDOUT);
  assert_string_equal(slow.sqlstate, "57014");
  assert_done(&queued, ctx, PGTAG_ETIMEDOUT);
  assert_true(pgtag_conn_held(acq.conn));
  assert_int_equal(pgtag_release(acq.conn), PGTAG_OK);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* The effective limit is the smallest of the query's own timeout and the
 * time the request has left, and the message says which it was. */
static void the_smaller_limit_wins(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *a = pgtag_ctx_new("short-deadline"), *b = pgtag_ctx_new("short-timeout");
  rec ra = {0}, rb = {0};
  pgtag_query_opts long_timeout = {.timeout_ms = 10000}, short_timeout = {.timeout_ms = 100};
  pgtag_ctx_set_deadline(a, 100);
  pgtag_ctx_set_deadline(b, 10000);
  pgtag_ctx *prev = pgtag_ctx_enter(a);
  pgtag_query_ex(pool, "SELECT pg_sleep(5)", 0, NULL, &long_timeout, rec_result, &ra);
  pgtag_ctx_enter(b);
  pgtag_query_ex(pool, "SELECT pg_sleep(5)", 0, NULL, &short_timeout, rec_result, &rb);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &completions, 2, 5000));
  assert_done(&ra, a, PGTAG_ETIMEDOUT);
  assert_non_null(strstr(ra.message, "deadline"));
  assert_done(&rb, b, PGTAG_ETIMEDOUT);
  assert_non_null(strstr(rb.message, "statement timeout"));
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  test_pool_close(&loop, pool);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(deadline_cancels_the_running_query, setup),
      cmocka_unit_test_setup(deadline_while_waiting_for_a_connection, setup),
      cmocka_unit_test_setup(after_the_deadline_nothing_is_sent, setup),
      cmocka_unit_test_setup(deadline_on_a_held_connection, setup),
      cmocka_unit_test_setup(the_smaller_limit_wins, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
