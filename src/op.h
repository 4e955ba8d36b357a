/* An operation: one query or acquire, carrying the request context it was
 * submitted in until its callback has run. */
#ifndef PGTAG_OP_H
#define PGTAG_OP_H

#include "pgtag.h"
#include "queue.h"

#include <stdint.h>

struct conn;

#define OP_SIZE_CLASSES 2

#define RECLAIMED_MESSAGE "the pool took this connection back: its request ended while holding it"

typedef enum {
  OP_QUERY,   /* pgtag_query or pgtag_conn_query */
  OP_ACQUIRE, /* pgtag_acquire */
  OP_RESET,   /* the pool's own ROLLBACK on a released connection */
  OP_OPENER,  /* the pool's own statement that makes a batch read-only */
  OP_PREPARE  /* preparing the opener on a connection */
} op_kind;

/* Commands a query sent through the statement cache may have ahead of its
 * EXECUTE, in this order. */
#define OP_STEP_DEALLOC 1 /* DEALLOCATE of the statement it evicted */
#define OP_STEP_PREPARE 2 /* preparing its own */

/* The pool's own statements: no callback, no context, not counted. */
static inline int op_internal(int kind) { return kind >= OP_RESET; }

/* The pool's own statements that take the server no time to speak of. */
static inline int op_instant(int kind) { return kind == OP_OPENER || kind == OP_PREPARE; }

typedef struct op {
  queue node; /* in pool->waiters, conn->pending, pool->deferred or the
                 pool's cache of free records */
  pgtag_pool *pool;
  pgtag_ctx *ctx; /* captured at submit, one reference, NULL if none */
  union {
    pgtag_result_cb result;
    pgtag_acquire_cb acquire;
  } cb;
  void *arg;
  uint64_t deadline;        /* uv_now(): waiting, when the wait fails; on the
                               wire, when the pool must act on it (its timeout,
                               a cancel's grace, a cancel not yet sent); 0 =
                               never */
  uint64_t waiting_ns;      /* uv_hrtime() when it began to wait; 0 = never */
  char *message;            /* the error, one line; NULL: the code's name */
  uint8_t kind;             /* op_kind */
  uint8_t code;             /* pgtag_errcode: the outcome */
  uint8_t cancel_code;      /* cancelled on purpose: ETIMEDOUT, ECANCELED... */
  uint8_t resent;           /* times sent again (never run, or hit by a stray
                               cancel: see pipeline.c; refused for the
                               statement cache's reasons: pool.c) */
  uint8_t steps;            /* sent through the statement cache: the commands
                               ahead of its EXECUTE whose results are still to
                               come (OP_STEP_*) */
  unsigned exclusive : 1;   /* changes transaction or session state: never
                               shares a connection */
  unsigned reads : 1;       /* a plain read: may share a read-only batch */
  unsigned cancel_sent : 1; /* a cancel request went out for it */
  unsigned solo : 1;        /* pipelined: gets a sync point of its own */
  unsigned batched : 1;     /* sent in a read-only batch: its result is
                               final when it arrives */
  unsigned unproven : 1;    /* its statement is not known to be fast */
  unsigned signalable : 1;  /* may be cancelled on the server: a timeout, or
                               a cancel requested (conn->signalable) */
  unsigned at_risk : 1;     /* on the wire with a statement a cancel request
                               was sent for: a 57014 may be that cancel's */
  unsigned running : 1;     /* the server can run it now (conn_running) */
  unsigned held : 1;        /* sent with no sync point or flush after it:
                               the server may hold its result back until
                               the next statement's is ready too */
  unsigned uncached : 1;    /* bypasses the statement cache
                               (pgtag_query_opts) */
  unsigned by_deadline : 1; /* its limit, waiting or running, is its
                               request's deadline (pgtag_ctx_set_deadline) */
  char sqlstate[6];
  uint32_t size; /* bytes allocated for it, arguments included */
  union {
    struct { /* OP_QUERY, OP_RESET */
      /* The caller's memory during the submitting call; the op's own copy
       * (behind the struct) once it has to wait. */
      const char *sql;
      const char *const *values;
      PGresult *res;
      uint64_t sent_ns;  /* uv_hrtime() when sent; 0 once accounted for */
      uint64_t start_ns; /* when the server could start it: sent, or the
                            statement ahead of it on the connection done */
      uint64_t chunk_ns; /* its result came with others the server held
                            back together: when the first of them could
                            start (conn.c); 0 otherwise */
      uint64_t hash;     /* of sql (untagged): the pool's statement memory */
      int nparams;
      int timeout_ms;   /* statement timeout once sent; 0 = none */
      uint32_t stmt_id; /* sent through the statement cache: which; 0 = not */
    };
    struct {            /* OP_ACQUIRE */
      const char *file; /* the call site */
      const char *func;
      void **frames;     /* its call stack (leak_backtrace), owned */
      struct conn *conn; /* granted */
      uint64_t gen;      /* the handle it was granted with */
      int line;
      int nframes;
    };
  };
} op;

/* A new operation capturing the current context.  copy_args: copy sql and
 * values into the op, for an operation that cannot be sent right away.
 * NULL when out of memory. */
op *op_new(pgtag_pool *pool, op_kind kind, const char *sql, int nparams, const char *const *values,
           int copy_args);

/* Record a failure; message (NULL: the code's name) is kept as one line. */
void op_set_error(op *o, pgtag_errcode code, const char *sqlstate, const char *message);

/* Classify a finished query's result: sets code, sqlstate and message and
 * keeps res (pgtag owns it from here).  lost: the connection is gone. */
void op_set_result(op *o, PGresult *res, int lost);

/* Nonzero when res is an error that ends the session (severity FATAL or
 * PANIC: pg_terminate_backend, a server shutting down): the connection is
 * being closed. */
int op_result_ends_session(const PGresult *res);

/* Run the callback, with the captured context current, then free
 * everything the op owns.  Called exactly once per op, from the loop. */
void op_finish(op *o);

/* Free an op whose callback must not run (the submitting call failed). */
void op_discard(op *o);

/* Free the pool's cache of op records (when the pool is freed). */
void op_cache_free(pgtag_pool *pool);

#endif
