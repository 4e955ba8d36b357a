/* Behind Debian's PgBouncer in transaction mode (tests/pgbouncer.sh starts
 * it in front of the test server, with 4 server connections): every query
 * reaches the real server with its own request's tag, pipelined or not;
 * a transaction on a held connection stays on one server process; a
 * statement timeout's cancel goes through the pooler; no session state is
 * left on server connections; backend pids are unknown in pooler mode. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "conn.h"
#include "harness.h"
#include "pool.h"

static char bouncer_dir[256];
static char bouncer_conninfo[512];

static int group_setup(void **state) {
  (void)state;
  const char *server = getenv("PGHOST");
  if (server == NULL)
    return -1;
  snprintf(bouncer_dir, sizeof bouncer_dir, "/tmp/pgtag-bouncer.XXXXXX");
  if (mkdtemp(bouncer_dir) == NULL || chmod(bouncer_dir, 0755) != 0)
    return -1; /* as root, PgBouncer runs as postgres: it must get in */
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s/tests/pgbouncer.sh' start '%s/b' '%s' 4", PGTAG_SOURCE_DIR,
           bouncer_dir, server);
  if (system(cmd) != 0)
    return -1; /* a test that needs the pooler and cannot start it fails */
  snprintf(cmd, sizeof cmd, "%s/b", bouncer_dir);
  int port = dir_port(cmd);
  snprintf(bouncer_conninfo, sizeof bouncer_conninfo,
           "host=%s/b port=%d user=postgres dbname=postgres", bouncer_dir, port);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s/tests/pgbouncer.sh' stop '%s/b'; rm -rf '%s'", PGTAG_SOURCE_DIR,
           bouncer_dir, bouncer_dir);
  return system(cmd) == 0 ? 0 : -1;
}

static pgtag_pool *bouncer_pool(int max_conns, int depth, int pooler_mode) {
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.conninfo = bouncer_conninfo;
  cfg.max_conns = max_conns;
  cfg.pipeline_depth = depth;
  /* What the pooler does with pipelines is tested here, not which
   * statements may join one (test_pipeline): on a loaded machine a slow
   * first run must not keep statements out of pipelines. */
  cfg.pipeline_fast_ms = 600000;
  cfg.transaction_pooler = pooler_mode;
  cfg.log_level = PGTAG_LOG_ERROR;
  return test_pool_new(&loop, &cfg);
}

/* The deepest pipeline seen on any connection, and how often a new batch
 * went out behind one whose sync point was still unanswered (several sync
 * points outstanding on one pooler connection), sampled every iteration
 * after the callbacks have sent their queries. */
static int deepest, overlapping;
static void sample_depth(uv_check_t *check) {
  pgtag_pool *pool = check->data;
  for (queue *q = queue_head(&pool->conns); q != &pool->conns; q = q->next) {
    struct conn *c = queue_data(q, struct conn, node);
    if (c->nwire + c->nstaged > deepest)
      deepest = c->nwire + c->nstaged;
    if (c->nsyncs + (c->nstaged > 0) > 1)
      overlapping++;
  }
}

/* Continuous load, as requests arrive at a server: new ones every
 * millisecond whatever is in flight, so a connection gets a new batch
 * while its last one is still out; every callback checks its result. */
typedef struct {
  pgtag_pool *pool;
  int submitted, completed, wrong, next;
} load;

typedef struct {
  load *l;
  pgtag_ctx *ctx;
  int n;
  int calls;
} load_req;

static void load_submit(load *l);

static void load_done(PGresult *res, const pgtag_error *err, void *arg) {
  load_req *r = arg;
  load *l = r->l;
  l->completed++;
  char want[64], tag[64];
  snprintf(want, sizeof want, "%d", r->n);
  snprintf(tag, sizeof tag, "/* requestId=%s */", pgtag_ctx_request_id(r->ctx));
  if (++r->calls != 1 || err != NULL || pgtag_ctx_current() != r->ctx ||
      strcmp(PQgetvalue(res, 0, 0), want) != 0 || strstr(PQgetvalue(res, 0, 1), tag) == NULL)
    l->wrong++;
  pgtag_ctx_unref(r->ctx);
  free(r);
}

static void on_arrivals(uv_timer_t *t) {
  load *l = t->data;
  for (int i = 0; i < 64 && l->submitted - l->completed < 512; i++)
    load_submit(l);
}

static void load_submit(load *l) {
  load_req *r = calloc(1, sizeof *r);
  r->l = l;
  r->n = l->next++;
  char id[32], param[16];
  snprintf(id, sizeof id, "flow-%d", r->n);
  snprintf(param, sizeof param, "%d", r->n);
  r->ctx = pgtag_ctx_new(id);
  const char *vals[1] = {param};
  pgtag_ctx *prev = pgtag_ctx_enter(r->ctx);
  if (pgtag_query(l->pool, "SELECT $1::text, current_query()", 1, vals, load_done, r) != PGTAG_OK)
    fail_msg("submit refused");
  pgtag_ctx_leave(prev);
  l->submitted++;
}

/* 64 concurrent requests over a pool of 8 through 4 server connections:
 * each gets its own parameter back and the server ran it under its own
 * tag; one of them fails (division by zero) and fails nothing else. */
static void requests_through_the_pooler(int depth) {
  enum { N = 64 };
  pgtag_pool *pool = bouncer_pool(8, depth, 1);
  uv_check_t check;
  uv_check_init(&loop, &check);
  check.data = pool;
  uv_check_start(&check, sample_depth);
  uv_unref((uv_handle_t *)&check);
  deepest = 0;
  pgtag_ctx *ctx[N];
  rec r[N];
  char param[N][16];
  memset(r, 0, sizeof r);
  for (int round = 0; round < 3; round++) {
    completions = 0;
    memset(r, 0, sizeof r);
    for (int i = 0; i < N; i++) {
      char id[32];
      snprintf(id, sizeof id, "bouncer-%d-%d", round, i);
      ctx[i] = pgtag_ctx_new(id);
      snprintf(param[i], sizeof param[i], "%d", i == 17 ? 0 : 1000 + i);
      assert_int_equal(query_param_in(pool, ctx[i],
                                      "SELECT (1000000 / $1::int)::text || ' ' || $1, "
                                      "current_query()",
                                      param[i], &r[i]),
                       PGTAG_OK);
    }
    assert_true(run_until(&loop, &completions, N, 20000));
    for (int i = 0; i < N; i++) {
      if (i == 17) {
        assert_done(&r[i], ctx[i], PGTAG_ESERVER);
        assert_string_equal(r[i].sqlstate, "22012");
      } else {
        assert_done(&r[i], ctx[i], PGTAG_OK);
        char want[64], tag[64];
        snprintf(want, sizeof want, "%d %d", 1000000 / (1000 + i), 1000 + i);
        assert_string_equal(r[i].value, want);
        snprintf(tag, sizeof tag, "/* requestId=%s */", pgtag_ctx_request_id(ctx[i]));
        assert_non_null(strstr(r[i].value2, tag));
      }
      pgtag_ctx_unref(ctx[i]);
    }
  }
  /* then a second of continuous load */
  load l = {.pool = pool};
  uv_timer_t arrivals;
  uv_timer_init(&loop, &arrivals);
  arrivals.data = &l;
  uv_timer_start(&arrivals, on_arrivals, 0, 1);
  run_for(&loop, 1000); /* the load's duration, on purpose */
  uv_close((uv_handle_t *)&arrivals, NULL);
  WAIT_FOR(&loop, l.completed == l.submitted, 20000);
  print_message("depth %d: %d requests in a second, deepest pipeline %d, %d samples with "
                "sync points overlapping\n",
                depth, l.completed, deepest, overlapping);
  assert_int_equal(l.completed, l.submitted);
  assert_int_equal(l.wrong, 0);
  assert_true(l.completed > 2 * N);

  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.queries, 3 * N + (uint64_t)l.completed);
  assert_int_equal(st.conns_lost, 0);
  /* pipelined when asked to, one at a time otherwise */
  if (depth > 1)
    assert_true(deepest > 1);
  else
    assert_int_equal(deepest, 1);
  uv_close((uv_handle_t *)&check, NULL);
  test_pool_close(&loop, pool);
}

static void tagged_requests_without_pipelining(void **state) {
  (void)state;
  requests_through_the_pooler(1);
}

static void tagged_requests_pipelined_16_deep(void **state) {
  (void)state;
  requests_through_the_pooler(16);
}

/* Three batches on one connection through the pooler, each sent while the
 * one before is still running: three sync points outstanding at once.  A
 * pooler that gave the server connection back at the first one would
 * lose or misroute the rest; every query gets its own result. */
static void batches_overlap_on_one_connection(void **state) {
  (void)state;
  enum { BATCHES = 3, PER = 4 };
  pgtag_pool *pool = bouncer_pool(1, 16, 1);
  uv_check_t check;
  uv_check_init(&loop, &check);
  check.data = pool;
  uv_check_start(&check, sample_depth);
  uv_unref((uv_handle_t *)&check);
  deepest = overlapping = 0;
  /* One statement the pool knows as a fast one (it joins pipelines only
   * behind those); once the gate is shut, the first of the twelve waits
   * on it, so the others go out behind it while it runs, however slowly
   * the batches go out. */
  const char *sql = "SELECT $1::text, current_query() FROM " GATE;
  gate_shut(); /* makes GATE, open for the warm-up */
  gate_open();
  rec warm = {0};
  assert_int_equal(query_param_in(pool, NULL, sql, "0", &warm), PGTAG_OK);
  assert_true(run_until(&loop, &completions, 1, 5000)); /* connected */
  gate_shut();
  pgtag_ctx *ctx[BATCHES * PER];
  rec r[BATCHES * PER];
  char param[BATCHES * PER][16];
  memset(r, 0, sizeof r);
  for (int b = 0; b < BATCHES; b++) {
    for (int i = b * PER; i < (b + 1) * PER; i++) {
      char id[32];
      snprintf(id, sizeof id, "overlap-%d", i);
      ctx[i] = pgtag_ctx_new(id);
      snprintf(param[i], sizeof param[i], "%d", 500 + i);
      assert_int_equal(query_param_in(pool, ctx[i], sql, param[i], &r[i]), PGTAG_OK);
    }
    uv_run(&loop, UV_RUN_NOWAIT); /* its sync point goes out; then the next batch */
  }
  WAIT_FOR(&loop, deepest == BATCHES * PER, 10000);
  gate_open();
  assert_true(run_until(&loop, &completions, 1 + BATCHES * PER, 10000));
  /* all twelve in flight at once, sent in three loop iterations: three
   * sync points outstanding on the one connection */
  assert_int_equal(deepest, BATCHES * PER);
  for (int i = 0; i < BATCHES * PER; i++) {
    assert_done(&r[i], ctx[i], PGTAG_OK);
    assert_string_equal(r[i].value, param[i]);
    char tag[64];
    snprintf(tag, sizeof tag, "/* requestId=overlap-%d */", i);
    assert_non_null(strstr(r[i].value2, tag));
    pgtag_ctx_unref(ctx[i]);
  }
  uv_close((uv_handle_t *)&check, NULL);
  test_pool_close(&loop, pool);
}

/* What pipelining promises holds through the pooler: single-statement
 * writes of different requests pipelined on one connection each get a
 * transaction of their own, and a SELECT of a function that writes runs
 * exactly once (its batch is read-only; it goes again alone). */
static void pipelined_statements_mean_the_same_through_the_pooler(void **state) {
  (void)state;
  enum { N = 8 };
  pgtag_pool *pool = bouncer_pool(1, 16, 1);
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_bxact (id int PRIMARY KEY, v int); "
             "TRUNCATE pgtag_bxact; "
             "INSERT INTO pgtag_bxact SELECT g, 0 FROM generate_series(1, 8) g; "
             "DROP TABLE IF EXISTS pgtag_bfx_log; "
             "CREATE TABLE pgtag_bfx_log (id serial PRIMARY KEY, note text); "
             "CREATE OR REPLACE FUNCTION pgtag_bfx(t text) RETURNS int LANGUAGE sql VOLATILE "
             "AS 'INSERT INTO pgtag_bfx_log (note) VALUES (t) RETURNING id'");
  const char *update =
      "UPDATE pgtag_bxact SET v = v + 1 WHERE id = $1::int RETURNING pg_current_xact_id()::text";
  const char *const warm[] = {update, "SELECT $1::text", "SELECT pgtag_bfx($1)"};
  for (int i = 0; i < 3; i++) {
    rec w = {0};
    query_param_in(pool, NULL, warm[i], "1", &w);
    assert_true(run_until(&loop, &w.calls, 1, 5000));
    assert_int_equal(w.code, PGTAG_OK);
  }
  completions = 0;
  rec r[N], before = {0}, fx = {0};
  memset(r, 0, sizeof r);
  for (int i = 0; i < N; i++) {
    char row[12];
    snprintf(row, sizeof row, "%d", i + 1);
    query_param_in(pool, NULL, update, row, &r[i]);
  }
  query_param_in(pool, NULL, warm[1], "x", &before);
  query_param_in(pool, NULL, warm[2], "batched", &fx);
  assert_true(run_until(&loop, &completions, N + 2, 10000));
  for (int i = 0; i < N; i++) {
    assert_done(&r[i], NULL, PGTAG_OK);
    for (int j = 0; j < i; j++)
      if (strcmp(r[i].value, r[j].value) == 0)
        fail_msg("updates %d and %d shared a transaction (%s)", j, i, r[i].value);
  }
  assert_done(&fx, NULL, PGTAG_OK);
  assert_string_equal(fx.value, "2");
  assert_int_equal(admin_int("SELECT last_value FROM pgtag_bfx_log_id_seq"), 2);
  assert_int_equal(admin_int("SELECT sum(v) FROM pgtag_bxact"), N + 1);
  test_pool_close(&loop, pool);
}

/* Eight requests each run a transaction on a held connection at once,
 * through 4 server connections: within a transaction every statement sees
 * the same server process and transaction ID. */
static void held_transaction_stays_on_one_backend(void **state) {
  (void)state;
  enum { N = 8, STEPS = 4 };
  pgtag_pool *pool = bouncer_pool(N, 4, 1);
  pgtag_ctx *ctx[N];
  rec acq[N], step[N][STEPS], begin[N], commit[N];
  memset(acq, 0, sizeof acq);
  memset(step, 0, sizeof step);
  memset(begin, 0, sizeof begin);
  memset(commit, 0, sizeof commit);
  for (int i = 0; i < N; i++) {
    char id[32];
    snprintf(id, sizeof id, "tx-%d", i);
    ctx[i] = pgtag_ctx_new(id);
    assert_int_equal(acquire_in(pool, ctx[i], &acq[i]), PGTAG_OK);
  }
  assert_true(run_until(&loop, &completions, N, 10000));
  for (int i = 0; i < N; i++) {
    assert_done(&acq[i], ctx[i], PGTAG_OK);
    assert_int_equal(pgtag_conn_backend_pid(acq[i].conn), 0); /* unknown behind a pooler */
    assert_int_equal(conn_query_in(acq[i].conn, ctx[i], "BEGIN", &begin[i]), PGTAG_OK);
    for (int s = 0; s < STEPS; s++)
      assert_int_equal(conn_query_in(acq[i].conn, ctx[i],
                                     "SELECT pg_backend_pid()::text, txid_current()::text "
                                     "FROM pg_sleep(0.01)",
                                     &step[i][s]),
                       PGTAG_OK);
    assert_int_equal(conn_query_in(acq[i].conn, ctx[i], "COMMIT", &commit[i]), PGTAG_OK);
  }
  assert_true(run_until(&loop, &completions, N + N * (STEPS + 2), 20000));
  for (int i = 0; i < N; i++) {
    assert_done(&begin[i], ctx[i], PGTAG_OK);
    assert_done(&commit[i], ctx[i], PGTAG_OK);
    for (int s = 0; s < STEPS; s++) {
      assert_done(&step[i][s], ctx[i], PGTAG_OK);
      assert_string_equal(step[i][s].value, step[i][0].value);   /* one backend */
      assert_string_equal(step[i][s].value2, step[i][0].value2); /* one transaction */
    }
    assert_int_equal(pgtag_release(acq[i].conn), PGTAG_OK);
    pgtag_ctx_unref(ctx[i]);
  }
  test_pool_close(&loop, pool);
}

/* The statement timeout cancels the query on the real server: PgBouncer
 * forwards the cancel request to the backend running it. */
static void statement_timeout_cancels_through_the_pooler(void **state) {
  (void)state;
  pgtag_pool *pool = bouncer_pool(2, 1, 1);
  pgtag_ctx *ctx = pgtag_ctx_new("bouncer-timeout");
  rec r = {0};
  pgtag_query_opts opts = {.timeout_ms = 300};
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  uint64_t t0 = now_ms();
  assert_int_equal(pgtag_query_ex(pool, "SELECT pg_sleep(30)", 0, NULL, &opts, rec_result, &r),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &completions, 1, 10000));
  assert_done(&r, ctx, PGTAG_ETIMEDOUT);
  assert_string_equal(r.sqlstate, "57014");
  assert_true(now_ms() - t0 < 3000);
  assert_int_equal(admin_int("SELECT count(*) FROM pg_stat_activity "
                             "WHERE query LIKE '%requestId=bouncer-timeout %pg_sleep%' "
                             "AND state = 'active' AND pid <> pg_backend_pid()"),
                   0);
  /* the pool goes on: the next query runs */
  rec next = {0};
  assert_int_equal(query_in(pool, ctx, "SELECT 1", &next), PGTAG_OK);
  assert_true(run_until(&loop, &completions, 2, 5000));
  assert_done(&next, ctx, PGTAG_OK);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* pgtag leaves nothing behind on the server connections PgBouncer shares:
 * no named prepared statement, no setting changed from its default. */
static void no_session_state_on_server_connections(void **state) {
  (void)state;
  pgtag_pool *pool = bouncer_pool(4, 4, 1);
  pgtag_ctx *ctx = pgtag_ctx_new("bouncer-state");
  enum { N = 40 };
  rec r[N];
  memset(r, 0, sizeof r);
  for (int i = 0; i < N; i++)
    assert_int_equal(query_in(pool, ctx,
                              i % 2 ? "SELECT count(*)::text FROM pg_prepared_statements"
                                    : "SELECT count(*)::text FROM pg_settings "
                                      "WHERE source = 'session'",
                              &r[i]),
                     PGTAG_OK);
  assert_true(run_until(&loop, &completions, N, 10000));
  for (int i = 0; i < N; i++) {
    assert_done(&r[i], ctx, PGTAG_OK);
    assert_string_equal(r[i].value, "0");
  }
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

static pgtag_leak seen_leak;
static int leaks;
static void on_leak(const pgtag_leak *l, void *arg) {
  (void)arg;
  seen_leak = *l;
  leaks++;
}

/* In pooler mode a leak report says the backend is unknown (0), not the
 * pid PgBouncer made up. */
static void leak_report_has_no_made_up_pid(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.conninfo = bouncer_conninfo;
  cfg.transaction_pooler = 1;
  cfg.on_leak = on_leak;
  cfg.log_level = PGTAG_LOG_ERROR;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("bouncer-leak");
  rec acq = {0};
  leaks = 0;
  assert_int_equal(acquire_in(pool, ctx, &acq), PGTAG_OK);
  assert_true(run_until(&loop, &completions, 1, 5000));
  assert_done(&acq, ctx, PGTAG_OK);
  pgtag_ctx_end(ctx);
  run_until(&loop, &leaks, 1, 10000 * time_scale());
  assert_int_equal(leaks, 1);
  assert_int_equal(seen_leak.backend_pid, 0);
  assert_int_equal(pgtag_release(acq.conn), PGTAG_OK);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(tagged_requests_without_pipelining, loop_setup),
      cmocka_unit_test_setup(tagged_requests_pipelined_16_deep, loop_setup),
      cmocka_unit_test_setup(batches_overlap_on_one_connection, loop_setup),
      cmocka_unit_test_setup(pipelined_statements_mean_the_same_through_the_pooler, loop_setup),
      cmocka_unit_test_setup(held_transaction_stays_on_one_backend, loop_setup),
      cmocka_unit_test_setup(statement_timeout_cancels_through_the_pooler, loop_setup),
      cmocka_unit_test_setup(no_session_state_on_server_connections, loop_setup),
      cmocka_unit_test_setup(leak_report_has_no_made_up_pid, loop_setup),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
