/* Auto-pipelining's rules: which statements of different requests may
 * share a connection, which may share a sync point, and what happens to a
 * statement that an earlier one's failure or cancel touched.
 *
 * The promise: a statement pipelined with other requests' statements does
 * what it would do on a connection of its own.
 *   - Only plain reads share a sync point (a batch), and the batch opens
 *     with a statement that makes its implicit transaction read-only: a
 *     read the classifier got wrong fails there without effect, is run
 *     again alone, and its text is remembered as a writer.  Writes and
 *     everything else get a sync point of their own: their own implicit
 *     transaction, committed before the callback runs.
 *   - A read's result is final when it arrives (nothing to roll back): it
 *     is delivered at once.  Reads the server skipped after another one
 *     failed never ran: they are sent again.
 *   - No head-of-line waits: a statement joins a connection's pipeline
 *     only behind statements whose last runs were fast (pipeline_fast_ms)
 *     and none of which has run long already.
 *   - A cancel request (a statement timeout, pgtag_ctx_cancel) goes out
 *     only when nothing but reads of other requests is on the wire with
 *     its target, and nothing joins a connection while one is under way;
 *     a read that such a cancel hit instead of its target is sent again.
 *     A write is never pipelined behind a statement that may be cancelled.
 *   - The server sends a batch's results at its sync point, and is asked
 *     to send what it has before a statement not known to be fast. */
#ifndef PGTAG_PIPELINE_H
#define PGTAG_PIPELINE_H

#include "internal.h"

#include <stdint.h>

/* What the pool remembers about a statement text (tag excluded). */
typedef struct pipeline_stmt {
  uint64_t hash;    /* 0: a free slot */
  uint32_t avg_us;  /* own time, smoothed */
  uint32_t last_us; /* own time of the last run */
  uint32_t runs;
  uint8_t kind;   /* sql_kind of the text */
  uint8_t writes; /* taken for a read, it wrote: never batched again */
} pipeline_stmt;

/* The pool's statement memory: direct-mapped, a newcomer takes its slot. */
#define PIPELINE_STMTS 1024

/* Look o's statement up (o->sql, o->hash) and set o->reads, o->exclusive
 * and o->unproven.  For a pool that pipelines; a no-op otherwise. */
void pgtag__pipeline_classify(pgtag_pool *pool, op *o);

/* Nonzero when o may join conn's pipeline now, by the rules above. */
int pgtag__pipeline_accepts(const pgtag_pool *pool, const struct conn *conn, op *o,
                            uint64_t now_ns);

/* o's statement ran in us microseconds of its own: remembered. */
void pgtag__pipeline_learn(pgtag_pool *pool, const op *o, uint64_t us);

/* Nonzero when o, complete with res, must be sent again instead of
 * delivered: skipped by the server (it never ran), a read that wrote in a
 * read-only batch (no effect; it goes alone from now on), or a read hit by
 * a cancel meant for another statement.  Learns what it needs to. */
int pgtag__pipeline_resend(pgtag_pool *pool, const struct conn *conn, op *o, const PGresult *res,
                           int server_read_only);

/* A cancel request may go out for target, on conn's wire, now: it is the
 * head, and nothing else on the wire may write (held connections: always;
 * they are one request's). */
int pgtag__pipeline_cancel_safe(const struct conn *conn, const op *target);

/* A cancel request is going out for target: whatever else is on the wire
 * may be hit instead. */
void pgtag__pipeline_mark_at_risk(struct conn *conn, const op *target);

/* Where o joins a pipeline: only once the pool cannot grow, on the
 * connection whose pipeline takes it with the fewest statements under
 * way.  NULL when none takes it (it waits, or gets a new connection). */
struct conn *pgtag__pipeline_least_loaded(const pgtag_pool *pool, op *o);

/* Send waiting queries behind those on conn's wire, as the rules allow;
 * the line stays first in, first out.  Also the pool's pool_events.room. */
void pgtag__pipeline_feed(struct conn *conn);

/* o had no effect and goes again, first in line, with a sync point of its
 * own. */
void pgtag__pipeline_requeue(pgtag_pool *pool, op *o);

/* Reads were staged: each connection's go out as one batch before the
 * loop blocks (pool_events.staged). */
void pgtag__pipeline_flush_soon(pgtag_pool *pool);

#endif
