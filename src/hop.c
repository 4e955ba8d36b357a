/* The request's context across libuv's own asynchronous operations: each
 * wrapper holds one reference from the start of the operation to the end
 * of its last callback, and enters the context around the callbacks. */
#include "pgtag.h"

#include <stddef.h>
#include <string.h>

/* The wrapper of a libuv handle or request, which is its first member. */
#define WRAPPER(ptr, type, field) ((type *)(void *)((char *)(ptr) - (offsetof(type, field))))

static void let_go(pgtag_ctx **ctx) {
  pgtag_ctx_unref(*ctx);
  *ctx = NULL;
}

/* ------------------------------------------------------------------------
 * Timers
 * ------------------------------------------------------------------------ */

static void on_timer(uv_timer_t *handle) {
  pgtag_timer *t = WRAPPER(handle, pgtag_timer, handle);
  pgtag_ctx *ctx = pgtag_ctx_ref(t->ctx_); /* the callback may restart or stop it */
  pgtag_ctx *previous = pgtag_ctx_enter(ctx);
  t->cb_(t);
  pgtag_ctx_leave(previous);
  /* A one-shot timer that was not started again lets its context go. */
  if (!uv_is_active((uv_handle_t *)handle) && t->ctx_ == ctx)
    let_go(&t->ctx_);
  pgtag_ctx_unref(ctx);
}

int pgtag_timer_init(uv_loop_t *loop, pgtag_timer *timer) {
  if (loop == NULL || timer == NULL)
    return UV_EINVAL;
  timer->ctx_ = NULL;
  timer->cb_ = NULL;
  timer->closed_ = NULL;
  memset(timer->reserved_, 0, sizeof timer->reserved_);
  return uv_timer_init(loop, &timer->handle);
}

int pgtag_timer_start(pgtag_timer *timer, pgtag_timer_cb cb, uint64_t timeout, uint64_t repeat) {
  if (timer == NULL || cb == NULL)
    return UV_EINVAL;
  pgtag_ctx *ctx = pgtag_ctx_ref(pgtag_ctx_current());
  int rc = uv_timer_start(&timer->handle, on_timer, timeout, repeat);
  if (rc != 0) {
    pgtag_ctx_unref(ctx);
    return rc;
  }
  let_go(&timer->ctx_);
  timer->ctx_ = ctx;
  timer->cb_ = cb;
  return 0;
}

int pgtag_timer_stop(pgtag_timer *timer) {
  if (timer == NULL)
    return UV_EINVAL;
  uv_timer_stop(&timer->handle);
  let_go(&timer->ctx_);
  return 0;
}

static void on_timer_closed(uv_handle_t *handle) {
  pgtag_timer *t = WRAPPER(handle, pgtag_timer, handle);
  if (t->closed_ != NULL)
    t->closed_(t);
}

void pgtag_timer_close(pgtag_timer *timer, void (*closed)(pgtag_timer *timer)) {
  if (timer == NULL)
    return;
  pgtag_timer_stop(timer);
  timer->closed_ = closed;
  uv_close((uv_handle_t *)&timer->handle, on_timer_closed);
}

/* ------------------------------------------------------------------------
 * Thread-pool work
 * ------------------------------------------------------------------------ */

/* The context is only read on the worker thread (pgtag_queue_work's
 * contract); current is thread-local, so entering it there touches no
 * other thread's state, and no reference count changes off the loop. */
static void work_run(uv_work_t *req) {
  pgtag_work *w = WRAPPER(req, pgtag_work, req);
  pgtag_ctx *previous = pgtag_ctx_enter(w->ctx_);
  w->work_cb_(w);
  pgtag_ctx_leave(previous);
}

static void work_after(uv_work_t *req, int status) {
  pgtag_work *w = WRAPPER(req, pgtag_work, req);
  pgtag_ctx *ctx = w->ctx_;
  w->ctx_ = NULL; /* the callback may queue it again */
  if (w->after_cb_ != NULL) {
    pgtag_ctx *previous = pgtag_ctx_enter(ctx);
    w->after_cb_(w, status);
    pgtag_ctx_leave(previous);
  }
  pgtag_ctx_unref(ctx);
}

int pgtag_queue_work(uv_loop_t *loop, pgtag_work *work, pgtag_work_cb work_cb,
                     pgtag_after_work_cb after_cb) {
  if (loop == NULL || work == NULL || work_cb == NULL)
    return UV_EINVAL;
  memset(work->reserved_, 0, sizeof work->reserved_);
  work->ctx_ = pgtag_ctx_ref(pgtag_ctx_current());
  work->work_cb_ = work_cb;
  work->after_cb_ = after_cb;
  int rc = uv_queue_work(loop, &work->req, work_run, work_after);
  if (rc != 0)
    let_go(&work->ctx_);
  return rc;
}

/* ------------------------------------------------------------------------
 * File-system requests
 * ------------------------------------------------------------------------ */

static void fs_done(uv_fs_t *req) {
  pgtag_fs *fs = WRAPPER(req, pgtag_fs, req);
  pgtag_ctx *ctx = fs->ctx_;
  fs->ctx_ = NULL; /* the callback may start another request with it */
  pgtag_ctx *previous = pgtag_ctx_enter(ctx);
  fs->cb_(fs);
  pgtag_ctx_leave(previous);
  pgtag_ctx_unref(ctx);
}

uv_fs_cb pgtag_fs_start(pgtag_fs *fs, pgtag_fs_cb cb) {
  if (fs == NULL || cb == NULL)
    return NULL;
  memset(fs->reserved_, 0, sizeof fs->reserved_);
  fs->ctx_ = pgtag_ctx_ref(pgtag_ctx_current());
  fs->cb_ = cb;
  return fs_done;
}

void pgtag_fs_abandon(pgtag_fs *fs) {
  if (fs != NULL)
    let_go(&fs->ctx_);
}
