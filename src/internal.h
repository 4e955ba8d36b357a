/* The one internal header: the types every part of pgtag shares, and
 * nothing else.  An operation lives on a connection, a connection in a
 * pool, and each file that works on them reads their fields here, so no
 * file has to include the header of a file above it to see a struct.
 * Functions are declared in the header of the file that defines them;
 * this one includes only leaves (pgtag.h, queue.h, tag.h, stmtcache.h).
 * Internal names that leave their file are prefixed pgtag__ (see the
 * headers): libpgtag exports nothing but pgtag_ names. */
#ifndef PGTAG_INTERNAL_H
#define PGTAG_INTERNAL_H

#include "pgtag.h"
#include "queue.h"
#include "stmtcache.h"
#include "tag.h"

#include <assert.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdint.h>
#include <uv.h>

struct conn;
struct cancel;
struct resolver;
struct resolve_attempt;
struct resolved;
struct pipeline_stmt;

/* Where an API call was made: the application's file, line and function
 * (the macros record them); file NULL when not known. */
typedef struct {
  const char *file;
  int line;
  const char *func;
} call_site;

typedef struct {
  char sqlstate[6]; /* the server's, of the last refusal; "" when none */
  int refused;      /* every host refused with an error that waiting will
                       not fix (a wrong database, role or password...) */
  char *message;    /* the whole message as one line, without SQLSTATE
                       tokens and LOCATION lines; NULL when out of memory */
} connect_error;

/* ------------------------------------------------------------------------
 * Operations (op.c)
 * ------------------------------------------------------------------------ */

#define OP_SIZE_CLASSES 2

#define RECLAIMED_MESSAGE "the pool took this connection back: its request ended while holding it"

typedef enum {
  OP_QUERY,       /* pgtag_query or pgtag_conn_query */
  OP_ACQUIRE,     /* pgtag_acquire */
  OP_RESET,       /* the pool's own ROLLBACK on a released connection */
  OP_OPENER,      /* the pool's own statement that makes a batch read-only */
  OP_PREPARE,     /* preparing the opener on a connection */
  OP_FREED = 0xff /* a record given back (op.c): finishing it again is a bug */
} op_kind;

/* Commands a query sent through the statement cache may have ahead of its
 * EXECUTE, in this order. */
#define OP_STEP_DEALLOC 1 /* DEALLOCATE of the statement it evicted */
#define OP_STEP_PREPARE 2 /* preparing its own */

/* The pool's own statements: no callback, no context, not counted. */
static inline int op_internal(int kind) { return kind >= OP_RESET; }

/* The pool's own statements that take the server no time to speak of. */
static inline int op_instant(int kind) { return kind == OP_OPENER || kind == OP_PREPARE; }

typedef struct op {
  queue node; /* in pool->waiters, conn->pending, pool->deferred or the
                 pool's cache of free records */
  pgtag_pool *pool;
  pgtag_ctx *ctx; /* captured at submit, one reference, NULL if none */
  union {
    pgtag_result_cb result;
    pgtag_acquire_cb acquire;
  } cb;
  void *arg;
  uint64_t deadline;        /* uv_now(): waiting, when the wait fails; on the
                               wire, when the pool must act on it (its timeout,
                               a cancel's grace, a cancel not yet sent); 0 =
                               never */
  uint64_t waiting_ns;      /* uv_hrtime() when it began to wait; 0 = never */
  char *message;            /* the error, one line; NULL: the code's name */
  uint8_t kind;             /* op_kind */
  uint8_t code;             /* pgtag_errcode: the outcome */
  uint8_t cancel_code;      /* cancelled on purpose: ETIMEDOUT, ECANCELED... */
  uint8_t resent;           /* times sent again (never run, or hit by a stray
                               cancel: see pipeline.c; refused for the
                               statement cache's reasons: pool.c) */
  uint8_t steps;            /* sent through the statement cache: the commands
                               ahead of its EXECUTE whose results are still to
                               come (OP_STEP_*) */
  unsigned exclusive : 1;   /* changes transaction or session state: never
                               shares a connection */
  unsigned reads : 1;       /* a plain read: may share a read-only batch */
  unsigned cancel_sent : 1; /* a cancel request went out for it */
  unsigned solo : 1;        /* pipelined: gets a sync point of its own */
  unsigned batched : 1;     /* sent in a read-only batch: its result is
                               final when it arrives */
  unsigned unproven : 1;    /* its statement is not known to be fast */
  unsigned signalable : 1;  /* may be cancelled on the server: a timeout, or
                               a cancel requested (conn->signalable) */
  unsigned at_risk : 1;     /* on the wire with a statement a cancel request
                               was sent for: a 57014 may be that cancel's */
  unsigned running : 1;     /* the server can run it now (conn_running) */
  unsigned held : 1;        /* sent with no sync point or flush after it:
                               the server may hold its result back until
                               the next statement's is ready too */
  unsigned uncached : 1;    /* bypasses the statement cache
                               (pgtag_query_opts) */
  unsigned by_deadline : 1; /* its limit, waiting or running, is its
                               request's deadline (pgtag_ctx_set_deadline) */
  char sqlstate[6];
  uint32_t size; /* bytes allocated for it, arguments included */
  union {
    struct { /* OP_QUERY, OP_RESET */
      /* The caller's memory during the submitting call; the op's own copy
       * (behind the struct) once it has to wait. */
      const char *sql;
      const char *const *values;
      PGresult *res;
      uint64_t sent_ns;  /* uv_hrtime() when sent; 0 once accounted for */
      uint64_t start_ns; /* when the server could start it: sent, or the
                            statement ahead of it on the connection done */
      uint64_t chunk_ns; /* its result came with others the server held
                            back together: when the first of them could
                            start (conn.c); 0 otherwise */
      uint64_t hash;     /* of sql (untagged): the pool's statement memory */
      int nparams;
      int timeout_ms;   /* statement timeout once sent; 0 = none */
      uint32_t stmt_id; /* sent through the statement cache: which; 0 = not */
    };
    struct {            /* OP_ACQUIRE */
      const char *file; /* the call site */
      const char *func;
      void **frames;     /* its call stack (leak_backtrace), owned */
      struct conn *conn; /* granted */
      uint64_t gen;      /* the handle it was granted with */
      int line;
      int nframes;
    };
  };
} op;

/* ------------------------------------------------------------------------
 * Holds (leak.c)
 * ------------------------------------------------------------------------ */

#define HOLD_FRAMES_MAX 24

/* One acquisition.  Lives in the connection from grant to release. */
typedef struct {
  pgtag_ctx *owner; /* one reference; NULL when acquired outside a request */
  queue owner_node; /* in owner->held while the handle is live */
  const char *file; /* the acquire's call site (string literals) */
  int line;
  const char *func;
  uint64_t since;  /* uv_now() at grant */
  int backend_pid; /* at grant: still known once the connection is lost */
  void **frames;   /* leak_backtrace: raw return addresses, owned */
  int nframes;
  unsigned delivered : 1; /* the acquire callback has run */
  unsigned check : 1;     /* its request may be over: look next turn */
  unsigned reported_ended : 1;
  unsigned reported_threshold : 1;
} hold;

/* ------------------------------------------------------------------------
 * Connections (conn.c)
 * ------------------------------------------------------------------------ */

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
  int pipelined;            /* may use libpq's pipeline mode (see conn.c) */
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

/* How long the pool's own ROLLBACK may take before the connection is given
 * up, and how long a cancelled query may take to end. */
#define RESET_TIMEOUT_MS 5000
#define CANCEL_GRACE_MS 5000

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

/* A statement went out alone as a simple query, outside pipeline mode
 * (conn.c): nothing else can be sent on the connection until it is done. */
static inline int conn_simple_out(const struct conn *conn) {
  return conn->pg != NULL && !queue_empty(&conn->wire) &&
         PQpipelineStatus(conn->pg) == PQ_PIPELINE_OFF;
}

/* Something is under way: statements sent or staged, or a sync point not
 * yet answered. */
static inline int conn_on_wire(const struct conn *conn) {
  return !queue_empty(&conn->wire) || conn->nstaged > 0 || conn->nsyncs > 0 || conn->synced != NULL;
}

/* ------------------------------------------------------------------------
 * Pools (pool.c)
 * ------------------------------------------------------------------------ */

/* What happens to a connection, told to the pool that owns it.  The files
 * below the pool (conn.c, cancel.c, resolve.c, leak.c) report through this
 * one table instead of calling pool.c by name; pool.c fills it in.  Each
 * runs on the loop. */
typedef struct {
  void (*connected)(struct conn *conn);
  void (*connect_failed)(struct conn *conn, const char *message);
  /* o's result arrived (res: NULL or the result, the pool's from here) */
  void (*result)(struct conn *conn, op *o, PGresult *res);
  /* a sync point arrived with nothing to deliver: conn may be free now */
  void (*synced)(struct conn *conn);
  /* room opened in conn's pipeline: waiting queries may join it */
  void (*room)(struct conn *conn);
  /* the connection is gone; why may live in conn->pg */
  void (*lost)(struct conn *conn, const char *why);
  /* a deadline of a statement on conn's wire passed (op: deadline) */
  void (*timed_out)(struct conn *conn);
  /* conn's cancel request was delivered, or failed (cancel.c) */
  void (*cancel_done)(struct conn *conn);
  /* reads were staged on a connection of pool: send them before the loop
   * blocks */
  void (*staged)(pgtag_pool *pool);
  /* the holder's request is over and the leak policy takes conn back */
  void (*reclaim)(struct conn *conn);
  /* something to do on the next loop turn (leak checks) */
  void (*wake)(pgtag_pool *pool);
  /* operations ended outside the pool's own paths (a wait timed out): a
   * closing pool may be done now */
  void (*settle)(pgtag_pool *pool);
  /* one of the handles counted in pool->handles finished closing; the
   * last may free the pool */
  void (*handle_closed)(pgtag_pool *pool);
} pool_events;

/* Call sites a pool has reported (checks.c). */
#define POOL_REPORTED_SITES 256

struct pgtag_pool {
  uv_loop_t *loop;
  const pool_events *on; /* pool.c's handlers of what happens to its connections */
  pthread_t thread;
  pgtag_pool_config cfg; /* string fields point at the copies below */
  char *conninfo;
  char *name;
  char *tag_key;
  /* PQconnectStartParams arguments: keepalive defaults, then the conninfo */
  const char *conn_keys[8];
  const char *conn_values[8];
  char keepalive_text[4][16];
  queue thread_node; /* in this thread's list of pools (pgtag_ctx_cancel) */

  queue conns;                 /* every connection not yet closed */
  queue spare;                 /* closed connection structs, for reuse (see struct conn) */
  uint64_t last_gen;           /* generation of the last handle granted */
  uint64_t reclaimed_gens[64]; /* recently reclaimed handles, a ring */
  unsigned nreclaimed;
  queue idle; /* CONN_IDLE ones, most recently used first */
  int count[CONN_NSTATES];

  struct pipeline_stmt *stmts; /* what is known of statement texts (pipeline.h) */
  queue waiters;               /* ops waiting for a connection, first in first out */
  int nwaiting;
  int outstanding;        /* queries and acquires whose callback has not run:
                             the load a cluster routes reads by */
  uv_timer_t wait_timer;  /* fires at the first waiter's deadline, or before */
  uint64_t wait_timer_at; /* uv_now() it is set for */
  int ndeadlined;         /* waiters whose limit is their request's deadline */
  uint64_t deadlined_at;  /* the earliest of those, or earlier (waiters.c) */

  queue deferred;                  /* ops whose outcome is known, callback not yet run */
  queue op_cache[OP_SIZE_CLASSES]; /* free op records for reuse (op.c) */
  int op_cached[OP_SIZE_CLASSES];
  uv_idle_t defer_idle;
  int deferring; /* delivering them now */

  uv_timer_t retry_timer; /* connect backoff */
  int connect_failures_in_row;
  int backoff_step;          /* rounds of attempts failed in a row */
  struct resolver *resolver; /* the conninfo's host names; NULL: none */
  int replacements_due;      /* connections lost, not yet replaced */
  char last_connect_error[256];

  uv_timer_t maint_timer;    /* idle timeout, max lifetime, min_conns */
  uv_timer_t leak_timer;     /* the next hold to pass leak_threshold_ms */
  uv_prepare_t sync_prepare; /* closes open pipeline batches each turn */
  int leak_checks;           /* holds marked for a check next turn */

  int closing;
  int handles;         /* pgtag handles open on the loop */
  int handles_closing; /* the pool's own handles were closed */
  void (*close_done)(void *arg);
  void *close_arg;

  pgtag_stats stats;          /* the counters; gauges come from count[] */
  uv_prepare_t check_prepare; /* before the loop waits: pgtag__check_left_current */
  uint64_t reported_sites[POOL_REPORTED_SITES]; /* reported once (checks.c) */

  connect_error connect_err; /* the last failed connection attempt, whole;
                                cleared by a success */
};

/* Every connection struct not yet closed, lost ones included: the pool
 * cannot finish closing while any is left. */
static inline int pool_total_conns(const pgtag_pool *pool) {
  int n = 0;
  for (int s = CONN_CONNECTING; s < CONN_CLOSED; s++)
    n += pool->count[s];
  return n;
}

/* Connections that occupy a server slot: what max_conns and min_conns
 * count.  A lost one waiting for its holder's release occupies none. */
static inline int pool_live_conns(const pgtag_pool *pool) {
  return pool_total_conns(pool) - pool->count[CONN_LOST];
}

/* The first operation of a queue of them (not empty). */
static inline op *op_first(queue *q) { return queue_data(queue_head(q), op, node); }

#endif
