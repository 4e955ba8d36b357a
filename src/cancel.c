/* Cancel requests on the thread pool.  The work item holds everything it
 * needs (libpq's PGcancel is a copy of the connection's address and keys),
 * so the connection may close while it runs; the pool counts it as a handle
 * and is not freed before it is done. */
#include "cancel.h"

#include "conn.h"
#include "pool.h"

#include <stdlib.h>

struct cancel {
  uv_work_t work;
  pgtag_pool *pool;
  struct conn *conn; /* NULL once detached */
  PGcancel *pg;
  int backend_pid;
  int ok;
  char error[256];
};

static void cancel_work(uv_work_t *work) {
  struct cancel *c = work->data;
  c->ok = PQcancel(c->pg, c->error, sizeof c->error);
}

static void cancel_after(uv_work_t *work, int status) {
  struct cancel *c = work->data;
  pgtag_pool *pool = c->pool;
  struct conn *conn = c->conn;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);

  PQfreeCancel(c->pg);
  if (status != 0 || !c->ok) {
    char msg[256];
    text_line(msg, sizeof msg, status != 0 ? uv_strerror(status) : c->error);
    pool_log(pool, PGTAG_LOG_WARN, "cancel request for %s failed: %s",
             backend_text(c->backend_pid).s, msg);
  }
  free(c);
  if (conn != NULL) {
    conn->cancel = NULL;
    pool_on_cancel_done(conn);
  }
  pgtag_ctx_leave(previous);
  pool_handle_closed(pool);
}

int cancel_start(struct conn *conn) {
  pgtag_pool *pool = conn->pool;
  struct cancel *c = calloc(1, sizeof *c);
  if (c == NULL)
    return -1;
  c->pg = PQgetCancel(conn->pg);
  if (c->pg == NULL) {
    free(c);
    return -1;
  }
  c->pool = pool;
  c->conn = conn;
  c->backend_pid = conn->backend_pid;
  c->work.data = c;
  if (uv_queue_work(pool->loop, &c->work, cancel_work, cancel_after) != 0) {
    PQfreeCancel(c->pg);
    free(c);
    return -1;
  }
  pool->handles++;
  conn->cancel = c;
  return 0;
}

void cancel_detach(struct conn *conn) {
  if (conn->cancel != NULL) {
    conn->cancel->conn = NULL;
    conn->cancel = NULL;
  }
}
