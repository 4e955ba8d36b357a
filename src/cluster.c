/* Read replicas: a primary pool and a pool per replica; reads go by lag
 * and load, and a request that wrote reads its own writes. */
#include "checks.h"

#include "context.h"
#include "log.h"
#include "pool.h"
#include "submit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Replay lag is the age of the oldest WAL a replica has received and not
 * yet replayed, by the cluster's clock: each sample reads how far the
 * replica has received and replayed, the cluster remembers when it first
 * saw each received position, and the lag is how long ago the oldest one
 * still ahead of replay was first seen (0 when everything received is
 * replayed).  It reads low by at most one lag_check_interval_ms (WAL first
 * seen at a sample arrived since the one before), and no server's clock
 * enters it.
 *
 * Not clock_timestamp() - pg_last_xact_replay_timestamp(), as before: that
 * is the time since the last commit replayed, so whenever WAL is in flight
 * after a quiet spell (a large write, or just a flush that stops at a page
 * boundary mid-record, as the walwriter's do) it reads as the whole quiet
 * spell: 4 to 20 s, measured, for a standby under half a second behind,
 * and the reads went to the primary just as it was busy writing.  Not the
 * primary's pg_stat_replication.replay_lag: it is NULL once the primary is
 * idle, a row per standby matched by application_name, and a query on the
 * primary.  Not a byte distance: it needs the primary's position too, and
 * bytes are not milliseconds.  The README has the measurements. */
#define LAG_SQL                                                     \
  "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn() - '0/0', " \
  "pg_last_wal_replay_lsn() - '0/0'"

/* Enough marks for 64 samples of WAL not replayed (16 s at the default
 * interval), far beyond any useful max_replica_lag_ms; past that they are
 * merged, so precision drops, never the bound. */
#define MARKS 64

typedef struct {
  uint64_t lsn;     /* the replica had received WAL up to here ... */
  uint64_t seen_at; /* ... by this uv_now(); 0: unknown, it was there at
                       the first sample */
} wal_mark;

typedef struct {
  pgtag_cluster *cluster;
  pgtag_pool *pool;
  int lag_ms;            /* at the last good sample; -1: none, not a replica,
                            or not known */
  uint64_t heard_at;     /* uv_now() of the last good sample */
  int probing;           /* a lag query is under way */
  int watching;          /* the last sample was good, so WAL first seen now
                            arrived since it */
  uint64_t replayed;     /* replay position at the last good sample */
  wal_mark marks[MARKS]; /* received, not yet replayed; oldest first */
  int nmarks;
  int promoted; /* the last sample found it out of recovery */
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

/* Remember that the replica had received up to lsn at seen_at.  With no
 * room left the two marks closest in time become one, with the later
 * position and the earlier time: the lag can then read high by that gap,
 * never low. */
static void remember(replica *r, uint64_t lsn, uint64_t seen_at) {
  if (r->nmarks == MARKS) {
    int k = 0;
    for (int i = 1; i + 1 < MARKS; i++)
      if (r->marks[i + 1].seen_at - r->marks[i].seen_at <
          r->marks[k + 1].seen_at - r->marks[k].seen_at)
        k = i;
    r->marks[k].lsn = r->marks[k + 1].lsn;
    memmove(&r->marks[k + 1], &r->marks[k + 2], (size_t)(MARKS - k - 2) * sizeof r->marks[0]);
    r->nmarks--;
  }
  r->marks[r->nmarks++] = (wal_mark){.lsn = lsn, .seen_at = seen_at};
}

static void forget_marks(replica *r) {
  r->nmarks = 0;
  r->watching = 0;
}

static void on_lag(PGresult *res, const pgtag_error *err, void *arg) {
  replica *r = arg;
  r->probing = 0;
  if (err != NULL || PQntuples(res) != 1 || PQnfields(res) != 3) {
    r->lag_ms = -1;
    r->watching = 0; /* WAL arriving meanwhile is only known to be younger
                        than the last good sample */
    return;
  }
  uint64_t now = uv_now(r->cluster->loop);
  /* WAL first seen now arrived since the last sample; after a failed one
   * (or none: 0, unknown) it may have waited since the last good one */
  uint64_t arrived = r->watching ? now : r->heard_at;
  r->heard_at = now;
  if (strcmp(PQgetvalue(res, 0, 0), "t") != 0 || PQgetisnull(res, 0, 2)) {
    forget_marks(r); /* promoted: not a replica of this primary any more */
    r->lag_ms = -1;
    if (!r->promoted) {
      r->promoted = 1;
      r->pool->stats.left_recovery++;
      pgtag__pool_log(r->pool, PGTAG_LOG_WARN,
                      "this replica is not in recovery any more (promoted?): no read goes to it "
                      "until it is a standby again; writes still go to the cluster's primary pool");
    }
    return;
  }
  if (r->promoted) {
    r->promoted = 0;
    pgtag__pool_log(r->pool, PGTAG_LOG_WARN,
                    "this replica is in recovery again: reads may go to it");
  }
  uint64_t replayed = strtoull(PQgetvalue(res, 0, 2), NULL, 10);
  if (replayed < r->replayed) { /* restarted from a restartpoint, or another server */
    forget_marks(r);
    arrived = 0;
  }
  r->replayed = replayed;
  int done = 0;
  while (done < r->nmarks && r->marks[done].lsn <= replayed)
    done++;
  r->nmarks -= done;
  memmove(r->marks, r->marks + done, (size_t)r->nmarks * sizeof r->marks[0]);
  r->watching = 1;
  if (PQgetisnull(res, 0, 1)) {
    /* not streaming (archive recovery, or its WAL receiver has not started
     * yet): how far it is behind cannot be told */
    r->lag_ms = -1;
    return;
  }
  uint64_t received = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
  if (received > replayed && (r->nmarks == 0 || received > r->marks[r->nmarks - 1].lsn))
    remember(r, received, arrived);
  uint64_t age = r->nmarks == 0 ? 0 : now - r->marks[0].seen_at;
  if (r->nmarks > 0 && r->marks[0].seen_at == 0)
    r->lag_ms = -1; /* behind by an unknown amount until that is replayed */
  else
    r->lag_ms = age > 2147483647 ? 2147483647 : (int)age;
}

static void on_lag_timer(uv_timer_t *t) {
  pgtag_cluster *c = t->data;
  pgtag_query_opts opts = {.timeout_ms = 2 * c->interval_ms};
  pgtag_ctx *previous = pgtag_ctx_enter(NULL); /* the cluster's own query */
  for (int i = 0; i < c->nreplicas; i++) {
    replica *r = &c->replicas[i];
    if (r->probing)
      continue;
    if (pgtag__pool_query(r->pool, LAG_SQL, 0, NULL, &opts, on_lag, r, &pgtag__site_internal) ==
        PGTAG_OK)
      r->probing = 1;
  }
  pgtag_ctx_leave(previous);
}

/* The healthy replica with the least work outstanding, other than
 * except, or the primary. */
static pgtag_pool *read_pool(const pgtag_cluster *c, const pgtag_pool *except) {
  pgtag_pool *best = NULL;
  int best_load = 0;
  for (int i = 0; i < c->nreplicas; i++) {
    const replica *r = &c->replicas[i];
    if (!healthy(c, r) || r->pool == except)
      continue;
    int load = r->pool->outstanding + r->pool->count[CONN_HELD];
    if (best == NULL || load < best_load) {
      best = r->pool;
      best_load = load;
    }
  }
  return best != NULL ? best : c->primary;
}

/* A read sent to a replica, with what it takes to send it once more
 * elsewhere: the caller's text and values are only theirs during the
 * call, so they are copied into the same block. */
typedef struct {
  pgtag_cluster *cluster;
  pgtag_pool *pool; /* the replica it went to */
  pgtag_result_cb cb;
  void *arg;
  call_site site;        /* file and func are the program's literals */
  pgtag_query_opts opts; /* zero, the defaults, when the caller gave none */
  int nparams;
  const char **values;
  char *sql;
} replica_read;

static replica_read *replica_read_new(pgtag_cluster *c, pgtag_pool *pool, const char *sql,
                                      int nparams, const char *const *values,
                                      const pgtag_query_opts *opts, pgtag_result_cb cb, void *arg,
                                      const call_site *site) {
  size_t size = sizeof(replica_read) + (size_t)nparams * sizeof(char *) + strlen(sql) + 1;
  for (int i = 0; i < nparams; i++)
    size += values[i] != NULL ? strlen(values[i]) + 1 : 0;
  replica_read *rr = malloc(size);
  if (rr == NULL)
    return NULL;
  *rr = (replica_read){.cluster = c,
                       .pool = pool,
                       .cb = cb,
                       .arg = arg,
                       .site = *site,
                       .opts = opts != NULL ? *opts : (pgtag_query_opts){0},
                       .nparams = nparams,
                       .values = (const char **)(rr + 1)};
  char *text = (char *)(rr->values + nparams);
  for (int i = 0; i < nparams; i++) {
    rr->values[i] = NULL;
    if (values[i] != NULL) {
      rr->values[i] = strcpy(text, values[i]);
      text += strlen(text) + 1;
    }
  }
  rr->sql = strcpy(text, sql);
  return rr;
}

static void on_read_retried(PGresult *res, const pgtag_error *err, void *arg) {
  replica_read *rr = arg;
  rr->cb(res, err, rr->arg);
  free(rr);
}

/* In the request's context (pgtag made it current): a connection failure
 * on the replica sends the read once more, elsewhere; anything else is
 * the caller's answer. */
static void on_replica_read(PGresult *res, const pgtag_error *err, void *arg) {
  replica_read *rr = arg;
  pgtag_cluster *c = rr->cluster;
  if (err != NULL && err->code == PGTAG_ECONN && !c->closing) {
    pgtag_pool *other = read_pool(c, rr->pool);
    if (pgtag__pool_query(other, rr->sql, rr->nparams, rr->values, &rr->opts, on_read_retried, rr,
                          &rr->site) == PGTAG_OK) {
      rr->pool->stats.reads_retried++;
      return;
    }
  }
  on_read_retried(res, err, rr);
}

pgtag_errcode pgtag_cluster_query_at(pgtag_cluster *c, int flags, const char *sql, int nparams,
                                     const char *const *values, const pgtag_query_opts *opts,
                                     pgtag_result_cb cb, void *arg, const char *file, int line,
                                     const char *func) {
  static const char fn[] = "pgtag_cluster_query";
  const call_site site = {file, line, func};
  if (c == NULL)
    return pgtag__refuse(NULL, &site, fn, "the cluster is NULL");
  if ((flags & ~PGTAG_READ_ONLY) != 0)
    return pgtag__refuse(c->primary, &site, fn, "unknown flags (only PGTAG_READ_ONLY is)");
  if (c->closing)
    return PGTAG_ECLOSED;
  pgtag_ctx *ctx = pgtag_ctx_current();
  int wrote = ctx != NULL && (ctx->wrote & c->bit) != 0;
  pgtag_pool *pool = (flags & PGTAG_READ_ONLY) && !wrote ? read_pool(c, NULL) : c->primary;
  if (pool != c->primary && sql != NULL && cb != NULL && nparams >= 0 &&
      (nparams == 0 || values != NULL)) {
    /* bad arguments go on to pgtag__pool_query, which says what is wrong */
    replica_read *rr = replica_read_new(c, pool, sql, nparams, values, opts, cb, arg, &site);
    if (rr == NULL)
      return PGTAG_ENOMEM;
    pgtag_errcode rc =
        pgtag__pool_query(pool, sql, nparams, values, opts, on_replica_read, rr, &site);
    if (rc != PGTAG_OK)
      free(rr);
    return rc;
  }
  pgtag_errcode rc = pgtag__pool_query(pool, sql, nparams, values, opts, cb, arg, &site);
  if (rc == PGTAG_OK && ctx != NULL && !(flags & PGTAG_READ_ONLY))
    ctx->wrote |= c->bit;
  return rc;
}

pgtag_errcode(pgtag_cluster_query)(pgtag_cluster *c, int flags, const char *sql, int nparams,
                                   const char *const *values, pgtag_result_cb cb, void *arg) {
  return pgtag_cluster_query_at(c, flags, sql, nparams, values, NULL, cb, arg, NULL, 0, NULL);
}

pgtag_errcode(pgtag_cluster_query_ex)(pgtag_cluster *c, int flags, const char *sql, int nparams,
                                      const char *const *values, const pgtag_query_opts *opts,
                                      pgtag_result_cb cb, void *arg) {
  return pgtag_cluster_query_at(c, flags, sql, nparams, values, opts, cb, arg, NULL, 0, NULL);
}

pgtag_errcode pgtag_cluster_acquire_ex_at(pgtag_cluster *c, int flags, pgtag_acquire_cb cb,
                                          void *arg, const char *file, int line, const char *func) {
  static const char fn[] = "pgtag_cluster_acquire";
  const call_site site = {file, line, func};
  if (c == NULL)
    return pgtag__refuse(NULL, &site, fn, "the cluster is NULL");
  if ((flags & ~PGTAG_READ_ONLY) != 0)
    return pgtag__refuse(c->primary, &site, fn, "unknown flags (only PGTAG_READ_ONLY is)");
  if (c->closing)
    return PGTAG_ECLOSED;
  pgtag_ctx *ctx = pgtag_ctx_current();
  int wrote = ctx != NULL && (ctx->wrote & c->bit) != 0;
  int reads = (flags & PGTAG_READ_ONLY) && !wrote;
  pgtag_errcode rc =
      pgtag_acquire_at(reads ? read_pool(c, NULL) : c->primary, cb, arg, file, line, func);
  if (rc == PGTAG_OK && ctx != NULL && !reads)
    ctx->wrote |= c->bit;
  return rc;
}

pgtag_errcode pgtag_cluster_acquire_at(pgtag_cluster *c, pgtag_acquire_cb cb, void *arg,
                                       const char *file, int line, const char *func) {
  return pgtag_cluster_acquire_ex_at(c, 0, cb, arg, file, line, func);
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
  static const call_site site = {NULL, 0, "pgtag_cluster_new"};
  const char *fn = site.func;
  if (loop == NULL || cfg == NULL || out == NULL)
    return pgtag__refuse(NULL, &site, fn, "loop, cfg or out is NULL");
  if (cfg->nreplicas < 0 || (cfg->nreplicas > 0 && cfg->replicas == NULL))
    return pgtag__refuse(NULL, &site, fn, "nreplicas is negative, or replicas is NULL");
  if (cfg->max_replica_lag_ms < 1 || cfg->lag_check_interval_ms < 1)
    return pgtag__refuse(NULL, &site, fn,
                         "max_replica_lag_ms and lag_check_interval_ms must be at least 1");
  /* Everything that can be wrong is checked before any pool exists. */
  for (int i = 0; i < cfg->nreplicas; i++)
    if (!conninfo_valid(cfg->replicas[i]))
      return pgtag__refuse(NULL, &site, fn, "a replica's conninfo is NULL or does not parse");
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
