/* Auto-pipelining's rules (pipeline.h says what they promise). */
#include "pipeline.h"

#include "conn.h"
#include "context.h"
#include "sqlkind.h"
#include "stats.h"
#include "waiters.h"

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

void pgtag__pipeline_classify(pgtag_pool *pool, op *o) {
  if (pool->cfg.pipeline_depth <= 1 || o->sql == NULL)
    return;
  o->hash = pgtag__sql_hash(o->sql);
  pipeline_stmt *s = slot_of(pool, o->hash);
  if (s->hash != o->hash) {
    memset(s, 0, sizeof *s);
    s->hash = o->hash;
    s->kind = (uint8_t)pgtag__sql_kind_of(o->sql);
  }
  o->exclusive = s->kind == SQL_EXCLUSIVE;
  o->reads = s->kind == SQL_READ && !s->writes;
  o->unproven = !proven_fast(s, pool_fast_us(pool));
}

int pgtag__pipeline_accepts(const pgtag_pool *pool, const struct conn *conn, op *o,
                            uint64_t now_ns) {
  if (!conn->pipelined || conn_simple_out(conn) || conn->state != CONN_BUSY || conn->exclusive ||
      conn->cancel != NULL || o->exclusive ||
      conn->nwire + conn->nstaged >= pool->cfg.pipeline_depth)
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

void pgtag__pipeline_learn(pgtag_pool *pool, const op *o, uint64_t us) {
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

int pgtag__pipeline_resend(pgtag_pool *pool, const struct conn *conn, op *o, const PGresult *res,
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

int pgtag__pipeline_cancel_safe(const struct conn *conn, const op *target) {
  if (conn->state != CONN_BUSY)
    return 1;
  if (target != conn_running(conn))
    return 0; /* it waits for its turn */
  int target_writes = target->kind == OP_QUERY && !target->reads;
  return conn->writes - target_writes == 0;
}

void pgtag__pipeline_mark_at_risk(struct conn *conn, const op *target) {
  queue *q;
  queue_foreach (q, &conn->wire) {
    op *o = queue_data(q, op, node);
    if (o != target)
      o->at_risk = 1;
  }
}

/* ------------------------------------------------------------------------
 * Dispatch: where a query joins a pipeline, and what goes out when
 * ------------------------------------------------------------------------ */

/* Where a query joins a pipeline: only once the pool cannot grow (a new
 * connection beats waiting behind another query), on a connection whose
 * pipeline takes it (pgtag__pipeline_accepts), the one with the fewest statements
 * under way, and among those the one whose head started last.  NULL if
 * none takes it. */
struct conn *pgtag__pipeline_least_loaded(const pgtag_pool *pool, op *o) {
  struct conn *best = NULL;
  uint64_t best_start = 0, now = uv_hrtime();
  queue *q;
  if (pool->cfg.pipeline_depth <= 1 || pool_live_conns(pool) < pool->cfg.max_conns)
    return NULL;
  queue_foreach (q, &pool->conns) {
    struct conn *conn = queue_data(q, struct conn, node);
    if (!pgtag__pipeline_accepts(pool, conn, o, now))
      continue;
    uint64_t start = conn_head(conn) != NULL ? conn_head(conn)->start_ns : UINT64_MAX;
    int load = conn->nwire + conn->nstaged, best_load = best ? best->nwire + best->nstaged : 0;
    if (best == NULL || load < best_load || (load == best_load && start > best_start)) {
      best = conn;
      best_start = start;
    }
  }
  return best;
}

/* Pipelining: send waiting queries behind the ones on conn's wire, as the
 * pipelining rules allow (pgtag__pipeline_accepts).  Stops at an acquire (the
 * connection drains for it, so it is served in turn) and at the first
 * query that may not join: the line stays first in, first out. */
void pgtag__pipeline_feed(struct conn *conn) {
  pgtag_pool *pool = conn->pool;
  if (pool_live_conns(pool) < pool->cfg.max_conns)
    return; /* the pool grows for them instead (see least_loaded) */
  uint64_t now = uv_hrtime();
  while (!queue_empty(&pool->waiters)) {
    op *o = op_first(&pool->waiters);
    if (o->kind != OP_QUERY || !pgtag__pipeline_accepts(pool, conn, o, now))
      break;
    pgtag__waiter_pop(pool);
    if (pgtag__conn_send(conn, o) != 0) {
      pgtag__waiter_put_back(pool, o, queue_head(&pool->waiters));
      pool->on->lost(conn, PQerrorMessage(conn->pg));
      return;
    }
    pgtag__stats_waited(pool, o);
  }
  pgtag__wait_timer_arm(pool);
}

/* Put o back at the head of the line, behind others sent back before it
 * (so they go again in the order they went first), to be sent again with
 * a sync point of its own.  It takes the deadline of the one it goes
 * ahead of, so that deadlines still rise along the line. */
void pgtag__pipeline_requeue(pgtag_pool *pool, op *o) {
  queue *q = queue_head(&pool->waiters);
  while (q != &pool->waiters && queue_data(q, op, node)->solo &&
         queue_data(q, op, node)->resent > 0)
    q = q->next;
  o->solo = 1;
  o->batched = 0; /* alone now: done at its own sync point */
  o->resent++;
  o->deadline = q == &pool->waiters ? 0 : queue_data(q, op, node)->deadline;
  /* its own request's deadline still holds */
  int64_t left = pgtag__ctx_left_ms(o->ctx, uv_hrtime());
  o->by_deadline = 0;
  if (left >= 0 && (o->deadline == 0 || uv_now(pool->loop) + (uint64_t)left < o->deadline)) {
    o->deadline = uv_now(pool->loop) + (uint64_t)left;
    o->by_deadline = 1;
  }
  pgtag__waiter_put_back(pool, o, q);
}

/* Before the loop blocks: the reads staged this turn go out, a batch per
 * connection. */
static void on_sync_prepare(uv_prepare_t *handle) {
  pgtag_pool *pool = handle->data;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  for (;;) { /* a failure changes the list: look again from the start */
    struct conn *open = NULL;
    queue *q;
    queue_foreach (q, &pool->conns) {
      struct conn *conn = queue_data(q, struct conn, node);
      if (conn->nstaged > 0) {
        open = conn;
        break;
      }
    }
    if (open == NULL)
      break;
    if (pgtag__conn_flush_staged(open) != 0)
      pool->on->lost(open, PQerrorMessage(open->pg));
  }
  uv_prepare_stop(handle);
  pgtag_ctx_leave(previous);
}

void pgtag__pipeline_flush_soon(pgtag_pool *pool) {
  uv_prepare_start(&pool->sync_prepare, on_sync_prepare);
}
