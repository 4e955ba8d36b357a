/**
 * @file pgtag.h
 *
 * pgtag: an asynchronous PostgreSQL connection pool for libuv programs that
 * knows which request every query belongs to.
 *
 * The application marks the request it is serving with a context
 * (pgtag_ctx, carrying a request ID and optional tags).  pgtag captures the
 * context that is current when a query or an acquire is submitted, makes it
 * current again around that operation's callback on every path (success,
 * server error, lost connection, timeout, pool closing), and sends the SQL
 * to the server as
 *
 *     / * requestId=<id> key=value ... * / <sql>      (without the spaces)
 *
 * so the request shows up in pg_stat_activity, the server log and
 * pg_stat_statements.  Connections never carry a request's context;
 * operations do.
 *
 * Threading: a pool belongs to the thread that runs its uv loop; every pgtag
 * function taking a pool, a connection or a context must be called on that
 * thread.  The "current context" is thread-local.
 *
 * Callbacks: every operation submitted with PGTAG_OK ends in exactly one
 * callback, run from the loop, never from inside the call that submitted it.
 * A call that returns anything else submitted nothing and calls nothing.
 */
#ifndef PGTAG_H
#define PGTAG_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <uv.h>

/* PGTAG_VERSION_MAJOR, _MINOR, _PATCH and PGTAG_VERSION_STRING: the version
 * of this header (generated from the build's one version number). */
#include "pgtag_version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with hidden visibility: only what this header
 * declares is exported from libpgtag.so. */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

/** The version of the library linked at run time, "MAJOR.MINOR.PATCH"
 * (static; never NULL).  It can differ from PGTAG_VERSION_STRING, the
 * header's, only in MINOR and PATCH: the SONAME changes with MAJOR.
 * Thread: any. */
const char *pgtag_version(void);

/* ------------------------------------------------------------------------
 * Compatibility
 *
 * A program built against this header runs with the library of any later
 * minor version of the same major one (the SONAME, libpgtag.so.0, changes
 * only with the major version): no function, field, value or macro it uses
 * is removed or changes meaning, and no struct it allocates changes size.
 *
 * The structs you allocate and pgtag reads or writes (pgtag_pool_config,
 * pgtag_cluster_config, pgtag_query_opts, pgtag_stats,
 * pgtag_request_stats, pgtag_timer, pgtag_work, pgtag_fs) end in
 * reserved_, room for the fields later minor versions add: a new field
 * takes reserved space, so the size of the struct and the offset of every
 * field stay as they are, and a later library never reads or writes past
 * the struct an older program allocated.  Reserved space rather than a size
 * field, as in libuv: pgtag_stats_metrics takes an array of pgtag_stats,
 * whose stride must not change; pgtag_pool_config is embedded in
 * pgtag_cluster_config; and a struct zeroed with {0} or filled with a
 * designated initializer stays valid, with no size to set.  Leave
 * reserved_ as the _init function, or zeroing, left it: pgtag writes only
 * zeros there and reads nothing from it, and a field added later means
 * "as before" when it is zero.
 *
 * What pgtag hands you by pointer (pgtag_error, pgtag_leak) may gain fields
 * at its end.  pgtag_conn (passed by value), pgtag_tag (an array element)
 * and pgtag_histogram (inside pgtag_stats) never change.  A later minor
 * version may add error codes (see PGTAG_ERRNO_MAP), enum values, flags
 * and functions.
 * ------------------------------------------------------------------------ */

/* ------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------ */

/** Every error code, once, in order of value: XX(NAME, value, message,
 * label) for each.  pgtag_errcode, PGTAG_NERRCODES, pgtag_strerror (the
 * message), pgtag_err_name ("PGTAG_" NAME) and the code="label" of the
 * pgtag_errors_total metric all come from this list, so they cannot
 * disagree.  A value is never changed or reused; a later minor version
 * adds codes at the end only (see PGTAG_ERRCODES_MAX).  Expand it with a
 * macro of your own for tables of your own, as libuv's UV_ERRNO_MAP.
 *
 * - PGTAG_OK: success.
 * - PGTAG_EINVAL: a bad argument, or a call on the wrong object state.
 * - PGTAG_ESERVER: the server answered with an error (see
 *   pgtag_error.sqlstate).
 * - PGTAG_ECONN: the connection failed or was lost, or its server stopped
 *   taking writes (a standby, or a demoted or fenced primary: sqlstate
 *   25006, and the pool replaces the connection), or the server refused to
 *   connect for a reason waiting will not fix (a wrong database, role or
 *   password: see pgtag_pool_new).
 * - PGTAG_ETIMEDOUT: no connection became free within acquire_timeout_ms,
 *   or a query ran past its statement timeout or its request's deadline.
 * - PGTAG_ECANCELED: its request was canceled (pgtag_ctx_cancel).
 * - PGTAG_ECLOSED: the pool is closing or closed.
 * - PGTAG_EQUEUEFULL: max_waiting operations already wait for a
 *   connection.
 * - PGTAG_ERECLAIMED: the pool took the connection back from its holder.
 * - PGTAG_ENOMEM: out of memory. */
#define PGTAG_ERRNO_MAP(XX)                                          \
  XX(OK, 0, "success", "ok")                                         \
  XX(EINVAL, 1, "invalid argument", "invalid")                       \
  XX(ESERVER, 2, "server error", "server")                           \
  XX(ECONN, 3, "connection failed or lost", "connection")            \
  XX(ETIMEDOUT, 4, "timed out", "timeout")                           \
  XX(ECANCELED, 5, "canceled", "canceled")                           \
  XX(ECLOSED, 6, "pool closed", "closed")                            \
  XX(EQUEUEFULL, 7, "too many waiting operations", "queue_full")     \
  XX(ERECLAIMED, 8, "connection reclaimed by the pool", "reclaimed") \
  XX(ENOMEM, 9, "out of memory", "no_memory")

/** pgtag_errcode's enumerator for one line of PGTAG_ERRNO_MAP. */
#define PGTAG_ERRCODE_ENUM_(name, value, message, label) PGTAG_##name = value,
/** "+1" for one line of PGTAG_ERRNO_MAP: PGTAG_NERRCODES counts them. */
#define PGTAG_ERRCODE_ONE_(name, value, message, label) +1

/** What an operation or a call ended with: PGTAG_OK, or one of the codes
 * of PGTAG_ERRNO_MAP (which says what each means).  A program built
 * against this header may meet a code added by a later minor version of
 * the library: treat a code it does not know as a failure. */
typedef enum { PGTAG_ERRNO_MAP(PGTAG_ERRCODE_ENUM_) } pgtag_errcode;

/** How many codes this header knows, PGTAG_OK included: the codes are 0 to
 * PGTAG_NERRCODES - 1. */
#define PGTAG_NERRCODES (0 PGTAG_ERRNO_MAP(PGTAG_ERRCODE_ONE_))

/** Room for codes in pgtag_stats.errors_by_code, fixed for the whole 0.x
 * series: codes a later minor version adds (at most PGTAG_ERRCODES_MAX in
 * all) fit in the struct a program built against this header allocates. */
#define PGTAG_ERRCODES_MAX 16

/** What went wrong with an operation.  Owned by pgtag, valid only during the
 * callback it is passed to. */
typedef struct {
  pgtag_errcode code; /**< never PGTAG_OK */
  /** The server's SQLSTATE when the server sent one: always for ESERVER, and
   * for ECONN when the server said why it closed the connection (57P01 for
   * pg_terminate_backend, for instance) or why it refused one (3D000 for a
   * database that does not exist, 28000, 28P01...).  NULL otherwise. */
  const char *sqlstate;
  /** A human-readable message, never NULL, on one line.  For a refused
   * connection, the whole of libpq's message (host and server's words). */
  const char *message;
} pgtag_error;

/** The code's message from PGTAG_ERRNO_MAP ("invalid argument" for
 * PGTAG_EINVAL): static, never NULL.  "unknown error" for a value that is
 * no code of the library linked at run time.
 * Thread: any. */
const char *pgtag_strerror(pgtag_errcode code);

/** The code's name as the C source spells it ("PGTAG_ETIMEDOUT" for
 * PGTAG_ETIMEDOUT): static, never NULL, the same in every version, for
 * logs and tests that must not depend on the wording of messages.
 * "PGTAG_UNKNOWN", which no code will ever be named, for a value that is
 * no code of the library linked at run time.
 * Thread: any. */
const char *pgtag_err_name(pgtag_errcode code);

/* ------------------------------------------------------------------------
 * Request context
 *
 * A context is reference-counted and belongs to one loop thread.  pgtag
 * takes a reference for every operation it captures the context for and
 * drops it exactly once, after that operation's callback has returned.
 * ------------------------------------------------------------------------ */

/** A request's context: its ID, its tags, what it holds and what it did.
 * Opaque; made by pgtag_ctx_new. */
typedef struct pgtag_ctx pgtag_ctx;

/** Longest request ID or tag value kept, in bytes; longer ones are cut. */
#define PGTAG_VALUE_MAX 256
/** Most extra tags one context holds. */
#define PGTAG_TAGS_MAX 16

/** A new context with one reference, owned by the caller.  request_id is
 * copied (cut at PGTAG_VALUE_MAX bytes); NULL or "" generates a random UUID.
 * The ID may hold any bytes: the tag encoder makes it safe.  Returns NULL
 * only when out of memory.
 * Thread: any; the context then belongs to the thread that uses it. */
pgtag_ctx *pgtag_ctx_new(const char *request_id);

/** Set (or, with value NULL, remove) an extra tag such as route, tenant or
 * traceparent.  key: 1 to 32 characters from [A-Za-z0-9_.-]; value: any
 * string, copied, cut at PGTAG_VALUE_MAX bytes.  Operations already
 * submitted pick up the change if they have not been sent yet.
 * Returns PGTAG_EINVAL for a bad key or when PGTAG_TAGS_MAX tags are set,
 * PGTAG_ENOMEM when out of memory.
 * Thread: the context's (its pools' loop thread). */
pgtag_errcode pgtag_ctx_set(pgtag_ctx *ctx, const char *key, const char *value);

/** Set the request's W3C trace context (the traceparent header of
 * https://www.w3.org/TR/trace-context/): validated, and stored as the tag
 * "traceparent", where sqlcommenter readers and pg_tracing look for it.
 * A later version's extra fields are dropped (only version 00's four go
 * into the tag); NULL removes it.  Returns PGTAG_EINVAL (its reason on
 * stderr) for a NULL ctx or an invalid value, which is not stored.
 * Thread: the context's (its pools' loop thread). */
pgtag_errcode pgtag_ctx_set_traceparent(pgtag_ctx *ctx, const char *traceparent);

/** The value of an extra tag, or NULL.  Borrowed: valid until the tag is
 * changed or the context freed.
 * Thread: the context's (its pools' loop thread). */
const char *pgtag_ctx_get(const pgtag_ctx *ctx, const char *key);

/** The request ID, never NULL for a valid context.  Borrowed.
 * Thread: the context's (its pools' loop thread). */
const char *pgtag_ctx_request_id(const pgtag_ctx *ctx);

/** Take a reference; returns ctx (NULL stays NULL).
 * Thread: the context's (its pools' loop thread). */
pgtag_ctx *pgtag_ctx_ref(pgtag_ctx *ctx);

/** Drop a reference; the last one frees the context.  NULL is ignored.
 * Thread: the context's (its pools' loop thread). */
void pgtag_ctx_unref(pgtag_ctx *ctx);

/** The request is over.  Does not drop a reference.  Every connection the
 * request still holds, in any pool, is reported as leaked (see leak
 * detection) once the current callback has returned, so releasing it
 * before the end of this loop iteration still counts as in time.  Dropping
 * the last reference held outside pgtag (pgtag_ctx_unref) while holding
 * connections counts as ending the request: keep a reference for as long
 * as the request runs.  A second call does nothing.
 * Thread: the context's (its pools' loop thread). */
void pgtag_ctx_end(pgtag_ctx *ctx);

/** Nonzero once pgtag_ctx_end was called.
 * Thread: the context's (its pools' loop thread). */
int pgtag_ctx_ended(const pgtag_ctx *ctx);

/** The context current on this thread, or NULL.  Borrowed.
 * Thread: any; each thread has its own current context. */
pgtag_ctx *pgtag_ctx_current(void);

/** Make ctx (may be NULL) current and return the previous one, which the
 * caller hands back to pgtag_ctx_leave.  No reference is taken: the caller
 * keeps ctx alive while it is current.  A context still current when the
 * loop goes back to waiting for events (a pgtag_ctx_leave forgotten, so
 * that the next request's queries would carry this one's ID) is reported
 * by every pool on that loop: a WARN line naming the request and where it
 * was entered (the macro records the site), once per site, counted in
 * pgtag_stats.left_current.
 * Thread: any; each thread has its own current context. */
pgtag_ctx *pgtag_ctx_enter(pgtag_ctx *ctx);

/** What the pgtag_ctx_enter macro calls: the same, with the call site
 * recorded for that report. */
pgtag_ctx *pgtag_ctx_enter_at(pgtag_ctx *ctx, const char *file, int line, const char *func);

#ifndef PGTAG_BUILDING
/** pgtag_ctx_enter, recording where it was called. */
#define pgtag_ctx_enter(ctx) pgtag_ctx_enter_at((ctx), __FILE__, __LINE__, __func__)
#endif

/** Restore the context that pgtag_ctx_enter returned.
 * Thread: any; each thread has its own current context. */
void pgtag_ctx_leave(pgtag_ctx *previous);

/** fn(arg) with ctx current, then the previous context restored.
 * Thread: any; each thread has its own current context. */
void pgtag_ctx_run(pgtag_ctx *ctx, void (*fn)(void *arg), void *arg);

/** Give the request a deadline timeout_ms from now; 0 clears it.  Every
 * operation of the request, in every pool, is bounded by the time the
 * request has left:
 *   - one submitted after the deadline fails at once, through its callback
 *     (from the loop), with PGTAG_ETIMEDOUT, and is never sent;
 *   - one waiting for a connection fails with PGTAG_ETIMEDOUT at the
 *     deadline (whichever comes first of that and acquire_timeout_ms);
 *   - a query running on the server is cancelled there at the deadline
 *     (whichever comes first of that and its statement timeout) and fails
 *     with PGTAG_ETIMEDOUT, as on a statement timeout, in the request's
 *     context;
 *   - a query pipelined behind another request's statement, or queued on
 *     a held connection behind one of the request's own, fails so when its
 *     turn comes (the pipelining rules keep that wait short: see
 *     pipeline_fast_ms).
 * A held connection stays held: its query is cancelled, and the holder
 * releases it as usual (a transaction it had open is rolled back then).
 * Setting a new deadline replaces the old one, for operations already
 * under way too.  Returns PGTAG_EINVAL for a NULL ctx.
 * Thread: the context's (its pools' loop thread). */
pgtag_errcode pgtag_ctx_set_deadline(pgtag_ctx *ctx, uint64_t timeout_ms);

/** Milliseconds the request has left before its deadline: 0 once it has
 * passed, -1 when it has none (or ctx is NULL).  For budgets of your own
 * (a call to another service, say).
 * Thread: the context's (its pools' loop thread). */
int64_t pgtag_ctx_time_left_ms(const pgtag_ctx *ctx);

/** What one request did in the database, across all pools. */
typedef struct {
  uint64_t queries;      /**< queries completed, any outcome */
  uint64_t errors;       /**< of those, the ones that failed */
  uint64_t db_time_us;   /**< summed, each its own time: from when the server
                            could start it (sent, and the statement ahead of
                            it on the connection done) to its result */
  uint64_t slowest_us;   /**< the slowest query, its own time */
  char slowest_sql[201]; /**< the slowest one's text, without the tag, cut
                            at 200 bytes; "" when none ran */
  uint64_t reserved_[8]; /**< pgtag's: room for later minor versions' fields
                            (see Compatibility); zero */
} pgtag_request_stats;

/** Copy ctx's statistics into out (zeros for NULL ctx).
 * Thread: the context's (its pools' loop thread). */
void pgtag_ctx_stats(const pgtag_ctx *ctx, pgtag_request_stats *out);

/* ------------------------------------------------------------------------
 * The request's context across libuv's own asynchronous operations
 *
 * libuv runs every callback with no context current: a request that waits
 * on a timer, hands work to the thread pool or reads a file would come
 * back without its context, and its next query would go out untagged.
 * These wrappers capture the context current when the operation starts
 * (one reference), make it current again around its callbacks, and drop
 * the reference after the last one.  You allocate them and keep them alive
 * until then; data, and the libuv handle's or request's own data field,
 * are yours; the fields ending in _ are pgtag's.
 * ------------------------------------------------------------------------ */

/** A uv_timer_t whose callback runs in the context current at start. */
typedef struct pgtag_timer_s pgtag_timer;
/** Receives the timer, with its context current. */
typedef void (*pgtag_timer_cb)(pgtag_timer *timer);
struct pgtag_timer_s {
  uv_timer_t handle;                   /**< the libuv handle */
  void *data;                          /**< yours */
  pgtag_ctx *ctx_;                     /**< pgtag's */
  pgtag_timer_cb cb_;                  /**< pgtag's */
  void (*closed_)(pgtag_timer *timer); /**< pgtag's */
  void *reserved_[4]; /**< pgtag's: room for later minor versions (see Compatibility) */
};

/** uv_timer_init.  Returns 0 or a libuv error code.
 * Thread: the one that runs loop. */
int pgtag_timer_init(uv_loop_t *loop, pgtag_timer *timer);

/** uv_timer_start, capturing the context current now (replacing the one
 * of an earlier start): cb runs with it current.  A one-shot timer lets
 * the context go after its callback (unless the callback started it
 * again); a repeating one keeps it until pgtag_timer_stop or
 * pgtag_timer_close.  Returns 0 or a libuv error code (UV_EINVAL for a
 * NULL timer or cb; nothing is captured then).
 * Thread: the timer's loop thread. */
int pgtag_timer_start(pgtag_timer *timer, pgtag_timer_cb cb, uint64_t timeout, uint64_t repeat);

/** uv_timer_stop, and the context is let go.  Returns 0.
 * Thread: the timer's loop thread. */
int pgtag_timer_stop(pgtag_timer *timer);

/** Stop the timer, let its context go and close the handle; closed (may be
 * NULL) runs once libuv has closed it, when the memory may be freed.
 * Thread: the timer's loop thread. */
void pgtag_timer_close(pgtag_timer *timer, void (*closed)(pgtag_timer *timer));

/** Work for libuv's thread pool that runs in the context current when it
 * was queued. */
typedef struct pgtag_work_s pgtag_work;
/** Runs on a thread-pool thread, with the context current there. */
typedef void (*pgtag_work_cb)(pgtag_work *work);
/** Runs on the loop thread afterwards, with the context current; status as
 * libuv's (UV_ECANCELED if uv_cancel took it back). */
typedef void (*pgtag_after_work_cb)(pgtag_work *work, int status);
struct pgtag_work_s {
  uv_work_t req;                 /**< the libuv request */
  void *data;                    /**< yours */
  pgtag_ctx *ctx_;               /**< pgtag's */
  pgtag_work_cb work_cb_;        /**< pgtag's */
  pgtag_after_work_cb after_cb_; /**< pgtag's */
  void *reserved_[4];            /**< pgtag's: room for later minor versions (see Compatibility) */
};

/** uv_queue_work, capturing the current context: work_cb runs on a thread
 * of the pool with it current (on that thread: read the context, its ID
 * and tags, but do not change it, and do not change it on the loop thread
 * either until after_cb), then after_cb (may be NULL) on the loop thread
 * with it current, after which it is let go.  Returns 0 or a libuv error
 * code (UV_EINVAL for a NULL argument or work_cb; nothing is captured or
 * called then).
 * Thread: the one that runs loop. */
int pgtag_queue_work(uv_loop_t *loop, pgtag_work *work, pgtag_work_cb work_cb,
                     pgtag_after_work_cb after_cb);

/** A uv_fs_t request whose callback runs in the context current when it
 * was made. */
typedef struct pgtag_fs_s pgtag_fs;
/** Receives the request, with its context current; call uv_fs_req_cleanup
 * on req as usual. */
typedef void (*pgtag_fs_cb)(pgtag_fs *fs);
struct pgtag_fs_s {
  uv_fs_t req;        /**< give it to the uv_fs_* call */
  void *data;         /**< yours */
  pgtag_ctx *ctx_;    /**< pgtag's */
  pgtag_fs_cb cb_;    /**< pgtag's */
  void *reserved_[4]; /**< pgtag's: room for later minor versions (see Compatibility) */
};

/** Ready fs for one uv_fs_* call: captures the current context and returns
 * the callback to give that call, as in
 *     uv_fs_open(loop, &fs->req, path, O_RDONLY, 0, pgtag_fs_start(fs, on_open));
 * cb then runs with the context current, after which it is let go.  If the
 * uv_fs_* call fails at once (it returns an error and will not call back),
 * call pgtag_fs_abandon.  Returns NULL for a NULL fs or cb.
 * Thread: the loop thread the uv_fs_* call is made on. */
uv_fs_cb pgtag_fs_start(pgtag_fs *fs, pgtag_fs_cb cb);

/** The uv_fs_* call after pgtag_fs_start failed: let the context go.
 * Thread: the loop thread. */
void pgtag_fs_abandon(pgtag_fs *fs);

/* ------------------------------------------------------------------------
 * Pool
 * ------------------------------------------------------------------------ */

/** A pool of connections to one server, on one uv loop.  Opaque; made by
 * pgtag_pool_new, freed by pgtag_pool_close. */
typedef struct pgtag_pool pgtag_pool;

/** Where and how the tag goes into the SQL. */
typedef enum {
  PGTAG_TAG_PREFIX = 0,   /**< "/ * requestId=abc route=x * / SELECT ..." */
  PGTAG_TAG_SQLCOMMENTER, /**< "SELECT ... / *requestId='abc',route='x'* /" */
  PGTAG_TAG_NONE          /**< send the SQL unchanged */
} pgtag_tag_style;

/** How much a log line matters. */
typedef enum {
  PGTAG_LOG_DEBUG = 0, /**< connection events: each connection established,
                          each failed attempt that repeats the previous
                          one's error */
  PGTAG_LOG_INFO,      /**< pool opened (where it connects: host, port,
                          database, user; never a password) and closed;
                          notices from the server (RAISE NOTICE...) */
  PGTAG_LOG_WARN,      /**< slow queries, leaks, N+1, lost connections; a
                          failed connection attempt once per change of
                          error, not per attempt, and the connection that
                          ends a run of failures */
  PGTAG_LOG_ERROR      /**< misuse of the API, a configuration refused */
} pgtag_log_level;

/** What a pool does with an operation submitted in no request's context, or
 * in the context of a request that has ended (see context_check). */
typedef enum {
  PGTAG_CONTEXT_ALLOW = 0, /**< run it: untagged, or tagged with the ended
                              request's ID */
  PGTAG_CONTEXT_WARN,      /**< run it, and log a WARN line */
  PGTAG_CONTEXT_REJECT     /**< refuse it: PGTAG_EINVAL, and an ERROR line */
} pgtag_context_check;

/** Receives every message pgtag logs, each as one line: no trailing newline,
 * control characters replaced, starting with "request <id>: " when a
 * request's context is current (slow queries, leak and N+1 reports).  msg
 * is valid only during the call. */
typedef void (*pgtag_log_fn)(pgtag_log_level level, const char *msg, void *arg);

/* ------------------------------------------------------------------------
 * Leak detection
 *
 * Every held connection remembers who took it: the request's context, the
 * pgtag_acquire call site, when, and the last SQL sent on it.  A connection
 * still held when its request ends, or (with leak_threshold_ms) held longer
 * than that, is reported once per acquisition; a reported connection that
 * its holder releases later is reported again as returned.
 * ------------------------------------------------------------------------ */

/** Why a held connection is reported. */
typedef enum {
  PGTAG_LEAK_REQUEST_ENDED = 0, /**< its request ended while holding it */
  PGTAG_LEAK_THRESHOLD,         /**< held longer than leak_threshold_ms */
  PGTAG_LEAK_RETURNED           /**< a reported connection was released */
} pgtag_leak_kind;

/** What the pool does with a connection whose request ended holding it. */
typedef enum {
  PGTAG_LEAK_REPORT = 0, /**< report only; the connection stays with its holder */
  PGTAG_LEAK_RECLAIM     /**< at request end, also take it back: cancel the
                            running query on the server, roll back, return
                            the connection to the pool; the holder's handle
                            is dead from then on (ERECLAIMED) */
} pgtag_leak_policy;

/** The transaction state of a held connection, as libpq last saw it. */
typedef enum {
  PGTAG_TX_IDLE = 0, /**< no transaction open */
  PGTAG_TX_ACTIVE,   /**< a query is running */
  PGTAG_TX_INTRANS,  /**< inside a transaction, between statements */
  PGTAG_TX_INERROR,  /**< inside a failed transaction */
  PGTAG_TX_UNKNOWN   /**< the connection was lost */
} pgtag_tx_state;

/** One tag of a context, as a leak report lists them. */
typedef struct {
  const char *key;   /**< the tag's key */
  const char *value; /**< its value */
} pgtag_tag;

/** One report.  Everything is owned by pgtag, valid only during the hook. */
typedef struct {
  pgtag_leak_kind kind;      /**< why it is reported */
  const char *pool_name;     /**< the pool's name */
  const char *request_id;    /**< NULL when acquired outside any request */
  const pgtag_tag *tags;     /**< the context's other tags, sorted by key */
  int ntags;                 /**< how many tags */
  const char *file;          /**< the pgtag_acquire call site */
  int line;                  /**< its line */
  const char *func;          /**< its function */
  uint64_t held_ms;          /**< since the acquire was granted */
  int backend_pid;           /**< the server process it held (0 if unknown) */
  const char *last_sql;      /**< last statement sent on it, without the tag,
                                cut at 200 bytes; "" if none */
  pgtag_tx_state tx_state;   /**< the transaction state left on it */
  int reclaimed;             /**< nonzero: the pool is taking it back now */
  const char *const *frames; /**< leak_backtrace: the acquire's call stack,
                              symbolised, innermost first; else NULL */
  int nframes;               /**< how many frames */
} pgtag_leak;

/** Receives leak reports, from the loop, with the leaking request's context
 * current. */
typedef void (*pgtag_leak_fn)(const pgtag_leak *leak, void *arg);

/** A static name for kind ("request ended", ...); never NULL.
 * Thread: any. */
const char *pgtag_leak_kind_name(pgtag_leak_kind kind);

/** How a pool behaves.  Fill it with pgtag_pool_config_init, then set what
 * you need; pgtag_pool_new copies it. */
typedef struct {
  const char *conninfo;              /**< libpq connection string; copied.  Required.
                                        Its host names (host, also from PGHOST) are
                                        resolved by the pool on libuv's thread pool
                                        (uv_getaddrinfo), never on the loop, again
                                        at every connection attempt, and handed to
                                        libpq as hostaddr, one entry per address in
                                        the resolver's order (as libpq would try
                                        them), with host kept: TLS verification
                                        (sslmode=verify-full), the password file
                                        and messages use the name.  Attempts that
                                        overlap share one lookup per name.  A unix
                                        socket path, an IP address, or a host with
                                        its own hostaddr goes to libpq untouched;
                                        so does a conninfo with service=, whose
                                        hosts libpq alone reads (and resolves,
                                        blocking). */
  const char *name;                  /**< names the pool in logs; default "pgtag" */
  int min_conns;                     /**< kept open at all times; default 0 */
  int max_conns;                     /**< upper bound, >= 1; default 10 */
  int acquire_timeout_ms;            /**< longest wait for a connection; 0 = no limit;
                                        default 10000 */
  int max_waiting;                   /**< most operations waiting for a connection;
                                        0 = no limit; default 10000 */
  int connect_timeout_ms;            /**< longest connection attempt, resolving its
                                        host names included (a name with no answer
                                        by then fails the attempt: "could not
                                        translate host name ... no answer within");
                                        0 = no limit; default 5000 */
  int idle_timeout_ms;               /**< close connections idle this long while more
                                        than min_conns are open; 0 = never;
                                        default 30000 */
  int max_lifetime_ms;               /**< retire connections this old once idle;
                                        0 = never; default 0 */
  int reconnect_base_ms;             /**< after a failed connection attempt, wait
                                        this long before the next, doubling with
                                        each failed round in a row up to
                                        reconnect_max_ms (reconnect_waiting_max_ms
                                        while operations wait); every delay is
                                        drawn at random from its upper half, so
                                        pools that lost the same server do not
                                        retry in step.  After a failed round the
                                        pool makes one attempt at a time until one
                                        succeeds, then opens the connections its
                                        waiting operations need; default 100 */
  int reconnect_max_ms;              /**< default 5000 */
  int reconnect_waiting_max_ms;      /**< while operations wait for a connection,
                                     the longest backoff delay (at least
                                     reconnect_base_ms): a backoff that grew
                                     longer while nobody waited is cut to it when
                                     an operation comes.  Not when the server
                                     refused the pool for a reason waiting will
                                     not fix (see pgtag_pool_new): that backs off
                                     to reconnect_max_ms.  0 = the default, 500
                                     (measured: see "Running at scale" in the
                                     README) */
  int statement_timeout_ms;          /**< longest a query may run, from the moment
                                        the server can start it (sent, or the
                                        statement ahead of it on the connection
                                        done: waiting behind others does not
                                        count); on expiry it is cancelled on the
                                        server and fails with PGTAG_ETIMEDOUT;
                                        0 = no limit; default 0.  Per query:
                                        pgtag_query_opts */
  int pipeline_depth;                /**< once all max_conns connections are busy,
                                        pgtag_query calls of different requests
                                        share them, up to this many statements under
                                        way on each (libpq pipeline mode), and each
                                        still does what it would do on a connection
                                        of its own (see "Pipelining" in the README):
                                        only plain reads share a sync point, in a
                                        read-only transaction, and each is delivered
                                        as its result arrives; every other statement
                                        has a sync point, its own implicit
                                        transaction, to itself; a statement joins a
                                        pipeline only behind statements known to be
                                        fast (pipeline_fast_ms); a cancel or a
                                        timeout never fails another request's
                                        statement.  Statements that change
                                        transaction or session state (BEGIN,
                                        COMMIT, SET, ...) are never pipelined; held
                                        connections stay exclusive.  1 = off;
                                        default 8 (measured: see the README) */
  int pipeline_fast_ms;              /**< with pipeline_depth > 1: a statement
                                        joins a connection's pipeline only behind
                                        statements whose recent runs took at most
                                        this long, from when the server could start
                                        them to their result, and none of which has
                                        been running longer; so no query waits
                                        behind another request's slow one.  1 to
                                        3600000; default 5 */
  int statement_cache;               /**< statements each connection keeps prepared
                                        on its server process, least recently used
                                        first out: a query whose text (tag excluded)
                                        is prepared there goes out as
                                        "<tag> EXECUTE _pgtag_<n>('value', ...)",
                                        the values quoted by pgtag, so the server
                                        runs a plan it keeps instead of parsing and
                                        planning the text, and the tag stays in the
                                        text pg_stat_activity and the log show.  A
                                        new text is prepared just ahead of its
                                        first use, in the same pipeline.  Used for
                                        SELECT, INSERT, UPDATE, DELETE, MERGE,
                                        VALUES, TABLE and WITH statements whose
                                        values come to at most 4 KB and are valid
                                        in the client encoding, with
                                        standard_conforming_strings on; anything
                                        else goes as an unnamed statement, as does
                                        a query with pgtag_query_opts.no_cache.
                                        The server's refusals for the cache's
                                        reasons (the statement was deallocated, its
                                        plan no longer fits after ALTER TABLE) are
                                        recovered from by preparing it again and
                                        running the query once more, since nothing
                                        of it ran; inside a transaction block the
                                        error aborted, the query fails with it.
                                        The names _pgtag_* are pgtag's.  0 = off;
                                        off behind a transaction_pooler; default
                                        256 */
  int tcp_keepalive_s;               /**< TCP connections: probe a silent peer after
                                        this many idle seconds, every s/6 (at least
                                        1 s), give up after 3 probes; also the
                                        libpq tcp_user_timeout.  Settings in
                                        conninfo win.  0 = leave libpq's and the
                                        kernel's defaults; default 60 */
  int transaction_pooler;            /**< nonzero: conninfo points at a transaction
                                        pooler (PgBouncer with pool_mode =
                                        transaction), so a connection's server
                                        process changes from one transaction to the
                                        next: backend pids are reported as unknown
                                        (0) in leak reports, logs and
                                        pgtag_conn_backend_pid instead of the
                                        pooler's made-up ones.  pgtag never keeps
                                        session state on a pooled connection
                                        (unnamed statements, no SET), and cancel
                                        requests go through the pooler, which
                                        forwards them.  Pipelining stays on (tested
                                        with PgBouncer 1.18, see the README);
                                        default 0 */
  pgtag_tag_style tag_style;         /**< default PGTAG_TAG_PREFIX */
  const char *tag_key;               /**< key of the request ID, 1 to 32 characters
                                        from [A-Za-z0-9_.-]; default "requestId" */
  pgtag_log_fn log;                  /**< default: WARN and above to stderr */
  void *log_arg;                     /**< passed to log */
  pgtag_log_level log_level;         /**< least level passed to log; default WARN */
  pgtag_context_check context_check; /**< a query or acquire submitted with
                                no request context current, or in the
                                context of a request that has ended
                                (pgtag_ctx_end): run it (ALLOW, the
                                default), run it and say so (WARN), or
                                refuse it (REJECT: PGTAG_EINVAL).  Both
                                are counted in pgtag_stats whatever the
                                level; the log line, with the call site,
                                comes once per site.  The pool's own
                                queries are not checked. */

  /** Leak detection.  With no on_leak hook, each report is one WARN line
   * through log. */
  int leak_threshold_ms;         /**< report connections held longer; 0 = off;
                                    default 0 */
  pgtag_leak_policy leak_policy; /**< default PGTAG_LEAK_REPORT */
  int leak_backtrace;            /**< nonzero: capture the call stack of every
                                    acquire (backtrace(3); costs a few
                                    microseconds per acquire; link with
                                    -rdynamic for function names) */
  pgtag_leak_fn on_leak;         /**< receives leak reports; NULL: a WARN log line each */
  void *on_leak_arg;             /**< passed to on_leak */

  /** Observability. */
  int slow_query_ms;        /**< log a WARN line for every query slower than
                               this, with its request ID, duration, backend
                               and text; 0 = off; default 0 */
  int n_plus_one_threshold; /**< report once when one request runs the same
                               statement text (tag stripped) more than this
                               many times: the N+1 pattern; 0 = off;
                               default 0 */
  /** Receives N+1 reports, from the loop, with the request's context
   * current; NULL: a WARN log line.  sql is valid during the call. */
  void (*on_n_plus_one)(const char *request_id, const char *sql, uint64_t count, void *arg);
  void *on_n_plus_one_arg; /**< passed to on_n_plus_one */

  /** pgtag's: room for later minor versions' settings (see Compatibility);
   * zero, as pgtag_pool_config_init leaves it. */
  void *reserved_[8];
} pgtag_pool_config;

/** Fill cfg with the defaults above (conninfo NULL).
 * Thread: any. */
void pgtag_pool_config_init(pgtag_pool_config *cfg);

/** Create a pool on loop.  The config is copied; strings too.  Opens
 * min_conns connections in the background.  Returns PGTAG_EINVAL for a NULL
 * argument, an unparsable conninfo, max_conns < 1, min_conns outside
 * [0, max_conns], a negative timeout or limit, a bad tag_key or an unknown
 * enum value, with the reason logged at ERROR; PGTAG_ENOMEM when out of
 * memory.  *out is set only on PGTAG_OK.
 *
 * Connecting happens later, when operations need connections.  A failed
 * attempt is retried with backoff (reconnect_base_ms) while operations wait,
 * up to acquire_timeout_ms, after which they fail with PGTAG_ETIMEDOUT and
 * the last connection error in the message: a server down, starting up or
 * out of connection slots may come back.  A server that refuses with an
 * error waiting will not fix (SQLSTATE class 28: role, password,
 * pg_hba.conf; 3D: database; 42: privileges, options; 22; 0A; 55000: the
 * database takes no connections; or libpq had no password to send) fails
 * the operations waiting for a connection at once, as long as none of the
 * pool's connections is open: PGTAG_ECONN, the server's SQLSTATE (NULL for
 * the missing password) and libpq's whole message.  The pool keeps trying,
 * on demand and with backoff, since a DBA may fix the cause: while it
 * backs off, new operations fail the same way at once; the first one after
 * the backoff waits for the attempt it starts.  A multi-host conninfo
 * counts as refused only when every host refused so.
 * Thread: the one that runs loop; the pool belongs to it. */
pgtag_errcode pgtag_pool_new(uv_loop_t *loop, const pgtag_pool_config *cfg, pgtag_pool **out);

/** Begin closing.  Operations waiting for a connection fail with
 * PGTAG_ECLOSED; queries already sent finish normally; idle connections
 * and connection attempts close at once, and a pending reconnect (its
 * backoff) is cancelled; held ones close when their holder releases them
 * (a release after close has begun is valid), or at once, whatever the
 * leak_policy, when their request has already ended (leaked: nobody will
 * release them).  With nothing in flight, done runs within a loop
 * iteration or two, never after a backoff or a timeout.
 * Once every handle is closed, done(arg) runs (done may be NULL) and the
 * pool is freed as soon as done returns: from the call of done on, the
 * pool must not be used, and any later call with it, pgtag_pool_close
 * included, is a use of freed memory.  The loop then holds no pgtag handle
 * (uv_loop_close succeeds).  A host name lookup that a thread of libuv's
 * pool is running cannot be stopped: closing waits for it (at most the
 * system resolver's own timeout, 10 s with glibc's defaults); lookups not
 * yet running are cancelled.  A second call before done has run is
 * ignored, with a WARN log line; its done is never called.
 * Thread: the pool's loop thread. */
void pgtag_pool_close(pgtag_pool *pool, void (*done)(void *arg), void *arg);

/** A histogram of durations: buckets[i] counts values above bound i-1 and
 * at most pgtag_histogram_bound_us(i); values above the last bound count
 * only in count.  Fixed for the whole 0.x series: pgtag_stats holds
 * histograms. */
#define PGTAG_HISTOGRAM_BUCKETS 16
/** A histogram of durations (see PGTAG_HISTOGRAM_BUCKETS). */
typedef struct {
  uint64_t count;                            /**< values recorded */
  uint64_t sum_us;                           /**< their sum */
  uint64_t buckets[PGTAG_HISTOGRAM_BUCKETS]; /**< not cumulative */
} pgtag_histogram;

/** Upper bound of bucket i in microseconds (100 us ... 10 s); 0 outside
 * [0, PGTAG_HISTOGRAM_BUCKETS).
 * Thread: any. */
uint64_t pgtag_histogram_bound_us(int i);

/** A snapshot of a pool: its connections now, and counters since it was
 * made. */
typedef struct {
  int total;                   /**< open connections: connecting, idle, busy or held */
  int idle;                    /**< in the pool, free */
  int busy;                    /**< running a one-shot query or being reset */
  int held;                    /**< acquired by a request, including ones whose connection
                                  was lost and that wait for their holder's release */
  int connecting;              /**< connection attempt under way */
  int waiting;                 /**< operations waiting for a connection */
  int max_conns;               /**< the pool's max_conns */
  uint64_t acquired;           /**< acquire callbacks given a connection */
  uint64_t queries;            /**< queries completed, any outcome */
  uint64_t errors;             /**< operations ended with an error */
  uint64_t timeouts;           /**< waits ended by acquire_timeout_ms */
  uint64_t statement_timeouts; /**< queries ended by a statement timeout */
  uint64_t deadlines;          /**< operations ended by their request's deadline
                                  (pgtag_ctx_set_deadline) */
  uint64_t no_context;         /**< operations submitted with no request context
                                  current (context_check) */
  uint64_t after_end;          /**< operations submitted in the context of a
                                  request that had ended (context_check) */
  uint64_t left_current;       /**< contexts found current as the loop went back
                                  to waiting (pgtag_ctx_enter) */
  uint64_t canceled;           /**< operations ended by pgtag_ctx_cancel */
  uint64_t connects;           /**< connections established */
  uint64_t connect_failures;   /**< connection attempts that failed */
  uint64_t leaks_ended;        /**< leak reports, by kind */
  uint64_t leaks_threshold;    /**< see leaks_ended */
  uint64_t leaks_returned;     /**< see leaks_ended */
  uint64_t reclaimed;          /**< connections taken back from their holder */
  uint64_t conns_lost;         /**< established connections that died */
  uint64_t reconnects;         /**< connections established to replace them */
  uint64_t reads_retried;      /**< cluster reads that failed on this replica
                                  for a connection reason and were sent once
                                  more elsewhere */
  uint64_t left_recovery;      /**< times this replica was found out of
                                  recovery (promoted) and left out of reads */
  uint64_t errors_by_code[PGTAG_ERRCODES_MAX]; /**< operations ended, by code:
                                                  PGTAG_NERRCODES of them
                                                  used, the rest zero */
  pgtag_histogram acquire_wait;                /**< submit to getting a connection */
  pgtag_histogram query_time;                  /**< each query's own time (see
                                                  pgtag_request_stats.db_time_us) */
  /** pgtag's: room for later minor versions' counters and histograms (see
   * Compatibility); zero. */
  uint64_t reserved_[32];
} pgtag_stats;

/** A snapshot of the pool's state; valid until the pool is freed.
 * Thread: the pool's loop thread (other threads: snapshot under your own lock, see
 * pgtag_stats_metrics). */
void pgtag_pool_stats(const pgtag_pool *pool, pgtag_stats *out);

/** The pool's statistics in the Prometheus text exposition format (0.0.4),
 * every series labelled pool="<name>": connections by state, waiters,
 * counters (queries, errors by code, timeouts, connects, losses, leaks,
 * reclaims) and the two histograms, in seconds.  Writes at most len bytes
 * into buf, always NUL-terminated when len > 0, and returns the length of
 * the whole text (like snprintf: a result >= len means buf was too small);
 * -1 for a NULL pool.
 * Thread: the pool's loop thread (other threads: snapshot under your own lock, see
 * pgtag_stats_metrics). */
int pgtag_pool_metrics(const pgtag_pool *pool, char *buf, size_t len);

/** The same text for n pools at once, from snapshots (stats[i], taken with
 * pgtag_pool_stats, labelled pool="names[i]"): each metric family once,
 * with a sample per pool, as the format requires.  For a server with a
 * pool per loop thread: each thread snapshots its own pool, under the
 * application's lock, and any thread formats them; pgtag touches no pool
 * here.  Same buffer rules and return value as pgtag_pool_metrics; -1 for
 * n < 0, NULL arrays with n > 0, or a NULL buf with len > 0.
 * Thread: any. */
int pgtag_stats_metrics(const pgtag_stats *stats, const char *const *names, int n, char *buf,
                        size_t len);

/* ------------------------------------------------------------------------
 * Queries
 *
 * SQL is sent with the extended protocol (PQsendQueryParams, one statement,
 * text parameters whose types the server infers, text results).  sql and
 * values are copied when needed: the caller may free them once the call
 * returns.  A NULL entry in values is SQL NULL.
 *
 * The result callback gets a PGresult owned by pgtag, freed after the
 * callback returns (never PQclear it).  On success err is NULL and res is
 * the result.  On failure err is set; res is the server's error result when
 * the server sent one (always for PGTAG_ESERVER; for PGTAG_ECONN when it
 * said why it closed; for PGTAG_ETIMEDOUT and PGTAG_ECANCELED when the
 * query was cancelled on the server, SQLSTATE 57014), otherwise NULL.
 * ------------------------------------------------------------------------ */

/** Receives a query's outcome, from the loop, in the context the query was
 * submitted in.  res and err are pgtag's, valid during the call. */
typedef void (*pgtag_result_cb)(PGresult *res, const pgtag_error *err, void *arg);

/** Options for one query; a NULL pointer means all defaults.  Zero it
 * (= {0}, or a designated initializer) before setting fields: every
 * field, those of later versions too, means "the default" at zero. */
typedef struct {
  int timeout_ms;     /**< statement timeout: 0 = the pool's statement_timeout_ms,
                         < 0 = none */
  int no_cache;       /**< nonzero: send it as an unnamed statement, not through
                         the statement cache (statement_cache) */
  void *reserved_[4]; /**< pgtag's: room for later minor versions (see
                         Compatibility); zero */
} pgtag_query_opts;

/** Run sql on any pooled connection, in the current context: a free one; or,
 * once all max_conns are busy, in the pipeline of one of them, where it
 * does what it would do on a connection of its own (see pipeline_depth);
 * else it waits (first in, first out with acquires).
 * Returns PGTAG_EINVAL (NULL pool, sql or cb; nparams < 0; values NULL with
 * nparams > 0; called off the loop thread), PGTAG_ECLOSED (pool closing),
 * PGTAG_EQUEUEFULL (max_waiting reached) or PGTAG_ENOMEM.
 * Thread: the pool's loop thread. */
pgtag_errcode pgtag_query(pgtag_pool *pool, const char *sql, int nparams, const char *const *values,
                          pgtag_result_cb cb, void *arg);

/** pgtag_query with options (opts may be NULL).
 * Thread: the pool's loop thread. */
pgtag_errcode pgtag_query_ex(pgtag_pool *pool, const char *sql, int nparams,
                             const char *const *values, const pgtag_query_opts *opts,
                             pgtag_result_cb cb, void *arg);

/** What the pgtag_query and pgtag_query_ex macros call: the same, with the
 * call site given, which reports name (context_check, and the reason of a
 * PGTAG_EINVAL).  The functions of those names are the same without a
 * site, for callers that cannot use the macros.
 * Thread: the pool's loop thread. */
pgtag_errcode pgtag_query_at(pgtag_pool *pool, const char *sql, int nparams,
                             const char *const *values, const pgtag_query_opts *opts,
                             pgtag_result_cb cb, void *arg, const char *file, int line,
                             const char *func);

#ifndef PGTAG_BUILDING
/** pgtag_query, recording the call site. */
#define pgtag_query(pool, sql, nparams, values, cb, arg)                                    \
  pgtag_query_at((pool), (sql), (nparams), (values), NULL, (cb), (arg), __FILE__, __LINE__, \
                 __func__)
/** pgtag_query_ex, recording the call site. */
#define pgtag_query_ex(pool, sql, nparams, values, opts, cb, arg)                             \
  pgtag_query_at((pool), (sql), (nparams), (values), (opts), (cb), (arg), __FILE__, __LINE__, \
                 __func__)
#endif

/** Cancel everything the request ctx has under way, in every pool of this
 * thread: operations waiting for a connection, and queries not yet sent
 * (queued on its held connections, or about to go out in a pipeline), fail
 * with PGTAG_ECANCELED (from the loop, never inside this call); queries
 * sent are cancelled on the server (PQcancel, on the libuv thread pool)
 * when their turn comes, and fail with PGTAG_ECANCELED once it confirms,
 * or report their real outcome if they finished first.  A cancel request
 * never fails another request's statement: one that could hit another
 * request's write pipelined on the same connection is not sent, and that
 * query runs to its end.  Connections the request holds stay held.  For a
 * client that went away.
 * Returns how many operations it canceled.
 * Thread: the context's (its pools' loop thread). */
int pgtag_ctx_cancel(pgtag_ctx *ctx);

/* ------------------------------------------------------------------------
 * Held connections: transactions and several statements on one backend
 *
 * A held connection is named by a pgtag_conn: a small value, copied freely,
 * that names one acquisition.  When it is released (or reclaimed, see leak
 * detection below) every copy of it is dead, and pgtag recognises a dead
 * one by its generation number: using it is an error, never a query on a
 * connection that another request holds by now.  Handles stay safe to pass
 * to pgtag for as long as their pool exists.  The fields are pgtag's.
 * ------------------------------------------------------------------------ */

/** A held connection: one acquisition, passed by value. */
typedef struct {
  void *impl_;   /**< pgtag's */
  uint64_t gen_; /**< pgtag's */
} pgtag_conn;

/** On success conn is yours until pgtag_release and err is NULL; on failure
 * conn is a dead handle (all zero) and err says why (ETIMEDOUT, ECLOSED...). */
typedef void (*pgtag_acquire_cb)(pgtag_conn conn, const pgtag_error *err, void *arg);

/** Take a connection for the current request.  The macro records the call
 * site (file, line, function) for leak reports.  Same errors as
 * pgtag_query. */
#define pgtag_acquire(pool, cb, arg) \
  pgtag_acquire_at((pool), (cb), (arg), __FILE__, __LINE__, __func__)

/** What pgtag_acquire calls: the same, with the call site given.
 * Thread: the pool's loop thread. */
pgtag_errcode pgtag_acquire_at(pgtag_pool *pool, pgtag_acquire_cb cb, void *arg, const char *file,
                               int line, const char *func);

/** Run sql on a held connection, in the context current now.  Queries on one
 * connection run one after another in submission order.  If the connection
 * was lost, the callback gets PGTAG_ECONN; if the pool reclaimed it,
 * PGTAG_ERECLAIMED.  Returns PGTAG_EINVAL for bad arguments or a handle that
 * is not held (released already, or never valid).
 * Thread: the pool's loop thread. */
pgtag_errcode pgtag_conn_query(pgtag_conn conn, const char *sql, int nparams,
                               const char *const *values, pgtag_result_cb cb, void *arg);

/** pgtag_conn_query with options (opts may be NULL).
 * Thread: the pool's loop thread. */
pgtag_errcode pgtag_conn_query_ex(pgtag_conn conn, const char *sql, int nparams,
                                  const char *const *values, const pgtag_query_opts *opts,
                                  pgtag_result_cb cb, void *arg);

/** What the pgtag_conn_query and pgtag_conn_query_ex macros call: the same,
 * with the call site given (see pgtag_query_at).
 * Thread: the pool's loop thread. */
pgtag_errcode pgtag_conn_query_at(pgtag_conn conn, const char *sql, int nparams,
                                  const char *const *values, const pgtag_query_opts *opts,
                                  pgtag_result_cb cb, void *arg, const char *file, int line,
                                  const char *func);

#ifndef PGTAG_BUILDING
/** pgtag_conn_query, recording the call site. */
#define pgtag_conn_query(conn, sql, nparams, values, cb, arg)                                    \
  pgtag_conn_query_at((conn), (sql), (nparams), (values), NULL, (cb), (arg), __FILE__, __LINE__, \
                      __func__)
/** pgtag_conn_query_ex, recording the call site. */
#define pgtag_conn_query_ex(conn, sql, nparams, values, opts, cb, arg)                             \
  pgtag_conn_query_at((conn), (sql), (nparams), (values), (opts), (cb), (arg), __FILE__, __LINE__, \
                      __func__)
#endif

/** Nonzero while conn is held: acquired, and neither released nor
 * reclaimed.  A held connection may still have been lost.
 * Thread: the pool's loop thread. */
int pgtag_conn_held(pgtag_conn conn);

/** The server process ID of a held connection; 0 if it is not held or was
 * lost.
 * Thread: the pool's loop thread. */
int pgtag_conn_backend_pid(pgtag_conn conn);

/** Give the connection back.  Queries still queued on it run first and their
 * callbacks fire as usual.  A connection left inside a transaction (open or
 * failed) is rolled back before anyone else gets it; a lost one is replaced.
 * Returns PGTAG_OK; PGTAG_ERECLAIMED when the pool had already taken it back
 * (nothing is done: the late release of a reclaimed connection is
 * harmless); PGTAG_EINVAL, logged, for a handle that is not held (released
 * twice, say) or a call off the loop thread.
 * Thread: the pool's loop thread. */
pgtag_errcode pgtag_release(pgtag_conn conn);

/* ------------------------------------------------------------------------
 * Read replicas
 *
 * A cluster is a primary pool and a pool per replica, on one loop.  Reads
 * marked PGTAG_READ_ONLY go to the healthy replica with the least work
 * outstanding, whose replay lag is within max_replica_lag_ms; everything
 * else, and reads when no replica qualifies, go to the primary.  Once a
 * request has sent a write (or taken a connection) through the cluster,
 * its later reads go to the primary too: it reads its own writes.  Each
 * replica's lag is sampled every lag_check_interval_ms by a query on its
 * own pool, never on the caller's path: the lag is how long the oldest WAL
 * the replica has received but not yet replayed has been waiting, by the
 * cluster's clock (not the time since the last commit it replayed, which
 * a quiet primary inflates).
 * ------------------------------------------------------------------------ */

/** A primary and its read replicas.  Opaque; made by pgtag_cluster_new,
 * freed by pgtag_cluster_close. */
typedef struct pgtag_cluster pgtag_cluster;

/** How a cluster behaves.  Fill it with pgtag_cluster_config_init. */
typedef struct {
  pgtag_pool_config primary;   /**< the primary's pool; every replica pool
                                  gets a copy with its own conninfo and the
                                  name "<name>/replica<i>" */
  const char *const *replicas; /**< the conninfo of each replica; copied */
  int nreplicas;               /**< 0 or more */
  int max_replica_lag_ms;      /**< skip a replica whose replay is further
                                  behind; default 1000 */
  int lag_check_interval_ms;   /**< how often each lag is sampled; a replica
                                  not heard from for 3 intervals is
                                  unhealthy; default 250 */
  void *reserved_[4];          /**< pgtag's: room for later minor versions
                                  (see Compatibility); zero */
} pgtag_cluster_config;

/** pgtag_cluster_query flag: the statement only reads, a replica may run
 * it. */
#define PGTAG_READ_ONLY 1

/** Fill cfg with the defaults above (pgtag_pool_config_init for primary;
 * no replicas).
 * Thread: any. */
void pgtag_cluster_config_init(pgtag_cluster_config *cfg);

/** Create a cluster on loop: the primary pool and a pool per replica, as
 * pgtag_pool_new would.  Returns PGTAG_EINVAL (a NULL argument, a bad pool
 * configuration, nreplicas < 0, a NULL replica conninfo, a lag setting
 * < 1) or PGTAG_ENOMEM; *out is set only on PGTAG_OK.
 * Thread: the one that runs loop. */
pgtag_errcode pgtag_cluster_new(uv_loop_t *loop, const pgtag_cluster_config *cfg,
                                pgtag_cluster **out);

/** pgtag_query on the cluster: with PGTAG_READ_ONLY on a replica when one
 * qualifies and the current request has not written through the cluster;
 * otherwise on the primary (and then, without PGTAG_READ_ONLY, the
 * request counts as having written).  A read that fails on a replica for
 * a connection reason (PGTAG_ECONN: the replica went down or its
 * connection died, not an error the server reported) is sent once more,
 * in the same request's context, to another healthy replica or the
 * primary, and cb hears only how that went; counted in the replica's
 * pgtag_stats.reads_retried.  Same errors as pgtag_query.
 * Thread: the cluster's loop thread. */
pgtag_errcode pgtag_cluster_query(pgtag_cluster *cluster, int flags, const char *sql, int nparams,
                                  const char *const *values, pgtag_result_cb cb, void *arg);

/** pgtag_cluster_query with options (opts may be NULL), as pgtag_query_ex
 * is to pgtag_query: they apply on whichever pool runs the query, the
 * replica's or the primary's (a statement timeout there instead of that
 * pool's statement_timeout_ms, say).
 * Thread: the cluster's loop thread. */
pgtag_errcode pgtag_cluster_query_ex(pgtag_cluster *cluster, int flags, const char *sql,
                                     int nparams, const char *const *values,
                                     const pgtag_query_opts *opts, pgtag_result_cb cb, void *arg);

/** What the pgtag_cluster_query and pgtag_cluster_query_ex macros call:
 * the same, with the call site given (see pgtag_query_at).
 * Thread: the cluster's loop thread. */
pgtag_errcode pgtag_cluster_query_at(pgtag_cluster *cluster, int flags, const char *sql,
                                     int nparams, const char *const *values,
                                     const pgtag_query_opts *opts, pgtag_result_cb cb, void *arg,
                                     const char *file, int line, const char *func);

#ifndef PGTAG_BUILDING
/** pgtag_cluster_query, recording the call site. */
#define pgtag_cluster_query(cluster, flags, sql, nparams, values, cb, arg)                  \
  pgtag_cluster_query_at((cluster), (flags), (sql), (nparams), (values), NULL, (cb), (arg), \
                         __FILE__, __LINE__, __func__)
/** pgtag_cluster_query_ex, recording the call site. */
#define pgtag_cluster_query_ex(cluster, flags, sql, nparams, values, opts, cb, arg)           \
  pgtag_cluster_query_at((cluster), (flags), (sql), (nparams), (values), (opts), (cb), (arg), \
                         __FILE__, __LINE__, __func__)
#endif

/** Take a connection on the primary for the current request (a
 * transaction), which from then on reads its own writes.  The macro
 * records the call site, as pgtag_acquire does.
 * Thread: the cluster's loop thread. */
#define pgtag_cluster_acquire(cluster, cb, arg) \
  pgtag_cluster_acquire_at((cluster), (cb), (arg), __FILE__, __LINE__, __func__)

/** What pgtag_cluster_acquire calls.
 * Thread: the cluster's loop thread. */
pgtag_errcode pgtag_cluster_acquire_at(pgtag_cluster *cluster, pgtag_acquire_cb cb, void *arg,
                                       const char *file, int line, const char *func);

/** Take a connection for the current request: with PGTAG_READ_ONLY on a
 * replica when one qualifies and the request has not written through the
 * cluster (a consistent snapshot for several reads; the request is not
 * counted as a writer, and the server refuses writes on it), otherwise
 * as pgtag_cluster_acquire.  No retry elsewhere: a held connection that
 * fails fails its statements.  Same errors as pgtag_acquire, and
 * PGTAG_EINVAL for unknown flags.
 * Thread: the cluster's loop thread. */
#define pgtag_cluster_acquire_ex(cluster, flags, cb, arg) \
  pgtag_cluster_acquire_ex_at((cluster), (flags), (cb), (arg), __FILE__, __LINE__, __func__)

/** What pgtag_cluster_acquire_ex calls.
 * Thread: the cluster's loop thread. */
pgtag_errcode pgtag_cluster_acquire_ex_at(pgtag_cluster *cluster, int flags, pgtag_acquire_cb cb,
                                          void *arg, const char *file, int line, const char *func);

/** The primary's pool (statistics, metrics; queries sent on it directly
 * are not seen by read-your-writes), or NULL.  Borrowed.
 * Thread: the cluster's loop thread. */
pgtag_pool *pgtag_cluster_primary(pgtag_cluster *cluster);

/** Replica i's pool, or NULL outside [0, nreplicas).  Borrowed.
 * Thread: the cluster's loop thread. */
pgtag_pool *pgtag_cluster_replica(pgtag_cluster *cluster, int i);

/** Replica i's replay lag in milliseconds at its last sample: how long the
 * oldest WAL it has received and not yet replayed has been waiting (0 when
 * it has replayed all it received; up to one lag_check_interval_ms low).
 * -1 when it is not healthy (not heard from, not in recovery, or
 * unreachable) or its lag cannot be told (not streaming; or behind at the
 * cluster's first sample, until it replays what it had then).
 * Thread: the cluster's loop thread. */
int pgtag_cluster_replica_lag_ms(const pgtag_cluster *cluster, int i);

/** Close every pool of the cluster (pgtag_pool_close), then run done(arg)
 * (may be NULL) and free the cluster.  A second call is ignored.
 * Thread: the cluster's loop thread. */
void pgtag_cluster_close(pgtag_cluster *cluster, void (*done)(void *arg), void *arg);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif /* PGTAG_H */
