/* The routes, on the pgbench schema.  Every query runs in the request's
 * pgtag context, so each reaches the server tagged with its request ID and
 * each callback runs with that context current. */
#include "service.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Each route's time budget (the request's pgtag deadline); a client's
 * X-Request-Timeout-Ms can only shorten it. */
#define READ_BUDGET_MS 2000
#define WRITE_BUDGET_MS 5000

static int path_is(h2o_iovec_t path, const char *s) {
  return path.len == strlen(s) && memcmp(path.base, s, path.len) == 0;
}

/* "/prefix/<id><suffix>": a positive id of at most 9 digits. */
static int path_id(h2o_iovec_t path, const char *prefix, const char *suffix, long long *id) {
  size_t pl = strlen(prefix), sl = strlen(suffix), i = pl;
  if (path.len <= pl + sl || memcmp(path.base, prefix, pl) != 0 ||
      memcmp(path.base + path.len - sl, suffix, sl) != 0)
    return 0;
  long long v = 0;
  for (; i < path.len - sl; i++) {
    if (path.base[i] < '0' || path.base[i] > '9' || i - pl >= 9)
      return 0;
    v = v * 10 + (path.base[i] - '0');
  }
  *id = v;
  return v > 0;
}

/* 504 when the request's own budget ran out, 503 for a pool or statement
 * timeout, 500 for the rest. */
static void fail(request *r, const pgtag_error *err) {
  request_release(r);
  int status = err->code != PGTAG_ETIMEDOUT ? 500 : pgtag_ctx_time_left_ms(r->ctx) == 0 ? 504 : 503;
  request_reply(r, status,
                json_pack("{s:s,s:s?}", "error", err->message, "sqlstate", err->sqlstate));
}

static void not_found(request *r, const char *what) {
  request_release(r);
  request_reply(r, 404, json_pack("{s:s}", "error", what));
}

static void bad_request(request *r, const char *why) {
  request_reply(r, 400, json_pack("{s:s}", "error", why));
}

static long long int_at(PGresult *res, int row, int col) {
  return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* ---- GET /accounts/{id}: one query ------------------------------------ */

static void on_account(PGresult *res, const pgtag_error *err, void *arg) {
  request *r = arg;
  if (!request_end_op(r))
    return;
  if (err != NULL) {
    fail(r, err);
    return;
  }
  if (PQntuples(res) == 0) {
    not_found(r, "no such account");
    return;
  }
  json_t *body = json_pack("{s:I,s:I,s:I}", "id", int_at(res, 0, 0), "branch", int_at(res, 0, 1),
                           "balance", int_at(res, 0, 2));
  if (r->digest[0] != '\0') /* GET /accounts/{id}/digest */
    json_object_update_missing_new(body, json_pack("{s:s,s:s}", "digest", r->digest, "hashed_for",
                                                   r->hashed_for));
  request_reply(r, 200, body);
}

static void get_account(request *r) {
  char id[24];
  snprintf(id, sizeof id, "%lld", r->id);
  const char *params[] = {id};
  /* A read: a replica may serve it (--replica), unless this request wrote. */
  request_begin_op(r, pgtag_cluster_query(r->w->db, PGTAG_READ_ONLY,
                                          "SELECT aid, bid, abalance FROM pgbench_accounts "
                                          "WHERE aid = $1",
                                          1, params, on_account, r));
}

/* ---- GET /branches/{id}/summary: two queries, the second chained ------- */

static void on_tellers(PGresult *res, const pgtag_error *err, void *arg) {
  request *r = arg;
  if (!request_end_op(r))
    return;
  if (err != NULL) {
    fail(r, err);
    return;
  }
  request_reply(r, 200,
                json_pack("{s:I,s:I,s:I,s:I}", "branch", r->id, "balance", r->bid, "tellers",
                          int_at(res, 0, 0), "tellers_balance", int_at(res, 0, 1)));
}

static void on_branch(PGresult *res, const pgtag_error *err, void *arg) {
  request *r = arg;
  if (!request_end_op(r))
    return;
  if (err != NULL) {
    fail(r, err);
    return;
  }
  if (PQntuples(res) == 0) {
    not_found(r, "no such branch");
    return;
  }
  r->bid = int_at(res, 0, 1); /* the branch's balance */
  /* Submitted from a callback: pgtag made this request's context current
   * again, so this query is tagged with the same request ID. */
  const char *params[] = {PQgetvalue(res, 0, 0)};
  request_begin_op(r, pgtag_cluster_query(r->w->db, PGTAG_READ_ONLY,
                                          "SELECT count(*), coalesce(sum(tbalance), 0) "
                                          "FROM pgbench_tellers WHERE bid = $1",
                                          1, params, on_tellers, r));
}

static void get_branch_summary(request *r) {
  char id[24];
  snprintf(id, sizeof id, "%lld", r->id);
  const char *params[] = {id};
  request_begin_op(r, pgtag_cluster_query(r->w->db, PGTAG_READ_ONLY,
                                          "SELECT bid, bbalance FROM pgbench_branches "
                                          "WHERE bid = $1",
                                          1, params, on_branch, r));
}

/* ---- GET /accounts/{id}/digest: a hop through libuv's thread pool ------ */

/* A keyed hash of the account, slow on purpose: the stand-in for password
 * hashing or image work, which must not run on the loop. */
static void hash_account(pgtag_work *work) {
  request *r = work->data;
  /* pgtag_queue_work made the request's context current on this thread */
  pgtag_ctx *ctx = pgtag_ctx_current();
  snprintf(r->hashed_for, sizeof r->hashed_for, "%s", ctx != NULL ? pgtag_ctx_request_id(ctx) : "");
  unsigned long long h = 0xcbf29ce484222325ULL ^ (unsigned long long)r->id;
  for (int i = 0; i < 200000; i++)
    h = (h ^ (h >> 29) ^ (unsigned long long)i) * 0x100000001b3ULL;
  snprintf(r->digest, sizeof r->digest, "%016llx", h);
}

/* Back on the loop, and in the request's context again: the query is
 * tagged with its ID, with no pgtag_ctx_enter here. */
static void on_hashed(pgtag_work *work, int status) {
  request *r = work->data;
  if (!request_end_op(r))
    return;
  if (status != 0) {
    request_reply(r, 500, json_pack("{s:s}", "error", uv_strerror(status)));
    return;
  }
  char id[24];
  snprintf(id, sizeof id, "%lld", r->id);
  const char *params[] = {id, r->digest};
  request_begin_op(r, pgtag_cluster_query(r->w->db, PGTAG_READ_ONLY,
                                          "SELECT aid, bid, abalance, $2::text "
                                          "FROM pgbench_accounts WHERE aid = $1",
                                          2, params, on_account, r));
}

static void get_account_digest(request *r) {
  r->hop.data = r;
  int rc = pgtag_queue_work(&r->w->loop, &r->hop, hash_account, on_hashed);
  if (rc != 0) {
    request_reply(r, 503, json_pack("{s:s}", "error", uv_strerror(rc)));
    return;
  }
  r->pending++; /* on_hashed ends it */
}

/* ---- POST /transfer: a transaction on a held connection ---------------- */

static void on_statement(PGresult *res, const pgtag_error *err, void *arg) {
  request *r = arg;
  (void)res;
  if (!request_end_op(r))
    return;
  if (err != NULL && !r->failed) {
    r->failed = 1;
    fail(r, err); /* rolled back by the release; later callbacks do nothing */
  }
}

static void on_commit(PGresult *res, const pgtag_error *err, void *arg) {
  request *r = arg;
  if (!request_end_op(r))
    return;
  if (err != NULL) {
    fail(r, err);
    return;
  }
  (void)res;
  request_release(r);
  request_reply(r, 200,
                json_pack("{s:I,s:I,s:I,s:I,s:I}", "from", r->from, "to", r->to, "amount",
                          r->amount, "from_balance", r->balance[0] - r->amount, "to_balance",
                          r->balance[1] + r->amount));
}

static void on_locked(PGresult *res, const pgtag_error *err, void *arg) {
  request *r = arg;
  if (!request_end_op(r))
    return;
  if (err != NULL) {
    fail(r, err);
    return;
  }
  if (PQntuples(res) != 2) {
    not_found(r, "no such account");
    return;
  }
  long long bid = 0;
  for (int i = 0; i < 2; i++) {
    int is_from = int_at(res, i, 0) == r->from;
    r->balance[is_from ? 0 : 1] = int_at(res, i, 2);
    if (is_from)
      bid = int_at(res, i, 1);
  }
  if (r->balance[0] < r->amount) {
    if (r->w->svc->demo_leak) {
      /* The bug this flag demonstrates: an early return that forgets the
       * connection.  pgtag reports it when the request ends. */
      request_forget_conn(r);
      request_reply(r, 409, json_pack("{s:s}", "error", "insufficient funds"));
      return;
    }
    request_release(r);
    request_reply(r, 409, json_pack("{s:s}", "error", "insufficient funds"));
    return;
  }
  char from[24], to[24], amount[24], negative[24], branch[24], note[23];
  snprintf(from, sizeof from, "%lld", r->from);
  snprintf(to, sizeof to, "%lld", r->to);
  snprintf(amount, sizeof amount, "%lld", r->amount);
  snprintf(negative, sizeof negative, "%lld", -r->amount);
  snprintf(branch, sizeof branch, "%lld", bid);
  snprintf(note, sizeof note, "to %lld", r->to);
  const char *debit[] = {amount, from}, *credit[] = {amount, to};
  const char *history[] = {branch, from, negative, note};
  /* Queued on the held connection, run in this order. */
  if (request_begin_op(r, pgtag_conn_query(r->conn,
                                           "UPDATE pgbench_accounts SET abalance = abalance - $1 "
                                           "WHERE aid = $2",
                                           2, debit, on_statement, r)) &&
      request_begin_op(r, pgtag_conn_query(r->conn,
                                           "UPDATE pgbench_accounts SET abalance = abalance + $1 "
                                           "WHERE aid = $2",
                                           2, credit, on_statement, r)) &&
      request_begin_op(r, pgtag_conn_query(r->conn,
                                           "INSERT INTO pgbench_history "
                                           "(tid, bid, aid, delta, mtime, filler) "
                                           "VALUES (0, $1, $2, $3, now(), $4)",
                                           4, history, on_statement, r)))
    request_begin_op(r, pgtag_conn_query(r->conn, "COMMIT", 0, NULL, on_commit, r));
}

static void on_begin(PGresult *res, const pgtag_error *err, void *arg) {
  request *r = arg;
  (void)res;
  if (!request_end_op(r))
    return;
  if (err != NULL) {
    fail(r, err);
    return;
  }
  char from[24], to[24];
  snprintf(from, sizeof from, "%lld", r->from);
  snprintf(to, sizeof to, "%lld", r->to);
  const char *params[] = {from, to};
  /* Both rows locked in one order, so opposite transfers cannot deadlock. */
  request_begin_op(r, pgtag_conn_query(r->conn,
                                       "SELECT aid, bid, abalance FROM pgbench_accounts "
                                       "WHERE aid IN ($1, $2) ORDER BY aid FOR UPDATE",
                                       2, params, on_locked, r));
}

static void on_acquired(pgtag_conn conn, const pgtag_error *err, void *arg) {
  request *r = arg;
  if (!request_end_op(r)) {
    if (err == NULL)
      pgtag_release(conn); /* the client went away while it waited */
    return;
  }
  if (err != NULL) {
    fail(r, err);
    return;
  }
  r->conn = conn;
  request_begin_op(r, pgtag_conn_query(conn, "BEGIN", 0, NULL, on_begin, r));
}

static int positive_int(json_t *v, long long *out) {
  if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > 1000000000)
    return 0;
  *out = json_integer_value(v);
  return 1;
}

static void post_transfer(request *r) {
  h2o_iovec_t body = r->req->entity;
  json_error_t jerr;
  json_t *doc = body.base != NULL ? json_loadb(body.base, body.len, 0, &jerr) : NULL;
  int ok = json_is_object(doc) && positive_int(json_object_get(doc, "from"), &r->from) &&
           positive_int(json_object_get(doc, "to"), &r->to) &&
           positive_int(json_object_get(doc, "amount"), &r->amount) && r->from != r->to;
  json_decref(doc);
  if (!ok) {
    bad_request(r, "expected {\"from\": id, \"to\": id, \"amount\": n}, "
                   "positive integers, from != to");
    return;
  }
  /* A transaction: on the primary, always. */
  request_begin_op(r, pgtag_cluster_acquire(r->w->db, on_acquired, r));
}

/* ---- GET /metrics, GET /healthz ---------------------------------------- */

static void get_metrics(request *r) {
  service *svc = r->w->svc;
  static _Thread_local char text[1 << 16];
  worker_snapshot(r->w); /* this worker's, fresh; the others' are 200 ms old at most */
  uv_mutex_lock(&svc->stats_lock);
  int len = pgtag_stats_metrics(svc->stats, svc->pool_names, svc->npools, text, sizeof text);
  uv_mutex_unlock(&svc->stats_lock);
  if (len < 0 || (size_t)len >= sizeof text) {
    request_reply(r, 500, json_pack("{s:s}", "error", "metrics too long"));
    return;
  }
  request_reply_text(r, 200, "text/plain; version=0.0.4", text, (size_t)len);
}

static void get_healthz(request *r) {
  pgtag_stats st = {0};
  pgtag_pool *primary = pgtag_cluster_primary(r->w->db);
  if (primary != NULL)
    pgtag_pool_stats(primary, &st);
  json_t *replicas = json_array();
  for (int i = 0; primary != NULL && i < r->w->svc->nreplicas; i++)
    json_array_append_new(replicas,
                          json_pack("{s:i}", "lag_ms", pgtag_cluster_replica_lag_ms(r->w->db, i)));
  request_reply(r, primary != NULL ? 200 : 503,
                json_pack("{s:s,s:i,s:i,s:i,s:o}", "status", primary != NULL ? "ok" : "stopping",
                          "worker", r->w->index, "connections", st.total, "waiting", st.waiting,
                          "replicas", replicas));
}

/* The request's time budget: the route's, or less when the client asks
 * for less (X-Request-Timeout-Ms).  Every wait for a connection and every
 * query of the request is bounded by what is left of it; 0 when the
 * header is malformed (the request gets a 400). */
static int set_budget(request *r, long long route_ms) {
  if (r->timeout_ms < 0) {
    bad_request(r, "X-Request-Timeout-Ms: expected milliseconds, 1 to 999999999");
    return 0;
  }
  long long ms = r->timeout_ms > 0 && r->timeout_ms < route_ms ? r->timeout_ms : route_ms;
  pgtag_ctx_set_deadline(r->ctx, (uint64_t)ms);
  return 1;
}

void route(request *r, h2o_iovec_t method, h2o_iovec_t path) {
  int get = h2o_memis(method.base, method.len, H2O_STRLIT("GET"));
  int post = h2o_memis(method.base, method.len, H2O_STRLIT("POST"));
  if (get && path_id(path, "/accounts/", "", &r->id)) {
    pgtag_ctx_set(r->ctx, "route", "GET /accounts/{id}");
    if (set_budget(r, READ_BUDGET_MS))
      get_account(r);
  } else if (get && path_id(path, "/accounts/", "/digest", &r->id)) {
    pgtag_ctx_set(r->ctx, "route", "GET /accounts/{id}/digest");
    if (set_budget(r, READ_BUDGET_MS))
      get_account_digest(r);
  } else if (get && path_id(path, "/branches/", "/summary", &r->id)) {
    pgtag_ctx_set(r->ctx, "route", "GET /branches/{id}/summary");
    if (set_budget(r, READ_BUDGET_MS))
      get_branch_summary(r);
  } else if (post && path_is(path, "/transfer")) {
    pgtag_ctx_set(r->ctx, "route", "POST /transfer");
    if (set_budget(r, WRITE_BUDGET_MS))
      post_transfer(r);
  } else if (get && path_is(path, "/metrics")) {
    get_metrics(r);
  } else if (get && path_is(path, "/healthz")) {
    get_healthz(r);
  } else if (path_id(path, "/accounts/", "", &r->id) ||
             path_id(path, "/accounts/", "/digest", &r->id) ||
             path_id(path, "/branches/", "/summary", &r->id) || path_is(path, "/transfer") ||
             path_is(path, "/metrics") || path_is(path, "/healthz")) {
    request_reply(r, 405, json_pack("{s:s}", "error", "method not allowed"));
  } else {
    request_reply(r, 404, json_pack("{s:s}", "error", "no such route"));
  }
}
