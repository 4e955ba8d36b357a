/* What the application submits, checked on the way in. */
#ifndef PGTAG_SUBMIT_H
#define PGTAG_SUBMIT_H

#include "internal.h"

/* pgtag_query with its call site: what the public functions and the
 * cluster (its lag probe with pgtag__site_internal) call. */
pgtag_errcode pgtag__pool_query(pgtag_pool *pool, const char *sql, int nparams,
                                const char *const *values, const pgtag_query_opts *opts,
                                pgtag_result_cb cb, void *arg, const call_site *site);

#endif
