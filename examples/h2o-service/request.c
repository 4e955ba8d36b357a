/* One HTTP request's life: its ID and pgtag context, its response, and
 * the client that goes away before it. */
#include "service.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* X-Request-Id is kept when it is 1 to REQUEST_ID_MAX bytes of visible
 * ASCII; anything else is replaced by a generated ID (and still served). */
static int visible_ascii(h2o_iovec_t v) {
  if (v.len == 0 || v.len > REQUEST_ID_MAX)
    return 0;
  for (size_t i = 0; i < v.len; i++)
    if ((unsigned char)v.base[i] < 0x21 || (unsigned char)v.base[i] > 0x7e)
      return 0;
  return 1;
}

static h2o_iovec_t header_value(h2o_req_t *req, const char *name) {
  ssize_t i = h2o_find_header_by_str(&req->headers, name, strlen(name), -1);
  return i < 0 ? h2o_iovec_init(NULL, 0) : req->headers.entries[i].value;
}

static void unwatch(request *r) {
  worker *w = r->w;
  if (r->prev != NULL)
    r->prev->next = r->next;
  else if (w->waiting == r)
    w->waiting = r->next;
  if (r->next != NULL)
    r->next->prev = r->prev;
  r->prev = r->next = NULL;
}

static void finish(request *r) {
  worker *w = r->w;
  unwatch(r);
  pgtag_ctx_end(r->ctx); /* a connection still held now is reported */
  pgtag_ctx_unref(r->ctx);
  atomic_fetch_add(r->gone ? &w->svc->gone : &w->svc->responded, 1);
  free(r);
  w->inflight--;
  worker_maybe_close_pool(w);
  worker_maybe_stop(w);
}

/* The request is over once h2o is done with it (response sent, or client
 * gone) and no pgtag callback of it is still to come. */
static void maybe_finish(request *r) {
  if (r->req == NULL && r->pending == 0)
    finish(r);
}

/* The client went away: its queries are cancelled (waiting ones at once,
 * running ones on the server) and its connection given back, so the end of
 * the request reports no leak. */
static void client_gone(request *r) {
  r->gone = 1;
  unwatch(r);
  pgtag_ctx *prev = pgtag_ctx_enter(r->ctx);
  int n = pgtag_ctx_cancel(r->ctx);
  request_release(r);
  pgtag_ctx_leave(prev);
  fprintf(stderr, "worker %d: request %s: client gone, %d operation(s) canceled\n", r->w->index,
          pgtag_ctx_request_id(r->ctx), n);
}

/* h2o frees a request's memory pool when its response has been sent, or
 * when the client closed the connection first. */
static void on_disposed(void *slot) {
  request *r = *(request **)slot;
  r->req = NULL;
  if (!r->replied && !r->gone)
    client_gone(r);
  maybe_finish(r);
}

/* Every 100 ms: a client whose socket reads as closed (EOF or reset) while
 * its request runs has gone away. */
void request_watch_clients(uv_timer_t *t) {
  worker *w = t->data;
  request *next;
  for (request *r = w->waiting; r != NULL; r = next) {
    next = r->next;
    char byte;
    if (r->fd < 0 || r->req == NULL)
      continue;
    ssize_t n = recv(r->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      client_gone(r);
      /* h2o still owns the request: an answer that cannot be delivered
       * makes it close the connection and dispose of the request. */
      request_reply_text(r, 499, "application/json", "{}", 2);
    }
  }
}

/* X-Request-Timeout-Ms: 1 to 9 digits, not 0; -1 for anything else, 0 when
 * absent. */
static long long request_timeout(h2o_iovec_t v) {
  if (v.len == 0)
    return 0;
  long long ms = 0;
  for (size_t i = 0; i < v.len; i++) {
    if (v.base[i] < '0' || v.base[i] > '9' || i >= 9)
      return -1;
    ms = ms * 10 + (v.base[i] - '0');
  }
  return ms > 0 ? ms : -1;
}

int request_handle(h2o_handler_t *self, h2o_req_t *req) {
  (void)self;
  worker *w = H2O_STRUCT_FROM_MEMBER(worker, h2o, req->conn->ctx);
  request *r = calloc(1, sizeof *r);
  if (r == NULL)
    return -1;
  h2o_iovec_t id = header_value(req, "x-request-id");
  char idbuf[REQUEST_ID_MAX + 1] = "";
  if (visible_ascii(id))
    memcpy(idbuf, id.base, id.len);
  r->ctx = pgtag_ctx_new(idbuf); /* "" generates a UUID */
  if (r->ctx == NULL) {
    free(r);
    return -1;
  }
  r->timeout_ms = request_timeout(header_value(req, "x-request-timeout-ms"));
  h2o_iovec_t tp = header_value(req, "traceparent");
  if (tp.len > 0 && tp.len < 512) { /* pgtag checks it: an invalid one is not kept */
    char tpbuf[512];
    memcpy(tpbuf, tp.base, tp.len);
    tpbuf[tp.len] = '\0';
    pgtag_ctx_set_traceparent(r->ctx, tpbuf);
  }
  r->w = w;
  r->req = req;
  h2o_socket_t *sock =
      req->conn->callbacks->get_socket != NULL ? req->conn->callbacks->get_socket(req->conn) : NULL;
  /* HTTP/2 keeps reading: h2o itself disposes of a request whose stream or
   * connection closed. */
  r->fd = sock != NULL && req->version < 0x200 ? worker_client_fd(w, sock) : -1;
  r->next = w->waiting;
  if (r->next != NULL)
    r->next->prev = r;
  w->waiting = r;
  request **slot = h2o_mem_alloc_shared(&req->pool, sizeof *slot, on_disposed);
  *slot = r;
  w->inflight++;
  atomic_fetch_add(&w->svc->accepted, 1);

  /* Everything the route submits captures this context.  The extra
   * reference keeps it alive here even if the route answers at once and
   * h2o disposes of the request inside that call. */
  pgtag_ctx *ctx = pgtag_ctx_ref(r->ctx);
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  route(r, req->method, req->path_normalized);
  pgtag_ctx_leave(prev);
  pgtag_ctx_unref(ctx);
  return 0;
}

/* Sends the response; the last use of r by the caller (h2o may dispose
 * of the request, and r with it, before this returns). */
void request_reply_text(request *r, int status, const char *type, const char *body, size_t len) {
  h2o_req_t *req = r->req;
  if (req == NULL || r->replied)
    return;
  r->replied = 1;
  unwatch(r);
  const char *id = pgtag_ctx_request_id(r->ctx);
  req->res.status = status;
  req->res.reason = status == 200   ? "OK"
                    : status == 400 ? "Bad Request"
                    : status == 404 ? "Not Found"
                    : status == 405 ? "Method Not Allowed"
                    : status == 409 ? "Conflict"
                    : status == 499 ? "Client Closed Request"
                    : status == 503 ? "Service Unavailable"
                    : status == 504 ? "Gateway Timeout"
                                    : "Internal Server Error";
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, type, strlen(type));
  h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0,
                        "X-Request-Id", id, strlen(id));
  h2o_send_inline(req, body, len);
}

/* A JSON response (body is consumed); objects get "request_id". */
void request_reply(request *r, int status, json_t *body) {
  if (json_is_object(body))
    json_object_set_new(body, "request_id", json_string(pgtag_ctx_request_id(r->ctx)));
  char *text = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  if (text == NULL) {
    request_reply_text(r, 500, "application/json", "{}", 2);
    return;
  }
  request_reply_text(r, status, "application/json", text, strlen(text));
  free(text);
}

/* Call with what a pgtag submit call returned: 1 if it was submitted (its
 * callback will run), else replies 503 and returns 0. */
int request_begin_op(request *r, pgtag_errcode submitted) {
  if (submitted == PGTAG_OK) {
    r->pending++;
    return 1;
  }
  request_release(r);
  request_reply(r, 503, json_pack("{s:s}", "error", pgtag_strerror(submitted)));
  return 0;
}

/* First thing in every pgtag callback.  Returns 1 if the request goes on;
 * 0 if it has answered already or its client went away (r may be freed
 * then: return at once). */
int request_end_op(request *r) {
  r->pending--;
  if (!r->gone && !r->replied)
    return 1;
  maybe_finish(r);
  return 0;
}

/* Give back the held connection, if any: pgtag rolls back a transaction
 * left open. */
void request_release(request *r) {
  if (pgtag_conn_held(r->conn))
    pgtag_release(r->conn);
  memset(&r->conn, 0, sizeof r->conn);
}

/* --demo-leak: drop the handle without releasing it, the bug pgtag's leak
 * detection is for.  The request's end reports it; the pool reclaims it. */
void request_forget_conn(request *r) { memset(&r->conn, 0, sizeof r->conn); }
