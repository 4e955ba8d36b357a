/* Cancellation and statement timeouts: when a statement on a connection
 * is cancelled on the server, and the cancel requests, on the thread pool.
 * A request's work item holds everything it needs (libpq's PGcancel is a
 * copy of the connection's address and keys), so the connection may close
 * while it runs; the pool counts it as a handle and is not freed before it
 * is done. */
#include "cancel.h"

#include "conn.h"
#include "log.h"
#include "pipeline.h"

#include <stdio.h>
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
    pgtag__text_line(msg, sizeof msg, status != 0 ? uv_strerror(status) : c->error);
    pgtag__pool_log(pool, PGTAG_LOG_WARN, "cancel request for %s failed: %s",
                    pgtag__backend_text(c->backend_pid).s, msg);
  }
  free(c);
  if (conn != NULL) {
    conn->cancel = NULL;
    conn->pool->on->cancel_done(conn);
  }
  pgtag_ctx_leave(previous);
  pool->on->handle_closed(pool);
}

int pgtag__cancel_start(struct conn *conn) {
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

void pgtag__cancel_detach(struct conn *conn) {
  if (conn->cancel != NULL) {
    conn->cancel->conn = NULL;
    conn->cancel = NULL;
  }
}

/* ------------------------------------------------------------------------
 * When a cancel request goes out, and statement timeouts
 * ------------------------------------------------------------------------ */

/* Send the cancel request o needs, unless it went out already, another
 * is under way (one at a time per connection), or it could stop another
 * request's write or disturb other requests for nothing
 * (pgtag__pipeline_cancel_safe).  Those are tried again when the wire changes or
 * the cancel under way is done (pgtag__conn_retry_cancels); a query whose cancel
 * never gets safe runs to its end and reports how it ended.  Once sent,
 * the server has CANCEL_GRACE_MS to end it before the connection is given
 * up (hung, or unreachable for the cancel request). */
static void request_cancel(struct conn *conn, op *o) {
  if (o->cancel_sent)
    return;
  if (conn->cancel != NULL || !pgtag__pipeline_cancel_safe(conn, o)) {
    o->deadline = 0;
    return;
  }
  o->cancel_sent = 1;
  o->deadline = uv_now(conn->pool->loop) + CANCEL_GRACE_MS;
  pgtag__pipeline_mark_at_risk(conn, o);
  if (pgtag__cancel_start(conn) != 0)
    pgtag__pool_log(conn->pool, PGTAG_LOG_WARN, "cannot send a cancel request for %s",
                    pgtag__backend_text(conn->backend_pid).s);
}

void pgtag__cancel_op(struct conn *conn, op *o, pgtag_errcode why) {
  if (o->cancel_code == PGTAG_OK) {
    o->cancel_code = why;
    pgtag__conn_mark_signalable(conn, o);
  }
  request_cancel(conn, o);
  pgtag__conn_arm_timeout(conn);
}

int pgtag__cancel_expired(struct conn *conn, char *why, size_t len) {
  uint64_t now = uv_now(conn->pool->loop);
  queue *q;
  queue_foreach (q, &conn->wire) {
    op *o = queue_data(q, op, node);
    if (o->deadline == 0 || o->deadline > now)
      continue;
    if (o->kind == OP_RESET) {
      snprintf(why, len, "the server did not answer ROLLBACK within %d ms", RESET_TIMEOUT_MS);
      return 1;
    }
    if (o->cancel_sent) {
      snprintf(why, len, "the cancelled query did not end within %d ms", CANCEL_GRACE_MS);
      return 1;
    }
    if (o->cancel_code == PGTAG_OK) {
      o->cancel_code = PGTAG_ETIMEDOUT;
      pgtag__conn_mark_signalable(conn, o);
    }
    request_cancel(conn, o);
  }
  pgtag__conn_arm_timeout(conn);
  return 0;
}
