/* The pool: who gets which connection, when connections open and close, and
 * the one rule that keeps callbacks sane: an outcome known inside a call the
 * user made (an acquire served at once, a query on a dead connection, a pool
 * closing on its waiters) goes through the deferred queue and is delivered
 * from the loop, never from inside that call. */
#include "pool.h"

#include "cancel.h"
#include "checks.h"
#include "config.h"
#include "conn.h"
#include "connect_error.h"
#include "context.h"
#include "leak.h"
#include "log.h"
#include "op.h"
#include "pipeline.h"
#include "resolve.h"
#include "stats.h"
#include "waiters.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void maybe_connect(pgtag_pool *pool);
static void maybe_connect_more(pgtag_pool *pool, int pressed);
static void maybe_finish_close(pgtag_pool *pool);
static void make_available(pgtag_pool *pool, struct conn *conn);
static void release_now(pgtag_pool *pool, struct conn *conn);
static void recycle(pgtag_pool *pool, struct conn *conn);
static void pool_on_conn_lost(struct conn *conn, const char *why);
static void pool_on_cancel_done(struct conn *conn);
static void pool_reclaim(struct conn *conn);
static void pool_handle_closed(pgtag_pool *pool);

static void set_state(struct conn *conn, conn_state state) {
  /* A lost connection waits for its release, a closed one for reuse:
   * neither changes state here; none goes back to connecting, and only a
   * held one can be lost. */
  assert(conn->state != CONN_LOST && conn->state != CONN_CLOSED);
  assert(state != CONN_CONNECTING && state != CONN_CLOSED);
  assert(state != CONN_LOST || conn->state == CONN_HELD);
  assert(conn->pool->count[conn->state] > 0);
  conn->pool->count[conn->state]--;
  conn->pool->count[state]++;
  conn->state = state;
}

int pgtag__pool_on_loop_thread(const pgtag_pool *pool) {
  return pthread_equal(pool->thread, pthread_self());
}

static void defer(pgtag_pool *pool, op *o);

/* Hand conn to an acquire: the connection remembers the request and the
 * call site; the callback is delivered from the loop. */
static void grant(pgtag_pool *pool, struct conn *conn, op *o) {
  /* a granted connection is free: nobody holds it, nothing is under way */
  assert(o->kind == OP_ACQUIRE);
  assert(conn->gen == 0 && !conn_on_wire(conn) && queue_empty(&conn->pending));
  assert(!queue_linked(&conn->idle_node) && conn->cancel == NULL);
  pgtag__stats_waited(pool, o);
  set_state(conn, CONN_HELD);
  conn->gen = ++pool->last_gen;
  pgtag__hold_start(conn, o);
  o->conn = conn;
  o->gen = conn->gen;
  pgtag__conn_poll_update(conn);
  defer(pool, o);
}

/* ------------------------------------------------------------------------
 * Deferred outcomes
 * ------------------------------------------------------------------------ */

static void on_defer(uv_idle_t *handle) {
  pgtag_pool *pool = handle->data;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  queue batch;

  pgtag__leak_run_checks(pool);

  /* Only what was deferred before this turn: an acquire-release chain that
   * keeps deferring cannot starve the loop. */
  queue_init(&batch);
  queue_move(&pool->deferred, &batch);
  pool->deferring = 1;
  while (!queue_empty(&batch)) {
    op *o = op_first(&batch);
    queue_remove(&o->node);
    if (o->kind == OP_ACQUIRE && o->code == PGTAG_OK)
      pgtag__hold_delivered(o->conn, o->gen); /* granted: its callback runs now */
    pgtag__op_finish(o);
  }
  pool->deferring = 0;
  if (queue_empty(&pool->deferred) && pool->leak_checks == 0)
    uv_idle_stop(&pool->defer_idle);
  maybe_finish_close(pool);
  pgtag_ctx_leave(previous);
}

static void defer(pgtag_pool *pool, op *o) {
  assert(!op_internal(o->kind) && !queue_linked(&o->node));
  queue_insert_tail(&pool->deferred, &o->node);
  uv_idle_start(&pool->defer_idle, on_defer);
}

static void pool_wake(pgtag_pool *pool) {
  if (!pool->handles_closing)
    uv_idle_start(&pool->defer_idle, on_defer);
}

static void defer_error(pgtag_pool *pool, op *o, pgtag_errcode code, const char *message) {
  pgtag__op_set_error(o, code, NULL, message);
  o->sql = NULL; /* may point at the caller's memory */
  o->values = NULL;
  defer(pool, o);
}

/* Every operation in q fails with code and message, in order, from the
 * loop.  None of them is on the wire, and each owns its text (waiting,
 * staged and queued operations keep a copy). */
static void fail_queue(pgtag_pool *pool, queue *q, pgtag_errcode code, const char *message) {
  while (!queue_empty(q)) {
    op *o = op_first(q);
    queue_remove(&o->node);
    pgtag__op_set_error(o, code, NULL, message);
    defer(pool, o);
  }
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
  pgtag__text_line(msg, sizeof msg, conn->pg ? PQerrorMessage(conn->pg) : "");
  pgtag__pool_log(pool, PGTAG_LOG_WARN, "connection to %s lost: %s",
                  pgtag__backend_text(conn->backend_pid).s, msg);
}

/* Unlink and close a connection that has no operation left on it. */
static void close_conn(pgtag_pool *pool, struct conn *conn) {
  assert(queue_empty(&conn->wire) && queue_empty(&conn->pending) && conn->nstaged == 0);
  pool->count[conn->state]--;
  queue_remove(&conn->node);
  if (queue_linked(&conn->idle_node))
    queue_remove(&conn->idle_node);
  if (conn->gen != 0)
    pgtag__hold_end(conn, 0);
  pgtag__hold_clear(conn);
  pgtag__cancel_detach(conn);
  pgtag__conn_close(conn);
}

static void on_retry(uv_timer_t *timer) {
  pgtag_pool *pool = timer->data;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  maybe_connect(pool);
  pgtag_ctx_leave(previous);
}

/* The ceiling of backoff delays now.  While operations wait, a short one
 * (reconnect_waiting_max_ms): a server that is back, or a standby just
 * promoted, is found within a fraction of a second, and with one attempt
 * per step (maybe_connect_more) that costs a server little.  While nobody
 * waits, or when the server refused the pool for a reason waiting will not
 * fix, it grows to reconnect_max_ms. */
static uint64_t backoff_cap(const pgtag_pool *pool) {
  uint64_t cap = (uint64_t)pool->cfg.reconnect_max_ms;
  uint64_t waiting = (uint64_t)pool->cfg.reconnect_waiting_max_ms;
  if (waiting < (uint64_t)pool->cfg.reconnect_base_ms)
    waiting = (uint64_t)pool->cfg.reconnect_base_ms;
  if (pool->nwaiting > 0 && !pool->connect_err.refused && waiting < cap)
    cap = waiting;
  return cap;
}

/* Drawn at random from the upper half of d, so that pools that lost the
 * same server do not retry in step. */
static uint64_t jitter(uint64_t d) { return d / 2 + uv_hrtime() / 1000 % (d / 2 + 1); }

/* Exponential backoff with jitter, so a server that is down or restarting
 * sees a trickle of attempts rather than a storm: reconnect_base_ms,
 * doubling with each failed round, up to the ceiling. */
static void connect_failed(pgtag_pool *pool, const char *message) {
  pool->stats.connect_failures++;
  int n = ++pool->connect_failures_in_row;
  /* A server that refuses every attempt the same way is said once, and
   * again when the reason changes; each retry goes to DEBUG. */
  pgtag_log_level level =
      n == 1 || strncmp(pool->last_connect_error, message, sizeof pool->last_connect_error - 1) != 0
          ? PGTAG_LOG_WARN
          : PGTAG_LOG_DEBUG;
  snprintf(pool->last_connect_error, sizeof pool->last_connect_error, "%s", message);
  if (pool->closing)
    return;
  uv_timer_t *t = &pool->retry_timer;
  /* One step per round: the other attempts of a round that has failed
   * already change nothing.  (Counting each, eight attempts failing
   * together put the next one at reconnect_max_ms: 2.5 to 5 s.) */
  if (!uv_is_active((uv_handle_t *)t)) {
    uint64_t cap = backoff_cap(pool), delay = (uint64_t)pool->cfg.reconnect_base_ms;
    for (int i = ++pool->backoff_step; i > 1 && delay < cap; i--)
      delay *= 2;
    uv_timer_start(t, on_retry, jitter(delay < cap ? delay : cap), 0);
  }
  pgtag__pool_log(pool, level, "connection attempt failed: %s (retry in %llu ms)", message,
                  (unsigned long long)uv_timer_get_due_in(t));
  /* The retry keeps the loop alive only for someone who is waiting. */
  if (pool->nwaiting > 0)
    uv_ref((uv_handle_t *)t);
  else
    uv_unref((uv_handle_t *)t);
}

/* Someone waits now: a backoff that grew long while nobody waited is cut
 * to the waiting ceiling. */
static void hurry_retry(pgtag_pool *pool) {
  uint64_t cap = backoff_cap(pool);
  if (pool->nwaiting > 0 && uv_timer_get_due_in(&pool->retry_timer) > cap)
    uv_timer_start(&pool->retry_timer, on_retry, jitter(cap), 0);
}

/* Open connections for waiters not already covered by attempts under way,
 * and up to min_conns, within max_conns; not while backing off.  After a
 * failed round, one attempt at a time until one succeeds
 * (pool_on_connected opens the rest then): a server that is down, or a
 * standby not yet promoted, gets one attempt per backoff step from a pool,
 * not max_conns. */
static void maybe_connect_more(pgtag_pool *pool, int pressed) {
  char err[256];
  if (pool->closing)
    return;
  if (uv_is_active((uv_handle_t *)&pool->retry_timer)) {
    hurry_retry(pool);
    return;
  }
  int total = pool_live_conns(pool);
  int want = pool->cfg.min_conns - total;
  int uncovered = pool->nwaiting + pressed - pool->count[CONN_CONNECTING];
  if (uncovered > want)
    want = uncovered;
  if (pool->backoff_step > 0 && want > 1 - pool->count[CONN_CONNECTING])
    want = 1 - pool->count[CONN_CONNECTING];
  for (; want > 0 && total < pool->cfg.max_conns; want--, total++) {
    struct conn *conn = pgtag__conn_start(pool, err, sizeof err);
    if (conn == NULL) {
      pgtag__connect_error_note(&pool->connect_err, err, 0);
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
  return pool->connect_err.refused && pool_live_conns(pool) == pool->count[CONN_CONNECTING];
}

/* Refused, and backing off: no attempt will be made for a while, so a new
 * operation fails at once.  Once the backoff has passed, the next one
 * waits for the attempt it starts (a DBA may have fixed the cause). */
static int refused_backing_off(const pgtag_pool *pool) {
  return refused_now(pool) && uv_is_active((const uv_handle_t *)&pool->retry_timer);
}

static void fail_refused(pgtag_pool *pool, op *o) {
  const connect_error *e = &pool->connect_err;
  pgtag__op_set_error(o, PGTAG_ECONN, e->sqlstate[0] != '\0' ? e->sqlstate : NULL,
                      "the server refused the connection");
  if (e->message != NULL) {
    char *whole = strdup(e->message); /* pgtag__op_set_error would cut it */
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
    fail_refused(pool, pgtag__waiter_pop(pool));
  pgtag__wait_timer_arm(pool);
}

static void pool_on_connected(struct conn *conn) {
  pgtag_pool *pool = conn->pool;
  pool->stats.connects++;
  if (pool->connect_failures_in_row > 0)
    pgtag__pool_log(pool, PGTAG_LOG_WARN, "connected again after %d failed attempts",
                    pool->connect_failures_in_row);
  pgtag__connect_error_clear(&pool->connect_err);
  pool->connect_failures_in_row = 0;
  pool->backoff_step = 0;
  if (pool->replacements_due > 0) {
    pool->replacements_due--;
    pool->stats.reconnects++;
  }
  pgtag__pool_log(pool, PGTAG_LOG_DEBUG, "connected (%s)",
                  pgtag__backend_text(conn->backend_pid).s);
  make_available(pool, conn);
  maybe_connect(pool); /* after one attempt at a time: the others waiting */
}

static void pool_on_connect_failed(struct conn *conn, const char *message) {
  pgtag_pool *pool = conn->pool;
  char msg[1024];
  /* Read before close_conn frees it: message may live in conn. */
  pgtag__connect_error_note(&pool->connect_err, message,
                            conn->pg != NULL && PQconnectionNeedsPassword(conn->pg));
  pgtag__text_line(msg, sizeof msg,
                   pool->connect_err.message ? pool->connect_err.message : message);
  close_conn(pool, conn);
  connect_failed(pool, msg);
  fail_refused_waiters(pool);
  maybe_finish_close(pool);
}

/* Give a connection with no holder and nothing on the wire to the first
 * waiter, or put it in the idle list.  Connections past max_lifetime_ms,
 * and every connection once the pool is closing, are closed instead. */
static void make_available(pgtag_pool *pool, struct conn *conn) {
  uint64_t now = uv_now(pool->loop);
  conn->reclaiming = 0;
  int expired =
      pool->cfg.max_lifetime_ms > 0 && now - conn->created >= (uint64_t)pool->cfg.max_lifetime_ms;
  if (pool->closing || expired) {
    close_conn(pool, conn);
    maybe_connect(pool);
    maybe_finish_close(pool);
    return;
  }
  while (!queue_empty(&pool->waiters)) {
    op *o = pgtag__waiter_pop(pool);
    pgtag__wait_timer_arm(pool);
    if (o->kind == OP_ACQUIRE) {
      grant(pool, conn, o);
      return;
    }
    set_state(conn, CONN_BUSY);
    if (pgtag__conn_send(conn, o) == 0) {
      pgtag__stats_waited(pool, o);
      pgtag__pipeline_feed(conn);
      return;
    }
    /* The connection broke while the query was being sent.  Whatever part
     * reached the server ran without its Sync, so nothing of it committed:
     * the query keeps its place in line and the connection is replaced. */
    pgtag__waiter_put_back(pool, o, queue_head(&pool->waiters));
    log_lost(pool, conn);
    close_conn(pool, conn);
    maybe_connect(pool);
    return;
  }
  set_state(conn, CONN_IDLE);
  conn->idle_since = now;
  queue_insert_head(&pool->idle, &conn->idle_node);
  pgtag__conn_poll_update(conn);
}

/* o was on the wire of a connection that is gone: it fails with ECONN,
 * keeping what the server said when it said something (57P01...). */
static void fail_lost(pgtag_pool *pool, struct conn *conn, op *o, PGresult *res,
                      const char *message) {
  if (op_internal(o->kind)) {
    PQclear(res);
    pgtag__op_discard(o);
    return;
  }
  pgtag__stats_query_done(o, conn);
  if (res != NULL && PQresultStatus(res) == PGRES_FATAL_ERROR) {
    pgtag__op_set_result(o, res, 1);
  } else {
    PQclear(res);
    pgtag__op_set_error(o, PGTAG_ECONN, NULL, message);
  }
  defer(pool, o);
}

static void pool_on_conn_lost(struct conn *conn, const char *why) {
  pgtag_pool *pool = conn->pool;
  char message[256];
  pgtag__text_line(message, sizeof message, why); /* why may live in conn->pg */

  pgtag__pool_log(pool, PGTAG_LOG_WARN, "connection to %s lost: %s",
                  pgtag__backend_text(conn->backend_pid).s, message);
  count_lost(pool);
  /* In the order they were sent: complete but not committed (its sync
   * point never came), then the head with what it had received, then the
   * rest of the wire, then what was staged and, held, queued. */
  if (conn->synced != NULL) {
    op *o = conn->synced;
    PGresult *res = o->res;
    o->res = NULL;
    conn->synced = NULL;
    fail_lost(pool, conn, o, res, message);
  }
  PGresult *head_res = conn->result;
  conn->result = NULL;
  while (!queue_empty(&conn->wire)) {
    op *o = op_first(&conn->wire);
    queue_remove(&o->node);
    fail_lost(pool, conn, o, head_res, message);
    head_res = NULL;
  }
  PQclear(head_res);
  fail_queue(pool, &conn->staged, PGTAG_ECONN, message);
  fail_queue(pool, &conn->pending, PGTAG_ECONN, message);
  conn->nwire = conn->nstaged = conn->nsyncs = 0;
  conn->unproven = conn->signalable = conn->writes = 0;
  conn->got_result = conn->exclusive = 0;
  conn->chunk_ns = 0;
  if (conn->state == CONN_HELD) {
    /* Its holder still has the pointer: keep the struct until release. */
    set_state(conn, CONN_LOST);
    pgtag__conn_shut(conn);
    if (conn->release_pending)
      release_now(pool, conn); /* the holder already gave it back */
  } else if (conn->state != CONN_LOST) {
    close_conn(pool, conn);
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
    pgtag__conn_poll_update(conn);
    return;
  }
  op *next;
  while ((next = queue_empty(&conn->pending) ? NULL : op_first(&conn->pending)) != NULL &&
         pgtag__ctx_left_ms(next->ctx, uv_hrtime()) == 0) {
    queue_remove(&next->node); /* its request's time is up: never sent */
    pool->stats.deadlines++;
    defer_error(pool, next, PGTAG_ETIMEDOUT, "its request's deadline passed before it was sent");
  }
  if (next != NULL) {
    queue_remove(&next->node);
    if (pgtag__conn_send(conn, next) != 0) {
      queue_insert_head(&conn->pending, &next->node);
      pool_on_conn_lost(conn, PQerrorMessage(conn->pg));
    }
  } else if (conn->release_pending) {
    release_now(pool, conn);
  } else {
    pgtag__conn_poll_update(conn); /* held and quiet: stop keeping the loop alive */
  }
}

/* The results of one query or batch were handled: what the connection
 * does next. */
static void after_results(pgtag_pool *pool, struct conn *conn) {
  if (conn->state != CONN_BUSY)
    held_next(pool, conn);
  else if (!conn_on_wire(conn))
    recycle(pool, conn);
  else
    pgtag__pipeline_feed(conn);
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
  return state != NULL && strcmp(state, "25006") == 0 && pgtag__conn_server_read_only(conn);
}

static int res_sqlstate_is(const PGresult *res, const char *sqlstate) {
  const char *state = res != NULL && PQresultStatus(res) == PGRES_FATAL_ERROR
                          ? PQresultErrorField(res, PG_DIAG_SQLSTATE)
                          : NULL;
  return state != NULL && strcmp(state, sqlstate) == 0;
}

/* The server refused o, sent through the statement cache, before running
 * it, for a reason of the cache's: its statement was gone (26000, after a
 * DEALLOCATE or DISCARD the pool did not see), its plan no longer fits
 * (0A000 "cached plan must not change result type", after an ALTER TABLE;
 * the English message is what tells it apart), or its name was taken by
 * someone else's (42P05).  The cache forgets what it must, and o may go
 * again, once: unless the error aborted the transaction block it ran in. */
static int cache_refused(struct conn *conn, op *o, const PGresult *res) {
  if (o->stmt_id == 0 || o->sql == NULL || o->resent >= 2 || o->cancel_code != PGTAG_OK ||
      (conn->state != CONN_BUSY && conn->state != CONN_HELD) || conn->reclaiming)
    return 0;
  if (res_sqlstate_is(res, "26000")) {
    pgtag__stmtcache_clear(&conn->stmts);
  } else if (res_sqlstate_is(res, "0A000")) {
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (msg == NULL || strstr(msg, "cached plan must not change result type") == NULL)
      return 0;
    pgtag__stmtcache_forget(&conn->stmts, o->hash, o->stmt_id);
  } else if (!res_sqlstate_is(res, "42P05")) {
    return 0;
  }
  return PQtransactionStatus(conn->pg) != PQTRANS_INERROR;
}

/* The connection is done for while o, whose result res is, was being
 * delivered: o fails first, then the others, keeping the server's SQLSTATE
 * from res. */
static void lost_with(struct conn *conn, op *o, PGresult *res, const char *why) {
  char message[256];
  pgtag__text_line(message, sizeof message, why); /* why may live in conn->pg */
  fail_lost(conn->pool, conn, o, res, message);
  pool_on_conn_lost(conn, message);
}

static void pool_on_query_done(struct conn *conn, op *o, PGresult *res) {
  pgtag_pool *pool = conn->pool;

  if (o->kind != OP_RESET && !conn->read_only_at_connect && server_read_only(conn, res)) {
    /* The server was writable when this connection was made, and is not
     * now (demoted, or fenced): its connections are no use for writes any
     * more.  This query and the others on the connection fail once with
     * PGTAG_ECONN (SQLSTATE 25006 kept), and the pool connects again, with
     * backoff; a conninfo with target_session_attrs=read-write then finds
     * the writable server.  On a connection made to a standby (a cluster's
     * replica, a read-only pool) the refusal is the caller's error. */
    lost_with(conn, o, res, "the server is read-only now (a standby, or a demoted primary)");
    return;
  }

  if (PQstatus(conn->pg) == CONNECTION_BAD ||
      (res != NULL && PQresultStatus(res) == PGRES_FATAL_ERROR &&
       pgtag__op_result_ends_session(res))) {
    /* A read of a batch is final with its result; anything else is
     * delivered after its sync point (libpq's final NULL comes after
     * ReadyForQuery outside pipeline mode): so a query that got a
     * non-error result here completed (and committed) before the
     * connection went: it succeeded.  Anything else was cut off. */
    int completed = o->kind != OP_RESET && res != NULL &&
                    PQresultStatus(res) != PGRES_FATAL_ERROR &&
                    PQresultStatus(res) != PGRES_PIPELINE_ABORTED;
    const char *why = PQstatus(conn->pg) == CONNECTION_BAD || res == NULL
                          ? PQerrorMessage(conn->pg)
                          : PQresultErrorMessage(res);
    if (!completed) {
      lost_with(conn, o, res, why);
      return;
    }
    pgtag__stats_query_done(o, conn);
    pgtag__op_set_result(o, res, 0);
    pool_on_conn_lost(conn, why);
    pgtag__op_finish(o);
    return;
  }
  if (o->kind == OP_RESET) {
    int clean = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK &&
                PQtransactionStatus(conn->pg) == PQTRANS_IDLE;
    PQclear(res);
    pgtag__op_discard(o);
    if (clean) {
      make_available(pool, conn);
    } else {
      close_conn(pool, conn);
      maybe_connect(pool);
      maybe_finish_close(pool);
    }
    return;
  }

  if (o->batched && o->timeout_ms > 0 && o->cancel_code == PGTAG_OK && !o->at_risk &&
      res_sqlstate_is(res, "57014"))
    o->cancel_code = PGTAG_ETIMEDOUT; /* the server enforced its timeout */
  if (cache_refused(conn, o, res)) {
    /* Nothing of it ran: it goes again, first in line (held: first on
     * its connection), and is prepared again. */
    PQclear(res);
    if (conn->state == CONN_BUSY) {
      pgtag__pipeline_requeue(pool, o);
      pgtag__wait_timer_arm(pool);
    } else {
      o->resent++;
      queue_insert_head(&conn->pending, &o->node);
    }
    o = NULL;
  } else if (pgtag__pipeline_resend(pool, conn, o, res, server_read_only(conn, res))) {
    /* It had no effect (pipeline.h): it goes again, first in line. */
    PQclear(res);
    pgtag__pipeline_requeue(pool, o);
    pgtag__wait_timer_arm(pool);
    o = NULL;
  } else {
    uint64_t us = pgtag__stats_query_done(o, conn);
    if (o->chunk_ns != 0 && (uv_hrtime() - o->chunk_ns) / 1000 > us)
      us = (uv_hrtime() - o->chunk_ns) / 1000; /* held back with others: conn.c, wire_pop */
    if (res != NULL && PQresultStatus(res) != PGRES_PIPELINE_ABORTED)
      pgtag__pipeline_learn(pool, o, us);
    if (conn->reclaiming) {
      /* Its holder's request is over; what the query did is being rolled
       * back, so its result is not worth anything to anyone. */
      PQclear(res);
      pgtag__op_set_error(o, PGTAG_ERECLAIMED, NULL, RECLAIMED_MESSAGE);
    } else {
      pgtag__op_set_result(o, res, 0);
    }
  }
  after_results(pool, conn);
  if (o != NULL)
    pgtag__op_finish(o);
}

static void pool_on_sync(struct conn *conn) { after_results(conn->pool, conn); }

static void on_check_prepare(uv_prepare_t *handle) { pgtag__check_left_current(handle->data); }

static void release_now(pgtag_pool *pool, struct conn *conn) {
  conn->release_pending = 0;
  pgtag__hold_clear(conn);
  recycle(pool, conn);
}

/* A connection nobody holds, with nothing in flight, goes back to the pool:
 * at once if it is clean; after a ROLLBACK if a transaction was left open;
 * a lost or unknown one is replaced.  A cancel request under way is waited
 * for: once PQcancel returns, the postmaster has signalled the backend,
 * and a backend drops a cancel that finds it waiting for a command, so a
 * late cancel cannot hit the next request's query.  (No ROLLBACK for it:
 * outside a transaction the server would only warn "there is no
 * transaction in progress".) */
static void recycle(pgtag_pool *pool, struct conn *conn) {
  if (conn->cancel != NULL) {
    conn->recycle_pending = 1; /* pool_on_cancel_done comes back */
    return;
  }
  PGTransactionStatusType ts =
      conn->state == CONN_LOST ? PQTRANS_UNKNOWN : PQtransactionStatus(conn->pg);
  if (ts == PQTRANS_IDLE) {
    make_available(pool, conn);
    return;
  }
  if ((ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) && !pool->closing) {
    /* Whatever the holder left open must not leak into the next request. */
    op *o = pgtag__op_new(pool, OP_RESET, "ROLLBACK", 0, NULL, 0);
    set_state(conn, CONN_RESETTING);
    if (o != NULL && pgtag__conn_send(conn, o) == 0)
      return;
    if (o != NULL)
      pgtag__op_discard(o);
  }
  close_conn(pool, conn); /* lost, unknown, or closing: the server rolls back */
  maybe_connect(pool);
  maybe_finish_close(pool);
}

int pgtag__pool_was_reclaimed(const pgtag_pool *pool, uint64_t gen) {
  unsigned n = pool->nreclaimed < 64 ? pool->nreclaimed : 64;
  for (unsigned i = 0; i < n; i++)
    if (pool->reclaimed_gens[i] == gen)
      return 1;
  return 0;
}

static void pool_reclaim(struct conn *conn) {
  pgtag_pool *pool = conn->pool;
  pool->reclaimed_gens[pool->nreclaimed++ % 64] = conn->gen;
  pool->stats.reclaimed++;
  pgtag__hold_end(conn, 0);
  fail_queue(pool, &conn->pending, PGTAG_ERECLAIMED, RECLAIMED_MESSAGE);
  if (conn->state == CONN_LOST) {
    release_now(pool, conn);
    return;
  }
  conn->reclaiming = 1;
  if (conn_head(conn) != NULL && conn_head(conn)->kind == OP_QUERY)
    pgtag__cancel_op(conn, conn_head(conn), PGTAG_ERECLAIMED);
  if (conn_on_wire(conn))
    conn->release_pending = 1; /* once the query is over */
  else
    release_now(pool, conn);
}

static void pool_on_cancel_done(struct conn *conn) {
  pgtag__conn_retry_cancels(conn); /* those that waited for this one */
  if (conn_on_wire(conn)) {
    if (conn->state == CONN_BUSY)
      pgtag__pipeline_feed(conn); /* pipelining resumes */
    return;                       /* its query has not ended yet: that comes back here */
  }
  if (conn->recycle_pending) {
    conn->recycle_pending = 0;
    recycle(conn->pool, conn);
  } else if (conn->state == CONN_HELD) {
    held_next(conn->pool, conn);
  }
}

/* A deadline on conn's wire passed: a cancel request goes out, or the
 * connection is given up when even that did not end the statement. */
static void pool_on_statement_timeout(struct conn *conn) {
  char why[128];
  if (pgtag__cancel_expired(conn, why, sizeof why))
    pool_on_conn_lost(conn, why);
}

/* The pools of this thread, for pgtag_ctx_cancel. */
static _Thread_local queue thread_pools;

/* Fail ctx's operations in q, which were never sent. */
static int cancel_queued(pgtag_pool *pool, struct conn *conn, queue *q, pgtag_ctx *ctx) {
  int n = 0;
  queue *p = queue_head(q);
  while (p != q) {
    op *o = queue_data(p, op, node);
    p = p->next;
    if (o->ctx != ctx)
      continue;
    if (q == &conn->staged)
      pgtag__conn_unstage(conn, o);
    else
      queue_remove(&o->node);
    pool->stats.canceled++;
    defer_error(pool, o, PGTAG_ECANCELED,
                "canceled: its request was canceled before the query was sent");
    n++;
  }
  return n;
}

static int pool_cancel_ctx(pgtag_pool *pool, pgtag_ctx *ctx) {
  int n = 0;
  queue *q = queue_head(&pool->waiters);
  while (q != &pool->waiters) {
    op *o = queue_data(q, op, node);
    q = q->next;
    if (o->ctx != ctx)
      continue;
    pgtag__waiter_remove(pool, o);
    pool->stats.canceled++;
    defer_error(pool, o, PGTAG_ECANCELED,
                "canceled: its request was canceled before it got a connection");
    n++;
  }
  pgtag__wait_timer_arm(pool);

  q = queue_head(&pool->conns);
  while (q != &pool->conns) {
    struct conn *conn = queue_data(q, struct conn, node);
    q = q->next; /* recycle below may close conn */
    /* Not sent yet: they fail now. */
    n += cancel_queued(pool, conn, &conn->pending, ctx);
    n += cancel_queued(pool, conn, &conn->staged, ctx);
    /* On the wire: cancelled on the server (the head at once, the
     * others once they come up). */
    queue *p;
    queue_foreach (p, &conn->wire) {
      op *o = queue_data(p, op, node);
      if (o->ctx != ctx || o->kind != OP_QUERY || o->cancel_code != PGTAG_OK)
        continue;
      pgtag__cancel_op(conn, o, PGTAG_ECANCELED);
      n++;
    }
    /* Its staged reads were all it had: nothing will come back to free
     * it, so it is free now. */
    if (conn->state == CONN_BUSY && !conn_on_wire(conn))
      recycle(pool, conn);
  }
  return n;
}

int pgtag_ctx_cancel(pgtag_ctx *ctx) {
  int n = 0;
  queue *q;
  if (ctx == NULL || thread_pools.next == NULL)
    return 0;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  queue_foreach (q, &thread_pools) {
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

/* The current request's deadline has passed: an operation submitted now
 * fails at once (from the loop) and is never sent.  o: its record, made
 * without copies of the caller's memory. */
static int refused_by_deadline(pgtag_pool *pool, op *o) {
  if (pgtag__ctx_left_ms(o->ctx, uv_hrtime()) != 0)
    return 0;
  pool->stats.deadlines++;
  defer_error(pool, o, PGTAG_ETIMEDOUT, "its request's deadline had passed: not sent");
  return 1;
}

/* Whether the current request's deadline has passed, before anything is
 * taken for it. */
static int current_past_deadline(void) {
  return pgtag__ctx_left_ms(pgtag_ctx_current(), uv_hrtime()) == 0;
}

static pgtag_errcode wait_for_conn(pgtag_pool *pool, op *o) {
  if (pool->cfg.max_waiting > 0 && pool->nwaiting >= pool->cfg.max_waiting) {
    pgtag__op_discard(o);
    return PGTAG_EQUEUEFULL;
  }
  if (refused_backing_off(pool)) {
    fail_refused(pool, o);
    return PGTAG_OK;
  }
  pgtag__waiter_add(pool, o);
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
    if (conn->idle_since == now || pgtag__conn_alive(conn))
      return conn;
    log_lost(pool, conn);
    close_conn(pool, conn);
  }
  return NULL;
}

/* The statement timeout of a query: its options, else the pool's. */
static int timeout_of(const pgtag_pool *pool, const pgtag_query_opts *opts) {
  if (opts == NULL || opts->timeout_ms == 0)
    return pool->cfg.statement_timeout_ms;
  return opts->timeout_ms < 0 ? 0 : opts->timeout_ms;
}

/* A query operation with its options, classified for pipelining. */
static op *query_op_new(pgtag_pool *pool, const char *sql, int nparams, const char *const *values,
                        const pgtag_query_opts *opts, pgtag_result_cb cb, void *arg,
                        int copy_args) {
  op *o = pgtag__op_new(pool, OP_QUERY, sql, nparams, values, copy_args);
  if (o == NULL)
    return NULL;
  o->cb.result = cb;
  o->arg = arg;
  o->timeout_ms = timeout_of(pool, opts);
  o->signalable = o->timeout_ms > 0;
  o->uncached = opts != NULL && opts->no_cache;
  pgtag__pipeline_classify(pool, o);
  return o;
}

/* A query submitted past its request's deadline: failed through cb, with
 * none of the caller's memory copied. */
static pgtag_errcode query_past_deadline(pgtag_pool *pool, const pgtag_query_opts *opts,
                                         pgtag_result_cb cb, void *arg) {
  op *o = query_op_new(pool, NULL, 0, NULL, opts, cb, arg, 0);
  if (o == NULL)
    return PGTAG_ENOMEM;
  refused_by_deadline(pool, o);
  return PGTAG_OK;
}

/* A query keeps its own copy of its text and values, beyond the call that
 * submitted it, when it may be sent again: pipelined (its batch may skip
 * it), or through the statement cache (the server may refuse it for the
 * cache's reasons: pool_on_query_done). */
static int keeps_args(const pgtag_pool *pool) {
  return pool->cfg.pipeline_depth > 1 ||
         (pool->cfg.statement_cache > 0 && !pool->cfg.transaction_pooler);
}

/* ------------------------------------------------------------------------
 * What the application submits (submit.c has checked it)
 * ------------------------------------------------------------------------ */

pgtag_errcode pgtag__pool_submit_query(pgtag_pool *pool, const char *sql, int nparams,
                                       const char *const *values, const pgtag_query_opts *opts,
                                       pgtag_result_cb cb, void *arg) {
  if (current_past_deadline())
    return query_past_deadline(pool, opts, cb, arg);

  struct conn *conn;
  while ((conn = take_idle(pool)) != NULL) {
    /* A free connection: send now, straight from the caller's memory
     * (pipelining keeps a copy: others may be sent behind it, and the
     * statistics and a resend need its text). */
    int keep = keeps_args(pool);
    op *o = query_op_new(pool, sql, nparams, values, opts, cb, arg, keep);
    if (o == NULL) {
      queue_insert_head(&pool->idle, &conn->idle_node);
      return PGTAG_ENOMEM;
    }
    set_state(conn, CONN_BUSY);
    if (pgtag__conn_send(conn, o) == 0) {
      pgtag__stats_waited(pool, o);
      if (!keep) {
        o->sql = NULL;
        o->values = NULL;
      }
      return PGTAG_OK;
    }
    pgtag__op_discard(o);
    log_lost(pool, conn);
    close_conn(pool, conn);
  }

  op *o = query_op_new(pool, sql, nparams, values, opts, cb, arg, 1);
  if (o == NULL)
    return PGTAG_ENOMEM;

  /* Pipelining, when nobody waits ahead of it: on a connection whose
   * pipeline takes it; and the pool grows, one connection at a time, as
   * long as none is free. */
  conn =
      !o->exclusive && queue_empty(&pool->waiters) ? pgtag__pipeline_least_loaded(pool, o) : NULL;
  if (conn != NULL) {
    if (pgtag__conn_send(conn, o) == 0) {
      pgtag__stats_waited(pool, o);
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

pgtag_errcode pgtag__pool_submit_acquire(pgtag_pool *pool, pgtag_acquire_cb cb, void *arg,
                                         const char *file, int line, const char *func,
                                         void *caller) {
  op *o = pgtag__op_new(pool, OP_ACQUIRE, NULL, 0, NULL, 0);
  if (o == NULL)
    return PGTAG_ENOMEM;
  o->cb.acquire = cb;
  o->arg = arg;
  if (refused_by_deadline(pool, o))
    return PGTAG_OK;
  o->file = file;
  o->line = line;
  o->func = func;
  if (pgtag__leak_capture(pool, o, caller) != 0) {
    pgtag__op_discard(o);
    return PGTAG_ENOMEM;
  }

  struct conn *conn = take_idle(pool);
  if (conn == NULL)
    return wait_for_conn(pool, o);
  grant(pool, conn, o);
  return PGTAG_OK;
}

pgtag_errcode pgtag__pool_submit_held(struct conn *conn, const char *sql, int nparams,
                                      const char *const *values, const pgtag_query_opts *opts,
                                      pgtag_result_cb cb, void *arg) {
  pgtag_pool *pool = conn->pool;
  if (current_past_deadline())
    return query_past_deadline(pool, opts, cb, arg);
  int send_now = conn->state == CONN_HELD && !conn_on_wire(conn) && conn->cancel == NULL;
  int keep = conn->state == CONN_HELD && (!send_now || keeps_args(pool));
  op *o = query_op_new(pool, sql, nparams, values, opts, cb, arg, keep);
  if (o == NULL)
    return PGTAG_ENOMEM;

  if (conn->state == CONN_LOST) {
    defer_error(pool, o, PGTAG_ECONN, "connection lost");
    return PGTAG_OK;
  }
  if (!send_now) {
    queue_insert_tail(&conn->pending, &o->node);
    return PGTAG_OK;
  }
  if (pgtag__conn_send(conn, o) == 0) {
    if (!keep) {
      o->sql = NULL;
      o->values = NULL;
    }
    return PGTAG_OK;
  }
  /* Broken before anything was sent: the holder hears it through this
   * query's callback, and later ones fail the same way. */
  char msg[256];
  pgtag__text_line(msg, sizeof msg, PQerrorMessage(conn->pg));
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  pool_on_conn_lost(conn, msg);
  pgtag_ctx_leave(previous);
  defer_error(pool, o, PGTAG_ECONN, msg);
  return PGTAG_OK;
}

pgtag_errcode pgtag__pool_fail_reclaimed(pgtag_pool *pool, pgtag_result_cb cb, void *arg) {
  op *o = pgtag__op_new(pool, OP_QUERY, NULL, 0, NULL, 0);
  if (o == NULL)
    return PGTAG_ENOMEM;
  o->cb.result = cb;
  o->arg = arg;
  defer_error(pool, o, PGTAG_ERECLAIMED, RECLAIMED_MESSAGE);
  return PGTAG_OK;
}

void pgtag__pool_release(struct conn *conn) {
  assert(conn->gen != 0 && (conn->state == CONN_HELD || conn->state == CONN_LOST));
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  pgtag__hold_end(conn, 1);
  if (conn_on_wire(conn) || !queue_empty(&conn->pending))
    conn->release_pending = 1; /* after the queries queued on it */
  else
    release_now(conn->pool, conn);
  pgtag_ctx_leave(previous);
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
                    pool_live_conns(pool) > pool->cfg.min_conns;
    int too_old = life_ms > 0 && now - conn->created >= (uint64_t)life_ms;
    if (idle_long || too_old)
      close_conn(pool, conn);
  }
  maybe_connect(pool);
  pgtag_ctx_leave(previous);
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
  pgtag__pool_log(pool, PGTAG_LOG_INFO,
                  "pool opened: host %.200s, port %.32s, database %.100s, user %.100s, "
                  "max_conns %d, min_conns %d",
                  host       ? host
                  : hostaddr ? hostaddr
                             : "(libpq default)",
                  port ? port : "(default)", dbname ? dbname : "(default)",
                  user ? user : "(default)", pool->cfg.max_conns, pool->cfg.min_conns);
  pgtag_ctx_leave(previous);
  PQconninfoFree(opts);
}

static void on_pool_handle_closed(uv_handle_t *handle) { pool_handle_closed(handle->data); }

/* The pool's own handles, one list for opening them and closing them:
 * fills out, returns how many. */
#define POOL_OWN_HANDLES 7
static int own_handles(pgtag_pool *pool, uv_handle_t *out[POOL_OWN_HANDLES]) {
  uv_handle_t *own[] = {
      (uv_handle_t *)&pool->wait_timer,   (uv_handle_t *)&pool->retry_timer,
      (uv_handle_t *)&pool->maint_timer,  (uv_handle_t *)&pool->leak_timer,
      (uv_handle_t *)&pool->sync_prepare, (uv_handle_t *)&pool->check_prepare,
      (uv_handle_t *)&pool->defer_idle,
  };
  _Static_assert(sizeof own / sizeof *own == POOL_OWN_HANDLES, "one list of the pool's handles");
  memcpy(out, own, sizeof own);
  return POOL_OWN_HANDLES;
}

static void pool_free(pgtag_pool *pool) {
  pgtag__op_cache_free(pool);
  if (queue_linked(&pool->thread_node))
    queue_remove(&pool->thread_node);
  while (!queue_empty(&pool->spare)) {
    struct conn *conn = queue_data(queue_head(&pool->spare), struct conn, node);
    queue_remove(&conn->node);
    free(conn);
  }
  free(pool->stmts);
  free(pool->conninfo);
  free(pool->name);
  free(pool->tag_key);
  pgtag__resolver_free(pool->resolver);
  pgtag__connect_error_clear(&pool->connect_err);
  free(pool);
}

/* What the pool's connections report (internal.h: pool_events). */
static const pool_events events = {
    .connected = pool_on_connected,
    .connect_failed = pool_on_connect_failed,
    .result = pool_on_query_done,
    .synced = pool_on_sync,
    .room = pgtag__pipeline_feed,
    .lost = pool_on_conn_lost,
    .timed_out = pool_on_statement_timeout,
    .cancel_done = pool_on_cancel_done,
    .staged = pgtag__pipeline_flush_soon,
    .reclaim = pool_reclaim,
    .wake = pool_wake,
    .settle = maybe_finish_close,
    .handle_closed = pool_handle_closed,
};

pgtag_errcode pgtag_pool_new(uv_loop_t *loop, const pgtag_pool_config *cfg, pgtag_pool **out) {
  if (loop == NULL || cfg == NULL || out == NULL)
    return PGTAG_EINVAL;
  pgtag_pool probe = {.cfg = *cfg, .name = (char *)(cfg->name ? cfg->name : "pgtag")};
  probe.cfg.log_level = cfg->log_level >= PGTAG_LOG_DEBUG && cfg->log_level <= PGTAG_LOG_ERROR
                            ? cfg->log_level
                            : PGTAG_LOG_WARN;
  const char *problem = pgtag__config_problem(cfg);
  if (problem != NULL) {
    pgtag__pool_log(&probe, PGTAG_LOG_ERROR, "pgtag_pool_new: %s", problem);
    return PGTAG_EINVAL;
  }
  char *errmsg = NULL;
  PQconninfoOption *opts = PQconninfoParse(cfg->conninfo, &errmsg);
  if (opts == NULL) {
    pgtag__pool_log(&probe, PGTAG_LOG_ERROR, "pgtag_pool_new: bad conninfo: %s",
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
  if (cfg->pipeline_depth > 1)
    pool->stmts = calloc(PIPELINE_STMTS, sizeof *pool->stmts);
  if (pool->conninfo == NULL || pool->name == NULL || pool->tag_key == NULL ||
      (cfg->pipeline_depth > 1 && pool->stmts == NULL)) {
    pool_free(pool);
    return PGTAG_ENOMEM;
  }
  pool->cfg.conninfo = pool->conninfo;
  pool->cfg.name = pool->name;
  pool->cfg.tag_key = pool->tag_key;
  pgtag__config_fill(&pool->cfg);
  pgtag__config_connect_params(pool);
  if (pgtag__resolver_new(pool, pool->conninfo, &pool->resolver) != 0) {
    pool_free(pool);
    return PGTAG_ENOMEM;
  }
  pool->loop = loop;
  pool->on = &events;
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
  uv_prepare_init(loop, &pool->check_prepare);
  uv_idle_init(loop, &pool->defer_idle);
  uv_handle_t *own[POOL_OWN_HANDLES];
  for (int i = own_handles(pool, own) - 1; i >= 0; i--) {
    own[i]->data = pool;
    pool->handles++; /* conn.c, cancel.c and resolve.c count theirs */
  }
  /* Each turn, before the loop waits: a context left current is found
   * then (the application's callbacks have all run). */
  uv_prepare_start(&pool->check_prepare, on_check_prepare);
  uv_unref((uv_handle_t *)&pool->check_prepare);
  uv_unref((uv_handle_t *)&pool->leak_timer); /* a report alone is no work */
  if (cfg->idle_timeout_ms > 0 || cfg->max_lifetime_ms > 0) {
    uint64_t period = pgtag__config_maint_period(cfg);
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
    pgtag__pool_log(pool, PGTAG_LOG_WARN, "pgtag_pool_close: already closing");
    return;
  }
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  pool->closing = 1;
  pool->close_done = done;
  pool->close_arg = arg;
  uv_timer_stop(&pool->wait_timer);
  uv_timer_stop(&pool->retry_timer);
  uv_timer_stop(&pool->maint_timer);
  pgtag__resolver_cancel(pool->resolver);
  queue waiting;
  pgtag__waiters_take_all(pool, &waiting);
  fail_queue(pool, &waiting, PGTAG_ECLOSED, "the pool is closing");

  queue *q = queue_head(&pool->conns);
  while (q != &pool->conns) {
    struct conn *conn = queue_data(q, struct conn, node);
    q = q->next;
    if (conn->state == CONN_IDLE || conn->state == CONN_CONNECTING)
      close_conn(pool, conn);
    else if (conn->gen != 0 && conn->hold.reported_ended)
      pool_reclaim(conn); /* leaked: nobody will release it */
  }
  maybe_finish_close(pool);
  pgtag_ctx_leave(previous);
}

/* Once no connection and no undelivered outcome is left, close the pool's
 * own handles; the last close callback calls done and frees the pool. */
static void maybe_finish_close(pgtag_pool *pool) {
  if (!pool->closing || pool->handles_closing)
    return;
  if (!queue_empty(&pool->waiters)) {
    /* Sent back to the line after the close began (a batch skipped it, the
     * statement cache's refusal): no connection will take it now. */
    queue stranded;
    pgtag__waiters_take_all(pool, &stranded);
    fail_queue(pool, &stranded, PGTAG_ECLOSED, "the pool is closing");
  }
  if (pool->deferring || pool_total_conns(pool) > 0 || !queue_empty(&pool->deferred))
    return;
  assert(queue_empty(&pool->waiters));
  pool->handles_closing = 1;
  uv_handle_t *own[POOL_OWN_HANDLES];
  for (int i = own_handles(pool, own) - 1; i >= 0; i--)
    uv_close(own[i], on_pool_handle_closed);
}

static void pool_handle_closed(pgtag_pool *pool) {
  assert(pool->handles > 0);
  if (--pool->handles > 0 || !pool->handles_closing)
    return;
  pgtag_ctx *outer = pgtag_ctx_enter(NULL);
  pgtag__pool_log(pool, PGTAG_LOG_INFO, "pool closed");
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
  out->total = pool_live_conns(pool);
  out->idle = pool->count[CONN_IDLE];
  out->busy = pool->count[CONN_BUSY] + pool->count[CONN_RESETTING];
  out->held = pool->count[CONN_HELD] + pool->count[CONN_LOST];
  out->connecting = pool->count[CONN_CONNECTING];
  out->waiting = pool->nwaiting;
  out->max_conns = pool->cfg.max_conns;
}
