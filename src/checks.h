/* What the API checks on the way in, and says when it refuses: every
 * PGTAG_EINVAL gets its reason in one log line, an operation submitted in
 * no request's context (or an ended one's) is counted and reported as the
 * pool's context_check says, and a context left current as the loop goes
 * back to waiting is reported. */
#ifndef PGTAG_CHECKS_H
#define PGTAG_CHECKS_H

#include "internal.h"

/* The pool's own operations (a cluster's lag probe): not the
 * application's, so no context check. */
extern const call_site pgtag__site_internal;

/* Refuse a call of fn: one ERROR line saying why (through pool's log hook,
 * or stderr without a pool), at most once per call site and reason per
 * second, so a loop that keeps calling cannot flood the log.  why must
 * outlive the program's run (a literal: its address names the reason).
 * Returns PGTAG_EINVAL. */
pgtag_errcode pgtag__refuse(const pgtag_pool *pool, const call_site *site, const char *fn,
                            const char *why);

/* The pool's context_check for an operation fn is about to submit:
 * counted, reported once per call site at WARN (or refused at REJECT:
 * PGTAG_EINVAL, reported as pgtag__refuse does).  PGTAG_OK to go on. */
pgtag_errcode pgtag__check_context(pgtag_pool *pool, const call_site *site, const char *fn);

/* The loop is about to wait: a context still current is reported once
 * (naming where it was entered) and counted. */
void pgtag__check_left_current(pgtag_pool *pool);

#endif
