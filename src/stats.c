/* Measurements.  Everything here runs on the loop, on paths every query
 * takes, so it is counters and fixed-size tables only: no allocation, two
 * clock reads per query (sent, done), and the N+1 hash only when the
 * detector is on. */
#include "stats.h"

#include "context.h"
#include "log.h"
#include "sqlkind.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint64_t bounds_us[PGTAG_HISTOGRAM_BUCKETS] = {100,     250,     500,     1000,
                                                            2500,    5000,    10000,   25000,
                                                            50000,   100000,  250000,  500000,
                                                            1000000, 2500000, 5000000, 10000000};

uint64_t pgtag_histogram_bound_us(int i) {
  return i >= 0 && i < PGTAG_HISTOGRAM_BUCKETS ? bounds_us[i] : 0;
}

void pgtag__histogram_add(pgtag_histogram *h, uint64_t us) {
  h->count++;
  h->sum_us += us;
  for (int i = 0; i < PGTAG_HISTOGRAM_BUCKETS; i++) {
    if (us <= bounds_us[i]) {
      h->buckets[i]++;
      return;
    }
  }
}

void pgtag__stats_waited(pgtag_pool *pool, op *o) {
  if (o->solo)
    return; /* sent again after its batch failed: its wait was counted */
  uint64_t us = o->waiting_ns != 0 ? (uv_hrtime() - o->waiting_ns) / 1000 : 0;
  pgtag__histogram_add(&pool->stats.acquire_wait, us);
}

/* Count the statement in its request; when one count passes the threshold,
 * report once.  A full table gives the least repeated slot to the newcomer:
 * a statement repeated enough to matter keeps its place. */
static void n_plus_one(pgtag_pool *pool, pgtag_ctx *ctx, const char *sql) {
  uint64_t h = pgtag__sql_hash(sql);
  if (ctx->statements == NULL) {
    ctx->statements = calloc(CTX_STATEMENTS, sizeof *ctx->statements);
    if (ctx->statements == NULL)
      return; /* out of memory: this request goes uncounted */
  }
  ctx_statement *slot = NULL, *least = &ctx->statements[0];
  for (int i = 0; i < CTX_STATEMENTS; i++) {
    ctx_statement *s = &ctx->statements[i];
    if (s->hash == h || s->hash == 0) {
      slot = s;
      break;
    }
    if (s->count < least->count)
      least = s;
  }
  if (slot == NULL) {
    slot = least;
    memset(slot, 0, sizeof *slot);
  }
  slot->hash = h;
  if (++slot->count <= (uint32_t)pool->cfg.n_plus_one_threshold || slot->reported)
    return;
  slot->reported = 1;
  if (pool->cfg.on_n_plus_one != NULL)
    pool->cfg.on_n_plus_one(ctx->request_id, sql, slot->count, pool->cfg.on_n_plus_one_arg);
  else
    pgtag__pool_log(pool, PGTAG_LOG_WARN,
                    "N+1: the same statement ran %u times in this request: %s", slot->count, sql);
}

uint64_t pgtag__stats_query_done(op *o, struct conn *conn) {
  if (o->sent_ns == 0 || op_internal(o->kind))
    return 0;
  pgtag_pool *pool = o->pool;
  /* Its own time: from when the server could start it, not from when it
   * was sent behind another request's statement in the pipeline. */
  uint64_t from = o->start_ns > o->sent_ns ? o->start_ns : o->sent_ns;
  uint64_t now = uv_hrtime();
  uint64_t us = now > from ? (now - from) / 1000 : 0;
  o->sent_ns = 0;
  pgtag__histogram_add(&pool->stats.query_time, us);

  /* Its own text when it kept one (pipelined or waited); otherwise it was
   * the only query on the connection, whose last_sql it is. */
  const char *text = o->sql != NULL ? o->sql : conn->last_sql;
  pgtag_ctx *ctx = o->ctx;
  if (ctx != NULL) {
    ctx->stats.db_time_us += us;
    if (us >= ctx->stats.slowest_us) {
      ctx->stats.slowest_us = us;
      /* No printf: a request's first query takes this path, so most do. */
      size_t n = strnlen(text, sizeof ctx->stats.slowest_sql - 1);
      memcpy(ctx->stats.slowest_sql, text, n);
      ctx->stats.slowest_sql[n] = '\0';
    }
  }
  int slow = pool->cfg.slow_query_ms > 0 && us >= (uint64_t)pool->cfg.slow_query_ms * 1000;
  int count = pool->cfg.n_plus_one_threshold > 0 && ctx != NULL;
  if (!slow && !count)
    return us;
  pgtag_ctx *previous = pgtag_ctx_enter(ctx); /* the log line names the request */
  if (slow) {
    char sql[LAST_SQL_MAX + 1];
    pgtag__text_line(sql, sizeof sql, text);
    pgtag__pool_log(pool, PGTAG_LOG_WARN, "slow query: %llu ms on %s: %s",
                    (unsigned long long)(us / 1000), pgtag__backend_text(conn->backend_pid).s, sql);
  }
  if (count) {
    char sql[LAST_SQL_MAX + 1];
    snprintf(sql, sizeof sql, "%.200s", text);
    n_plus_one(pool, ctx, sql);
  }
  pgtag_ctx_leave(previous);
  return us;
}

void pgtag__stats_op_finished(op *o) {
  pgtag_stats *stats = &o->pool->stats;
  if (o->code != PGTAG_OK) {
    stats->errors++;
    if (o->code < PGTAG_NERRCODES)
      stats->errors_by_code[o->code]++;
  }
  if (o->kind == OP_QUERY) {
    stats->queries++;
    if (o->ctx != NULL) {
      o->ctx->stats.queries++;
      if (o->code != PGTAG_OK)
        o->ctx->stats.errors++;
    }
  } else if (o->kind == OP_ACQUIRE && o->code == PGTAG_OK) {
    stats->acquired++;
  }
}
