/* Auto-pipelining's rules (pipeline.h says what they promise). */
#include "pipeline.h"

#include "pool.h"
#include "sqlkind.h"

#include <assert.h>
#include <string.h>

static uint32_t pool_fast_us(const pgtag_pool *pool) {
  return (uint32_t)pool->cfg.pipeline_fast_ms * 1000;
}

/* NULL for a pool that does not pipeline (it keeps no statement memory;
 * o->hash may be set all the same, by the statement cache). */
static pipeline_stmt *slot_of(const pgtag_pool *pool, uint64_t hash) {
  return pool->stmts != NULL ? &pool->stmts[hash & (PIPELINE_STMTS - 1)] : NULL;
}

static int proven_fast(const pipeline_stmt *s, uint32_t fast_us) {
  return s->runs > 0 && s->last_us <= fast_us && s->avg_us <= fast_us;
}

void pipeline_classify(pgtag_pool *pool, op *o) {
  if (pool->cfg.pipeline_depth <= 1 || o->sql == NULL)
    return;
  o->hash = sql_hash(o->sql);
  pipeline_stmt *s = slot_of(pool, o->hash);
  if (s->hash != o->hash) {
    memset(s, 0, sizeof *s);
    s->hash = o->hash;
    s->kind = (uint8_t)sql_kind_of(o->sql);
  }
  o->exclusive = s->kind == SQL_EXCLUSIVE;
  o->reads = s->kind == SQL_READ && !s->writes;
  o->unproven = !proven_fast(s, pool_fast_us(pool));
}

int pipeline_accepts(const pgtag_pool *pool, const struct conn *conn, op *o, uint64_t now_ns) {
  if (!conn->pipelined || conn->state != CONN_BUSY || conn->exclusive || conn->cancel != NULL ||
      o->exclusive || conn->nwire + conn->nstaged >= pool->cfg.pipeline_depth)
    return 0;
  /* Behind a statement not known to be fast, a fast one could wait for a
   * slow one: the head-of-line wait pipelining must not add. */
  if (conn->unproven > 0)
    return 0;
  /* A cancel request stops whatever runs when it arrives: a write must not
   * be the one running then. */
  if (!o->reads && conn->signalable > 0)
    return 0;
  const op *head = conn_head(conn);
  if (head != NULL && now_ns > head->start_ns &&
      now_ns - head->start_ns > (uint64_t)pool_fast_us(pool) * 1000)
    return 0; /* known fast, yet running long now */
  /* Its own status may have changed while it waited. */
  const pipeline_stmt *s = slot_of(pool, o->hash);
  if (o->hash != 0 && s != NULL)
    o->unproven = s->hash != o->hash || !proven_fast(s, pool_fast_us(pool));
  return 1;
}

void pipeline_learn(pgtag_pool *pool, const op *o, uint64_t us) {
  pipeline_stmt *s = slot_of(pool, o->hash);
  if (o->hash == 0 || s == NULL || s->hash != o->hash)
    return; /* its slot went to another statement meanwhile */
  uint32_t v = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
  s->avg_us = s->runs == 0 ? v : (uint32_t)(((uint64_t)s->avg_us * 3 + v) / 4);
  s->last_us = v;
  if (s->runs < UINT32_MAX)
    s->runs++;
}

/* Sending one statement again must end: every round at least one
 * statement of a batch completes, and a stray cancel is rare; this bounds
 * the rest. */
#define RESEND_MAX 3

int pipeline_resend(pgtag_pool *pool, const struct conn *conn, op *o, const PGresult *res,
                    int server_read_only) {
  if (o->kind != OP_QUERY || conn->state != CONN_BUSY || o->cancel_code != PGTAG_OK ||
      o->resent >= RESEND_MAX || o->sql == NULL)
    return 0;
  ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
  if (st == PGRES_PIPELINE_ABORTED)
    return 1; /* skipped: it never ran */
  if (st != PGRES_FATAL_ERROR)
    return 0;
  const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
  if (state == NULL)
    return 0;
  if (o->batched && strcmp(state, "25006") == 0 && !server_read_only) {
    /* It writes after all (a function called by a SELECT): refused by the
     * batch's read-only transaction before it had any effect.  It runs
     * alone, now and from now on. */
    pipeline_stmt *s = slot_of(pool, o->hash);
    if (o->hash != 0 && s != NULL && s->hash == o->hash)
      s->writes = 1;
    o->reads = 0;
    return 1;
  }
  /* A read that a cancel meant for another statement stopped: nothing of
   * it took effect. */
  return o->at_risk && o->reads && strcmp(state, "57014") == 0;
}

int pipeline_cancel_safe(const struct conn *conn, const op *target) {
  if (conn->state != CONN_BUSY)
    return 1;
  if (target != conn_running(conn))
    return 0; /* it waits for its turn */
  int target_writes = target->kind == OP_QUERY && !target->reads;
  return conn->writes - target_writes == 0;
}

void pipeline_mark_at_risk(struct conn *conn, const op *target) {
  queue *q;
  queue_foreach (q, &conn->wire) {
    op *o = queue_data(q, op, node);
    if (o != target)
      o->at_risk = 1;
  }
}
