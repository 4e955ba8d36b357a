/* The pool: who gets which connection, when connections open and close, and
 * the one rule that keeps callbacks sane: an outcome known inside a call the
 * user made (an acquire served at once, a query on a dead connection, a pool
 * closing on its waiters) goes through the deferred queue and is delivered
 * from the loop, never from inside that call. */
#include "pool.h"

#include "cancel.h"
#include "context.h"
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void maybe_connect(pgtag_pool *pool);
static void maybe_connect_more(pgtag_pool *pool, int pressed);
static void maybe_finish_close(pgtag_pool *pool);
static void make_available(pgtag_pool *pool, struct conn *conn);
static void feed(pgtag_pool *pool, struct conn *conn);
static void release_now(pgtag_pool *pool, struct conn *conn);
static void recycle(pgtag_pool *pool, struct conn *conn);
static void cancel_inflight(struct conn *conn, pgtag_errcode why);
static void request_cancel(struct conn *conn);

/* Every connection struct not yet closed, lost ones included: the pool
 * cannot finish closing while any is left. */
static int total_conns(const pgtag_pool *pool) {
  int n = 0;
  for (int s = CONN_CONNECTING; s < CONN_CLOSED; s++)
    n += pool->count[s];
  return n;
}

/* Connections that occupy a server slot: what max_conns and min_conns
 * count.  A lost one waiting for its holder's release occupies none. */
static int live_conns(const pgtag_pool *pool) {
  return total_conns(pool) - pool->count[CONN_LOST];
}

static void set_state(struct conn *conn, conn_state state) {
  conn->pool->count[conn->state]--;
  conn->pool->count[state]++;
  conn->state = state;
}

static int on_loop_thread(const pgtag_pool *pool) {
  return pthread_equal(pool->thread, pthread_self());
}

static op *first_op(queue *q) { return queue_data(queue_head(q), op, node); }

static void defer(pgtag_pool *pool, op *o);

/* Hand conn to an acquire: the connection remembers the request and the
 * call site; the callback is delivered from the loop. */
static void grant(pgtag_pool *pool, struct conn *conn, op *o) {
  stats_waited(pool, o);
  set_state(conn, CONN_HELD);
  conn->gen = ++pool->last_gen;
  hold_start(conn, o);
  o->conn = conn;
  o->gen = conn->gen;
  conn_poll_update(conn);
  defer(pool, o);
}

/* ------------------------------------------------------------------------
 * Deferred outcomes
 * ------------------------------------------------------------------------ */

static void on_defer(uv_idle_t *handle) {
  pgtag_pool *pool = handle->data;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  queue batch;

  leak_run_checks(pool);

  /* Only what was deferred before this turn: an acquire-release chain that
   * keeps deferring cannot starve the loop. */
  queue_init(&batch);
  queue_move(&pool->deferred, &batch);
  pool->deferring = 1;
  while (!queue_empty(&batch)) {
    op *o = first_op(&batch);
    queue_remove(&o->node);
    op_finish(o);
  }
  pool->deferring = 0;
  if (queue_empty(&pool->deferred) && pool->leak_checks == 0)
    uv_idle_stop(&pool->defer_idle);
  maybe_finish_close(pool);
  pgtag_ctx_leave(previous);
}

static void defer(pgtag_pool *pool, op *o) {
  queue_insert_tail(&pool->deferred, &o->node);
  uv_idle_start(&pool->defer_idle, on_defer);
}

void pool_wake(pgtag_pool *pool) {
  if (!pool->handles_closing)
    uv_idle_start(&pool->defer_idle, on_defer);
}

static void defer_error(pgtag_pool *pool, op *o, pgtag_errcode code,
                        const char *message) {
  op_set_error(o, code, NULL, message);
  o->sql = NULL; /* may point at the caller's memory */
  o->values = NULL;
  defer(pool, o);
}

/* ------------------------------------------------------------------------
 * Waiters
 * ------------------------------------------------------------------------ */

static void on_wait_timeout(uv_timer_t *timer);

static void wait_timer_arm(pgtag_pool *pool) {
  if (queue_empty(&pool->waiters) || first_op(&pool->waiters)->deadline == 0) {
    uv_timer_stop(&pool->wait_timer);
    return;
  }
  uint64_t deadline = first_op(&pool->waiters)->deadline;
  uint64_t now = uv_now(pool->loop);
  uv_timer_start(&pool->wait_timer, on_wait_timeout,
                 deadline > now ? deadline - now : 0, 0);
}

static void waiter_add(pgtag_pool *pool, op *o) {
  int was_empty = queue_empty(&pool->waiters);
  if (pool->cfg.acquire_timeout_ms > 0)
    o->deadline = uv_now(pool->loop) + (uint64_t)pool->cfg.acquire_timeout_ms;
  o->waiting_ns = uv_hrtime();
  queue_insert_tail(&pool->waiters, &o->node);
  pool->nwaiting++;
  if (was_empty)
    wait_timer_arm(pool);
  /* Someone waits now: a pending reconnect must keep the loop alive. */
  uv_ref((uv_handle_t *)&pool->retry_timer);
}

static op *waiter_pop(pgtag_pool *pool) {
  op *o = first_op(&pool->waiters);
  queue_remove(&o->node);
  pool->nwaiting--;
  return o;
}

/* Why a wait ended: with the last connection error, whole (it names the
 * host and the server's reason), when connecting is what failed. */
static void set_wait_timeout_error(const pgtag_pool *pool, op *o) {
  const char *last = pool->connect_failures_in_row > 0 ? pool->connect_err.message : NULL;
  char head[96];
  snprintf(head, sizeof head, "no connection became free within %d ms",
           pool->cfg.acquire_timeout_ms);
  op_set_error(o, PGTAG_ETIMEDOUT, NULL, head);
  if (last == NULL || last[0] == '\0')
    return;
  size_t n = strlen(head) + strlen(last) + 32;
  char *msg = malloc(n);
  if (msg == NULL)
    return; /* the head alone */
  snprintf(msg, n, "%s (last connection error: %s)", head, last);
  free(o->message);
  o->message = msg;
}

/* Deadlines are submission time plus one fixed timeout, so they rise along
 * the queue: one timer at the head's deadline serves every waiter. */
static void on_wait_timeout(uv_timer_t *timer) {
  pgtag_pool *pool = timer->data;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  uint64_t now = uv_now(pool->loop);

  while (!queue_empty(&pool->waiters)) {
    op *o = first_op(&pool->waiters);
    if (o->deadline == 0 || o->deadline > now)
      break;
    waiter_pop(pool);
    pool->stats.timeouts++;
    set_wait_timeout_error(pool, o);
    op_finish(o);
  }
  wait_timer_arm(pool);
  maybe_finish_close(pool);
  pgtag_ctx_leave(previous);
}

/* ------------------------------------------------------------------------
 * Connections coming and going
 * ------------------------------------------------------------------------ */

/* An established connection died: counted, and its replacement counted as
 * a reconnect when it comes. */
static void count_lost(pgtag_pool *pool) {
  pool->stats.conns_lost++;
  pool->replacements_due++;
}

static void log_lost(pgtag_pool *pool, struct conn *conn) {
  char msg[256];
  count_lost(pool);
  text_line(msg, sizeof msg, conn->pg ? PQerrorMessage(conn->pg) : "");
  pool_log(pool, PGTAG_LOG_WARN, "connection to %s lost: %s",
           backend_text(conn->backend_pid).s, msg);
}

/* Unlink and close a connection that has no operation left on it. */
static void drop_conn(pgtag_pool *pool, struct conn *conn) {
  pool->count[conn->state]--;
  queue_remove(&conn->node);
  if (queue_linked(&conn->idle_node))
    queue_remove(&conn->idle_node);
  if (conn->gen != 0)
    hold_end(conn, 0);
  hold_clear(conn);
  cancel_detach(conn);
  conn_close(conn);
}

static void on_retry(uv_timer_t *timer) {
  pgtag_pool *pool = timer->data;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  maybe_connect(pool);
  pgtag_ctx_leave(previous);
}

/* Exponential backoff with jitter, so a server that is down or restarting
 * sees a trickle of attempts rather than a storm. */
static void connect_failed(pgtag_pool *pool, const char *message) {
  pool->stats.connect_failures++;
  int n = ++pool->connect_failures_in_row;
  /* A server that refuses every attempt the same way is said once, and
   * again when the reason changes; each retry goes to DEBUG. */
  pgtag_log_level level =
      n == 1 || strncmp(pool->last_connect_error, message, sizeof pool->last_connect_error - 1) != 0
          ? PGTAG_LOG_WARN : PGTAG_LOG_DEBUG;
  snprintf(pool->last_connect_error, sizeof pool->last_connect_error, "%s", message);
  if (pool->closing)
    return;
  uint64_t cap = (uint64_t)pool->cfg.reconnect_max_ms;
  uint64_t delay = (uint64_t)pool->cfg.reconnect_base_ms;
  for (int i = 1; i < n && delay < cap; i++)
    delay *= 2;
  if (delay > cap)
    delay = cap;
  delay = delay / 2 + uv_hrtime() / 1000 % (delay / 2 + 1);
  pool_log(pool, level, "connection attempt failed: %s (retry in %llu ms)",
           message, (unsigned long long)delay);
  uv_timer_start(&pool->retry_timer, on_retry, delay, 0);
  /* The retry keeps the loop alive only for someone who is waiting. */
  if (pool->nwaiting > 0)
    uv_ref((uv_handle_t *)&pool->retry_timer);
  else
    uv_unref((uv_handle_t *)&pool->retry_timer);
}

/* Open connections for waiters not already covered by attempts under way,
 * and up to min_conns, within max_conns; not while backing off. */
static void maybe_connect_more(pgtag_pool *pool, int pressed) {
  char err[256];
  if (pool->closing || uv_is_active((uv_handle_t *)&pool->retry_timer))
    return;
  int total = live_conns(pool);
  int want = pool->cfg.min_conns - total;
  int uncovered = pool->nwaiting + pressed - pool->count[CONN_CONNECTING];
  if (uncovered > want)
    want = uncovered;
  for (; want > 0 && total < pool->cfg.max_conns; want--, total++) {
    struct conn *conn = conn_start(pool, err, sizeof err);
    if (conn == NULL) {
      pool_note_connect_error(pool, err, 0);
      connect_failed(pool, err);
      return;
    }
    queue_insert_tail(&pool->conns, &conn->node);
    pool->count[CONN_CONNECTING]++;
  }
}

static void maybe_connect(pgtag_pool *pool) { maybe_connect_more(pool, 0); }

/* The server refused the last attempt with an error that waiting will not
 * fix (a wrong database, role or password), and no connection is open
 * that could serve anyone: an operation waiting for one would only wait
 * out acquire_timeout_ms to learn less than this. */
static int refused_now(const pgtag_pool *pool) {
  return pool->connect_err.refused && live_conns(pool) == pool->count[CONN_CONNECTING];
}

/* Refused, and backing off: no attempt will be made for a while, so a new
 * operation fails at once.  Once the backoff has passed, the next one
 * waits for the attempt it starts (a DBA may have fixed the cause). */
static int refused_backing_off(const pgtag_pool *pool) {
  return refused_now(pool) && uv_is_active((const uv_handle_t *)&pool->retry_timer);
}

static void fail_refused(pgtag_pool *pool, op *o) {
  const connect_error *e = &pool->connect_err;
  op_set_error(o, PGTAG_ECONN, e->sqlstate[0] != '\0' ? e->sqlstate : NULL,
               "the server refused the connection");
  if (e->message != NULL) {
    char *whole = strdup(e->message); /* op_set_error would cut it */
    if (whole != NULL) {
      free(o->message);
      o->message = whole;
    }
  }
  o->sql = NULL; /* may point at the caller's memory */
  o->values = NULL;
  defer(pool, o);
}

static void fail_refused_waiters(pgtag_pool *pool) {
  if (!refused_now(pool) || queue_empty(&pool->waiters))
    return;
  while (!queue_empty(&pool->waiters))
    fail_refused(pool, waiter_pop(pool));
  wait_timer_arm(pool);
}

void pool_on_connected(struct conn *conn) {
  pgtag_pool *pool = conn->pool;
  pool->stats.connects++;
  if (pool->connect_failures_in_row > 0)
    pool_log(pool, PGTAG_LOG_WARN, "connected again after %d failed attempts",
             pool->connect_failures_in_row);
  pool_clear_connect_error(pool);
  pool->connect_failures_in_row = 0;
  if (pool->replacements_due > 0) {
    pool->replacements_due--;
    pool->stats.reconnects++;
  }
  pool_log(pool, PGTAG_LOG_DEBUG, "connected (%s)", backend_text(conn->backend_pid).s);
  make_available(pool, conn);
}

void pool_on_connect_failed(struct conn *conn, const char *message) {
  pgtag_pool *pool = conn->pool;
  char msg[1024];
  /* Read before drop_conn frees it: message may live in conn. */
  pool_note_connect_error(pool, message, conn->pg != NULL && PQconnectionNeedsPassword(conn->pg));
  text_line(msg, sizeof msg, pool->connect_err.message ? pool->connect_err.message : message);
  drop_conn(pool, conn);
  connect_failed(pool, msg);
  fail_refused_waiters(pool);
  maybe_finish_close(pool);
}

/* Give a connection with no holder and nothing on the wire to the first
 * waiter, or put it in the idle list.  Connections past max_lifetime_ms,
 * and every connection once the pool is closing, are closed instead. */
static void make_available(pgtag_pool *pool, struct conn *conn) {
  uint64_t now = uv_now(pool->loop);
  conn->reclaiming = conn->canceled = 0;
  int expired = pool->cfg.max_lifetime_ms > 0 &&
                now - conn->created >= (uint64_t)pool->cfg.max_lifetime_ms;
  if (pool->closing || expired) {
    drop_conn(pool, conn);
    maybe_connect(pool);
    maybe_finish_close(pool);
    return;
  }
  while (!queue_empty(&pool->waiters)) {
    op *o = waiter_pop(pool);
    wait_timer_arm(pool);
    if (o->kind == OP_ACQUIRE) {
      grant(pool, conn, o);
      return;
    }
    set_state(conn, CONN_BUSY);
    if (conn_send(conn, o) == 0) {
      stats_waited(pool, o);
      feed(pool, conn);
      return;
    }
    /* The connection broke while the query was being sent.  Whatever part
     * reached the server ran without its Sync, so nothing of it committed:
     * the query keeps its place in line and the connection is replaced. */
    queue_insert_head(&pool->waiters, &o->node);
    pool->nwaiting++;
    wait_timer_arm(pool);
    log_lost(pool, conn);
    drop_conn(pool, conn);
    maybe_connect(pool);
    return;
  }
  set_state(conn, CONN_IDLE);
  conn->idle_since = now;
  queue_insert_head(&pool->idle, &conn->idle_node);
  conn_poll_update(conn);
}

void pool_on_conn_lost(struct conn *conn, const char *why) {
  pgtag_pool *pool = conn->pool;
  op *o = conn->inflight;
  char message[256];
  text_line(message, sizeof message, why); /* why may live in conn->pg */

  pool_log(pool, PGTAG_LOG_WARN, "connection to %s lost: %s",
           backend_text(conn->backend_pid).s, message);
  count_lost(pool);
  conn->inflight = NULL;
  if (o != NULL && o->kind == OP_RESET) {
    op_discard(o);
  } else if (o != NULL) {
    stats_query_done(o, conn);
    if (conn->result != NULL)
      op_set_result(o, conn->result, 1); /* keeps the server's SQLSTATE */
    else
      op_set_error(o, PGTAG_ECONN, NULL, message);
    conn->result = NULL;
    defer(pool, o);
  }
  while (!queue_empty(&conn->done)) { /* complete, but never committed */
    op *p = first_op(&conn->done);
    queue_remove(&p->node);
    conn->ndone--;
    stats_query_done(p, conn);
    PGresult *res = p->res;
    p->res = NULL;
    if (res != NULL && PQresultStatus(res) == PGRES_FATAL_ERROR) {
      op_set_result(p, res, 1); /* the server said why (57P01...) */
    } else {
      PQclear(res);
      op_set_error(p, PGTAG_ECONN, NULL, message);
    }
    defer(pool, p);
  }
  conn->unsynced = 0;
  conn->got_result = 0;
  while (!queue_empty(&conn->piped)) { /* sent, and now lost with it */
    op *p = first_op(&conn->piped);
    queue_remove(&p->node);
    conn->npiped--;
    stats_query_done(p, conn);
    op_set_error(p, PGTAG_ECONN, NULL, message);
    defer(pool, p);
  }
  conn->exclusive = 0;
  while (!queue_empty(&conn->pending)) {
    op *p = first_op(&conn->pending);
    queue_remove(&p->node);
    op_set_error(p, PGTAG_ECONN, NULL, message);
    defer(pool, p);
  }
  if (conn->state == CONN_HELD) {
    /* Its holder still has the pointer: keep the struct until release. */
    set_state(conn, CONN_LOST);
    conn_shut(conn);
    if (conn->release_pending)
      release_now(pool, conn); /* the holder already gave it back */
  } else if (conn->state != CONN_LOST) {
    drop_conn(pool, conn);
  }
  maybe_connect(pool);
  maybe_finish_close(pool);
}

/* ------------------------------------------------------------------------
 * Query completion and release
 * ------------------------------------------------------------------------ */

/* A held connection with nothing in flight: send the next query queued on
 * it, or finish a release.  After a cancel, nothing more is sent until the
 * cancel request has reached the server, so it cannot hit the next query;
 * pool_on_cancel_done comes back here. */
static void held_next(pgtag_pool *pool, struct conn *conn) {
  if (conn->cancel != NULL) {
    conn_poll_update(conn);
    return;
  }
  if (!queue_empty(&conn->pending)) {
    op *next = first_op(&conn->pending);
    queue_remove(&next->node);
    if (conn_send(conn, next) != 0) {
      queue_insert_head(&conn->pending, &next->node);
      pool_on_conn_lost(conn, PQerrorMessage(conn->pg));
    }
  } else if (conn->release_pending) {
    release_now(pool, conn);
  } else {
    conn_poll_update(conn); /* held and quiet: stop keeping the loop alive */
  }
}

/* A pipelined query that failed with 57014 though nobody cancelled it, on
 * a connection where a cancel was sent: the cancel's, not its own.  Sent
 * again once, when it has its own copy of the arguments (every pipelined
 * query has). */
static int stray_cancel_victim(const struct conn *conn, const op *o, const PGresult *res) {
  if (!conn->canceled || conn->state != CONN_BUSY || o->kind != OP_QUERY ||
      o->cancel_code != PGTAG_OK || o->resent || o->sql == NULL || res == NULL ||
      PQresultStatus(res) != PGRES_FATAL_ERROR)
    return 0;
  const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
  return state != NULL && strcmp(state, "57014") == 0;
}

/* Room for one more query pipelined behind the ones in flight on conn. */
static int pipeline_room(const pgtag_pool *pool, const struct conn *conn) {
  return conn->pipelined && conn->state == CONN_BUSY && conn_on_wire(conn) &&
         !conn->exclusive && conn->cancel == NULL &&
         1 + conn->npiped < pool->cfg.pipeline_depth;
}

/* Pipelining: send waiting queries behind the ones in flight on conn, up
 * to pipeline_depth.  Stops at an acquire (the connection drains for it, so
 * it is served in turn) and at a query that must have a connection to
 * itself; nothing is added while a cancel request is under way. */
static void feed(pgtag_pool *pool, struct conn *conn) {
  if (live_conns(pool) < pool->cfg.max_conns)
    return; /* the pool grows for them instead (see least_loaded) */
  while (pipeline_room(pool, conn) && !queue_empty(&pool->waiters)) {
    op *o = first_op(&pool->waiters);
    if (o->kind != OP_QUERY || o->exclusive)
      break;
    waiter_pop(pool);
    if (conn_send(conn, o) != 0) {
      queue_insert_head(&pool->waiters, &o->node);
      pool->nwaiting++;
      wait_timer_arm(pool);
      pool_on_conn_lost(conn, PQerrorMessage(conn->pg));
      return;
    }
    stats_waited(pool, o);
  }
  wait_timer_arm(pool);
}

void pool_feed(struct conn *conn) { feed(conn->pool, conn); }

/* Put o back at the head of the line, to be sent again with a sync point
 * of its own.  It takes the deadline of the one it goes ahead of, so that
 * deadlines still rise along the line. */
static void requeue_front(pgtag_pool *pool, op *o) {
  o->solo = 1;
  o->deadline = queue_empty(&pool->waiters) ? 0 : first_op(&pool->waiters)->deadline;
  queue_insert_head(&pool->waiters, &o->node);
  pool->nwaiting++;
}

/* The results of one query or batch were handled: what the connection
 * does next. */
static void after_results(pgtag_pool *pool, struct conn *conn) {
  if (conn->state != CONN_BUSY)
    held_next(pool, conn);
  else if (!conn_on_wire(conn))
    recycle(pool, conn);
  else
    feed(pool, conn);
}

/* A write refused (SQLSTATE 25006) because the server itself is read-only
 * now: a standby, or a primary that failover demoted or fenced
 * (default_transaction_read_only turned on).  PostgreSQL 14 and later
 * report both settings to the client as they change.  A transaction the
 * application made read-only (BEGIN READ ONLY) changes neither. */
static int server_read_only(const struct conn *conn, const PGresult *res) {
  if (res == NULL || PQresultStatus(res) != PGRES_FATAL_ERROR)
    return 0;
  const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
  if (state == NULL || strcmp(state, "25006") != 0)
    return 0;
  const char *standby = PQparameterStatus(conn->pg, "in_hot_standby");
  const char *fenced = PQparameterStatus(conn->pg, "default_transaction_read_only");
  return (standby != NULL && strcmp(standby, "on") == 0) ||
         (fenced != NULL && strcmp(fenced, "on") == 0);
}

/* The connection is done for while o, whose result res is, was being
 * delivered: o goes back in front as the query in flight (the next one, if
 * it had come up, back into the pipeline), so it fails with the others,
 * keeping the server's SQLSTATE from res. */
static void lost_with(struct conn *conn, op *o, PGresult *res, const char *why) {
  if (conn->inflight != NULL) {
    queue_insert_head(&conn->piped, &conn->inflight->node);
    conn->npiped++;
  }
  conn->inflight = o;
  conn->result = res;
  pool_on_conn_lost(conn, why);
}

void pool_on_query_done(struct conn *conn, op *o, PGresult *res) {
  pgtag_pool *pool = conn->pool;
  stats_query_done(o, conn);

  if (o->kind != OP_RESET && server_read_only(conn, res)) {
    /* Its connections are no use for writes any more: this query and the
     * others on the connection fail once with PGTAG_ECONN (SQLSTATE 25006
     * kept), and the pool connects again, with backoff; a conninfo with
     * target_session_attrs=read-write then finds the writable server. */
    lost_with(conn, o, res, "the server is read-only now (a standby, or a demoted primary)");
    return;
  }

  if (PQstatus(conn->pg) == CONNECTION_BAD) {
    /* libpq returns the final NULL only after ReadyForQuery, so a query
     * that got a non-error result here completed (and committed) before
     * the connection went: it succeeded.  Anything else was cut off. */
    int completed = o->kind != OP_RESET && res != NULL &&
                    PQresultStatus(res) != PGRES_FATAL_ERROR;
    if (!completed) {
      lost_with(conn, o, res, PQerrorMessage(conn->pg));
      return;
    }
    op_set_result(o, res, 0);
    pool_on_conn_lost(conn, PQerrorMessage(conn->pg));
    op_finish(o);
    return;
  }
  if (o->kind == OP_RESET) {
    int clean = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK &&
                PQtransactionStatus(conn->pg) == PQTRANS_IDLE;
    PQclear(res);
    op_discard(o);
    if (clean) {
      make_available(pool, conn);
    } else {
      drop_conn(pool, conn);
      maybe_connect(pool);
      maybe_finish_close(pool);
    }
    return;
  }

  if (stray_cancel_victim(conn, o, res)) {
    /* Hit by a cancel meant for the query before it in the pipeline: it was
     * rolled back (its own implicit transaction), so it goes again. */
    PQclear(res);
    o->resent = 1;
    requeue_front(pool, o);
    wait_timer_arm(pool);
    o = NULL;
  } else if (conn->reclaiming) {
    /* Its holder's request is over; what the query did is being rolled
     * back, so its result is not worth anything to anyone. */
    PQclear(res);
    op_set_error(o, PGTAG_ERECLAIMED, NULL, RECLAIMED_MESSAGE);
  } else {
    op_set_result(o, res, 0);
  }
  after_results(pool, conn);
  if (o != NULL)
    op_finish(o);
}

void pool_on_batch_done(struct conn *conn) {
  pgtag_pool *pool = conn->pool;
  queue batch, finish, again;
  int n = conn->ndone, failed = 0;
  queue_init(&batch);
  queue_init(&finish);
  queue_init(&again);
  queue_move(&conn->done, &batch);
  conn->ndone = 0;

  if (n == 1) { /* a sync point of its own: delivered as it is */
    op *o = first_op(&batch);
    queue_remove(&o->node);
    PGresult *res = o->res;
    o->res = NULL;
    pool_on_query_done(conn, o, res);
    return;
  }
  queue *q;
  queue_foreach(q, &batch) {
    const op *o = queue_data(q, op, node);
    ExecStatusType st = o->res != NULL ? PQresultStatus(o->res) : PGRES_FATAL_ERROR;
    failed |= st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED;
  }
  while (!queue_empty(&batch)) {
    op *o = first_op(&batch);
    queue_remove(&o->node);
    PGresult *res = o->res;
    o->res = NULL;
    if (!failed) {
      stats_query_done(o, conn);
      op_set_result(o, res, 0); /* committed with its batch */
      queue_insert_tail(&finish, &o->node);
    } else if (o->cancel_code == PGTAG_OK) {
      PQclear(res); /* rolled back with the batch, or never run: again, alone */
      queue_insert_tail(&again, &o->node);
    } else {
      /* Cancelled on purpose (timeout, its request canceled): that is its
       * outcome, whether the cancel stopped it or it was skipped. */
      stats_query_done(o, conn);
      if (res != NULL && PQresultStatus(res) == PGRES_FATAL_ERROR) {
        op_set_result(o, res, 0);
      } else {
        PQclear(res);
        op_set_error(o, PGTAG_ECONN, NULL, "aborted with its pipeline batch");
      }
      queue_insert_tail(&finish, &o->node);
    }
  }
  while (!queue_empty(&again)) { /* in order, ahead of everyone waiting */
    op *o = queue_data(again.prev, op, node);
    queue_remove(&o->node);
    requeue_front(pool, o);
  }
  wait_timer_arm(pool);
  after_results(pool, conn);
  while (!queue_empty(&finish)) {
    op *o = first_op(&finish);
    queue_remove(&o->node);
    op_finish(o);
  }
}

static void on_sync_prepare(uv_prepare_t *handle) {
  pgtag_pool *pool = handle->data;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  for (;;) { /* a failure changes the list: look again from the start */
    struct conn *open = NULL;
    queue *q;
    queue_foreach(q, &pool->conns) {
      struct conn *conn = queue_data(q, struct conn, node);
      if (conn->unsynced > 0) {
        open = conn;
        break;
      }
    }
    if (open == NULL)
      break;
    if (conn_sync(open) != 0) {
      open->unsynced = 0;
      pool_on_conn_lost(open, PQerrorMessage(open->pg));
    }
  }
  uv_prepare_stop(handle);
  pgtag_ctx_leave(previous);
}

void pool_need_sync(pgtag_pool *pool) {
  uv_prepare_start(&pool->sync_prepare, on_sync_prepare);
}

static void release_now(pgtag_pool *pool, struct conn *conn) {
  conn->release_pending = 0;
  hold_clear(conn);
  recycle(pool, conn);
}

/* A connection nobody holds, with nothing in flight, goes back to the pool:
 * at once if it is clean; after a ROLLBACK if a transaction was left open
 * or a cancel was sent (that round trip, made once the cancel request has
 * reached the server, keeps a late cancel off the next request's query);
 * a lost or unknown one is replaced. */
static void recycle(pgtag_pool *pool, struct conn *conn) {
  if (conn->cancel != NULL) {
    conn->recycle_pending = 1; /* pool_on_cancel_done comes back */
    return;
  }
  PGTransactionStatusType ts =
      conn->state == CONN_LOST ? PQTRANS_UNKNOWN : PQtransactionStatus(conn->pg);
  if (ts == PQTRANS_IDLE && !conn->canceled) {
    make_available(pool, conn);
    return;
  }
  if ((ts == PQTRANS_IDLE || ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) &&
      !pool->closing) {
    /* Whatever the holder left open must not leak into the next request.
     * After a cancel, this round trip also makes sure the cancel signal has
     * reached the backend before anyone else's query can. */
    op *o = op_new(pool, OP_RESET, "ROLLBACK", 0, NULL, 0);
    set_state(conn, CONN_RESETTING);
    if (o != NULL && conn_send(conn, o) == 0)
      return;
    if (o != NULL)
      op_discard(o);
  }
  drop_conn(pool, conn); /* lost, unknown, or closing: the server rolls back */
  maybe_connect(pool);
  maybe_finish_close(pool);
}

/* The handle h names, or NULL when it is dead or was never valid. */
static struct conn *held_conn(pgtag_conn h) {
  struct conn *conn = h.impl_;
  if (conn == NULL || h.gen_ == 0 || conn->gen != h.gen_)
    return NULL;
  return conn;
}

static int was_reclaimed(const pgtag_pool *pool, uint64_t gen) {
  unsigned n = pool->nreclaimed < 64 ? pool->nreclaimed : 64;
  for (unsigned i = 0; i < n; i++)
    if (pool->reclaimed_gens[i] == gen)
      return 1;
  return 0;
}

pgtag_errcode pgtag_release(pgtag_conn h) {
  struct conn *conn = h.impl_;
  if (conn == NULL || h.gen_ == 0)
    return PGTAG_EINVAL;
  pgtag_pool *pool = conn->pool;
  if (!on_loop_thread(pool)) {
    pool_log(pool, PGTAG_LOG_ERROR, "pgtag_release: called off the loop thread; ignored");
    return PGTAG_EINVAL;
  }
  if (held_conn(h) == NULL) {
    if (was_reclaimed(pool, h.gen_))
      return PGTAG_ERECLAIMED;
    pool_log(pool, PGTAG_LOG_ERROR,
             "pgtag_release: connection is not held (released twice?); ignored");
    return PGTAG_EINVAL;
  }
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  hold_end(conn, 1);
  if (conn_on_wire(conn) || !queue_empty(&conn->pending))
    conn->release_pending = 1; /* after the queries queued on it */
  else
    release_now(pool, conn);
  pgtag_ctx_leave(previous);
  return PGTAG_OK;
}

void pool_reclaim(struct conn *conn) {
  pgtag_pool *pool = conn->pool;
  pool->reclaimed_gens[pool->nreclaimed++ % 64] = conn->gen;
  pool->stats.reclaimed++;
  hold_end(conn, 0);
  while (!queue_empty(&conn->pending)) {
    op *p = first_op(&conn->pending);
    queue_remove(&p->node);
    op_set_error(p, PGTAG_ERECLAIMED, NULL, RECLAIMED_MESSAGE);
    defer(pool, p);
  }
  if (conn->state == CONN_LOST) {
    release_now(pool, conn);
    return;
  }
  conn->reclaiming = 1;
  if (conn->inflight != NULL && conn->inflight->kind == OP_QUERY)
    cancel_inflight(conn, PGTAG_ERECLAIMED);
  if (conn_on_wire(conn))
    conn->release_pending = 1; /* once the query is over */
  else
    release_now(pool, conn);
}

void pool_on_cancel_done(struct conn *conn) {
  request_cancel(conn); /* a pipelined query cancelled while this one ran */
  if (conn_on_wire(conn)) {
    if (conn->state == CONN_BUSY)
      feed(conn->pool, conn); /* pipelining resumes */
    return; /* its query has not ended yet: that comes back here */
  }
  if (conn->recycle_pending) {
    conn->recycle_pending = 0;
    recycle(conn->pool, conn);
  } else if (conn->state == CONN_HELD) {
    held_next(conn->pool, conn);
  }
}

/* ------------------------------------------------------------------------
 * Timeouts and cancellation
 * ------------------------------------------------------------------------ */

static void on_cancel_grace(uv_timer_t *timer) {
  struct conn *conn = timer->data;
  char msg[128];
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  snprintf(msg, sizeof msg, "the cancelled query did not end within %d ms",
           CANCEL_GRACE_MS);
  pool_on_conn_lost(conn, msg);
  pgtag_ctx_leave(previous);
}

/* Send the cancel request the query in flight needs, unless one is still
 * under way (one at a time per connection: pool_on_cancel_done calls this
 * again for a pipelined query that came up meanwhile). */
static void request_cancel(struct conn *conn) {
  op *o = conn->inflight;
  if (o == NULL || o->cancel_code == PGTAG_OK || o->cancel_sent || conn->cancel != NULL)
    return;
  o->cancel_sent = 1;
  if (cancel_start(conn) == 0)
    conn->canceled = 1;
  else
    pool_log(conn->pool, PGTAG_LOG_WARN, "cannot send a cancel request for %s",
             backend_text(conn->backend_pid).s);
}

/* Cancel the query in flight on the server; it ends with why.  If the
 * server does not end it within CANCEL_GRACE_MS (hung, or unreachable for
 * the cancel request), the connection is given up. */
static void cancel_inflight(struct conn *conn, pgtag_errcode why) {
  op *o = conn->inflight;
  if (o->cancel_code == PGTAG_OK)
    o->cancel_code = why;
  request_cancel(conn);
  uv_timer_start(&conn->timer, on_cancel_grace, CANCEL_GRACE_MS, 0);
}

void pool_on_statement_timeout(struct conn *conn) {
  op *o = conn->inflight;
  if (o == NULL)
    return;
  if (o->kind == OP_RESET) {
    char msg[96];
    snprintf(msg, sizeof msg, "the server did not answer ROLLBACK within %d ms",
             RESET_TIMEOUT_MS);
    pool_on_conn_lost(conn, msg);
    return;
  }
  cancel_inflight(conn, PGTAG_ETIMEDOUT);
}

/* The pools of this thread, for pgtag_ctx_cancel. */
static _Thread_local queue thread_pools;

static int pool_cancel_ctx(pgtag_pool *pool, pgtag_ctx *ctx) {
  int n = 0;
  queue *q = queue_head(&pool->waiters);
  while (q != &pool->waiters) {
    op *o = queue_data(q, op, node);
    q = q->next;
    if (o->ctx != ctx)
      continue;
    queue_remove(&o->node);
    pool->nwaiting--;
    pool->stats.canceled++;
    defer_error(pool, o, PGTAG_ECANCELED,
                "canceled: its request was canceled before it got a connection");
    n++;
  }
  wait_timer_arm(pool);

  queue_foreach(q, &pool->conns) {
    struct conn *conn = queue_data(q, struct conn, node);
    queue *p = queue_head(&conn->pending);
    while (p != &conn->pending) {
      op *o = queue_data(p, op, node);
      p = p->next;
      if (o->ctx != ctx)
        continue;
      queue_remove(&o->node);
      pool->stats.canceled++;
      defer_error(pool, o, PGTAG_ECANCELED,
                  "canceled: its request was canceled before the query was sent");
      n++;
    }
    op *o = conn->inflight;
    if (o != NULL && o->ctx == ctx && o->kind == OP_QUERY && o->cancel_code == PGTAG_OK) {
      cancel_inflight(conn, PGTAG_ECANCELED);
      n++;
    }
    queue_foreach(p, &conn->piped) { /* cancelled once it runs */
      o = queue_data(p, op, node);
      if (o->ctx == ctx && o->cancel_code == PGTAG_OK) {
        o->cancel_code = PGTAG_ECANCELED;
        n++;
      }
    }
  }
  return n;
}

int pgtag_ctx_cancel(pgtag_ctx *ctx) {
  int n = 0;
  queue *q;
  if (ctx == NULL || thread_pools.next == NULL)
    return 0;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  queue_foreach(q, &thread_pools) {
    pgtag_pool *pool = queue_data(q, pgtag_pool, thread_node);
    if (!pool->handles_closing)
      n += pool_cancel_ctx(pool, ctx);
  }
  pgtag_ctx_leave(previous);
  return n;
}

/* ------------------------------------------------------------------------
 * Submitting
 * ------------------------------------------------------------------------ */

static int query_args_valid(const char *sql, int nparams,
                            const char *const *values, const void *cb) {
  return sql != NULL && cb != NULL && nparams >= 0 &&
         (nparams == 0 || values != NULL);
}

static pgtag_errcode submit_check(const pgtag_pool *pool) {
  if (!on_loop_thread(pool))
    return PGTAG_EINVAL;
  if (pool->closing)
    return PGTAG_ECLOSED;
  return PGTAG_OK;
}

static pgtag_errcode wait_for_conn(pgtag_pool *pool, op *o) {
  if (pool->cfg.max_waiting > 0 && pool->nwaiting >= pool->cfg.max_waiting) {
    op_discard(o);
    return PGTAG_EQUEUEFULL;
  }
  if (refused_backing_off(pool)) {
    fail_refused(pool, o);
    return PGTAG_OK;
  }
  waiter_add(pool, o);
  pgtag_ctx *previous = pgtag_ctx_enter(NULL); /* opening connections is pool work */
  maybe_connect(pool);
  pgtag_ctx_leave(previous);
  return PGTAG_OK;
}

/* The most recently used idle connection.  The poll reports a connection
 * the server closed on the next loop turn; one closed in this very turn
 * would fail its query (on TCP the send still succeeds), so a connection
 * that has sat idle is checked first, with one non-blocking peek.  One
 * reused within the same millisecond is not: under load that is most of
 * them, and the peek would cost a system call per query. */
static struct conn *take_idle(pgtag_pool *pool) {
  uint64_t now = uv_now(pool->loop);
  while (!queue_empty(&pool->idle)) {
    struct conn *conn = queue_data(queue_head(&pool->idle), struct conn, idle_node);
    queue_remove(&conn->idle_node);
    if (conn->idle_since == now || conn_alive(conn))
      return conn;
    log_lost(pool, conn);
    drop_conn(pool, conn);
  }
  return NULL;
}

/* Where a query joins a pipeline: only once the pool cannot grow (a new
 * connection beats waiting behind a slow query), on the busy connection
 * with the fewest queries in flight, and among those the one whose current
 * query was sent last (the least likely to be a slow one).  NULL if none
 * has room. */
static struct conn *least_loaded(const pgtag_pool *pool) {
  struct conn *best = NULL;
  queue *q;
  if (pool->cfg.pipeline_depth <= 1 || live_conns(pool) < pool->cfg.max_conns)
    return NULL;
  queue_foreach(q, &pool->conns) {
    struct conn *conn = queue_data(q, struct conn, node);
    if (!pipeline_room(pool, conn))
      continue;
    uint64_t sent = conn->inflight != NULL ? conn->inflight->sent_ns : UINT64_MAX;
    uint64_t best_sent = best != NULL && best->inflight != NULL ? best->inflight->sent_ns
                                                                : UINT64_MAX;
    if (best == NULL || conn->npiped < best->npiped ||
        (conn->npiped == best->npiped && sent > best_sent))
      best = conn;
  }
  return best;
}

/* The statement timeout of a query: its options, else the pool's. */
static int timeout_of(const pgtag_pool *pool, const pgtag_query_opts *opts) {
  if (opts == NULL || opts->timeout_ms == 0)
    return pool->cfg.statement_timeout_ms;
  return opts->timeout_ms < 0 ? 0 : opts->timeout_ms;
}

pgtag_errcode pgtag_query(pgtag_pool *pool, const char *sql, int nparams,
                          const char *const *values, pgtag_result_cb cb,
                          void *arg) {
  return pgtag_query_ex(pool, sql, nparams, values, NULL, cb, arg);
}

pgtag_errcode pgtag_query_ex(pgtag_pool *pool, const char *sql, int nparams,
                             const char *const *values,
                             const pgtag_query_opts *opts, pgtag_result_cb cb,
                             void *arg) {
  if (pool == NULL || !query_args_valid(sql, nparams, values, (const void *)cb))
    return PGTAG_EINVAL;
  pgtag_errcode rc = submit_check(pool);
  if (rc != PGTAG_OK)
    return rc;

  int exclusive = pool->cfg.pipeline_depth > 1 && op_sql_exclusive(sql);
  struct conn *conn;
  while ((conn = take_idle(pool)) != NULL) {
    /* A free connection: send now, straight from the caller's memory
     * (pipelining keeps a copy: others may be sent behind it, and the
     * statistics and a resend need its text). */
    int keep = pool->cfg.pipeline_depth > 1;
    op *o = op_new(pool, OP_QUERY, sql, nparams, values, keep);
    if (o == NULL) {
      queue_insert_head(&pool->idle, &conn->idle_node);
      return PGTAG_ENOMEM;
    }
    o->cb.result = cb;
    o->arg = arg;
    o->timeout_ms = timeout_of(pool, opts);
    o->exclusive = (uint8_t)exclusive;
    set_state(conn, CONN_BUSY);
    if (conn_send(conn, o) == 0) {
      stats_waited(pool, o);
      if (!keep) {
        o->sql = NULL;
        o->values = NULL;
      }
      return PGTAG_OK;
    }
    op_discard(o);
    log_lost(pool, conn);
    drop_conn(pool, conn);
  }

  op *o = op_new(pool, OP_QUERY, sql, nparams, values, 1);
  if (o == NULL)
    return PGTAG_ENOMEM;
  o->cb.result = cb;
  o->arg = arg;
  o->timeout_ms = timeout_of(pool, opts);
  o->exclusive = (uint8_t)exclusive;

  /* Pipelining, when nobody waits ahead of it: behind the queries of the
   * least loaded connection; and the pool grows, one connection at a time,
   * as long as none is free. */
  conn = !exclusive && queue_empty(&pool->waiters) ? least_loaded(pool) : NULL;
  if (conn != NULL) {
    if (conn_send(conn, o) == 0) {
      stats_waited(pool, o);
      pgtag_ctx *previous = pgtag_ctx_enter(NULL);
      maybe_connect_more(pool, 1);
      pgtag_ctx_leave(previous);
      return PGTAG_OK;
    }
    pgtag_ctx *previous = pgtag_ctx_enter(NULL);
    pool_on_conn_lost(conn, PQerrorMessage(conn->pg)); /* its queries hear it later */
    pgtag_ctx_leave(previous);
  }
  return wait_for_conn(pool, o);
}



pgtag_errcode pgtag_acquire_at(pgtag_pool *pool, pgtag_acquire_cb cb, void *arg,
                               const char *file, int line, const char *func) {
  if (pool == NULL || cb == NULL)
    return PGTAG_EINVAL;
  pgtag_errcode rc = submit_check(pool);
  if (rc != PGTAG_OK)
    return rc;

  op *o = op_new(pool, OP_ACQUIRE, NULL, 0, NULL, 0);
  if (o == NULL)
    return PGTAG_ENOMEM;
  o->cb.acquire = cb;
  o->arg = arg;
  o->file = file;
  o->line = line;
  o->func = func;
  if (leak_capture(pool, o, __builtin_return_address(0)) != 0) {
    op_discard(o);
    return PGTAG_ENOMEM;
  }

  struct conn *conn = take_idle(pool);
  if (conn == NULL)
    return wait_for_conn(pool, o);
  grant(pool, conn, o);
  return PGTAG_OK;
}

pgtag_errcode pgtag_conn_query(pgtag_conn h, const char *sql, int nparams,
                               const char *const *values, pgtag_result_cb cb,
                               void *arg) {
  return pgtag_conn_query_ex(h, sql, nparams, values, NULL, cb, arg);
}

pgtag_errcode pgtag_conn_query_ex(pgtag_conn h, const char *sql, int nparams,
                                  const char *const *values,
                                  const pgtag_query_opts *opts,
                                  pgtag_result_cb cb, void *arg) {
  struct conn *conn = h.impl_;
  if (conn == NULL || h.gen_ == 0 ||
      !query_args_valid(sql, nparams, values, (const void *)cb))
    return PGTAG_EINVAL;
  pgtag_pool *pool = conn->pool;
  if (!on_loop_thread(pool))
    return PGTAG_EINVAL;
  if (held_conn(h) == NULL) {
    if (!was_reclaimed(pool, h.gen_))
      return PGTAG_EINVAL; /* released: the caller's bug, said at once */
    op *o = op_new(pool, OP_QUERY, NULL, 0, NULL, 0);
    if (o == NULL)
      return PGTAG_ENOMEM;
    o->cb.result = cb;
    o->arg = arg;
    defer_error(pool, o, PGTAG_ERECLAIMED, RECLAIMED_MESSAGE);
    return PGTAG_OK;
  }

  int send_now = conn->state == CONN_HELD && !conn_on_wire(conn) && conn->cancel == NULL;
  op *o = op_new(pool, OP_QUERY, sql, nparams, values, !send_now && conn->state == CONN_HELD);
  if (o == NULL)
    return PGTAG_ENOMEM;
  o->cb.result = cb;
  o->arg = arg;
  o->timeout_ms = timeout_of(pool, opts);

  if (conn->state == CONN_LOST) {
    defer_error(pool, o, PGTAG_ECONN, "connection lost");
    return PGTAG_OK;
  }
  if (!send_now) {
    queue_insert_tail(&conn->pending, &o->node);
    return PGTAG_OK;
  }
  if (conn_send(conn, o) == 0) {
    o->sql = NULL;
    o->values = NULL;
    return PGTAG_OK;
  }
  /* Broken before anything was sent: the holder hears it through this
   * query's callback, and later ones fail the same way. */
  char msg[256];
  text_line(msg, sizeof msg, PQerrorMessage(conn->pg));
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  pool_on_conn_lost(conn, msg);
  pgtag_ctx_leave(previous);
  defer_error(pool, o, PGTAG_ECONN, msg);
  return PGTAG_OK;
}

int pgtag_conn_held(pgtag_conn h) {
  struct conn *conn = held_conn(h);
  return conn != NULL && on_loop_thread(conn->pool);
}

int pgtag_conn_backend_pid(pgtag_conn h) {
  struct conn *conn = held_conn(h);
  return conn != NULL ? conn->backend_pid : 0;
}

/* ------------------------------------------------------------------------
 * Maintenance: idle timeout and lifetime
 * ------------------------------------------------------------------------ */

static void on_maint(uv_timer_t *timer) {
  pgtag_pool *pool = timer->data;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  uint64_t now = uv_now(pool->loop);
  int idle_ms = pool->cfg.idle_timeout_ms, life_ms = pool->cfg.max_lifetime_ms;

  /* From the least recently used end: those are the ones to let go. */
  queue *q = pool->idle.prev;
  while (q != &pool->idle) {
    struct conn *conn = queue_data(q, struct conn, idle_node);
    q = q->prev;
    int idle_long = idle_ms > 0 && now - conn->idle_since >= (uint64_t)idle_ms &&
                    live_conns(pool) > pool->cfg.min_conns;
    int too_old = life_ms > 0 && now - conn->created >= (uint64_t)life_ms;
    if (idle_long || too_old)
      drop_conn(pool, conn);
  }
  maybe_connect(pool);
  pgtag_ctx_leave(previous);
}

static uint64_t maint_period(const pgtag_pool_config *cfg) {
  int shortest = 0;
  if (cfg->idle_timeout_ms > 0)
    shortest = cfg->idle_timeout_ms;
  if (cfg->max_lifetime_ms > 0 && (shortest == 0 || cfg->max_lifetime_ms < shortest))
    shortest = cfg->max_lifetime_ms;
  uint64_t period = (uint64_t)shortest / 4;
  return period < 10 ? 10 : period > 1000 ? 1000 : period;
}

/* ------------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------------ */

void pgtag_pool_config_init(pgtag_pool_config *cfg) {
  if (cfg == NULL)
    return;
  memset(cfg, 0, sizeof *cfg);
  cfg->name = "pgtag";
  cfg->max_conns = 10;
  cfg->acquire_timeout_ms = 10000;
  cfg->max_waiting = 10000;
  cfg->connect_timeout_ms = 5000;
  cfg->reconnect_base_ms = 100;
  cfg->reconnect_max_ms = 5000;
  cfg->tcp_keepalive_s = 60;
  cfg->pipeline_depth = 4;
  cfg->idle_timeout_ms = 30000;
  cfg->tag_style = PGTAG_TAG_PREFIX;
  cfg->tag_key = "requestId";
  cfg->log_level = PGTAG_LOG_WARN;
}

static const char *config_problem(const pgtag_pool_config *cfg) {
  if (cfg->conninfo == NULL)
    return "conninfo is required";
  if (cfg->max_conns < 1)
    return "max_conns must be at least 1";
  if (cfg->min_conns < 0 || cfg->min_conns > cfg->max_conns)
    return "min_conns must be between 0 and max_conns";
  if (cfg->acquire_timeout_ms < 0 || cfg->max_waiting < 0 ||
      cfg->connect_timeout_ms < 0 || cfg->idle_timeout_ms < 0 ||
      cfg->max_lifetime_ms < 0)
    return "timeouts and limits must not be negative";
  if (cfg->tag_style != PGTAG_TAG_PREFIX && cfg->tag_style != PGTAG_TAG_SQLCOMMENTER &&
      cfg->tag_style != PGTAG_TAG_NONE)
    return "unknown tag_style";
  if (cfg->tag_key != NULL && !ctx_key_valid(cfg->tag_key))
    return "tag_key must be 1 to 32 characters from [A-Za-z0-9_.-]";
  if (cfg->log_level < PGTAG_LOG_DEBUG || cfg->log_level > PGTAG_LOG_ERROR)
    return "unknown log_level";
  if (cfg->pipeline_depth < 0 || cfg->pipeline_depth > 1024)
    return "pipeline_depth must be between 1 and 1024";
  if (cfg->reconnect_base_ms < 0 || cfg->reconnect_max_ms < 0 ||
      cfg->statement_timeout_ms < 0 || cfg->tcp_keepalive_s < 0)
    return "timeouts and limits must not be negative";
  if (cfg->reconnect_base_ms > 0 && cfg->reconnect_max_ms > 0 &&
      cfg->reconnect_max_ms < cfg->reconnect_base_ms)
    return "reconnect_max_ms must not be below reconnect_base_ms";
  if (cfg->leak_threshold_ms < 0)
    return "leak_threshold_ms must not be negative";
  if (cfg->leak_policy != PGTAG_LEAK_REPORT && cfg->leak_policy != PGTAG_LEAK_RECLAIM)
    return "unknown leak_policy";
  return NULL;
}

/* Keepalive defaults for TCP connections (libpq ignores them on unix
 * sockets), placed before the conninfo so that its settings win. */
static void connect_params(pgtag_pool *pool) {
  int n = 0, s = pool->cfg.tcp_keepalive_s;
  if (s > 0) {
    int interval = s / 6 > 0 ? s / 6 : 1;
    long long user_timeout = ((long long)s + 3LL * interval) * 1000;
    char (*t)[16] = pool->keepalive_text;
    snprintf(t[0], sizeof t[0], "%d", s);
    snprintf(t[1], sizeof t[1], "%d", interval);
    snprintf(t[2], sizeof t[2], "%lld", user_timeout > 2147483647 ? 2147483647 : user_timeout);
    pool->conn_keys[n] = "keepalives", pool->conn_values[n++] = "1";
    pool->conn_keys[n] = "keepalives_idle", pool->conn_values[n++] = t[0];
    pool->conn_keys[n] = "keepalives_interval", pool->conn_values[n++] = t[1];
    pool->conn_keys[n] = "keepalives_count", pool->conn_values[n++] = "3";
    pool->conn_keys[n] = "tcp_user_timeout", pool->conn_values[n++] = t[2];
  }
  pool->conn_keys[n] = "dbname", pool->conn_values[n++] = pool->conninfo;
  pool->conn_keys[n] = NULL, pool->conn_values[n] = NULL;
}

/* INFO: where the pool connects, never the password or other secrets of
 * the conninfo. */
static void log_opened(const pgtag_pool *pool) {
  if (pool->cfg.log_level > PGTAG_LOG_INFO)
    return;
  const char *host = NULL, *hostaddr = NULL, *port = NULL, *dbname = NULL, *user = NULL;
  PQconninfoOption *opts = PQconninfoParse(pool->conninfo, NULL);
  for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++) {
    if (o->val == NULL)
      continue;
    if (strcmp(o->keyword, "host") == 0)
      host = o->val;
    else if (strcmp(o->keyword, "hostaddr") == 0)
      hostaddr = o->val;
    else if (strcmp(o->keyword, "port") == 0)
      port = o->val;
    else if (strcmp(o->keyword, "dbname") == 0)
      dbname = o->val;
    else if (strcmp(o->keyword, "user") == 0)
      user = o->val;
  }
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  pool_log(pool, PGTAG_LOG_INFO,
           "pool opened: host %.200s, port %.32s, database %.100s, user %.100s, "
           "max_conns %d, min_conns %d",
           host ? host : hostaddr ? hostaddr : "(libpq default)", port ? port : "(default)",
           dbname ? dbname : "(default)", user ? user : "(default)", pool->cfg.max_conns,
           pool->cfg.min_conns);
  pgtag_ctx_leave(previous);
  PQconninfoFree(opts);
}

static void on_pool_handle_closed(uv_handle_t *handle) {
  pool_handle_closed(handle->data);
}

static void pool_free(pgtag_pool *pool) {
  op_cache_free(pool);
  if (queue_linked(&pool->thread_node))
    queue_remove(&pool->thread_node);
  while (!queue_empty(&pool->spare)) {
    struct conn *conn = queue_data(queue_head(&pool->spare), struct conn, node);
    queue_remove(&conn->node);
    free(conn);
  }
  free(pool->conninfo);
  free(pool->name);
  free(pool->tag_key);
  pool_clear_connect_error(pool);
  free(pool);
}

pgtag_errcode pgtag_pool_new(uv_loop_t *loop, const pgtag_pool_config *cfg,
                             pgtag_pool **out) {
  if (loop == NULL || cfg == NULL || out == NULL)
    return PGTAG_EINVAL;
  pgtag_pool probe = {.cfg = *cfg, .name = (char *)(cfg->name ? cfg->name : "pgtag")};
  probe.cfg.log_level = cfg->log_level >= PGTAG_LOG_DEBUG && cfg->log_level <= PGTAG_LOG_ERROR
                            ? cfg->log_level : PGTAG_LOG_WARN;
  const char *problem = config_problem(cfg);
  if (problem != NULL) {
    pool_log(&probe, PGTAG_LOG_ERROR, "pgtag_pool_new: %s", problem);
    return PGTAG_EINVAL;
  }
  char *errmsg = NULL;
  PQconninfoOption *opts = PQconninfoParse(cfg->conninfo, &errmsg);
  if (opts == NULL) {
    pool_log(&probe, PGTAG_LOG_ERROR, "pgtag_pool_new: bad conninfo: %s",
             errmsg ? errmsg : "out of memory");
    int oom = errmsg == NULL;
    PQfreemem(errmsg);
    return oom ? PGTAG_ENOMEM : PGTAG_EINVAL;
  }
  PQconninfoFree(opts);

  pgtag_pool *pool = calloc(1, sizeof *pool);
  if (pool == NULL)
    return PGTAG_ENOMEM;
  queue_init(&pool->thread_node);
  queue_init(&pool->spare);
  for (int c = 0; c < OP_SIZE_CLASSES; c++)
    queue_init(&pool->op_cache[c]);
  pool->cfg = *cfg;
  pool->conninfo = strdup(cfg->conninfo);
  pool->name = strdup(cfg->name ? cfg->name : "pgtag");
  pool->tag_key = strdup(cfg->tag_key ? cfg->tag_key : "requestId");
  if (pool->conninfo == NULL || pool->name == NULL || pool->tag_key == NULL) {
    pool_free(pool);
    return PGTAG_ENOMEM;
  }
  pool->cfg.conninfo = pool->conninfo;
  pool->cfg.name = pool->name;
  pool->cfg.tag_key = pool->tag_key;
  if (pool->cfg.reconnect_base_ms == 0)
    pool->cfg.reconnect_base_ms = 100;
  if (pool->cfg.reconnect_max_ms == 0)
    pool->cfg.reconnect_max_ms = pool->cfg.reconnect_base_ms > 5000
                                     ? pool->cfg.reconnect_base_ms : 5000;
  connect_params(pool);
  pool->loop = loop;
  pool->thread = pthread_self();
  if (thread_pools.next == NULL)
    queue_init(&thread_pools);
  queue_insert_tail(&thread_pools, &pool->thread_node);
  queue_init(&pool->conns);
  queue_init(&pool->idle);
  queue_init(&pool->waiters);
  queue_init(&pool->deferred);

  uv_timer_init(loop, &pool->wait_timer);
  uv_timer_init(loop, &pool->retry_timer);
  uv_timer_init(loop, &pool->maint_timer);
  uv_timer_init(loop, &pool->leak_timer);
  uv_prepare_init(loop, &pool->sync_prepare);
  pool->sync_prepare.data = pool;
  uv_unref((uv_handle_t *)&pool->leak_timer); /* a report alone is no work */
  uv_idle_init(loop, &pool->defer_idle);
  pool->handles = 6;
  pool->wait_timer.data = pool->retry_timer.data = pool->maint_timer.data = pool;
  pool->leak_timer.data = pool;
  pool->defer_idle.data = pool;
  if (cfg->idle_timeout_ms > 0 || cfg->max_lifetime_ms > 0) {
    uint64_t period = maint_period(cfg);
    uv_timer_start(&pool->maint_timer, on_maint, period, period);
    uv_unref((uv_handle_t *)&pool->maint_timer);
  }
  log_opened(pool);
  maybe_connect(pool);
  *out = pool;
  return PGTAG_OK;
}

void pgtag_pool_close(pgtag_pool *pool, void (*done)(void *arg), void *arg) {
  if (pool == NULL)
    return;
  if (pool->closing) {
    pool_log(pool, PGTAG_LOG_WARN, "pgtag_pool_close: already closing");
    return;
  }
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  pool->closing = 1;
  pool->close_done = done;
  pool->close_arg = arg;
  uv_timer_stop(&pool->wait_timer);
  uv_timer_stop(&pool->retry_timer);
  uv_timer_stop(&pool->maint_timer);
  while (!queue_empty(&pool->waiters))
    defer_error(pool, waiter_pop(pool), PGTAG_ECLOSED, "the pool is closing");

  queue *q = queue_head(&pool->conns);
  while (q != &pool->conns) {
    struct conn *conn = queue_data(q, struct conn, node);
    q = q->next;
    if (conn->state == CONN_IDLE || conn->state == CONN_CONNECTING)
      drop_conn(pool, conn);
    else if (conn->gen != 0 && conn->hold.reported_ended)
      pool_reclaim(conn); /* leaked: nobody will release it */
  }
  maybe_finish_close(pool);
  pgtag_ctx_leave(previous);
}

/* Once no connection and no undelivered outcome is left, close the pool's
 * own handles; the last close callback calls done and frees the pool. */
static void maybe_finish_close(pgtag_pool *pool) {
  if (!pool->closing || pool->handles_closing || pool->deferring ||
      total_conns(pool) > 0 || !queue_empty(&pool->deferred))
    return;
  pool->handles_closing = 1;
  uv_close((uv_handle_t *)&pool->wait_timer, on_pool_handle_closed);
  uv_close((uv_handle_t *)&pool->retry_timer, on_pool_handle_closed);
  uv_close((uv_handle_t *)&pool->maint_timer, on_pool_handle_closed);
  uv_close((uv_handle_t *)&pool->leak_timer, on_pool_handle_closed);
  uv_close((uv_handle_t *)&pool->sync_prepare, on_pool_handle_closed);
  uv_close((uv_handle_t *)&pool->defer_idle, on_pool_handle_closed);
}

void pool_handle_closed(pgtag_pool *pool) {
  if (--pool->handles > 0 || !pool->handles_closing)
    return;
  pgtag_ctx *outer = pgtag_ctx_enter(NULL);
  pool_log(pool, PGTAG_LOG_INFO, "pool closed");
  pgtag_ctx_leave(outer);
  if (pool->close_done != NULL) {
    pgtag_ctx *previous = pgtag_ctx_enter(NULL);
    pool->close_done(pool->close_arg);
    pgtag_ctx_leave(previous);
  }
  pool_free(pool);
}

void pgtag_pool_stats(const pgtag_pool *pool, pgtag_stats *out) {
  if (pool == NULL || out == NULL)
    return;
  *out = pool->stats;
  out->total = live_conns(pool);
  out->idle = pool->count[CONN_IDLE];
  out->busy = pool->count[CONN_BUSY] + pool->count[CONN_RESETTING];
  out->held = pool->count[CONN_HELD] + pool->count[CONN_LOST];
  out->connecting = pool->count[CONN_CONNECTING];
  out->waiting = pool->nwaiting;
  out->max_conns = pool->cfg.max_conns;
}
