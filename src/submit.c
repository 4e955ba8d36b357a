/* What the application submits: queries, acquires, queries on a held
 * connection, and releases.  Each call is checked here (its arguments, its
 * thread, a closing pool, the context check), refused with the reason
 * logged (checks.c), and handed to the pool. */
#include "submit.h"

#include "checks.h"
#include "pool.h"

static pgtag_errcode check_query_args(const pgtag_pool *pool, const call_site *site, const char *fn,
                                      const char *sql, int nparams, const char *const *values,
                                      const void *cb) {
  if (sql == NULL)
    return pgtag__refuse(pool, site, fn, "sql is NULL");
  if (cb == NULL)
    return pgtag__refuse(pool, site, fn, "the callback is NULL");
  if (nparams < 0)
    return pgtag__refuse(pool, site, fn, "nparams is negative");
  if (nparams > 0 && values == NULL)
    return pgtag__refuse(pool, site, fn, "values is NULL while nparams is above 0");
  return PGTAG_OK;
}

/* What every operation of the application checks about its pool: fn is
 * refused off the pool's loop thread, while the pool is closing, and by
 * the context check. */
static pgtag_errcode check_submit(pgtag_pool *pool, const call_site *site, const char *fn) {
  if (!pgtag__pool_on_loop_thread(pool))
    return pgtag__refuse(pool, site, fn, "called off the pool's loop thread");
  if (pool->closing)
    return PGTAG_ECLOSED;
  return pgtag__check_context(pool, site, fn);
}

pgtag_errcode pgtag__pool_query(pgtag_pool *pool, const char *sql, int nparams,
                                const char *const *values, const pgtag_query_opts *opts,
                                pgtag_result_cb cb, void *arg, const call_site *site) {
  static const char fn[] = "pgtag_query";
  if (pool == NULL)
    return pgtag__refuse(NULL, site, fn, "the pool is NULL");
  pgtag_errcode rc = check_query_args(pool, site, fn, sql, nparams, values, (const void *)cb);
  if (rc == PGTAG_OK)
    rc = check_submit(pool, site, fn);
  if (rc != PGTAG_OK)
    return rc;
  return pgtag__pool_submit_query(pool, sql, nparams, values, opts, cb, arg);
}

pgtag_errcode(pgtag_query)(pgtag_pool *pool, const char *sql, int nparams,
                           const char *const *values, pgtag_result_cb cb, void *arg) {
  static const call_site site = {NULL, 0, "pgtag_query"};
  return pgtag__pool_query(pool, sql, nparams, values, NULL, cb, arg, &site);
}

pgtag_errcode(pgtag_query_ex)(pgtag_pool *pool, const char *sql, int nparams,
                              const char *const *values, const pgtag_query_opts *opts,
                              pgtag_result_cb cb, void *arg) {
  static const call_site site = {NULL, 0, "pgtag_query_ex"};
  return pgtag__pool_query(pool, sql, nparams, values, opts, cb, arg, &site);
}

pgtag_errcode pgtag_query_at(pgtag_pool *pool, const char *sql, int nparams,
                             const char *const *values, const pgtag_query_opts *opts,
                             pgtag_result_cb cb, void *arg, const char *file, int line,
                             const char *func) {
  const call_site site = {file, line, func};
  return pgtag__pool_query(pool, sql, nparams, values, opts, cb, arg, &site);
}

pgtag_errcode pgtag_acquire_at(pgtag_pool *pool, pgtag_acquire_cb cb, void *arg, const char *file,
                               int line, const char *func) {
  static const char fn[] = "pgtag_acquire";
  const call_site site = {file, line, func};
  if (pool == NULL)
    return pgtag__refuse(NULL, &site, fn, "the pool is NULL");
  if (cb == NULL)
    return pgtag__refuse(pool, &site, fn, "the callback is NULL");
  pgtag_errcode rc = check_submit(pool, &site, fn);
  if (rc != PGTAG_OK)
    return rc;

  return pgtag__pool_submit_acquire(pool, cb, arg, file, line, func, __builtin_return_address(0));
}

/* The handle h names, or NULL when it is dead or was never valid. */
static struct conn *held_conn(pgtag_conn h) {
  struct conn *conn = h.impl_;
  if (conn == NULL || h.gen_ == 0 || conn->gen != h.gen_)
    return NULL;
  return conn;
}

static pgtag_errcode conn_query(pgtag_conn h, const char *sql, int nparams,
                                const char *const *values, const pgtag_query_opts *opts,
                                pgtag_result_cb cb, void *arg, const call_site *site) {
  static const char fn[] = "pgtag_conn_query";
  struct conn *conn = h.impl_;
  if (conn == NULL || h.gen_ == 0)
    return pgtag__refuse(NULL, site, fn,
                         "the connection handle is empty (all zero: from a failed acquire?)");
  pgtag_pool *pool = conn->pool;
  pgtag_errcode rc = check_query_args(pool, site, fn, sql, nparams, values, (const void *)cb);
  if (rc != PGTAG_OK)
    return rc;
  if (!pgtag__pool_on_loop_thread(pool))
    return pgtag__refuse(pool, site, fn, "called off the pool's loop thread");
  if (held_conn(h) == NULL) {
    if (!pgtag__pool_was_reclaimed(pool, h.gen_)) /* released: the caller's bug, said at once */
      return pgtag__refuse(pool, site, fn, "the connection is not held (released already?)");
    return pgtag__pool_fail_reclaimed(pool, cb, arg); /* through cb, from the loop */
  }
  rc = pgtag__check_context(pool, site, fn);
  if (rc != PGTAG_OK)
    return rc;

  return pgtag__pool_submit_held(conn, sql, nparams, values, opts, cb, arg);
}

pgtag_errcode(pgtag_conn_query)(pgtag_conn h, const char *sql, int nparams,
                                const char *const *values, pgtag_result_cb cb, void *arg) {
  static const call_site site = {NULL, 0, "pgtag_conn_query"};
  return conn_query(h, sql, nparams, values, NULL, cb, arg, &site);
}

pgtag_errcode(pgtag_conn_query_ex)(pgtag_conn h, const char *sql, int nparams,
                                   const char *const *values, const pgtag_query_opts *opts,
                                   pgtag_result_cb cb, void *arg) {
  static const call_site site = {NULL, 0, "pgtag_conn_query_ex"};
  return conn_query(h, sql, nparams, values, opts, cb, arg, &site);
}

pgtag_errcode pgtag_conn_query_at(pgtag_conn h, const char *sql, int nparams,
                                  const char *const *values, const pgtag_query_opts *opts,
                                  pgtag_result_cb cb, void *arg, const char *file, int line,
                                  const char *func) {
  const call_site site = {file, line, func};
  return conn_query(h, sql, nparams, values, opts, cb, arg, &site);
}

int pgtag_conn_held(pgtag_conn h) {
  struct conn *conn = held_conn(h);
  return conn != NULL && pgtag__pool_on_loop_thread(conn->pool);
}

int pgtag_conn_backend_pid(pgtag_conn h) {
  struct conn *conn = held_conn(h);
  return conn != NULL ? conn->backend_pid : 0;
}

pgtag_errcode pgtag_release(pgtag_conn h) {
  static const call_site site = {NULL, 0, "pgtag_release"};
  struct conn *conn = h.impl_;
  if (conn == NULL || h.gen_ == 0)
    return pgtag__refuse(NULL, &site, "pgtag_release",
                         "the connection handle is empty (all zero: from a failed acquire?)");
  pgtag_pool *pool = conn->pool;
  if (!pgtag__pool_on_loop_thread(pool))
    return pgtag__refuse(pool, &site, "pgtag_release", "called off the pool's loop thread");
  if (held_conn(h) == NULL) {
    if (pgtag__pool_was_reclaimed(pool, h.gen_))
      return PGTAG_ERECLAIMED;
    return pgtag__refuse(pool, &site, "pgtag_release",
                         "the connection is not held (released twice?)");
  }
  pgtag__pool_release(conn);
  return PGTAG_OK;
}
