/* The connection state machine.  Everything here is non-blocking:
 * PQconnectStart/PQconnectPoll to connect, PQsendQueryParams and PQflush to
 * send, PQconsumeInput/PQisBusy/PQgetResult to read, each step driven by
 * the socket's readiness as reported by one uv_poll_t.
 *
 * The socket is always watched for readability, also while idle, so that a
 * server closing the connection is seen at once rather than by the next
 * request that picks it up. */
#include "conn.h"

#include "pool.h"
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>

static void on_poll(uv_poll_t *handle, int status, int events);

static void on_poll_closed(uv_handle_t *handle) {
  pgtag_pool *pool = handle->data;
  free(handle);
  pool_handle_closed(pool);
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
  text_line(msg, sizeof msg, PQresultErrorMessage(res));
  pool_log(conn->pool, PGTAG_LOG_INFO, "server notice (%s): %s",
           backend_text(conn->backend_pid).s, msg);
}

static void on_connect_timeout(uv_timer_t *timer) {
  struct conn *conn = timer->data;
  char msg[128];
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  snprintf(msg, sizeof msg, "connection attempt timed out after %d ms",
           conn->pool->cfg.connect_timeout_ms);
  pool_on_connect_failed(conn, msg);
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
  tag_buf_free(&conn->tag);
  queue_insert_tail(&conn->pool->spare, &conn->node);
}

struct conn *conn_start(pgtag_pool *pool, char *errbuf, size_t errlen) {
  struct conn *conn = conn_alloc(pool);
  if (conn == NULL) {
    snprintf(errbuf, errlen, "out of memory");
    return NULL;
  }
  conn->pool = pool;
  /* The pool's defaults first, the conninfo (expanded) last: libpq lets
   * the last value of a keyword win, so the user's settings override. */
  conn->pg = PQconnectStartParams(pool->conn_keys, pool->conn_values, 1);
  if (conn->pg == NULL || PQstatus(conn->pg) == CONNECTION_BAD) {
    text_line(errbuf, errlen,
                 conn->pg ? PQerrorMessage(conn->pg) : "out of memory");
    PQfinish(conn->pg);
    conn_retire(conn);
    return NULL;
  }
  /* The server's SQLSTATE reaches us only in the text of a refusal, and
   * only in verbose mode (connect_error.h); back to default once connected. */
  PQsetErrorVerbosity(conn->pg, PQERRORS_VERBOSE);
  conn->poll_fd = -1;
  conn->state = CONN_CONNECTING;
  queue_init(&conn->node);
  queue_init(&conn->idle_node);
  queue_init(&conn->pending);
  queue_init(&conn->piped);
  queue_init(&conn->done);
  uv_timer_init(pool->loop, &conn->timer);
  pool->handles++;
  conn->timer.data = conn;
  conn->created = uv_now(pool->loop);

  /* libpq's protocol: before the first PQconnectPoll, wait for writability. */
  if (conn_watch(conn, 1) != 0) {
    snprintf(errbuf, errlen, "cannot poll the connection's socket");
    conn_close(conn);
    return NULL;
  }
  if (pool->cfg.connect_timeout_ms > 0)
    uv_timer_start(&conn->timer, on_connect_timeout,
                   (uint64_t)pool->cfg.connect_timeout_ms, 0);
  return conn;
}

static void connect_step(struct conn *conn) {
  switch (PQconnectPoll(conn->pg)) {
  case PGRES_POLLING_OK:
    uv_timer_stop(&conn->timer);
    PQsetErrorVerbosity(conn->pg, PQERRORS_DEFAULT);
    if (PQsetnonblocking(conn->pg, 1) != 0) {
      pool_on_connect_failed(conn, PQerrorMessage(conn->pg));
      return;
    }
    PQsetNoticeReceiver(conn->pg, on_notice, conn);
    if (conn->pool->cfg.pipeline_depth > 1) {
      if (!PQenterPipelineMode(conn->pg)) {
        pool_on_connect_failed(conn, PQerrorMessage(conn->pg));
        return;
      }
      conn->pipelined = 1;
    }
    /* Behind a transaction pooler the pid is the pooler's invention. */
    conn->backend_pid = conn->pool->cfg.transaction_pooler ? 0 : PQbackendPID(conn->pg);
    pool_on_connected(conn);
    return;
  case PGRES_POLLING_READING:
    if (conn_watch(conn, 0) != 0)
      pool_on_connect_failed(conn, "cannot poll the connection's socket");
    return;
  case PGRES_POLLING_WRITING:
    if (conn_watch(conn, 1) != 0)
      pool_on_connect_failed(conn, "cannot poll the connection's socket");
    return;
  default:
    pool_on_connect_failed(conn, PQerrorMessage(conn->pg));
    return;
  }
}

static void conn_lost(struct conn *conn, const char *fallback) {
  const char *pqmsg = conn->pg ? PQerrorMessage(conn->pg) : "";
  pool_on_conn_lost(conn, pqmsg[0] ? pqmsg : fallback);
}

static void on_statement_timer(uv_timer_t *timer) {
  struct conn *conn = timer->data;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  pool_on_statement_timeout(conn);
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

void conn_arm_timeout(struct conn *conn) {
  op *o = conn->inflight;
  int timeout = o->kind == OP_RESET ? RESET_TIMEOUT_MS : o->timeout_ms;
  if (o->cancel_code != PGTAG_OK) /* cancelled while it waited in the pipeline */
    timeout = 1;
  if (timeout <= 0) {
    uv_timer_stop(&conn->timer);
    return;
  }
  /* From when it was sent: one pipelined behind others has used some. */
  uint64_t used = o->sent_ns != 0 ? (uv_hrtime() - o->sent_ns) / 1000000 : 0;
  uv_timer_start(&conn->timer, on_statement_timer,
                 used < (uint64_t)timeout ? (uint64_t)timeout - used : 0, 0);
}

int conn_sync(struct conn *conn) {
  if (!PQpipelineSync(conn->pg)) /* libpq 15: it flushes too */
    return -1;
  conn->unsynced = 0;
  int flushed = PQflush(conn->pg);
  if (flushed < 0)
    return -1;
  conn->want_write = flushed == 1;
  return conn_watch(conn, conn->want_write);
}

/* Pipelined one-shot queries go out in batches: those sent in one loop
 * iteration share one sync point, written (and flushed, one system call)
 * before the loop blocks.  libpq 15's PQpipelineSync flushes every time,
 * so a sync per query would cost a send() per query here and a flush per
 * query on the server.  A batch is one implicit transaction, so its
 * results are held until its sync point has arrived (committed), and a
 * batch with a failure is not delivered as such: its other queries, rolled
 * back with it, are sent again each with a sync point of its own (solo),
 * so that one failing query fails nothing else.  Everything else (held
 * connections, statements that change transaction state, the pool's
 * ROLLBACK, resent queries) is solo. */
static int batched(const struct conn *conn, const op *o) {
  return conn->pipelined && conn->state == CONN_BUSY && o->kind == OP_QUERY && !o->solo &&
         !o->exclusive;
}

int conn_send(struct conn *conn, op *o) {
  pgtag_pool *pool = conn->pool;
  int batch = batched(conn, o);
  if (conn->pipelined && !batch && conn->unsynced > 0 && conn_sync(conn) != 0)
    return -1; /* close the open batch before a solo query */
  const char *text = tag_render(&conn->tag, pool->cfg.tag_style, pool->tag_key,
                                o->ctx, o->sql);
  if (text == NULL)
    text = o->sql; /* out of memory for the tag: the query still runs */
  if (!PQsendQueryParams(conn->pg, text, o->nparams, NULL, o->values, NULL,
                         NULL, 0))
    return -1;
  if (batch) {
    if (conn->unsynced++ == 0)
      pool_need_sync(pool);
  } else {
    if (conn->pipelined && !PQpipelineSync(conn->pg))
      return -1;
    int flushed = PQflush(conn->pg);
    if (flushed < 0)
      return -1;
    conn->want_write = flushed == 1;
  }
  if (o->kind != OP_RESET) {
    o->sent_ns = uv_hrtime();
    note_sql(conn, o->sql);
  }
  if (conn->inflight != NULL) {
    queue_insert_tail(&conn->piped, &o->node);
    conn->npiped++;
  } else {
    conn->inflight = o;
    conn_arm_timeout(conn);
  }
  conn->exclusive |= o->exclusive;
  if (conn_watch(conn, conn->want_write) != 0) {
    if (conn->inflight == o) {
      conn->inflight = NULL;
    } else {
      queue_remove(&o->node);
      conn->npiped--;
    }
    return -1;
  }
  return 0;
}

/* The query in flight is complete: the next pipelined one comes up. */
static op *next_inflight(struct conn *conn) {
  op *o = conn->inflight;
  uv_timer_stop(&conn->timer); /* statement timeout or cancel grace */
  conn->inflight = NULL;
  conn->exclusive = 0;
  if (!queue_empty(&conn->piped)) {
    conn->inflight = queue_data(queue_head(&conn->piped), op, node);
    queue_remove(&conn->inflight->node);
    conn->npiped--;
    conn->exclusive = conn->inflight->exclusive;
    conn_arm_timeout(conn);
  }
  return o;
}

/* Read what arrived; complete the query in flight once libpq has its last
 * result.  Returns after any callback that closed the connection. */
static void read_results(struct conn *conn) {
  int ok = PQconsumeInput(conn->pg);
  while (conn_on_wire(conn) && !PQisBusy(conn->pg)) {
    PGresult *res = PQgetResult(conn->pg);
    if (!conn->pipelined && res == NULL) {
      /* The NULL after a query's results comes after ReadyForQuery. */
      PGresult *last = conn->result;
      conn->result = NULL;
      pool_on_query_done(conn, next_inflight(conn), last);
      if (conn->state == CONN_CLOSED || conn->state == CONN_LOST)
        return;
      continue;
    }
    if (res == NULL) {
      if (!conn->got_result || conn->inflight == NULL)
        break; /* nothing more yet: wait for input */
      /* In a pipeline the NULL ends one query's results: it waits for its
       * batch's sync point. */
      op *o = next_inflight(conn);
      o->res = conn->result;
      conn->result = NULL;
      conn->got_result = 0;
      queue_insert_tail(&conn->done, &o->node);
      conn->ndone++;
      continue;
    }
    if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
      PQclear(res);
      if (conn->ndone > 0) {
        pool_on_batch_done(conn);
        if (conn->state == CONN_CLOSED || conn->state == CONN_LOST)
          return;
      }
      continue;
    }
    conn->got_result = 1;
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
      /* The connection is stuck in COPY mode: fail the query, drop it. */
      op *o = conn->inflight;
      uv_timer_stop(&conn->timer);
      stats_query_done(o, conn);
      conn->inflight = NULL;
      conn->exclusive = 0;
      PQclear(conn->result);
      conn->result = NULL;
      op_set_result(o, res, 0);
      pool_on_conn_lost(conn, "COPY is not supported by pgtag");
      op_finish(o);
      return;
    }
    /* One statement gives one result; should more come, an error wins. */
    if (conn->result == NULL || (st == PGRES_FATAL_ERROR &&
                                 PQresultStatus(conn->result) != PGRES_FATAL_ERROR)) {
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
  /* Queries that finished left room in the pipeline before their batch's
   * sync point came: fill it now, so the backend never waits for us. */
  if (conn->pipelined && conn->state == CONN_BUSY && conn_on_wire(conn))
    pool_feed(conn);
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
    pool_on_conn_lost(conn, msg);
  }
out:
  pgtag_ctx_leave(previous);
}

static void on_timer_closed(uv_handle_t *handle) {
  struct conn *conn = handle->data;
  pgtag_pool *pool = conn->pool;
  conn_retire(conn);
  pool_handle_closed(pool);
}

int conn_alive(struct conn *conn) {
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

int conn_poll_update(struct conn *conn) {
  return conn_watch(conn, conn->want_write);
}

void conn_shut(struct conn *conn) {
  poll_close(conn);
  uv_timer_stop(&conn->timer);
  PQclear(conn->result);
  conn->result = NULL;
  PQfinish(conn->pg); /* after the poll stopped watching its socket */
  conn->pg = NULL;
  conn->backend_pid = 0;
}

void conn_close(struct conn *conn) {
  conn_shut(conn);
  conn->state = CONN_CLOSED;
  uv_close((uv_handle_t *)&conn->timer, on_timer_closed);
}
