/* One PostgreSQL connection: libpq's non-blocking state machine, polled by
 * a uv_poll_t. */
#ifndef PGTAG_CONN_H
#define PGTAG_CONN_H

#include "leak.h"
#include "op.h"
#include "queue.h"
#include "stmtcache.h"
#include "tag.h"

#include <stdint.h>

typedef enum {
  CONN_CONNECTING,
  CONN_IDLE,      /* in the pool, free */
  CONN_BUSY,      /* running a one-shot query */
  CONN_HELD,      /* acquired by a request */
  CONN_RESETTING, /* rolling back what its last holder left open */
  CONN_LOST,      /* held, but the connection died: waits for release */
  CONN_CLOSED,    /* handles closing; kept for reuse when they are */
  CONN_NSTATES
} conn_state;

/* How much of a statement's text reports keep (leaks, slow queries, N+1). */
#define LAST_SQL_MAX 200

/* Connection structs are never freed before their pool: a closed one is
 * kept for reuse, so a dead pgtag_conn handle always points at memory that
 * can tell it is dead (its gen no longer matches). */
struct conn {
  queue node;      /* in pool->conns, or pool->spare once closed */
  queue idle_node; /* in pool->idle while CONN_IDLE */
  pgtag_pool *pool;
  PGconn *pg;
  conn_state state;
  uv_poll_t *poll; /* replaced when PQsocket changes while connecting */
  int poll_fd;
  uint64_t poll_ino;                 /* while connecting: which socket poll_fd was */
  int poll_events;                   /* what the poll was last started with */
  uv_timer_t timer;                  /* connect timeout */
  struct resolve_attempt *resolving; /* waiting for its host names (resolve.h) */
  struct resolved *connect_names;    /* what libpq was given for the names
                                       resolved, for its error message */
  int want_write;                    /* output left in libpq's buffer */

  /* The pipeline (pipeline.c has its rules).  Everything sent whose
   * results have not all come, in order: the head's results come next. */
  queue wire;
  int nwire;    /* statements on the wire, the pool's own not counted */
  queue staged; /* reads that go out as one batch before the loop blocks */
  int nstaged;
  int nsyncs;               /* sync points sent, not yet answered */
  op *synced;               /* complete, delivered when its sync point arrives */
  int pipelined;            /* in libpq pipeline mode (see conn.c) */
  int unproven;             /* on the wire or staged: statements not known to be fast */
  int signalable;           /* ... that may be cancelled on the server */
  int writes;               /* ... that may write */
  int no_batch;             /* reads get a sync point each (serializable default) */
  int opener;               /* the batch opener here: OPENER_UNPREPARED, ... (conn.c) */
  int read_only_at_connect; /* the server was a standby, or read-only, when
                               this connection was made: its refusals of
                               writes are errors, not a failover */
  stmt_cache stmts;         /* statements prepared on this server process */
  uint64_t chunk_ns;        /* results held back together: the first one's start */
  int got_result;           /* the head has sent a result already */
  int exclusive;            /* the head must not share the connection */
  queue pending;            /* held: queries submitted behind it */
  PGresult *result;
  int release_pending; /* released while queries were still queued */

  uint64_t gen;          /* names the live holder handle; 0 when there is none */
  hold hold;             /* held: who took it, from where, when */
  struct cancel *cancel; /* a cancel request under way on the thread pool */
  int reclaiming;        /* taken back from its holder: finish, roll back, reuse */
  int recycle_pending;   /* back to the pool once the cancel request is done */

  uint64_t created; /* uv_now() */
  uint64_t idle_since;
  int backend_pid;
  tag_buf tag;
  char last_sql[LAST_SQL_MAX + 1]; /* the last statement sent, untagged */
};

/* Start connecting: with the pool's resolver (resolve.h), once its host
 * names are resolved, else at once.  Returns the connection (state
 * CONN_CONNECTING, not yet linked into the pool), or NULL with errbuf
 * filled when the attempt failed at once.  connect_timeout_ms counts from
 * here, resolution included. */
struct conn *conn_start(pgtag_pool *pool, char *errbuf, size_t errlen);

/* conn's host names have answered (resolve.c): libpq starts connecting. */
void conn_resolved(struct conn *conn);

/* Send op's query (tagged with op's context) behind whatever is on the
 * wire: a read that may share a batch is staged, to go out with the
 * others of this loop turn (conn_flush_staged); anything else goes out now
 * with a sync point of its own.  Returns 0, or -1 when the connection is
 * broken (op untouched, not linked). */
int conn_send(struct conn *conn, op *o);

/* Send the staged reads: one alone with its sync point; two or more as a
 * read-only batch (the opener, the reads, one sync point).  Returns 0 or
 * -1 (the connection is broken; the staged reads are on the wire, to fail
 * with it). */
int conn_flush_staged(struct conn *conn);

/* How long the pool's own ROLLBACK may take before the connection is given
 * up, and how long a cancelled query may take to end. */
#define RESET_TIMEOUT_MS 5000
#define CANCEL_GRACE_MS 5000

/* Whether the server says it is read-only now: in hot standby, or
 * default_transaction_read_only on (PostgreSQL 14 and later report both
 * as they change). */
int conn_server_read_only(const struct conn *conn);

/* For a connection that has sat idle: nonzero if it still looks usable,
 * zero if the server has closed it (or sent it anything but silence that
 * libpq could not make sense of).  One non-blocking recv(MSG_PEEK). */
int conn_alive(struct conn *conn);

/* The statement whose results come next, or NULL. */
static inline op *conn_head(const struct conn *conn) {
  return queue_empty(&conn->wire) ? NULL : queue_data(queue_head(&conn->wire), op, node);
}

/* The statement the server runs now, as far as the pool can tell: the
 * first on the wire that is not a batch's opener, which takes no time
 * (and whose result the server may hold back with the batch's). */
static inline op *conn_running(const struct conn *conn) {
  const queue *q;
  queue_foreach (q, &conn->wire) {
    op *o = queue_data(q, op, node);
    if (!op_instant(o->kind))
      return o;
  }
  return NULL;
}

/* Something is under way: statements sent or staged, or a sync point not
 * yet answered. */
static inline int conn_on_wire(const struct conn *conn) {
  return !queue_empty(&conn->wire) || conn->nstaged > 0 || conn->nsyncs > 0 || conn->synced != NULL;
}

/* (Re)start the connection's timer at the earliest deadline on its wire
 * (op.h), or stop it. */
void conn_arm_timeout(struct conn *conn);

/* Cancels that could not go out (another under way, or not safe while
 * something was on the wire) are tried again now. */
void conn_retry_cancels(struct conn *conn);

/* Take o, staged, off conn: it will not be sent. */
void conn_unstage(struct conn *conn, op *o);

/* o (on conn's wire, staged, or not yet sent) may be cancelled on the
 * server from now on: counted for the pipelining rules. */
void conn_mark_signalable(struct conn *conn, op *o);

/* Re-arm the poll after a state change: readable always, writable while
 * output is pending; keeps the loop alive only while work is under way.
 * Returns 0 or -1. */
int conn_poll_update(struct conn *conn);

/* Stop polling and close the libpq connection now; the struct goes to
 * pool->spare once its handles are closed.  The caller has already unlinked it and dealt with
 * its operations. */
void conn_close(struct conn *conn);

/* A held connection that died: close libpq and the poll, keep the struct
 * until release. */
void conn_shut(struct conn *conn);

#endif
