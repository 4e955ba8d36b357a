/* An operation: one query or acquire, carrying the request context it was
 * submitted in until its callback has run. */
#ifndef PGTAG_OP_H
#define PGTAG_OP_H

#include "internal.h"

/* A new operation capturing the current context.  copy_args: copy sql and
 * values into the op, for an operation that cannot be sent right away.
 * NULL when out of memory. */
op *pgtag__op_new(pgtag_pool *pool, op_kind kind, const char *sql, int nparams,
                  const char *const *values, int copy_args);

/* Record a failure; message (NULL: the code's name) is kept as one line. */
void pgtag__op_set_error(op *o, pgtag_errcode code, const char *sqlstate, const char *message);

/* Classify a finished query's result: sets code, sqlstate and message and
 * keeps res (pgtag owns it from here).  lost: the connection is gone. */
void pgtag__op_set_result(op *o, PGresult *res, int lost);

/* Nonzero when res is an error that ends the session (severity FATAL or
 * PANIC: pg_terminate_backend, a server shutting down): the connection is
 * being closed. */
int pgtag__op_result_ends_session(const PGresult *res);

/* Run the callback, with the captured context current, then free
 * everything the op owns.  Called exactly once per op, from the loop. */
void pgtag__op_finish(op *o);

/* Free an op whose callback must not run (the submitting call failed). */
void pgtag__op_discard(op *o);

/* Free the pool's cache of op records (when the pool is freed). */
void pgtag__op_cache_free(pgtag_pool *pool);

#endif
