/* Read replicas: a primary pool and a pool per replica; reads go by lag
 * and load, and a request that wrote reads its own writes. */
#include "context.h"
#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Replay lag in ms, 0 when everything received is replayed (an idle
 * primary does not make a replica look late), -1 on a server that is not
 * in recovery (promoted: not a replica of this primary any more). */
#define LAG_SQL                                                                  \
  "SELECT CASE WHEN NOT pg_is_in_recovery() THEN -1 "                            \
  "WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() " \
  "THEN 0 ELSE coalesce((extract(epoch FROM clock_timestamp() - "                \
  "pg_last_xact_replay_timestamp()) * 1000)::bigint, 2147483647) END"

typedef struct {
  pgtag_cluster *cluster;
  pgtag_pool *pool;
  int lag_ms;        /* at the last good sample; -1: none or not a replica */
  uint64_t heard_at; /* uv_now() of the last good sample */
  int probing;       /* a lag query is under way */
} replica;

struct pgtag_cluster {
  uv_loop_t *loop;
  pgtag_pool *primary;
  replica *replicas;
  int nreplicas;
  int max_lag_ms;
  int interval_ms;
  uint64_t bit; /* this cluster's bit in pgtag_ctx.wrote */
  uv_timer_t lag_timer;
  int closing;
  int open; /* pools and the timer not yet closed */
  void (*done)(void *arg);
  void *done_arg;
};

void pgtag_cluster_config_init(pgtag_cluster_config *cfg) {
  if (cfg == NULL)
    return;
  memset(cfg, 0, sizeof *cfg);
  pgtag_pool_config_init(&cfg->primary);
  cfg->max_replica_lag_ms = 1000;
  cfg->lag_check_interval_ms = 250;
}

static int healthy(const pgtag_cluster *c, const replica *r) {
  return r->lag_ms >= 0 && r->lag_ms <= c->max_lag_ms &&
         uv_now(c->loop) - r->heard_at <= 3 * (uint64_t)c->interval_ms;
}

int pgtag_cluster_replica_lag_ms(const pgtag_cluster *c, int i) {
  if (c == NULL || i < 0 || i >= c->nreplicas)
    return -1;
  const replica *r = &c->replicas[i];
  if (r->lag_ms < 0 || uv_now(c->loop) - r->heard_at > 3 * (uint64_t)c->interval_ms)
    return -1;
  return r->lag_ms;
}

static void on_lag(PGresult *res, const pgtag_error *err, void *arg) {
  replica *r = arg;
  r->probing = 0;
  if (err != NULL || PQntuples(res) != 1) {
    r->lag_ms = -1;
    return;
  }
  long long lag = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
  r->lag_ms = lag < 0 ? -1 : lag > 2147483647 ? 2147483647 : (int)lag;
  r->heard_at = uv_now(r->cluster->loop);
}

static void on_lag_timer(uv_timer_t *t) {
  pgtag_cluster *c = t->data;
  pgtag_query_opts opts = {.timeout_ms = 2 * c->interval_ms};
  pgtag_ctx *previous = pgtag_ctx_enter(NULL); /* the cluster's own query */
  for (int i = 0; i < c->nreplicas; i++) {
    replica *r = &c->replicas[i];
    if (r->probing)
      continue;
    if (pgtag_query_ex(r->pool, LAG_SQL, 0, NULL, &opts, on_lag, r) == PGTAG_OK)
      r->probing = 1;
  }
  pgtag_ctx_leave(previous);
}

/* The healthy replica with the least work outstanding, or the primary. */
static pgtag_pool *read_pool(const pgtag_cluster *c) {
  pgtag_pool *best = NULL;
  int best_load = 0;
  for (int i = 0; i < c->nreplicas; i++) {
    const replica *r = &c->replicas[i];
    if (!healthy(c, r))
      continue;
    int load = r->pool->outstanding + r->pool->count[CONN_HELD];
    if (best == NULL || load < best_load) {
      best = r->pool;
      best_load = load;
    }
  }
  return best != NULL ? best : c->primary;
}

pgtag_errcode pgtag_cluster_query(pgtag_cluster *c, int flags, const char *sql, int nparams,
                                  const char *const *values, pgtag_result_cb cb, void *arg) {
  if (c == NULL || (flags & ~PGTAG_READ_ONLY) != 0)
    return PGTAG_EINVAL;
  if (c->closing)
    return PGTAG_ECLOSED;
  pgtag_ctx *ctx = pgtag_ctx_current();
  int wrote = ctx != NULL && (ctx->wrote & c->bit) != 0;
  if ((flags & PGTAG_READ_ONLY) && !wrote)
    return pgtag_query(read_pool(c), sql, nparams, values, cb, arg);
  pgtag_errcode rc = pgtag_query(c->primary, sql, nparams, values, cb, arg);
  if (rc == PGTAG_OK && ctx != NULL && !(flags & PGTAG_READ_ONLY))
    ctx->wrote |= c->bit;
  return rc;
}

pgtag_errcode pgtag_cluster_acquire_at(pgtag_cluster *c, pgtag_acquire_cb cb, void *arg,
                                       const char *file, int line, const char *func) {
  if (c == NULL)
    return PGTAG_EINVAL;
  if (c->closing)
    return PGTAG_ECLOSED;
  pgtag_errcode rc = pgtag_acquire_at(c->primary, cb, arg, file, line, func);
  pgtag_ctx *ctx = pgtag_ctx_current();
  if (rc == PGTAG_OK && ctx != NULL)
    ctx->wrote |= c->bit;
  return rc;
}

pgtag_pool *pgtag_cluster_primary(pgtag_cluster *c) { return c != NULL ? c->primary : NULL; }

pgtag_pool *pgtag_cluster_replica(pgtag_cluster *c, int i) {
  return c != NULL && i >= 0 && i < c->nreplicas ? c->replicas[i].pool : NULL;
}

static void cluster_free(pgtag_cluster *c) {
  free(c->replicas);
  free(c);
}

static void closed_one(pgtag_cluster *c) {
  if (--c->open > 0)
    return;
  void (*done)(void *) = c->done;
  void *arg = c->done_arg;
  cluster_free(c);
  if (done != NULL)
    done(arg);
}

static void on_pool_closed(void *arg) { closed_one(arg); }

static void on_timer_closed(uv_handle_t *h) { closed_one(h->data); }

void pgtag_cluster_close(pgtag_cluster *c, void (*done)(void *arg), void *arg) {
  if (c == NULL || c->closing)
    return;
  c->closing = 1;
  c->done = done;
  c->done_arg = arg;
  c->open = 2 + c->nreplicas;
  uv_close((uv_handle_t *)&c->lag_timer, on_timer_closed);
  pgtag_pool_close(c->primary, on_pool_closed, c);
  for (int i = 0; i < c->nreplicas; i++)
    pgtag_pool_close(c->replicas[i].pool, on_pool_closed, c);
}

static int conninfo_valid(const char *conninfo) {
  char *err = NULL;
  PQconninfoOption *opts = conninfo != NULL ? PQconninfoParse(conninfo, &err) : NULL;
  PQfreemem(err);
  if (opts == NULL)
    return 0;
  PQconninfoFree(opts);
  return 1;
}

pgtag_errcode pgtag_cluster_new(uv_loop_t *loop, const pgtag_cluster_config *cfg,
                                pgtag_cluster **out) {
  static _Thread_local unsigned next_bit;
  if (loop == NULL || cfg == NULL || out == NULL || cfg->nreplicas < 0 ||
      (cfg->nreplicas > 0 && cfg->replicas == NULL) || cfg->max_replica_lag_ms < 1 ||
      cfg->lag_check_interval_ms < 1)
    return PGTAG_EINVAL;
  /* Everything that can be wrong is checked before any pool exists. */
  for (int i = 0; i < cfg->nreplicas; i++)
    if (!conninfo_valid(cfg->replicas[i]))
      return PGTAG_EINVAL;
  pgtag_cluster *c = calloc(1, sizeof *c);
  if (c == NULL)
    return PGTAG_ENOMEM;
  c->replicas = calloc((size_t)(cfg->nreplicas > 0 ? cfg->nreplicas : 1), sizeof *c->replicas);
  if (c->replicas == NULL) {
    free(c);
    return PGTAG_ENOMEM;
  }
  c->loop = loop;
  c->max_lag_ms = cfg->max_replica_lag_ms;
  c->interval_ms = cfg->lag_check_interval_ms;
  c->bit = 1ULL << (next_bit++ % 64);
  pgtag_errcode rc = pgtag_pool_new(loop, &cfg->primary, &c->primary);
  if (rc != PGTAG_OK) {
    cluster_free(c);
    return rc;
  }
  const char *base = cfg->primary.name != NULL ? cfg->primary.name : "pgtag";
  for (int i = 0; i < cfg->nreplicas; i++) {
    replica *r = &c->replicas[i];
    char name[160];
    snprintf(name, sizeof name, "%.120s/replica%d", base, i);
    pgtag_pool_config pc = cfg->primary;
    pc.conninfo = cfg->replicas[i];
    pc.name = name;
    r->cluster = c;
    r->lag_ms = -1;
    rc = pgtag_pool_new(loop, &pc, &r->pool);
    if (rc != PGTAG_OK) { /* out of memory: give back what was made */
      c->nreplicas = i;
      uv_timer_init(loop, &c->lag_timer);
      c->lag_timer.data = c;
      pgtag_cluster_close(c, NULL, NULL);
      return rc;
    }
    c->nreplicas = i + 1;
  }
  uv_timer_init(loop, &c->lag_timer);
  c->lag_timer.data = c;
  if (c->nreplicas > 0) {
    uv_timer_start(&c->lag_timer, on_lag_timer, 0, (uint64_t)c->interval_ms);
    uv_unref((uv_handle_t *)&c->lag_timer); /* an idle cluster keeps no loop alive */
  }
  *out = c;
  return PGTAG_OK;
}
