/* Operations waiting for a connection (pool->waiters). */
#ifndef PGTAG_WAITERS_H
#define PGTAG_WAITERS_H

#include "internal.h"

/* o starts to wait, last in line, until acquire_timeout_ms or its
 * request's deadline, whichever comes first: then it fails with
 * PGTAG_ETIMEDOUT (counted as a timeout or a deadline), from the timer. */
void pgtag__waiter_add(pgtag_pool *pool, op *o);

/* o leaves the line (it got a connection, or was cancelled). */
void pgtag__waiter_remove(pgtag_pool *pool, op *o);

/* o goes back into the line before q (its place kept, or ahead of others
 * to be sent again), with the deadline it had. */
void pgtag__waiter_put_back(pgtag_pool *pool, op *o, queue *q);

/* The whole line, moved to out (initialized here) in order. */
void pgtag__waiters_take_all(pgtag_pool *pool, queue *out);

/* The first in line, taken out of it (the line is not empty). */
op *pgtag__waiter_pop(pgtag_pool *pool);

/* Set the timer for the first deadline in line, after the line changed;
 * while nobody waits it does not keep the loop alive. */
void pgtag__wait_timer_arm(pgtag_pool *pool);

#endif
