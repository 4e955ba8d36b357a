/* pgtag demo: a batch of concurrent simulated HTTP requests against a real
 * PostgreSQL, then what the server saw.
 *
 *   ./run demo            (starts a throwaway server and runs this)
 *   pgtag_demo CONNINFO   (against a server of your own)
 *
 * Each request gets a context with its request ID and route.  Handlers never
 * pass the context around: a logger reads pgtag_ctx_current(), and pgtag
 * makes the right context current in every callback and tags every query.
 * While the requests run, an observer with no context reads
 * pg_stat_activity; afterwards, pg_stat_statements.
 *
 * One request has a bug: it forgets to release its connection.  pgtag
 * reports it the moment the request ends (request ID, acquire site, backend,
 * last query) and, with PGTAG_LEAK_RECLAIM, takes the connection back so
 * the pool does not shrink. */
#include "pgtag.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NREQUESTS 24
#define LEAKY_REQUEST 7 /* a POST /orders that forgets pgtag_release */

static pgtag_pool *pool;     /* the application's pool */
static pgtag_pool *observer; /* the DBA's view: no request context */
static int finished, wrong_context, failures, leaks;
static char leaky_id[64];

/* The logger every handler uses: the request comes from the context. */
static void log_line(const char *fmt, ...) {
  pgtag_ctx *ctx = pgtag_ctx_current();
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const char *route = ctx ? pgtag_ctx_get(ctx, "route") : NULL;
  printf("  [%-8.8s %-14s] %s\n", ctx ? pgtag_ctx_request_id(ctx) : "-", route ? route : "-", msg);
}

typedef struct {
  pgtag_ctx *ctx;
  pgtag_conn conn;
  int n;
  char customer[16];
  char amount[16];
} request;

static void check_context(request *req) {
  if (pgtag_ctx_current() != req->ctx)
    wrong_context++;
}

static void request_done(request *req) {
  pgtag_request_stats st;
  pgtag_ctx_stats(req->ctx, &st);
  log_line("response sent: %llu quer%s, %.1f ms in the database", (unsigned long long)st.queries,
           st.queries == 1 ? "y" : "ies", (double)st.db_time_us / 1000);
  pgtag_ctx_end(req->ctx);
  pgtag_ctx_unref(req->ctx);
  free(req);
  finished++;
}

static int failed(const pgtag_error *err) {
  if (err == NULL)
    return 0;
  log_line("error: %s (%s)", err->message, err->sqlstate ? err->sqlstate : "-");
  failures++;
  return 1;
}

/* GET /customers/:id/orders: two one-shot queries, the second chained from
 * the first's callback. */
static void orders_total(PGresult *res, const pgtag_error *err, void *arg) {
  request *req = arg;
  check_context(req);
  if (!failed(err))
    log_line("total for %s: %s", req->customer, PQgetvalue(res, 0, 0));
  request_done(req);
}

static void orders_listed(PGresult *res, const pgtag_error *err, void *arg) {
  request *req = arg;
  const char *params[1] = {req->customer};
  check_context(req);
  if (failed(err)) {
    request_done(req);
    return;
  }
  log_line("%d orders for %s", PQntuples(res), req->customer);
  pgtag_query(pool, "SELECT coalesce(sum(amount), 0) FROM demo_orders WHERE customer = $1", 1,
              params, orders_total, req);
}

/* POST /orders: a transaction on a held connection.  The statements are
 * queued at once; pgtag runs them in order on the one backend. */
static void order_step(PGresult *res, const pgtag_error *err, void *arg) {
  request *req = arg;
  check_context(req);
  if (!failed(err) && PQntuples(res) == 1 && PQnfields(res) == 1 &&
      strcmp(PQfname(res, 0), "id") == 0)
    log_line("inserted order %s", PQgetvalue(res, 0, 0));
}

static void order_committed(PGresult *res, const pgtag_error *err, void *arg) {
  request *req = arg;
  (void)res;
  check_context(req);
  if (!failed(err))
    log_line("committed on backend %d", pgtag_conn_backend_pid(req->conn));
  if (req->n == LEAKY_REQUEST) {
    snprintf(leaky_id, sizeof leaky_id, "%s", pgtag_ctx_request_id(req->ctx));
    log_line("(bug) returning without pgtag_release");
  } else {
    pgtag_release(req->conn);
  }
  request_done(req);
}

static void order_conn(pgtag_conn conn, const pgtag_error *err, void *arg) {
  request *req = arg;
  const char *params[2] = {req->customer, req->amount};
  check_context(req);
  if (failed(err)) {
    request_done(req);
    return;
  }
  req->conn = conn;
  log_line("got a connection");
  pgtag_conn_query(conn, "BEGIN", 0, NULL, order_step, req);
  pgtag_conn_query(conn, "INSERT INTO demo_orders (customer, amount) VALUES ($1, $2) RETURNING id",
                   2, params, order_step, req);
  /* some work inside the transaction, slow enough to be seen */
  pgtag_conn_query(conn, "SELECT pg_sleep(0.3)", 0, NULL, order_step, req);
  pgtag_conn_query(conn, "COMMIT", 0, NULL, order_committed, req);
}

/* GET /report: one slow query. */
static void report_done(PGresult *res, const pgtag_error *err, void *arg) {
  request *req = arg;
  check_context(req);
  if (!failed(err))
    log_line("report: %s orders", PQgetvalue(res, 0, 1));
  request_done(req);
}

/* Leak reports arrive in the leaking request's context, so the logger
 * prints its ID like any other line of that request. */
static void on_leak(const pgtag_leak *leak, void *arg) {
  static const char *tx[] = {"no transaction", "query running", "in transaction",
                             "failed transaction", "connection lost"};
  (void)arg;
  leaks++;
  pgtag_ctx *ctx = pgtag_ctx_current();
  if (ctx == NULL || leak->request_id == NULL ||
      strcmp(leak->request_id, pgtag_ctx_request_id(ctx)) != 0 ||
      strcmp(leak->request_id, leaky_id) != 0)
    wrong_context++;
  log_line("LEAK (%s): connection to backend %d, acquired at %s:%d in %s() %llu ms "
           "ago, %s, last query: %s%s",
           pgtag_leak_kind_name(leak->kind), leak->backend_pid, leak->file, leak->line, leak->func,
           (unsigned long long)leak->held_ms, tx[leak->tx_state], leak->last_sql,
           leak->reclaimed ? "; the pool takes it back" : "");
}

static void start_request(int n) {
  static const char *routes[] = {"GET /orders", "POST /orders", "GET /report"};
  request *req = calloc(1, sizeof *req);
  req->n = n;
  req->ctx = pgtag_ctx_new(NULL); /* a fresh UUID, as for a request with no X-Request-Id */
  pgtag_ctx_set(req->ctx, "route", routes[n % 3]);
  snprintf(req->customer, sizeof req->customer, "customer-%d", n % 5);
  snprintf(req->amount, sizeof req->amount, "%d", 10 + n);

  pgtag_ctx *previous = pgtag_ctx_enter(req->ctx); /* what a server's middleware does */
  log_line("request received");
  const char *params[1] = {req->customer};
  pgtag_errcode rc;
  switch (n % 3) {
  case 0:
    rc = pgtag_query(pool, "SELECT id, amount FROM demo_orders WHERE customer = $1", 1, params,
                     orders_listed, req);
    break;
  case 1:
    rc = pgtag_acquire(pool, order_conn, req);
    break;
  default:
    rc = pgtag_query(pool, "SELECT pg_sleep(0.4), count(*) FROM demo_orders", 0, NULL, report_done,
                     req);
    break;
  }
  if (rc != PGTAG_OK) {
    log_line("refused: %s", pgtag_strerror(rc));
    failures++;
    request_done(req);
  }
  pgtag_ctx_leave(previous);
}

/* ------------------------------------------------------------------------
 * The database's side of the story
 * ------------------------------------------------------------------------ */

static void print_rows(PGresult *res, int width) {
  for (int r = 0; r < PQntuples(res); r++) {
    printf("  ");
    for (int c = 0; c < PQnfields(res); c++) {
      if (c + 1 < PQnfields(res))
        printf("%-8s ", PQgetvalue(res, r, c));
      else
        printf("%.*s", width, PQgetvalue(res, r, c));
    }
    printf("\n");
  }
}

static void on_pools_closed(void *arg) { (*(int *)arg)++; }
static int pools_closed;

static void statements_seen(PGresult *res, const pgtag_error *err, void *arg) {
  (void)arg;
  printf("\npg_stat_statements (one text per normalized statement, so the request ID\n"
         "there is a sample: the first request that ran it):\n");
  if (err != NULL)
    printf("  unavailable: %s\n", err->message);
  else
    print_rows(res, 100);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  printf("\n%d requests served, callbacks in the wrong request: %d, errors: %d,\n"
         "leaks reported: %d (connections reclaimed: %llu)\n",
         finished, wrong_context, failures, leaks, (unsigned long long)st.reclaimed);
  pgtag_pool_close(pool, on_pools_closed, &pools_closed);
  pgtag_pool_close(observer, on_pools_closed, &pools_closed);
}

static void activity_seen(PGresult *res, const pgtag_error *err, void *arg) {
  (void)arg;
  printf("\npg_stat_activity while the requests run (the observer has no context,\n"
         "so its own query is untagged and not listed):\n");
  if (err != NULL)
    printf("  unavailable: %s\n", err->message);
  else
    print_rows(res, 100);
  printf("\n");
}

static void on_observe(uv_timer_t *timer) {
  (void)timer;
  pgtag_query(observer,
              "SELECT pid::text, state, left(query, 100) FROM pg_stat_activity "
              "WHERE query LIKE '/* requestId=%' ORDER BY query",
              0, NULL, activity_seen, NULL);
}

static void on_check(uv_check_t *check) {
  if (finished < NREQUESTS)
    return;
  uv_check_stop(check);
  uv_close((uv_handle_t *)check, NULL);
  pgtag_query(observer,
              "SELECT calls::text, left(query, 100) FROM pg_stat_statements "
              "WHERE query LIKE '/* requestId=%' ORDER BY calls DESC, query LIMIT 8",
              0, NULL, statements_seen, NULL);
}

static uv_timer_t observe_timer;
static uv_check_t done_check;

static void start_requests(void) {
  printf("\n%d concurrent requests over a pool of 4 connections:\n", NREQUESTS);
  for (int i = 0; i < NREQUESTS; i++)
    start_request(i);
  uv_timer_start(&observe_timer, on_observe, 200, 0);
  uv_check_start(&done_check, on_check);
}

static void setup_done(PGresult *res, const pgtag_error *err, void *arg) {
  (void)res;
  (void)arg;
  if (err != NULL)
    printf("note: pg_stat_statements is not installed here (%s)\n", err->message);
  start_requests();
}

static void table_ready(PGresult *res, const pgtag_error *err, void *arg) {
  (void)res;
  (void)arg;
  if (err != NULL) {
    fprintf(stderr, "setup failed: %s\n", err->message);
    exit(1);
  }
  pgtag_query(observer, "SELECT pg_stat_statements_reset()", 0, NULL, setup_done, NULL);
}

int main(int argc, char **argv) {
  const char *conninfo = argc > 1 ? argv[1] : getenv("PGTAG_TEST_CONNINFO");
  if (conninfo == NULL) {
    fprintf(stderr, "usage: pgtag_demo CONNINFO\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  uv_loop_t *loop = uv_default_loop();

  pgtag_pool_config cfg;
  pgtag_pool_config_init(&cfg);
  cfg.conninfo = conninfo;
  cfg.name = "app";
  cfg.max_conns = 4;
  cfg.on_leak = on_leak;
  cfg.leak_policy = PGTAG_LEAK_RECLAIM;
  if (pgtag_pool_new(loop, &cfg, &pool) != PGTAG_OK)
    return 1;
  cfg.on_leak = NULL;
  cfg.name = "observer";
  cfg.max_conns = 1;
  if (pgtag_pool_new(loop, &cfg, &observer) != PGTAG_OK)
    return 1;
  uv_timer_init(loop, &observe_timer);
  uv_check_init(loop, &done_check);

  printf("pgtag demo: every query carries its request's ID to the server,\n"
         "every callback runs in its own request's context.\n");
  pgtag_query(observer,
              "CREATE TABLE IF NOT EXISTS demo_orders (id serial PRIMARY KEY, "
              "customer text NOT NULL, amount int NOT NULL)",
              0, NULL, table_ready, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&observe_timer, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(loop);
  if (pools_closed != 2 || rc != 0) {
    fprintf(stderr, "the loop was left with handles open\n");
    return 1;
  }
  return wrong_context == 0 && failures == 0 && finished == NREQUESTS && leaks == 1 ? 0 : 1;
}
