/* Measurements: pool histograms, per-request statistics, the slow query
 * log and the N+1 detector. */
#ifndef PGTAG_STATS_H
#define PGTAG_STATS_H

#include "pgtag.h"

#include <stdint.h>

struct conn;
struct op;

void pgtag__histogram_add(pgtag_histogram *h, uint64_t us);

/* o got a connection: record how long it waited (0 if it never did). */
void pgtag__stats_waited(pgtag_pool *pool, struct op *o);

/* o's result is complete (or its connection gone): its own duration, from
 * when the server could start it (sent, or the statement ahead of it on
 * the connection complete) to its result, goes to the pool's histogram and
 * its request's statistics, and is checked against slow_query_ms and
 * n_plus_one_threshold.  Returns it in microseconds.  Once per query; 0
 * and nothing done for one never sent or the pool's own. */
uint64_t pgtag__stats_query_done(struct op *o, struct conn *conn);

/* o ends with its final code: counters by code and per request. */
void pgtag__stats_op_finished(struct op *o);

#endif
