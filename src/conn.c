/* The connection state machine.  Everything here is non-blocking:
 * PQconnectStart/PQconnectPoll to connect, PQsendQueryParams and PQflush to
 * send, PQconsumeInput/PQisBusy/PQgetResult to read, each step driven by
 * the socket's readiness as reported by one uv_poll_t.
 *
 * The socket is always watched for readability, also while idle, so that a
 * server closing the connection is seen at once rather than by the next
 * request that picks it up. */
#include "conn.h"

#include "context.h"
#include "log.h"
#include "op.h"
#include "resolve.h"
#include "sqlkind.h"
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>

/* The statement that opens a batch: its implicit transaction is read-only
 * from here on, so a read that writes after all fails before it has any
 * effect, and no read holds a lock another request's write could wait
 * for.  set_config rather than SET TRANSACTION, which warns outside an
 * explicit transaction block.  It also says the isolation level: under a
 * serializable default, reads that share a transaction could fail
 * together, so they stop sharing.  $1, when not empty, is the reads'
 * statement timeout, which the server then enforces on each of them from
 * when it starts (a cancel from the pool could stop whichever read the
 * server runs when it arrives).  Prepared once per connection, it costs
 * the server a bind and an execute per batch, not a parse and a plan;
 * behind a transaction pooler, where a prepared statement does not
 * outlive the transaction, it is sent as text each time. */
#define OPENER_NAME "pgtag_batch_opener"
#define OPENER_SQL                                           \
  "SELECT set_config('transaction_read_only', 'on', true), " \
  "current_setting('transaction_isolation'), "               \
  "CASE WHEN $1 <> '' THEN set_config('statement_timeout', $1, true) END"

enum {
  OPENER_TEXT = -1,  /* sent as text: behind a pooler, or the name is taken */
  OPENER_UNPREPARED, /* to be prepared with the next batch */
  OPENER_PREPARED
};

static void on_poll(uv_poll_t *handle, int status, int events);

static void on_poll_closed(uv_handle_t *handle) {
  pgtag_pool *pool = handle->data;
  free(handle);
  pool->on->handle_closed(pool);
}

static void poll_close(struct conn *conn) {
  if (conn->poll == NULL)
    return;
  conn->poll->data = conn->pool; /* the conn may be freed first */
  uv_close((uv_handle_t *)conn->poll, on_poll_closed);
  conn->poll = NULL;
  conn->poll_fd = -1;
}

/* Poll the current socket for readability, plus writability when asked.
 * The handle keeps the loop alive only while work is under way, so an idle
 * pool does not stop uv_run from returning.  Returns 0 or -1. */
static int conn_watch(struct conn *conn, int writable) {
  int fd = PQsocket(conn->pg);
  if (fd < 0)
    return -1;
  /* While connecting, libpq may close its socket and open another (the next
   * host, a retry without SSL), usually under the same descriptor number:
   * the inode tells the two apart, and the new socket needs a new handle. */
  uint64_t ino = 0;
  if (conn->state == CONN_CONNECTING) {
    struct stat st;
    if (fstat(fd, &st) != 0)
      return -1;
    ino = (uint64_t)st.st_ino;
  }
  if (conn->poll != NULL &&
      (conn->poll_fd != fd || (conn->state == CONN_CONNECTING && conn->poll_ino != ino)))
    poll_close(conn);
  if (conn->poll == NULL) {
    uv_poll_t *poll = malloc(sizeof *poll);
    if (poll == NULL)
      return -1;
    if (uv_poll_init(conn->pool->loop, poll, fd) != 0) {
      free(poll);
      return -1;
    }
    conn->pool->handles++;
    poll->data = conn;
    conn->poll = poll;
    conn->poll_fd = fd;
    conn->poll_ino = ino;
    conn->poll_events = 0;
  }
  /* uv_poll_start re-registers the descriptor with epoll every time: two
   * system calls per query for nothing, when the events are unchanged. */
  int events = UV_READABLE | (writable ? UV_WRITABLE : 0);
  if (!uv_is_active((uv_handle_t *)conn->poll) || conn->poll_events != events) {
    if (uv_poll_start(conn->poll, events, on_poll) != 0)
      return -1;
    conn->poll_events = events;
  }
  if (conn->state == CONN_CONNECTING || conn_on_wire(conn))
    uv_ref((uv_handle_t *)conn->poll);
  else
    uv_unref((uv_handle_t *)conn->poll);
  return 0;
}

static void on_notice(void *arg, const PGresult *res) {
  struct conn *conn = arg;
  char msg[512];
  pgtag__text_line(msg, sizeof msg, PQresultErrorMessage(res));
  pgtag__pool_log(conn->pool, PGTAG_LOG_INFO, "server notice (%s): %s",
                  pgtag__backend_text(conn->backend_pid).s, msg);
}

static void on_connect_timeout(uv_timer_t *timer) {
  struct conn *conn = timer->data;
  char msg[512];
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  if (conn->resolving != NULL) {
    char names[384];
    pgtag__resolver_pending(conn, names, sizeof names);
    snprintf(msg, sizeof msg,
             "could not translate host name %s to address: no answer within %d ms "
             "(connect_timeout_ms)",
             names, conn->pool->cfg.connect_timeout_ms);
  } else {
    snprintf(msg, sizeof msg, "connection attempt timed out after %d ms",
             conn->pool->cfg.connect_timeout_ms);
  }
  conn->pool->on->connect_failed(conn, msg);
  pgtag_ctx_leave(previous);
}

static struct conn *conn_alloc(pgtag_pool *pool) {
  struct conn *conn;
  if (queue_empty(&pool->spare))
    return calloc(1, sizeof *conn);
  conn = queue_data(queue_head(&pool->spare), struct conn, node);
  queue_remove(&conn->node);
  memset(conn, 0, sizeof *conn);
  return conn;
}

static void conn_retire(struct conn *conn) {
  pgtag__tag_buf_free(&conn->tag);
  queue_insert_tail(&conn->pool->spare, &conn->node);
}

/* libpq's part: PQconnectStartParams, with the addresses resolved for
 * this attempt when the pool has names to resolve.  Returns 0, or -1 with
 * errbuf filled. */
static int pq_start(struct conn *conn, char *errbuf, size_t errlen) {
  pgtag_pool *pool = conn->pool;
  /* The pool's defaults first, the conninfo (expanded) next, the resolved
   * lists last: libpq lets the last value of a keyword win, so the user's
   * settings override the defaults, and libpq sees no name to resolve. */
  const char *keys[16], *values[16];
  int n = 0;
  for (; pool->conn_keys[n] != NULL; n++) {
    keys[n] = pool->conn_keys[n];
    values[n] = pool->conn_values[n];
  }
  resolved *res = NULL;
  if (pool->resolver != NULL) {
    res = calloc(1, sizeof *res);
    int entries = res != NULL ? pgtag__resolver_params(pool->resolver, res) : -1;
    if (entries <= 0) {
      pgtag__text_line(errbuf, errlen, entries < 0 ? "out of memory" : res->notes.data);
      if (res != NULL)
        pgtag__resolved_free(res);
      free(res);
      return -1;
    }
    keys[n] = "host", values[n++] = res->host.data;
    keys[n] = "hostaddr", values[n++] = res->hostaddr.data;
    if (res->has_port)
      keys[n] = "port", values[n++] = res->port.data;
    conn->connect_names = res; /* for the error message, should it fail */
  }
  keys[n] = NULL, values[n] = NULL;
  conn->pg = PQconnectStartParams(keys, values, 1);
  if (conn->pg == NULL || PQstatus(conn->pg) == CONNECTION_BAD) {
    /* Every host may fail at once (refused on this machine, say). */
    tag_buf msg = {0};
    const char *pqmsg = conn->pg ? PQerrorMessage(conn->pg) : "out of memory";
    if (conn->pg != NULL && res != NULL && pgtag__resolved_explain(res, pqmsg, &msg) == 0)
      pqmsg = msg.data;
    pgtag__text_line(errbuf, errlen, pqmsg);
    pgtag__tag_buf_free(&msg);
    return -1;
  }
  /* The server's SQLSTATE reaches us only in the text of a refusal, and
   * only in verbose mode (connect_error.h); back to default once connected. */
  PQsetErrorVerbosity(conn->pg, PQERRORS_VERBOSE);
  /* libpq's protocol: before the first PQconnectPoll, wait for writability. */
  if (conn_watch(conn, 1) != 0) {
    snprintf(errbuf, errlen, "cannot poll the connection's socket");
    return -1;
  }
  return 0;
}

/* conn's host names have answered (resolve.c): libpq starts connecting. */
static void on_resolved(struct conn *conn) {
  char err[1024];
  if (pq_start(conn, err, sizeof err) != 0)
    conn->pool->on->connect_failed(conn, err);
}

struct conn *pgtag__conn_start(pgtag_pool *pool, char *errbuf, size_t errlen) {
  struct conn *conn = conn_alloc(pool);
  if (conn == NULL) {
    snprintf(errbuf, errlen, "out of memory");
    return NULL;
  }
  conn->pool = pool;
  conn->poll_fd = -1;
  conn->state = CONN_CONNECTING;
  queue_init(&conn->node);
  queue_init(&conn->idle_node);
  queue_init(&conn->pending);
  queue_init(&conn->wire);
  queue_init(&conn->staged);
  uv_timer_init(pool->loop, &conn->timer);
  pool->handles++;
  conn->timer.data = conn;
  conn->created = uv_now(pool->loop);

  int rc = pool->resolver != NULL
               ? pgtag__resolver_join(pool->resolver, conn, on_resolved, errbuf, errlen)
               : pq_start(conn, errbuf, errlen);
  if (rc != 0) {
    pgtag__conn_close(conn);
    return NULL;
  }
  if (pool->cfg.connect_timeout_ms > 0)
    uv_timer_start(&conn->timer, on_connect_timeout, (uint64_t)pool->cfg.connect_timeout_ms, 0);
  return conn;
}

/* The attempt failed in libpq: its message, in the words it would have
 * used had it resolved the names itself (pgtag__resolved_explain). */
static void connect_failed_pq(struct conn *conn) {
  const char *pqmsg = PQerrorMessage(conn->pg);
  tag_buf msg = {0};
  if (conn->connect_names != NULL && pgtag__resolved_explain(conn->connect_names, pqmsg, &msg) == 0)
    pqmsg = msg.data;
  conn->pool->on->connect_failed(conn, pqmsg);
  pgtag__tag_buf_free(&msg);
}

/* Done with what the attempt was given. */
static void forget_names(struct conn *conn) {
  if (conn->connect_names != NULL)
    pgtag__resolved_free(conn->connect_names);
  free(conn->connect_names);
  conn->connect_names = NULL;
}

static void connect_step(struct conn *conn) {
  switch (PQconnectPoll(conn->pg)) {
  case PGRES_POLLING_OK:
    uv_timer_stop(&conn->timer);
    forget_names(conn);
    PQsetErrorVerbosity(conn->pg, PQERRORS_DEFAULT);
    if (PQsetnonblocking(conn->pg, 1) != 0) {
      conn->pool->on->connect_failed(conn, PQerrorMessage(conn->pg));
      return;
    }
    PQsetNoticeReceiver(conn->pg, on_notice, conn);
    conn->read_only_at_connect = pgtag__conn_server_read_only(conn);
    conn->opener = conn->pool->cfg.transaction_pooler ? OPENER_TEXT : OPENER_UNPREPARED;
    /* A pooled server connection changes from one transaction to the
     * next: what is prepared on one is not on the others. */
    if (!conn->pool->cfg.transaction_pooler)
      pgtag__stmtcache_init(&conn->stmts, conn->pool->cfg.statement_cache);
    /* Pipeline mode for pipelining, and for the cache, whose prepare goes
     * out just ahead of the statement's first use. */
    if (conn->pool->cfg.pipeline_depth > 1 || conn->stmts.slots != NULL) {
      if (!PQenterPipelineMode(conn->pg)) {
        conn->pool->on->connect_failed(conn, PQerrorMessage(conn->pg));
        return;
      }
      conn->pipelined = 1;
    }
    /* Behind a transaction pooler the pid is the pooler's invention. */
    conn->backend_pid = conn->pool->cfg.transaction_pooler ? 0 : PQbackendPID(conn->pg);
    conn->pool->on->connected(conn);
    return;
  case PGRES_POLLING_READING:
    if (conn_watch(conn, 0) != 0)
      conn->pool->on->connect_failed(conn, "cannot poll the connection's socket");
    return;
  case PGRES_POLLING_WRITING:
    if (conn_watch(conn, 1) != 0)
      conn->pool->on->connect_failed(conn, "cannot poll the connection's socket");
    return;
  default:
    connect_failed_pq(conn);
    return;
  }
}

static void conn_lost(struct conn *conn, const char *fallback) {
  const char *pqmsg = conn->pg ? PQerrorMessage(conn->pg) : "";
  conn->pool->on->lost(conn, pqmsg[0] ? pqmsg : fallback);
}

static void on_statement_timer(uv_timer_t *timer) {
  struct conn *conn = timer->data;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  conn->pool->on->timed_out(conn);
  pgtag_ctx_leave(previous);
}

static void note_sql(struct conn *conn, const char *sql) {
  size_t n = strnlen(sql, LAST_SQL_MAX);
  /* Cut at a character boundary, should the text be UTF-8. */
  if (n == LAST_SQL_MAX)
    while (n > 0 && ((unsigned char)sql[n] & 0xC0) == 0x80)
      n--;
  memcpy(conn->last_sql, sql, n);
  conn->last_sql[n] = '\0';
}

void pgtag__conn_arm_timeout(struct conn *conn) {
  const op *head = conn_running(conn);
  if (head == NULL || head->deadline == 0) {
    uv_timer_stop(&conn->timer);
    return;
  }
  uint64_t now = uv_now(conn->pool->loop);
  uv_timer_start(&conn->timer, on_statement_timer, head->deadline > now ? head->deadline - now : 0,
                 0);
}

void pgtag__conn_retry_cancels(struct conn *conn) {
  op *head = conn_running(conn);
  if (head != NULL && head->cancel_code != PGTAG_OK && !head->cancel_sent && head->deadline == 0)
    head->deadline = uv_now(conn->pool->loop);
  pgtag__conn_arm_timeout(conn);
}

/* o is running now (conn_running): the server can start it.  When must
 * the pool act on it?  At the end of its statement timeout, which counts its own run, not
 * its wait behind others (a read in a batch has the server enforce it:
 * pgtag__conn_flush_staged), of the limit on the pool's ROLLBACK, or at once for
 * one whose cancel is wanted already. */
static void head_deadline(struct conn *conn, op *o) {
  uint64_t now = uv_now(conn->pool->loop);
  int timeout = o->kind == OP_RESET ? RESET_TIMEOUT_MS : o->batched ? 0 : o->timeout_ms;
  o->running = 1;
  /* Its request's deadline, when that comes first (pgtag_ctx_set_deadline;
   * the server does not know it, so the pool cancels, batch or not). */
  int64_t left = o->kind == OP_QUERY ? pgtag__ctx_left_ms(o->ctx, uv_hrtime()) : -1;
  o->by_deadline = left >= 0 && (timeout <= 0 || left < timeout);
  if (o->cancel_code != PGTAG_OK && !o->cancel_sent)
    o->deadline = now;
  else if (!o->cancel_sent && o->by_deadline)
    o->deadline = now + (uint64_t)left;
  else if (!o->cancel_sent)
    o->deadline = timeout > 0 ? now + (uint64_t)timeout : 0;
}

/* What the pipelining rules count, for statements on the wire or staged. */
static void count_op(struct conn *conn, const op *o, int d) {
  if (op_internal(o->kind))
    return;
  conn->unproven += d * o->unproven;
  conn->signalable += d * o->signalable;
  conn->writes += d * (o->kind == OP_QUERY && !o->reads);
}

void pgtag__conn_unstage(struct conn *conn, op *o) {
  queue_remove(&o->node);
  conn->nstaged--;
  count_op(conn, o, -1);
}

void pgtag__conn_mark_signalable(struct conn *conn, op *o) {
  if (o->signalable)
    return;
  o->signalable = 1;
  if (queue_linked(&o->node))
    conn->signalable++;
}

/* o is on its way to the server: it joins the wire behind what is there.
 * now: uv_hrtime() from before its bytes were written, so that its
 * measured time can never be shorter than the server's (the process may
 * be preempted between the write and this). */
static void wire_append(struct conn *conn, op *o, uint64_t now) {
  if (!op_internal(o->kind))
    o->sent_ns = now; /* what the statistics measure from */
  o->start_ns = now;
  o->chunk_ns = 0;
  o->deadline = 0;
  o->running = 0;
  o->held = 0;
  o->at_risk = conn->cancel != NULL; /* a cancel under way may hit it */
  queue_insert_tail(&conn->wire, &o->node);
  if (!op_internal(o->kind)) {
    conn->nwire++;
    note_sql(conn, o->sql);
  }
  conn->exclusive |= o->exclusive;
  if (conn_running(conn) == o) {
    head_deadline(conn, o);
    pgtag__conn_arm_timeout(conn);
  }
}

/* The head's results are complete: it leaves the wire, and the next one
 * can start (its own time counts from now).  held_back: the next result
 * is here already, so the server held this one back until then (a batch
 * sends its results at its sync point): which of them took the time is
 * not known, and the pool's learning blames each (op: chunk_ns). */
static op *wire_pop(struct conn *conn, int held_back) {
  op *o = conn_head(conn);
  uint64_t now = uv_hrtime();
  queue_remove(&o->node);
  if (!op_internal(o->kind))
    conn->nwire--;
  count_op(conn, o, -1);
  conn->exclusive = 0;
  if (held_back && conn->chunk_ns == 0)
    conn->chunk_ns = o->start_ns;
  o->chunk_ns = conn->chunk_ns;
  if (!held_back)
    conn->chunk_ns = 0;
  op *next = conn_head(conn);
  if (next != NULL) {
    /* A batch's opener takes no time: the read after it starts with it,
     * though its result may come only with the batch's. */
    uint64_t ended = op_instant(o->kind) ? o->start_ns : now;
    next->start_ns = next->sent_ns > ended ? next->sent_ns : ended;
    conn->exclusive = next->exclusive;
  }
  op *running = conn_running(conn);
  if (running != NULL && !running->running)
    head_deadline(conn, running);
  pgtag__conn_arm_timeout(conn);
  return o;
}

/* A statement that throws away what is prepared on the server process:
 * what the cache and the opener know is gone once it has run. */
static int discards_prepared(const char *sql) {
  while (*sql == ' ' || *sql == '\t' || *sql == '\n' || *sql == '\r')
    sql++;
  return strncasecmp(sql, "DISCARD", 7) == 0 || strncasecmp(sql, "DEALLOCATE", 10) == 0;
}

/* Everything sent before has been answered to its sync point: the
 * settings libpq reports (ParameterStatus, which the server sends as a
 * transaction ends) are the ones the next statement runs under. */
static int conn_settled(const struct conn *conn) {
  return queue_empty(&conn->wire) && conn->nsyncs == 0 && conn->synced == NULL;
}

/* libpq's pipeline mode on or off.  Only between statements: nothing of
 * this connection's is on the wire then, so libpq has nothing pending. */
static int pipeline_mode(struct conn *conn, int on) {
  if ((PQpipelineStatus(conn->pg) != PQ_PIPELINE_OFF) == on)
    return 0;
  assert(conn->pipelined && queue_empty(&conn->wire) && conn->nsyncs == 0);
  return (on ? PQenterPipelineMode(conn->pg) : PQexitPipelineMode(conn->pg)) ? 0 : -1;
}

/* sql with the tag of o's context; sql itself when out of memory for the
 * tag (the query still runs). */
static const char *tagged(struct conn *conn, const op *o, const char *sql) {
  pgtag_pool *pool = conn->pool;
  const char *text = pgtag__tag_render(&conn->tag, pool->cfg.tag_style, pool->tag_key, o->ctx, sql);
  return text != NULL ? text : sql;
}

/* text as one simple query, out of pipeline mode: alone on the wire. */
static int put_simple(struct conn *conn, const char *text) {
  if (pipeline_mode(conn, 0) != 0)
    return -1;
  return PQsendQuery(conn->pg, text) ? 0 : -1;
}

/* Send a query of the application's through the statement cache: the
 * DEALLOCATE of the statement it evicts and its own prepare when it is
 * new, then the tagged EXECUTE.  A statement already prepared that goes
 * out alone (nothing else on the wire, nothing to follow it) leaves
 * pipeline mode and goes as one simple query: the server then reads one
 * message, not five, and runs the EXECUTE without first parsing it into
 * an unnamed statement of its own (measured: about a tenth of its time per
 * point select).  The EXECUTE is safe as a simple query, which could carry
 * several statements: its values are quoted literals and the tag and the
 * excerpt are comments none of them can end (tag.c, write_excerpt).
 * Returns 0 or -1, or 1 when it must go the old way instead. */
static int put_cached(struct conn *conn, op *o, int alone) {
  stmt_plan plan;
  if (o->uncached || conn->stmts.slots == NULL || o->sql == NULL)
    return 1;
  if (o->hash == 0)
    o->hash = pgtag__sql_hash(o->sql);
  if (pgtag__stmtcache_plan(&conn->stmts, conn->pg, o->hash, o->sql, o->nparams, o->values,
                            conn_settled(conn), &plan) != 0)
    return 1;
  o->steps = 0;
  o->stmt_id = plan.id;
  const char *text = tagged(conn, o, plan.execute);
  if (alone && plan.dealloc == NULL && plan.prepare_name == NULL)
    return put_simple(conn, text);
  if (pipeline_mode(conn, 1) != 0)
    return -1;
  if (plan.dealloc != NULL) {
    if (!PQsendQueryParams(conn->pg, plan.dealloc, 0, NULL, NULL, NULL, NULL, 0))
      return -1;
    o->steps |= OP_STEP_DEALLOC;
  }
  if (plan.prepare_name != NULL) {
    if (!PQsendPrepare(conn->pg, plan.prepare_name, o->sql, o->nparams, NULL))
      return -1;
    o->steps |= OP_STEP_PREPARE;
  }
  return PQsendQueryParams(conn->pg, text, 0, NULL, NULL, NULL, NULL, 0) ? 0 : -1;
}

/* PQsendQueryParams with the tag of o's context (through the statement
 * cache when it can, as a simple query when alone); the pool's own
 * statements as they are.  Afterwards the connection is in pipeline mode
 * unless o went as a simple query. */
static int put_query(struct conn *conn, op *o, int alone) {
  if (op_internal(o->kind)) {
    if (conn->pipelined && pipeline_mode(conn, 1) != 0)
      return -1;
    if (o->kind == OP_PREPARE)
      return PQsendPrepare(conn->pg, OPENER_NAME, OPENER_SQL, 1, NULL) ? 0 : -1;
    if (o->kind == OP_OPENER && conn->opener == OPENER_PREPARED)
      return PQsendQueryPrepared(conn->pg, OPENER_NAME, 1, o->values, NULL, NULL, 0) ? 0 : -1;
    return PQsendQueryParams(conn->pg, o->sql, o->nparams, NULL, o->values, NULL, NULL, 0) ? 0 : -1;
  }
  o->stmt_id = 0;
  o->steps = 0;
  int rc = put_cached(conn, o, alone);
  if (rc != 1)
    return rc;
  if (discards_prepared(o->sql)) {
    pgtag__stmtcache_clear(&conn->stmts);
    if (conn->opener == OPENER_PREPARED)
      conn->opener = OPENER_UNPREPARED;
  }
  const char *text = tagged(conn, o, o->sql);
  /* Alone, without parameters, and the same as a simple query
   * (pgtag__sql_simple_ok), it goes as one: a BEGIN or a COMMIT costs the
   * server one message instead of five. */
  if (alone && o->nparams == 0 && pgtag__sql_simple_ok(o->sql))
    return put_simple(conn, text);
  if (conn->pipelined && pipeline_mode(conn, 1) != 0)
    return -1;
  return PQsendQueryParams(conn->pg, text, o->nparams, NULL, o->values, NULL, NULL, 0) ? 0 : -1;
}

static int flush_out(struct conn *conn) {
  int flushed = PQflush(conn->pg);
  if (flushed < 0)
    return -1;
  conn->want_write = flushed == 1;
  return 0;
}

/* The sync point that closes what was sent since the last one, unless it
 * went as a simple query (which is its own). */
static int put_sync(struct conn *conn) {
  if (PQpipelineStatus(conn->pg) == PQ_PIPELINE_OFF)
    return 0;
  if (!PQpipelineSync(conn->pg)) /* libpq 15: it flushes too */
    return -1;
  conn->nsyncs++;
  return 0;
}

static int flush_staged(struct conn *conn, int more);

/* Whether a statement alone on the wire may leave pipeline mode, which
 * shuts the connection to pipelining until it is done: when nothing could
 * be pipelined behind it anyway.  A held connection sends its holder's
 * statements one at a time (pool.c, held_next); a pooled one takes others'
 * only when the pool pipelines and a query that comes meanwhile has no
 * connection of its own (a free one, or a new one: pipelining starts only
 * once the pool is full, pgtag__pipeline_least_loaded). */
static int may_go_alone(const struct conn *conn) {
  const pgtag_pool *pool = conn->pool;
  if (!conn_settled(conn))
    return 0;
  if (conn->state == CONN_HELD)
    return 1;
  return conn->state == CONN_BUSY && (pool->cfg.pipeline_depth <= 1 || !queue_empty(&pool->idle) ||
                                      pool_live_conns(pool) < pool->cfg.max_conns);
}

/* A read that may go out in a batch with others of this loop turn. */
static int stageable(const struct conn *conn, const op *o) {
  return conn->pipelined && conn->state == CONN_BUSY && o->kind == OP_QUERY && o->reads &&
         !o->solo && !o->exclusive && !conn->no_batch && !conn_simple_out(conn);
}

int pgtag__conn_send(struct conn *conn, op *o) {
  assert(conn->pg != NULL && !queue_linked(&o->node));
  assert(conn->state == CONN_BUSY || conn->state == CONN_HELD || conn->state == CONN_RESETTING);
  if (stageable(conn, o)) {
    queue_insert_tail(&conn->staged, &o->node);
    count_op(conn, o, +1);
    if (conn->nstaged++ == 0)
      conn->pool->on->staged(conn->pool);
    if (conn_watch(conn, conn->want_write) != 0) {
      queue_remove(&o->node);
      conn->nstaged--;
      count_op(conn, o, -1);
      return -1;
    }
    return 0;
  }
  /* Alone, behind whatever is staged, which goes out first to keep the
   * order of submission. */
  if (conn->nstaged > 0 && flush_staged(conn, 1) != 0)
    return -1;
  uint64_t now = uv_hrtime();
  if (put_query(conn, o, may_go_alone(conn)) != 0 || put_sync(conn) != 0 || flush_out(conn) != 0)
    return -1;
  count_op(conn, o, +1);
  wire_append(conn, o, now);
  if (conn_watch(conn, conn->want_write) != 0) {
    queue_remove(&o->node);
    count_op(conn, o, -1);
    if (!op_internal(o->kind))
      conn->nwire--;
    return -1;
  }
  return 0;
}

/* Send one batch: the first n staged reads, which share a timeout.  more:
 * another statement follows them at once. */
static int flush_batch(struct conn *conn, int n, int more) {
  int failed = 0;
  op *opener = NULL;
  const op *first = queue_data(queue_head(&conn->staged), op, node);
  uint64_t now = uv_hrtime();
  if (n > 1) {
    char ms[16] = "";
    const char *values[1] = {ms};
    if (first->timeout_ms > 0)
      snprintf(ms, sizeof ms, "%d", first->timeout_ms);
    opener = pgtag__op_new(conn->pool, OP_OPENER, OPENER_SQL, 1, values, 1);
  }
  /* Alone, or out of memory for the opener: a sync point each. */
  int batch = opener != NULL;
  int alone = !more && n == 1 && conn->nstaged == 1 && may_go_alone(conn);
  op *before = NULL; /* the statement sent last in this batch */
  if (batch && conn->opener == OPENER_UNPREPARED) {
    op *prepare = pgtag__op_new(conn->pool, OP_PREPARE, NULL, 0, NULL, 0);
    if (prepare != NULL) {
      failed |= put_query(conn, prepare, 0) != 0;
      wire_append(conn, prepare, now);
      conn->opener = OPENER_PREPARED; /* unless its result says otherwise */
    }
  }
  if (batch) {
    failed |= put_query(conn, opener, 0) != 0;
    wire_append(conn, opener, now);
    before = opener;
  }
  for (int i = 0; i < n; i++) {
    op *o = queue_data(queue_head(&conn->staged), op, node);
    queue_remove(&o->node);
    conn->nstaged--;
    if (before != NULL)
      before->held = !(i > 0 && o->unproven); /* no flush between them */
    /* The server holds a batch's results until its sync point unless
     * asked.  Before a read not known to be fast (the last one:
     * pgtag__pipeline_accepts), it is asked, so the reads ahead of it are
     * delivered without waiting for it.  Not before every read: each
     * flush costs the server a send and the pool a wakeup per result, and
     * batches then shrink to one read (measured: 16 reads a batch without,
     * 1.6 with). */
    if (batch && i > 0 && o->unproven)
      failed |= !PQsendFlushRequest(conn->pg);
    o->batched = batch != 0;
    failed |= put_query(conn, o, alone) != 0;
    if (!batch)
      failed |= put_sync(conn) != 0;
    wire_append(conn, o, now); /* on the wire even if sending failed: it fails with it */
    before = batch ? o : NULL;
  }
  if (batch)
    failed |= put_sync(conn) != 0;
  return failed ? -1 : 0;
}

static int flush_staged(struct conn *conn, int more) {
  int failed = 0;
  if (conn->nstaged == 0)
    return 0;
  while (!queue_empty(&conn->staged)) {
    /* The reads of one batch share a statement timeout (the one the
     * server enforces for the batch): a run of reads with the same one. */
    const op *first = queue_data(queue_head(&conn->staged), op, node);
    int n = 0;
    const queue *q;
    queue_foreach (q, &conn->staged) {
      if (queue_data(q, op, node)->timeout_ms != first->timeout_ms)
        break;
      n++;
    }
    failed |= flush_batch(conn, n, more) != 0;
  }
  if (failed || flush_out(conn) != 0)
    return -1;
  return conn_watch(conn, conn->want_write);
}

int pgtag__conn_flush_staged(struct conn *conn) { return flush_staged(conn, 0); }

/* The opener's result: the isolation level it reports.  Should it fail
 * (its batch's reads are then sent again: pgtag__pipeline_resend), so that the
 * prepared one is gone (DISCARD ALL or DEALLOCATE on a held connection),
 * it is prepared again with the next batch.  Should preparing it fail
 * (the name is taken), this connection sends it as text. */
static void opener_done(struct conn *conn, op *o, PGresult *res) {
  ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
  const char *state =
      st == PGRES_FATAL_ERROR && res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
  if (o->kind == OP_PREPARE && st == PGRES_FATAL_ERROR)
    conn->opener = state != NULL && strcmp(state, "42P05") == 0 ? OPENER_TEXT : OPENER_UNPREPARED;
  if (o->kind == OP_OPENER && st == PGRES_FATAL_ERROR && state != NULL &&
      strcmp(state, "26000") == 0 && conn->opener == OPENER_PREPARED)
    conn->opener = OPENER_UNPREPARED;
  if (o->kind == OP_OPENER && st == PGRES_TUPLES_OK) {
    if (PQntuples(res) != 1 || PQnfields(res) != 3 || strcmp(PQgetvalue(res, 0, 0), "on") != 0)
      conn->opener = OPENER_TEXT; /* not ours: someone prepared that name */
    else if (strcmp(PQgetvalue(res, 0, 1), "serializable") == 0)
      conn->no_batch = 1;
  }
  PQclear(res);
  pgtag__op_discard(o);
}

/* A command a query sent through the statement cache had ahead of its
 * EXECUTE is done.  The DEALLOCATE of an evicted statement may fail: that
 * one only stays unused.  A prepare that failed is forgotten; its error
 * (a syntax error, say) is the query's outcome, and the EXECUTE behind it
 * is skipped. */
static void cached_step_done(struct conn *conn, op *o) {
  PGresult *r = conn->result;
  conn->result = NULL;
  conn->got_result = 0;
  if (o->steps & OP_STEP_DEALLOC) {
    o->steps &= (uint8_t)~OP_STEP_DEALLOC;
    PQclear(r);
    return;
  }
  o->steps &= (uint8_t)~OP_STEP_PREPARE;
  if (r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK) {
    PQclear(r);
    return;
  }
  pgtag__stmtcache_forget(&conn->stmts, o->hash, o->stmt_id);
  if (r != NULL && PQresultStatus(r) == PGRES_FATAL_ERROR)
    conn->result = r; /* an error wins over what comes after it */
  else
    PQclear(r);
}

/* A statement's results are complete, or its sync point has come. */
static void deliver(struct conn *conn, op *o, PGresult *res) {
  conn->pool->on->result(conn, o, res);
}

/* Read what arrived; complete the head once libpq has its last result.
 * A read of a batch is delivered then (read-only: nothing to commit);
 * anything else once its sync point has arrived (committed).  Returns
 * after any callback that closed the connection. */
static void read_results(struct conn *conn) {
  int ok = PQconsumeInput(conn->pg);
  int sync_error = 0; /* the last result was an error at a sync point */
  while (conn_on_wire(conn) && !PQisBusy(conn->pg)) {
    PGresult *res = PQgetResult(conn->pg);
    if (res == NULL) {
      if (sync_error) {
        sync_error = 0; /* its end; the sync point itself comes next */
        continue;
      }
      if (!conn->got_result || queue_empty(&conn->wire))
        break; /* nothing more yet: wait for input */
      if (conn_head(conn)->steps != 0) {
        cached_step_done(conn, conn_head(conn));
        continue;
      }
      /* The NULL that ends the head's results (outside pipeline mode it
       * comes after ReadyForQuery). */
      PGresult *last = conn->result;
      conn->result = NULL;
      conn->got_result = 0;
      op *o = wire_pop(conn, conn_head(conn)->held && !PQisBusy(conn->pg));
      if (op_instant(o->kind)) {
        opener_done(conn, o, last);
      } else if (o->batched || PQpipelineStatus(conn->pg) == PQ_PIPELINE_OFF) {
        deliver(conn, o, last);
        if (conn->state == CONN_CLOSED || conn->state == CONN_LOST)
          return;
      } else {
        o->res = last; /* delivered at its sync point, next */
        conn->synced = o;
      }
      continue;
    }
    if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
      PQclear(res);
      sync_error = 0;
      conn->nsyncs--;
      op *o = conn->synced;
      conn->synced = NULL;
      if (o != NULL) {
        PGresult *r = o->res;
        o->res = NULL;
        deliver(conn, o, r);
      } else {
        conn->pool->on->synced(conn);
      }
      if (conn->state == CONN_CLOSED || conn->state == CONN_LOST)
        return;
      continue;
    }
    if (conn->synced != NULL || queue_empty(&conn->wire)) {
      /* An error at a sync point: committing what it closes failed (a
       * deferred constraint, say), or the connection is gone.  It comes
       * before anything sent behind that sync point.  It is the outcome
       * of the statement waiting for it, unless that failed already (its
       * own error says more); a batch of reads has nothing to commit. */
      op *w = conn->synced;
      if (w != NULL && PQresultStatus(res) == PGRES_FATAL_ERROR &&
          (w->res == NULL || PQresultStatus(w->res) != PGRES_FATAL_ERROR)) {
        PQclear(w->res);
        w->res = res;
      } else {
        PQclear(res);
      }
      sync_error = 1;
      continue;
    }
    conn->got_result = 1;
    ExecStatusType st = PQresultStatus(res);
    if ((st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) &&
        !queue_empty(&conn->wire)) {
      /* The connection is stuck in COPY mode: fail the query, drop it. */
      op *o = wire_pop(conn, 0);
      uv_timer_stop(&conn->timer);
      pgtag__stats_query_done(o, conn);
      conn->exclusive = 0;
      PQclear(conn->result);
      conn->result = NULL;
      if (op_internal(o->kind)) {
        PQclear(res);
        pgtag__op_discard(o);
        conn->pool->on->lost(conn, "COPY is not supported by pgtag");
        return;
      }
      pgtag__op_set_result(o, res, 0);
      conn->pool->on->lost(conn, "COPY is not supported by pgtag");
      pgtag__op_finish(o);
      return;
    }
    /* One statement gives one result; should more come, an error wins. */
    if (conn->result == NULL ||
        (st == PGRES_FATAL_ERROR && PQresultStatus(conn->result) != PGRES_FATAL_ERROR)) {
      PQclear(conn->result);
      conn->result = res;
    } else {
      PQclear(res);
    }
    if (PQstatus(conn->pg) == CONNECTION_BAD)
      break;
  }
  PGnotify *n;
  while ((n = PQnotifies(conn->pg)) != NULL)
    PQfreemem(n); /* LISTEN is not ours to serve; don't let them pile up */
  if (!ok || PQstatus(conn->pg) == CONNECTION_BAD) {
    conn_lost(conn, "connection lost");
    return;
  }
  /* Statements that finished left room in the pipeline: fill it now, so
   * the backend never waits for us. */
  if (conn->pipelined && conn->state == CONN_BUSY && conn_on_wire(conn) && !conn_simple_out(conn))
    conn->pool->on->room(conn);
}

static void on_poll(uv_poll_t *handle, int status, int events) {
  struct conn *conn = handle->data;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL); /* pool work has no context */

  /* libuv reports a socket error (POLLERR) as a status and stops the handle.
   * libpq is the one to judge it: while connecting it moves on to the next
   * host or fails with the real reason; afterwards the read fails with it. */
  if (status < 0)
    events = UV_READABLE | UV_WRITABLE;

  if (conn->state == CONN_CONNECTING) {
    connect_step(conn);
    goto out;
  }
  if ((events & UV_WRITABLE) && conn->want_write) {
    int flushed = PQflush(conn->pg);
    if (flushed < 0) {
      conn_lost(conn, "sending the query failed");
      goto out;
    }
    conn->want_write = flushed == 1;
    if (conn_watch(conn, conn->want_write) != 0) {
      conn_lost(conn, "cannot poll the connection's socket");
      goto out;
    }
  }
  if (events & (UV_READABLE | UV_DISCONNECT))
    read_results(conn);
  if (status < 0 && conn->state != CONN_CLOSED && conn->state != CONN_LOST) {
    /* libpq saw nothing wrong, yet the socket has an error: don't spin. */
    char msg[128];
    snprintf(msg, sizeof msg, "socket error: %s", uv_strerror(status));
    conn->pool->on->lost(conn, msg);
  }
out:
  pgtag_ctx_leave(previous);
}

static void on_timer_closed(uv_handle_t *handle) {
  struct conn *conn = handle->data;
  pgtag_pool *pool = conn->pool;
  conn_retire(conn);
  pool->on->handle_closed(pool);
}

int pgtag__conn_server_read_only(const struct conn *conn) {
  const char *standby = PQparameterStatus(conn->pg, "in_hot_standby");
  const char *fenced = PQparameterStatus(conn->pg, "default_transaction_read_only");
  return (standby != NULL && strcmp(standby, "on") == 0) ||
         (fenced != NULL && strcmp(fenced, "on") == 0);
}

int pgtag__conn_alive(struct conn *conn) {
  char byte;
  int fd = PQsocket(conn->pg);
  if (fd < 0)
    return 0;
  ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0)
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  if (n == 0)
    return 0; /* the server closed it */
  /* Something arrived on an idle connection: most likely the FATAL a
   * backend sends as it is terminated.  Let libpq read it and judge. */
  if (!PQconsumeInput(conn->pg) || PQstatus(conn->pg) == CONNECTION_BAD)
    return 0;
  n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
}

int pgtag__conn_poll_update(struct conn *conn) { return conn_watch(conn, conn->want_write); }

void pgtag__conn_shut(struct conn *conn) {
  pgtag__resolver_leave(conn);
  forget_names(conn);
  pgtag__stmtcache_free(&conn->stmts); /* they went with the server process */
  poll_close(conn);
  uv_timer_stop(&conn->timer);
  PQclear(conn->result);
  conn->result = NULL;
  PQfinish(conn->pg); /* after the poll stopped watching its socket */
  conn->pg = NULL;
  conn->backend_pid = 0;
}

void pgtag__conn_close(struct conn *conn) {
  pgtag__conn_shut(conn);
  conn->state = CONN_CLOSED;
  uv_close((uv_handle_t *)&conn->timer, on_timer_closed);
}
