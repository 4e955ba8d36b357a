/* Failover on real servers: a primary and its streaming standby
 * (pg_basebackup -R), a pool with a multi-host conninfo
 * (target_session_attrs=read-write) and every other setting at its
 * default, 64 requests writing all the time.  The primary is stopped
 * (immediate) and the standby promoted 0.3 s later, or 2 s later (long
 * enough for a backoff to grow); or the primary is fenced read-only
 * (writes fail with 25006) and the standby promoted.  Every operation ends
 * exactly once, in its own request; the pool writes on the new primary
 * within 1 s of the promotion; it makes no storm of connection attempts
 * meanwhile; nothing is written twice; no connection to the old primary
 * survives. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"

enum { CONCURRENCY = 64, MAX_OPS = 200000 };

typedef struct writer writer;

typedef struct {
  writer *w;
  pgtag_ctx *ctx;
  int id;
} write_op;

struct writer {
  pgtag_pool *pool;
  int stop;
  int submitted, completed, ok, econn, read_only, other, wrong_ctx, twice;
  uint64_t first_ok_after; /* now_ms() of the first success after `since` */
  volatile uint64_t since; /* set by the failover thread once promoted */
  int next_id;
  unsigned char calls[MAX_OPS];
  char other_msg[256];
};

static void write_submit(writer *w);

static void write_done(PGresult *res, const pgtag_error *err, void *arg) {
  write_op *o = arg;
  writer *w = o->w;
  (void)res;
  if (++w->calls[o->id] > 1)
    w->twice++;
  if (pgtag_ctx_current() != o->ctx)
    w->wrong_ctx++;
  w->completed++;
  if (err == NULL) {
    w->ok++;
    if (w->since != 0 && w->first_ok_after == 0)
      w->first_ok_after = now_ms();
  } else if (err->code == PGTAG_ECONN) {
    w->econn++;
    if (err->sqlstate != NULL && strcmp(err->sqlstate, "25006") == 0)
      w->read_only++;
  } else {
    w->other++;
    snprintf(w->other_msg, sizeof w->other_msg, "%s: %s (%s)", pgtag_strerror(err->code),
             err->message, err->sqlstate ? err->sqlstate : "-");
  }
  pgtag_ctx_end(o->ctx);
  pgtag_ctx_unref(o->ctx);
  free(o);
  if (!w->stop)
    write_submit(w);
}

/* One request: a write with an ID of its own. */
static void write_submit(writer *w) {
  if (w->next_id >= MAX_OPS)
    return;
  write_op *o = calloc(1, sizeof *o);
  o->w = w;
  o->id = w->next_id++;
  char id[32];
  snprintf(id, sizeof id, "w%d", o->id);
  o->ctx = pgtag_ctx_new(id);
  const char *params[] = {id};
  pgtag_ctx *prev = pgtag_ctx_enter(o->ctx);
  pgtag_errcode rc =
      pgtag_query(w->pool, "INSERT INTO fo_writes (id) VALUES ($1)", 1, params, write_done, o);
  pgtag_ctx_leave(prev);
  if (rc != PGTAG_OK)
    fail_msg("submit refused: %s", pgtag_strerror(rc));
  w->submitted++;
}

typedef struct {
  server_pair *pair;
  int fence; /* fence the primary read-only instead of stopping it */
  int promote_after_ms;
  writer *w;
  volatile uint64_t broken_at; /* now_ms() when the primary stopped writing */
  volatile int done;
} failover;

/* Static: should the wait for it fail, the thread still writes here. */
static failover failing;

/* The failure's timeline, on purpose: writes flow a while longer, then no
 * primary takes writes for at least 300 ms, then the standby is promoted. */
static void *failover_thread(void *arg) {
  failover *f = arg;
  struct timespec pause = {0, 300 * 1000000};
  struct timespec promote = {f->promote_after_ms / 1000,
                             (long)(f->promote_after_ms % 1000) * 1000000};
  nanosleep(&pause, NULL);
  f->broken_at = now_ms();
  if (f->fence) {
    /* what a failover tool does to a primary it cannot stop */
    admin_exec_on(f->pair->primary, "ALTER SYSTEM SET default_transaction_read_only = on");
    admin_exec_on(f->pair->primary, "SELECT pg_reload_conf()");
  } else {
    pair_ctl(f->pair, "p", "stop", "immediate");
  }
  nanosleep(&promote, NULL);
  pair_ctl(f->pair, "s", "promote", NULL);
  f->w->since = now_ms();
  f->done = 1;
  return NULL;
}

/* The pair of the failover tests, stopped and removed in their teardown,
 * failed or not. */
static server_pair pair;

static int stop_pair(void **state) {
  (void)state;
  if (pair.dir[0] != '\0')
    pair_stop(&pair);
  pair.dir[0] = '\0';
  return 0;
}

static void failover_under_writes(int fence, int promote_after_ms) {
  pair_start(&pair);
  admin_exec_on(pair.primary, "CREATE TABLE fo_writes (id text, at timestamptz DEFAULT now())");
  /* the standby has the table before the load starts */
  const char *has_table = "SELECT count(*) FROM pg_tables WHERE tablename = 'fo_writes'";
  WAIT_FOR(&loop, admin_int_on(pair.standby, has_table) == 1, 10000);
  assert_int_equal(admin_int_on(pair.standby, has_table), 1);

  char conninfo[1024];
  snprintf(conninfo, sizeof conninfo,
           "host=%s/p,%s/s port=%d,%d user=postgres dbname=postgres "
           "target_session_attrs=read-write application_name=pgtag_failover",
           pair.dir, pair.dir, pair.primary_port, pair.standby_port);
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.conninfo = conninfo;
  cfg.max_conns = 8;
  cfg.log_level = PGTAG_LOG_ERROR; /* the rest as a user gets it */
  writer *w = calloc(1, sizeof *w);
  w->pool = test_pool_new(&loop, &cfg);
  for (int i = 0; i < CONCURRENCY; i++)
    write_submit(w);
  /* writes flow before the failover (under valgrind, connecting alone can
   * take longer than the whole load does natively) */
  WAIT_FOR(&loop, w->ok > CONCURRENCY, 20000);
  assert_true(w->ok > CONCURRENCY);

  failing = (failover){.pair = &pair, .fence = fence, .promote_after_ms = promote_after_ms, .w = w};
  failover *f = &failing;
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, failover_thread, f), 0);
  WAIT_FOR(&loop, f->done, 180000); /* pg_ctl gives up after 60 s, twice */
  assert_true(f->done);
  pthread_join(t, NULL);
  /* writes go on until the new primary has taken 500 of them */
  int ok_at_promotion = w->ok;
  WAIT_FOR(&loop, w->ok >= ok_at_promotion + 500, 20000);
  w->stop = 1;
  WAIT_FOR(&loop, w->completed == w->submitted, 20000);

  pgtag_stats st;
  pgtag_pool_stats(w->pool, &st);
  uint64_t outage_ms = w->first_ok_after - f->broken_at;
  print_message("%s, promoted %d ms later: %d writes, %d ok, %d ECONN (%d of them 25006), "
                "%d lost connections, %d reconnects, %d failed connection attempts in %llu ms "
                "of outage; the new primary took a write %lld ms after the promotion\n",
                fence ? "fenced primary" : "stopped primary", promote_after_ms, w->submitted, w->ok,
                w->econn, w->read_only, (int)st.conns_lost, (int)st.reconnects,
                (int)st.connect_failures, (unsigned long long)outage_ms,
                w->first_ok_after ? (long long)(w->first_ok_after - w->since) : -1LL);
  /* No reconnect storm: while no server was writable the pool backed off
   * (the defaults: 100 ms doubling to 500 ms while requests wait), with at
   * most one round of max_conns attempts per backoff delay (250 ms at
   * least once at the cap), not an attempt per waiting request or per
   * failed write.  In fact one round, when the connections were lost, then
   * one attempt at a time: delays of at least 50, 100, 200, then 250 ms. */
  pgtag_pool_config defaults;
  pgtag_pool_config_init(&defaults);
  uint64_t shortest = (uint64_t)defaults.reconnect_waiting_max_ms / 2;
  assert_int_equal(shortest, 250);
  assert_true(st.connect_failures <= (uint64_t)cfg.max_conns * (2 + outage_ms / shortest));
  assert_true(st.connect_failures <= (uint64_t)cfg.max_conns + 4 + outage_ms / shortest);
  if (w->other > 0)
    fail_msg("%d unexpected outcomes, last: %s", w->other, w->other_msg);
  assert_int_equal(w->completed, w->submitted); /* every operation ended once */
  assert_int_equal(w->twice, 0);
  for (int i = 0; i < w->next_id; i++)
    assert_int_equal(w->calls[i], 1);
  assert_int_equal(w->wrong_ctx, 0);
  assert_true(w->first_ok_after != 0);
  assert_true(w->first_ok_after - w->since < 1000);
  assert_true(w->ok >= ok_at_promotion + 500);
  if (fence)
    assert_true(w->read_only > 0); /* the fenced writes failed as lost connections */

  /* nothing written twice, on the server that has the data now */
  assert_int_equal(admin_int_on(pair.standby,
                                "SELECT count(*) - count(DISTINCT id) FROM fo_writes"),
                   0);
  /* every connection of the pool is on the new primary ... */
  enum { HOLD = 8 };
  rec acq[HOLD], port[HOLD];
  memset(acq, 0, sizeof acq);
  memset(port, 0, sizeof port);
  completions = 0;
  for (int i = 0; i < HOLD; i++)
    assert_int_equal(acquire_in(w->pool, NULL, &acq[i]), PGTAG_OK);
  assert_true(run_until(&loop, &completions, HOLD, 10000));
  for (int i = 0; i < HOLD; i++) {
    assert_done(&acq[i], NULL, PGTAG_OK);
    assert_int_equal(conn_query_in(acq[i].conn, NULL, "SELECT current_setting('port')", &port[i]),
                     PGTAG_OK);
  }
  assert_true(run_until(&loop, &completions, 2 * HOLD, 10000));
  for (int i = 0; i < HOLD; i++) {
    assert_done(&port[i], NULL, PGTAG_OK);
    assert_int_equal(atoi(port[i].value), pair.standby_port);
    pgtag_release(acq[i].conn);
  }
  /* ... and, where the old primary still runs, none is left there */
  if (fence)
    assert_int_equal(admin_int_on(pair.primary, "SELECT count(*) FROM pg_stat_activity "
                                                "WHERE application_name = 'pgtag_failover'"),
                     0);
  test_pool_close(&loop, w->pool);
  free(w);
}

static void primary_stopped_standby_promoted(void **state) {
  (void)state;
  failover_under_writes(0, 300);
}

/* While nobody could write for 2 s, the backoff reached its ceiling: the
 * new primary is still found within 1 s. */
static void primary_stopped_standby_promoted_2s_later(void **state) {
  (void)state;
  failover_under_writes(0, 2000);
}

static void primary_fenced_read_only_standby_promoted(void **state) {
  (void)state;
  failover_under_writes(1, 300);
}

/* A write refused because the application made its own transaction read
 * only is the application's error (PGTAG_ESERVER): the server is not
 * read-only, and the connection stays. */
static void read_only_transaction_keeps_its_connection(void **state) {
  (void)state;
  admin_exec("CREATE TABLE IF NOT EXISTS ro_writes (x int)");
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  cfg.log_level = PGTAG_LOG_ERROR;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("ro-tx");
  rec acq = {0}, begin = {0}, insert = {0}, rollback = {0}, after = {0};
  assert_int_equal(acquire_in(pool, ctx, &acq), PGTAG_OK);
  assert_true(run_until(&loop, &completions, 1, 5000));
  int pid = pgtag_conn_backend_pid(acq.conn);
  assert_true(pid > 0);
  conn_query_in(acq.conn, ctx, "BEGIN READ ONLY", &begin);
  conn_query_in(acq.conn, ctx, "INSERT INTO ro_writes VALUES (1)", &insert);
  conn_query_in(acq.conn, ctx, "ROLLBACK", &rollback);
  assert_true(run_until(&loop, &completions, 4, 5000));
  assert_done(&insert, ctx, PGTAG_ESERVER);
  assert_string_equal(insert.sqlstate, "25006");
  assert_done(&rollback, ctx, PGTAG_OK);
  assert_int_equal(pgtag_conn_backend_pid(acq.conn), pid);
  assert_int_equal(pgtag_release(acq.conn), PGTAG_OK);
  /* the one-shot query after it runs on the same backend */
  assert_int_equal(query_in(pool, ctx, "SELECT pg_backend_pid()", &after), PGTAG_OK);
  assert_true(run_until(&loop, &completions, 5, 5000));
  assert_done(&after, ctx, PGTAG_OK);
  assert_int_equal(atoi(after.value), pid);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.conns_lost, 0);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(primary_stopped_standby_promoted, loop_setup, stop_pair),
      cmocka_unit_test_setup_teardown(primary_stopped_standby_promoted_2s_later, loop_setup,
                                      stop_pair),
      cmocka_unit_test_setup_teardown(primary_fenced_read_only_standby_promoted, loop_setup,
                                      stop_pair),
      cmocka_unit_test_setup(read_only_transaction_keeps_its_connection, loop_setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
