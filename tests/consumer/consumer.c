/* A program that uses an installed pgtag, as a user's would: one tagged
 * query in a request context.  Prints the server's answer and exits 0. */
#include <pgtag.h>
#include <stdio.h>
#include <string.h>

static int failed = 1;

static void on_result(PGresult *res, const pgtag_error *err, void *arg) {
  pgtag_pool *pool = arg;
  const char *id = pgtag_ctx_request_id(pgtag_ctx_current());
  if (err) {
    fprintf(stderr, "consumer: %s\n", err->message);
  } else if (strcmp(PQgetvalue(res, 0, 0), id) == 0) {
    printf("consumer: pgtag %s, the server saw request %s\n", pgtag_version(), id);
    failed = 0;
  }
  pgtag_pool_close(pool, NULL, NULL);
}

int main(int argc, char **argv) {
  if (argc != 2 || strcmp(pgtag_version(), PGTAG_VERSION_STRING) != 0) {
    fprintf(stderr, "usage: consumer CONNINFO (header %s, library %s)\n", PGTAG_VERSION_STRING,
            pgtag_version());
    return 2;
  }
  uv_loop_t *loop = uv_default_loop();
  pgtag_pool_config cfg;
  pgtag_pool_config_init(&cfg);
  cfg.conninfo = argv[1];
  pgtag_pool *pool;
  if (pgtag_pool_new(loop, &cfg, &pool) != PGTAG_OK)
    return 1;

  pgtag_ctx *ctx = pgtag_ctx_new("consumer-1");
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  /* The server reads its own query's tag back. */
  pgtag_query(pool, "SELECT substring(current_query() from 'requestId=([^ ]+) ')", 0, NULL,
              on_result, pool);
  pgtag_ctx_leave(prev);
  uv_run(loop, UV_RUN_DEFAULT);
  pgtag_ctx_end(ctx);
  pgtag_ctx_unref(ctx);
  return failed;
}
