/* Leak detection: what a held connection remembers about its acquisition,
 * and the checks that report it when its request is over or it is held too
 * long. */
#ifndef PGTAG_LEAK_H
#define PGTAG_LEAK_H

#include "pgtag.h"
#include "queue.h"

#include <stdint.h>

struct conn;
struct op;

#define HOLD_FRAMES_MAX 24

/* One acquisition.  Lives in the connection from grant to release. */
typedef struct {
  pgtag_ctx *owner; /* one reference; NULL when acquired outside a request */
  queue owner_node; /* in owner->held while the handle is live */
  const char *file; /* the acquire's call site (string literals) */
  int line;
  const char *func;
  uint64_t since;  /* uv_now() at grant */
  int backend_pid; /* at grant: still known once the connection is lost */
  void **frames;   /* leak_backtrace: raw return addresses, owned */
  int nframes;
  unsigned delivered : 1; /* the acquire callback has run */
  unsigned check : 1;     /* its request may be over: look next turn */
  unsigned reported_ended : 1;
  unsigned reported_threshold : 1;
} hold;

/* The call stack of the acquire being submitted, from caller (the return
 * address of pgtag_acquire_at) outwards, when leak_backtrace is on: stored
 * in o.  Returns 0, or -1 when out of memory. */
int leak_capture(pgtag_pool *pool, struct op *o, void *caller);

/* conn was granted to the acquire o: take over its context reference, call
 * site and stack. */
void hold_start(struct conn *conn, struct op *o);

/* The acquire callback ran (gen: the handle it was given). */
void hold_delivered(struct conn *conn, uint64_t gen);

/* The holder's handle dies (release or reclaim): unlink from the request.
 * released_by_holder: report it as returned if it had been reported. */
void hold_end(struct conn *conn, int released_by_holder);

/* Drop the context reference and what the acquisition kept. */
void hold_clear(struct conn *conn);

/* From context.c: ctx has ended, or its last reference outside pgtag was
 * dropped, while holding connections: check them once the current callback
 * has returned. */
void leak_request_over(pgtag_ctx *ctx);

/* From the pool's loop turn: report (and reclaim) held connections marked
 * for a check whose request is over. */
void leak_run_checks(pgtag_pool *pool);

/* Arm the pool's threshold timer for the oldest unreported hold. */
void leak_timer_arm(pgtag_pool *pool);

#endif
