/* An operation: one query or acquire, carrying the request context it was
 * submitted in until its callback has run. */
#ifndef PGTAG_OP_H
#define PGTAG_OP_H

#include "pgtag.h"
#include "queue.h"

#include <stdint.h>

struct conn;

#define OP_SIZE_CLASSES 2

#define RECLAIMED_MESSAGE \
  "the pool took this connection back: its request ended while holding it"

typedef enum {
  OP_QUERY,   /* pgtag_query or pgtag_conn_query */
  OP_ACQUIRE, /* pgtag_acquire */
  OP_RESET    /* the pool's own ROLLBACK on a released connection */
} op_kind;

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
  uint64_t deadline;   /* uv_now() by which a wait fails; 0 = none */
  uint64_t waiting_ns; /* uv_hrtime() when it began to wait; 0 = never */
  char *message;       /* the error, one line; NULL: the code's name */
  uint8_t kind;        /* op_kind */
  uint8_t code;        /* pgtag_errcode: the outcome */
  uint8_t cancel_code; /* cancelled on purpose: ETIMEDOUT, ECANCELED... */
  uint8_t exclusive;   /* changes transaction or session state: never
                          shares a connection */
  uint8_t resent;      /* sent again once after a stray cancel */
  uint8_t cancel_sent; /* a cancel request went out for it */
  uint8_t solo;        /* pipelined: gets a sync point of its own */
  char sqlstate[6];
  uint32_t size;       /* bytes allocated for it, arguments included */
  union {
    struct { /* OP_QUERY, OP_RESET */
      /* The caller's memory during the submitting call; the op's own copy
       * (behind the struct) once it has to wait. */
      const char *sql;
      const char *const *values;
      PGresult *res;
      uint64_t sent_ns; /* uv_hrtime() when sent; 0 once accounted for */
      int nparams;
      int timeout_ms; /* statement timeout once sent; 0 = none */
    };
    struct { /* OP_ACQUIRE */
      const char *file; /* the call site */
      const char *func;
      void **frames;    /* its call stack (leak_backtrace), owned */
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
op *op_new(pgtag_pool *pool, op_kind kind, const char *sql, int nparams,
           const char *const *values, int copy_args);

/* Record a failure; message (NULL: the code's name) is kept as one line. */
void op_set_error(op *o, pgtag_errcode code, const char *sqlstate,
                  const char *message);

/* Classify a finished query's result: sets code, sqlstate and message and
 * keeps res (pgtag owns it from here).  lost: the connection is gone. */
void op_set_result(op *o, PGresult *res, int lost);

/* Run the callback, with the captured context current, then free
 * everything the op owns.  Called exactly once per op, from the loop. */
void op_finish(op *o);

/* Free an op whose callback must not run (the submitting call failed). */
void op_discard(op *o);

/* Nonzero when sql's first keyword changes transaction or session state
 * (BEGIN, COMMIT, SET, LOCK, ...): such a query must not share a
 * connection with other requests' queries. */
int op_sql_exclusive(const char *sql);

/* Free the pool's cache of op records (when the pool is freed). */
void op_cache_free(pgtag_pool *pool);

#endif
