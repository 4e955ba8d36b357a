/* The pool: connections, waiters, and the hooks conn.c reports to. */
#ifndef PGTAG_POOL_H
#define PGTAG_POOL_H

#include "checks.h"
#include "conn.h"
#include "connect_error.h"
#include "op.h"
#include "pipeline.h"
#include "queue.h"

#include <pthread.h>
#include <stdarg.h>

/* Call sites a pool has reported (checks.c). */
#define POOL_REPORTED_SITES 256

struct pgtag_pool {
  uv_loop_t *loop;
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
  queue spare;                 /* closed connection structs, for reuse (see conn.h) */
  uint64_t last_gen;           /* generation of the last handle granted */
  uint64_t reclaimed_gens[64]; /* recently reclaimed handles, a ring */
  unsigned nreclaimed;
  queue idle; /* CONN_IDLE ones, most recently used first */
  int count[CONN_NSTATES];

  pipeline_stmt *stmts; /* what is known of statement texts (pipeline.h) */
  queue waiters;        /* ops waiting for a connection, first in first out */
  int nwaiting;
  int outstanding;        /* queries and acquires whose callback has not run:
                             the load a cluster routes reads by */
  uv_timer_t wait_timer;  /* fires at the first waiter's deadline, or before */
  uint64_t wait_timer_at; /* uv_now() it is set for */
  int ndeadlined;         /* waiters whose limit is their request's deadline */
  uint64_t deadlined_at;  /* the earliest of those, or earlier (pool.c) */

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

  pgtag_stats stats;                            /* the counters; gauges come from count[] */
  uv_prepare_t check_prepare;                   /* before the loop waits: check_left_current */
  uint64_t reported_sites[POOL_REPORTED_SITES]; /* reported once (checks.c) */

  connect_error connect_err; /* the last failed connection attempt, whole;
                                cleared by a success */
};

/* Logging with the pool's hook; "pgtag[name]: " is prepended by the default
 * hook only.  log_default: stderr, for calls that have no pool, at WARN and
 * above. */
void log_default(pgtag_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void pool_log(const pgtag_pool *pool, pgtag_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copy msg into buf (size len) as one line: whitespace runs, newlines
 * included, become one space; nothing trails.  libpq's messages span lines
 * ("...\n\tThis probably means..."); log lines and callbacks get one. */
void text_line(char *buf, size_t len, const char *msg);

/* "backend 1234" for log lines, or "backend unknown" when the pid is not
 * known (0: behind a transaction pooler, or not connected).  By value, so
 * a call can sit in an argument list: backend_text(pid).s. */
typedef struct {
  char s[24];
} backend_name;
backend_name backend_text(int pid);

/* pgtag_query with its call site: what the public functions and the
 * cluster (its lag probe with site_internal) call. */
pgtag_errcode pool_query(pgtag_pool *pool, const char *sql, int nparams, const char *const *values,
                         const pgtag_query_opts *opts, pgtag_result_cb cb, void *arg,
                         const call_site *site);

/* Hooks from conn.c; each runs from the loop. */
void pool_on_connected(struct conn *conn);
void pool_on_connect_failed(struct conn *conn, const char *message);
void pool_on_query_done(struct conn *conn, op *o, PGresult *res);
void pool_on_conn_lost(struct conn *conn, const char *message);

/* A sync point arrived with nothing to deliver (a batch's reads were
 * delivered as they came): the connection may be free now. */
void pool_on_sync(struct conn *conn);

/* Room opened in conn's pipeline: send waiting queries into it. */
void pool_feed(struct conn *conn);

/* A connection has an open batch: close it before the loop blocks. */
void pool_need_sync(pgtag_pool *pool);

/* Run leak checks (and deferred outcomes) on the next loop turn. */
void pool_wake(pgtag_pool *pool);

/* Take a held connection back from its holder whose request is over. */
void pool_reclaim(struct conn *conn);

/* conn's cancel request was delivered or failed (cancel.h). */
void pool_on_cancel_done(struct conn *conn);

/* The query in flight on conn ran past its timeout (or the pool's ROLLBACK
 * did). */
void pool_on_statement_timeout(struct conn *conn);

/* A handle of the pool's or a connection's finished closing. */
void pool_handle_closed(pgtag_pool *pool);

#endif
