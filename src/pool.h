/* The pool: who gets which connection, connections opening and closing,
 * and what the application submits once it is checked. */
#ifndef PGTAG_POOL_H
#define PGTAG_POOL_H

#include "internal.h"

/* Nonzero on the thread of the pool's loop, the only one that may call it. */
int pgtag__pool_on_loop_thread(const pgtag_pool *pool);

/* What the application submits, once submit.c has checked it: each
 * returns PGTAG_OK and calls cb exactly once, from the loop, or returns an
 * error code (PGTAG_ENOMEM, PGTAG_EQUEUEFULL) and never calls it.  A
 * request past its deadline fails through cb and nothing is sent. */
pgtag_errcode pgtag__pool_submit_query(pgtag_pool *pool, const char *sql, int nparams,
                                       const char *const *values, const pgtag_query_opts *opts,
                                       pgtag_result_cb cb, void *arg);
/* caller: the return address of pgtag_acquire_at, where a leak backtrace
 * starts. */
pgtag_errcode pgtag__pool_submit_acquire(pgtag_pool *pool, pgtag_acquire_cb cb, void *arg,
                                         const char *file, int line, const char *func,
                                         void *caller);
/* On conn, held by the caller's handle. */
pgtag_errcode pgtag__pool_submit_held(struct conn *conn, const char *sql, int nparams,
                                      const char *const *values, const pgtag_query_opts *opts,
                                      pgtag_result_cb cb, void *arg);
/* A query on a handle the pool took back: fails with PGTAG_ERECLAIMED
 * through cb. */
pgtag_errcode pgtag__pool_fail_reclaimed(pgtag_pool *pool, pgtag_result_cb cb, void *arg);

/* The holder gives conn back: after the queries queued on it, if any. */
void pgtag__pool_release(struct conn *conn);

/* Whether handle generation gen was taken back recently (a ring of 64):
 * a late release or query on it is told so, not refused as a bug. */
int pgtag__pool_was_reclaimed(const pgtag_pool *pool, uint64_t gen);

#endif
