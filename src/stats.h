/* Measurements: pool histograms, per-request statistics, the slow query
 * log and the N+1 detector. */
#ifndef PGTAG_STATS_H
#define PGTAG_STATS_H

#include "pgtag.h"

#include <stdint.h>

struct conn;
struct op;

void histogram_add(pgtag_histogram *h, uint64_t us);

/* o got a connection: record how long it waited (0 if it never did). */
void stats_waited(pgtag_pool *pool, struct op *o);

/* o's result is complete (or its connection gone): its duration goes to
 * the pool's histogram and its request's statistics, and it is checked
 * against slow_query_ms and n_plus_one_threshold.  conn->last_sql is still
 * its text.  Once per query; a no-op for one never sent. */
void stats_query_done(struct op *o, struct conn *conn);

/* o ends with its final code: counters by code and per request. */
void stats_op_finished(struct op *o);

#endif
