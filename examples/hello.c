/* A first pgtag program: three requests, each with its own context, each
 * running a query and then a transaction on a connection it holds.
 *
 *   cc hello.c $(pkg-config --cflags --libs pgtag) -o hello
 *   ./hello "host=/var/run/postgresql dbname=postgres"
 */
#include <pgtag.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
  pgtag_pool *pool;
  pgtag_ctx *ctx;  /* current again in every callback of this request */
  pgtag_conn conn; /* held for its transaction */
  int step;
} request;

static const char *const transaction[] = {"BEGIN", "SELECT txid_current()", "COMMIT"};
static int running, failures;

static void finish(request *r, const pgtag_error *err) {
  if (err != NULL) {
    fprintf(stderr, "request %s: %s (SQLSTATE %s)\n", pgtag_ctx_request_id(r->ctx), err->message,
            err->sqlstate ? err->sqlstate : "none");
    failures++;
  }
  if (pgtag_conn_held(r->conn))
    pgtag_release(r->conn); /* rolls back whatever an error left open */
  pgtag_ctx_end(r->ctx);    /* a connection still held after this is a leak */
  pgtag_ctx_unref(r->ctx);
  if (--running == 0)
    pgtag_pool_close(r->pool, NULL, NULL); /* then uv_run returns */
  free(r);
}

static void on_step(PGresult *res, const pgtag_error *err, void *arg) {
  request *r = arg;
  if (err == NULL && r->step == 1)
    printf("request %s: transaction %s\n", pgtag_ctx_request_id(r->ctx), PQgetvalue(res, 0, 0));
  if (err != NULL || ++r->step == 3)
    finish(r, err);
  else if (pgtag_conn_query(r->conn, transaction[r->step], 0, NULL, on_step, r) != PGTAG_OK)
    finish(r, &(pgtag_error){PGTAG_EINVAL, NULL, "pgtag_conn_query refused"});
}

static void on_acquired(pgtag_conn conn, const pgtag_error *err, void *arg) {
  request *r = arg;
  r->conn = conn;
  if (err != NULL)
    finish(r, err);
  else if (pgtag_conn_query(conn, transaction[0], 0, NULL, on_step, r) != PGTAG_OK)
    finish(r, &(pgtag_error){PGTAG_EINVAL, NULL, "pgtag_conn_query refused"});
}

static void on_query(PGresult *res, const pgtag_error *err, void *arg) {
  request *r = arg;
  if (err != NULL) {
    finish(r, err);
    return;
  }
  /* The request's context is current here: the acquire is this request's too. */
  printf("request %s: the server saw: %s\n", pgtag_ctx_request_id(pgtag_ctx_current()),
         PQgetvalue(res, 0, 0));
  if (pgtag_acquire(r->pool, on_acquired, r) != PGTAG_OK)
    finish(r, &(pgtag_error){PGTAG_EINVAL, NULL, "pgtag_acquire refused"});
}

int main(int argc, char **argv) {
  uv_loop_t loop;
  pgtag_pool_config cfg;
  pgtag_pool *pool;
  uv_loop_init(&loop);
  pgtag_pool_config_init(&cfg);
  cfg.conninfo = argc > 1 ? argv[1] : "dbname=postgres";
  cfg.max_conns = 2;
  if (pgtag_pool_new(&loop, &cfg, &pool) != PGTAG_OK)
    return 1; /* the reason went to stderr */

  for (int i = 0; i < 3; i++) {
    request *r = calloc(1, sizeof *r);
    r->pool = pool;
    r->ctx = pgtag_ctx_new(NULL); /* NULL: a new UUID; a server passes X-Request-Id */
    pgtag_ctx_set(r->ctx, "route", "hello");
    pgtag_ctx *previous = pgtag_ctx_enter(r->ctx); /* what a server's middleware does */
    running++;
    if (pgtag_query(pool, "SELECT current_query()", 0, NULL, on_query, r) != PGTAG_OK)
      finish(r, &(pgtag_error){PGTAG_EINVAL, NULL, "pgtag_query refused"});
    pgtag_ctx_leave(previous);
  }

  uv_run(&loop, UV_RUN_DEFAULT); /* until the pool has closed its last handle */
  int rc = uv_loop_close(&loop);
  printf("done: %d failed, uv_loop_close returned %d\n", failures, rc);
  return failures > 0 || rc != 0;
}
