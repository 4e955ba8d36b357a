/* Leak detection.  A held connection records its acquisition (hold.h
 * fields in struct conn).  Two things make it a leak: its request is over
 * (pgtag_ctx_end, or the last reference outside pgtag dropped) while the
 * handle is still live, or it has been held longer than leak_threshold_ms.
 *
 * Request-over checks never run inside the call that noticed them (a
 * context ending inside a callback, a reference dropped inside op_free):
 * they mark the hold and wake the pool, which checks on its next turn, so
 * a release later in the same callback is still in time and a reclaim
 * never runs in the middle of the pool's own bookkeeping. */
#include "leak.h"

#include "context.h"
#include "log.h"

#include <execinfo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *pgtag_leak_kind_name(pgtag_leak_kind kind) {
  switch (kind) {
  case PGTAG_LEAK_REQUEST_ENDED:
    return "request ended";
  case PGTAG_LEAK_THRESHOLD:
    return "held too long";
  case PGTAG_LEAK_RETURNED:
    return "returned";
  }
  return "unknown leak kind";
}

int pgtag__leak_capture(pgtag_pool *pool, op *o, void *caller) {
  void *frames[HOLD_FRAMES_MAX + 4];
  if (!pool->cfg.leak_backtrace)
    return 0;
  int n = backtrace(frames, HOLD_FRAMES_MAX + 4), first = 0;
  /* The stack starts at the caller of pgtag_acquire: skip pgtag's frames
   * (and any a sanitizer's interceptor adds) up to its return address. */
  while (first < n && frames[first] != caller)
    first++;
  if (first == n)
    first = n > 2 ? 2 : 0;
  n -= first;
  if (n > HOLD_FRAMES_MAX)
    n = HOLD_FRAMES_MAX;
  if (n <= 0)
    return 0;
  o->frames = malloc((size_t)n * sizeof *o->frames);
  if (o->frames == NULL)
    return -1;
  memcpy(o->frames, frames + first, (size_t)n * sizeof *o->frames);
  o->nframes = n;
  return 0;
}

static void request_over_while_holding(pgtag_ctx *ctx);

void pgtag__hold_start(struct conn *conn, op *o) {
  assert(conn->state == CONN_HELD && o->kind == OP_ACQUIRE);
  hold *h = &conn->hold;
  memset(h, 0, sizeof *h);
  queue_init(&h->owner_node);
  h->owner = pgtag_ctx_ref(o->ctx);
  h->file = o->file;
  h->line = o->line;
  h->func = o->func;
  h->since = uv_now(conn->pool->loop);
  h->backend_pid = conn->backend_pid;
  conn->last_sql[0] = '\0'; /* this acquisition's last statement, not the pool's */
  h->frames = o->frames;
  h->nframes = o->nframes;
  o->frames = NULL;
  o->nframes = 0;
  if (h->owner != NULL) {
    queue_insert_tail(&h->owner->held, &h->owner_node);
    h->owner->nheld++;
    h->owner->held_request_over = request_over_while_holding;
  }
  if (!uv_is_active((uv_handle_t *)&conn->pool->leak_timer))
    pgtag__leak_timer_arm(conn->pool); /* older holds have earlier deadlines */
}

static void check_soon(struct conn *conn) {
  if (conn->hold.check)
    return;
  conn->hold.check = 1;
  conn->pool->leak_checks++;
  conn->pool->on->wake(conn->pool);
}

static int request_over(const pgtag_ctx *ctx) {
  return ctx != NULL && (ctx->ended || ctx->refs == ctx->nheld);
}

void pgtag__hold_delivered(struct conn *conn, uint64_t gen) {
  if (conn->gen != gen)
    return;
  conn->hold.delivered = 1;
  if (request_over(conn->hold.owner))
    check_soon(conn); /* granted to a request that ended while it waited */
}

/* ctx has ended, or its last reference outside pgtag was dropped, while
 * holding connections (context.c calls this through
 * ctx->held_request_over): check them once the current callback has
 * returned. */
static void request_over_while_holding(pgtag_ctx *ctx) {
  queue *q;
  queue_foreach (q, &ctx->held) {
    check_soon(queue_data(q, struct conn, hold.owner_node));
  }
}

/* ------------------------------------------------------------------------
 * Reports
 * ------------------------------------------------------------------------ */

static pgtag_tx_state tx_state(const struct conn *conn) {
  if (conn->state == CONN_LOST || conn->pg == NULL)
    return PGTAG_TX_UNKNOWN;
  if (conn_head(conn) != NULL)
    return PGTAG_TX_ACTIVE;
  switch (PQtransactionStatus(conn->pg)) {
  case PQTRANS_IDLE:
    return PGTAG_TX_IDLE;
  case PQTRANS_ACTIVE:
    return PGTAG_TX_ACTIVE;
  case PQTRANS_INTRANS:
    return PGTAG_TX_INTRANS;
  case PQTRANS_INERROR:
    return PGTAG_TX_INERROR;
  default:
    return PGTAG_TX_UNKNOWN;
  }
}

static const char *tx_state_text(pgtag_tx_state s) {
  switch (s) {
  case PGTAG_TX_IDLE:
    return "no transaction open";
  case PGTAG_TX_ACTIVE:
    return "a query running";
  case PGTAG_TX_INTRANS:
    return "inside a transaction";
  case PGTAG_TX_INERROR:
    return "inside a failed transaction";
  case PGTAG_TX_UNKNOWN:
    return "connection lost";
  }
  return "?";
}

/* The default report: one line through the pool's log function, which
 * starts it with the request ID (report() makes the request current). */
static void log_leak(const pgtag_pool *pool, const pgtag_leak *l) {
  char sql[LAST_SQL_MAX + 1], frames[640] = "", site[320];
  pgtag__text_line(sql, sizeof sql, l->last_sql);
  for (int i = 0, n = 0; i < l->nframes && n < (int)sizeof frames; i++)
    n += snprintf(frames + n, sizeof frames - (size_t)n, "%s%s",
                  i == 0 ? "; acquired from: " : " <- ", l->frames[i]);
  snprintf(site, sizeof site, "acquired at %s:%d in %s()", l->file ? l->file : "?", l->line,
           l->func ? l->func : "?");
  const char *who = l->request_id != NULL ? "the request" : "a caller outside any request";

  switch (l->kind) {
  case PGTAG_LEAK_REQUEST_ENDED:
  case PGTAG_LEAK_THRESHOLD:
    pgtag__pool_log(pool, PGTAG_LOG_WARN,
                    "leak: %s %s a connection (%s) %s %llu ms ago; "
                    "%s; last query: %s%s%s",
                    who,
                    l->kind == PGTAG_LEAK_REQUEST_ENDED ? "ended while holding"
                                                        : "has held for too long",
                    pgtag__backend_text(l->backend_pid).s, site, (unsigned long long)l->held_ms,
                    tx_state_text(l->tx_state), sql[0] ? sql : "(none)",
                    l->reclaimed ? "; taking it back" : "", frames);
    break;
  case PGTAG_LEAK_RETURNED:
    pgtag__pool_log(pool, PGTAG_LOG_WARN, "leak: %s returned the connection (%s) %s after %llu ms",
                    who, pgtag__backend_text(l->backend_pid).s, site,
                    (unsigned long long)l->held_ms);
    break;
  }
}

static void report(struct conn *conn, pgtag_leak_kind kind, int reclaimed) {
  pgtag_pool *pool = conn->pool;
  hold *h = &conn->hold;
  pgtag_ctx *owner = h->owner;
  pgtag_tag tags[PGTAG_TAGS_MAX];
  int ntags = owner != NULL ? owner->ntags : 0;
  for (int i = 0; i < ntags; i++) {
    tags[i].key = owner->tags[i].key;
    tags[i].value = owner->tags[i].value;
  }
  char **symbols = h->nframes > 0 ? backtrace_symbols(h->frames, h->nframes) : NULL;

  pgtag_leak leak = {
      .kind = kind,
      .pool_name = pool->name,
      .request_id = owner != NULL ? owner->request_id : NULL,
      .tags = ntags > 0 ? tags : NULL,
      .ntags = ntags,
      .file = h->file,
      .line = h->line,
      .func = h->func,
      .held_ms = uv_now(pool->loop) - h->since,
      .backend_pid = h->backend_pid,
      .last_sql = conn->last_sql,
      .tx_state = tx_state(conn),
      .reclaimed = reclaimed,
      .frames = (const char *const *)symbols,
      .nframes = symbols != NULL ? h->nframes : 0,
  };
  if (kind == PGTAG_LEAK_REQUEST_ENDED)
    pool->stats.leaks_ended++;
  else if (kind == PGTAG_LEAK_THRESHOLD)
    pool->stats.leaks_threshold++;
  else
    pool->stats.leaks_returned++;

  pgtag_ctx *previous = pgtag_ctx_enter(owner);
  if (pool->cfg.on_leak != NULL)
    pool->cfg.on_leak(&leak, pool->cfg.on_leak_arg);
  else
    log_leak(pool, &leak);
  pgtag_ctx_leave(previous);
  free(symbols);
}

void pgtag__hold_end(struct conn *conn, int released_by_holder) {
  hold *h = &conn->hold;
  if (queue_linked(&h->owner_node)) {
    queue_remove(&h->owner_node);
    h->owner->nheld--;
  }
  if (h->check) {
    h->check = 0;
    conn->pool->leak_checks--;
  }
  conn->gen = 0;
  if (released_by_holder && (h->reported_ended || h->reported_threshold))
    report(conn, PGTAG_LEAK_RETURNED, 0);
}

void pgtag__hold_clear(struct conn *conn) {
  hold *h = &conn->hold;
  pgtag_ctx *owner = h->owner;
  free(h->frames);
  memset(h, 0, sizeof *h);
  queue_init(&h->owner_node);
  pgtag_ctx_unref(owner); /* last: it may start checks of other holds */
}

/* ------------------------------------------------------------------------
 * Checks
 * ------------------------------------------------------------------------ */

static struct conn *next_marked(pgtag_pool *pool) {
  queue *q;
  queue_foreach (q, &pool->conns) {
    struct conn *conn = queue_data(q, struct conn, node);
    if (conn->hold.check)
      return conn;
  }
  return NULL;
}

void pgtag__leak_run_checks(pgtag_pool *pool) {
  struct conn *conn;
  /* A report or reclaim can move connections around: find the next marked
   * one afresh each time. */
  while (pool->leak_checks > 0 && (conn = next_marked(pool)) != NULL) {
    hold *h = &conn->hold;
    h->check = 0;
    pool->leak_checks--;
    if (conn->gen == 0 || !h->delivered || h->reported_ended || !request_over(h->owner))
      continue;
    h->reported_ended = 1;
    /* A closing pool cannot wait for a release that will never come. */
    int reclaim = pool->cfg.leak_policy == PGTAG_LEAK_RECLAIM || pool->closing;
    report(conn, PGTAG_LEAK_REQUEST_ENDED, reclaim);
    if (reclaim && conn->gen != 0) /* the hook may have released it */
      conn->pool->on->reclaim(conn);
  }
}

/* ------------------------------------------------------------------------
 * Threshold
 * ------------------------------------------------------------------------ */

static int threshold_due(const struct conn *conn) {
  return conn->gen != 0 && !conn->hold.reported_threshold;
}

static void on_leak_timer(uv_timer_t *timer) {
  pgtag_pool *pool = timer->data;
  uint64_t limit = (uint64_t)pool->cfg.leak_threshold_ms;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  for (;;) {
    struct conn *late = NULL;
    uint64_t now = uv_now(pool->loop);
    queue *q;
    queue_foreach (q, &pool->conns) {
      struct conn *conn = queue_data(q, struct conn, node);
      if (threshold_due(conn) && now - conn->hold.since >= limit) {
        late = conn;
        break;
      }
    }
    if (late == NULL)
      break;
    late->hold.reported_threshold = 1;
    report(late, PGTAG_LEAK_THRESHOLD, 0);
  }
  pgtag__leak_timer_arm(pool);
  pgtag_ctx_leave(previous);
}

void pgtag__leak_timer_arm(pgtag_pool *pool) {
  uint64_t limit = (uint64_t)pool->cfg.leak_threshold_ms, first = UINT64_MAX;
  queue *q;
  if (limit == 0 || pool->closing)
    return;
  queue_foreach (q, &pool->conns) {
    struct conn *conn = queue_data(q, struct conn, node);
    if (threshold_due(conn) && conn->hold.since + limit < first)
      first = conn->hold.since + limit;
  }
  if (first == UINT64_MAX) {
    uv_timer_stop(&pool->leak_timer);
    return;
  }
  uint64_t now = uv_now(pool->loop);
  uv_timer_start(&pool->leak_timer, on_leak_timer, first > now ? first - now : 0, 0);
}
