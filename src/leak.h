/* Leak detection: what a held connection remembers about its acquisition,
 * and the checks that report it when its request is over or it is held too
 * long. */
#ifndef PGTAG_LEAK_H
#define PGTAG_LEAK_H

#include "internal.h"

/* The call stack of the acquire being submitted, from caller (the return
 * address of pgtag_acquire_at) outwards, when leak_backtrace is on: stored
 * in o.  Returns 0, or -1 when out of memory. */
int pgtag__leak_capture(pgtag_pool *pool, struct op *o, void *caller);

/* conn was granted to the acquire o: take over its context reference, call
 * site and stack. */
void pgtag__hold_start(struct conn *conn, struct op *o);

/* The acquire callback is about to run (gen: the handle it was given). */
void pgtag__hold_delivered(struct conn *conn, uint64_t gen);

/* The holder's handle dies (release or reclaim): unlink from the request.
 * released_by_holder: report it as returned if it had been reported. */
void pgtag__hold_end(struct conn *conn, int released_by_holder);

/* Drop the context reference and what the acquisition kept. */
void pgtag__hold_clear(struct conn *conn);

/* From the pool's loop turn: report (and reclaim) held connections marked
 * for a check whose request is over. */
void pgtag__leak_run_checks(pgtag_pool *pool);

/* Arm the pool's threshold timer for the oldest unreported hold. */
void pgtag__leak_timer_arm(pgtag_pool *pool);

#endif
