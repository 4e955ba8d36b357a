/* Operations.  pgtag__op_finish is where the request context comes back: whatever
 * path ended the operation, its callback runs with the context that was
 * current when it was submitted, and that context's reference is dropped
 * exactly once, afterwards. */
#include "op.h"

#include "log.h"
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Op records come from per-pool caches, so that a steady stream of
 * queries allocates nothing.  Two sizes: an op with up to about 80 bytes
 * of copied arguments (a waiting query's SQL and parameters; the size also
 * bounds a waiting request's memory), and one with up to about 350; bigger
 * ones are allocated to measure and freed.  The sizes fill malloc chunks
 * exactly. */
static const uint32_t record_size[OP_SIZE_CLASSES] = {248, 504};
#define OP_CACHE_MAX 1024

_Static_assert(sizeof(op) <= 248 - 80, "op records leave room for arguments");

static int size_class(size_t need) {
  for (int c = 0; c < OP_SIZE_CLASSES; c++)
    if (need <= record_size[c])
      return c;
  return -1;
}

static op *op_alloc(pgtag_pool *pool, size_t need) {
  op *o;
  int c = size_class(need);
  uint32_t size = c >= 0 ? record_size[c] : (uint32_t)need;
  if (c >= 0 && !queue_empty(&pool->op_cache[c])) {
    o = queue_data(queue_head(&pool->op_cache[c]), op, node);
    queue_remove(&o->node);
    pool->op_cached[c]--;
  } else {
    o = malloc(size);
    if (o == NULL)
      return NULL;
  }
  memset(o, 0, sizeof *o);
  o->size = size;
  return o;
}

static void op_release(op *o) {
  pgtag_pool *pool = o->pool;
  int c = size_class(o->size);
  if (c >= 0 && o->size == record_size[c] && pool->op_cached[c] < OP_CACHE_MAX) {
    queue_insert_head(&pool->op_cache[c], &o->node);
    pool->op_cached[c]++;
  } else {
    free(o);
  }
}

void pgtag__op_cache_free(pgtag_pool *pool) {
  for (int c = 0; c < OP_SIZE_CLASSES; c++) {
    while (!queue_empty(&pool->op_cache[c])) {
      op *o = queue_data(queue_head(&pool->op_cache[c]), op, node);
      queue_remove(&o->node);
      free(o);
    }
    pool->op_cached[c] = 0;
  }
}

op *pgtag__op_new(pgtag_pool *pool, op_kind kind, const char *sql, int nparams,
                  const char *const *values, int copy_args) {
  size_t extra = 0;
  if (copy_args && sql != NULL) {
    extra = strlen(sql) + 1 + (size_t)nparams * sizeof(char *);
    for (int i = 0; i < nparams; i++)
      if (values[i] != NULL)
        extra += strlen(values[i]) + 1;
  }
  op *o = op_alloc(pool, sizeof *o + extra);
  if (o == NULL)
    return NULL;
  queue_init(&o->node);
  o->kind = (uint8_t)kind;
  o->pool = pool;
  o->ctx = kind == OP_RESET ? NULL : pgtag_ctx_ref(pgtag_ctx_current());
  if (kind != OP_RESET)
    pool->outstanding++;
  if (kind == OP_ACQUIRE)
    return o;
  o->sql = sql;
  o->nparams = nparams;
  o->values = values;
  if (extra > 0) {
    /* [param pointers][sql][param strings], pointers first for alignment */
    const char **vals = (const char **)(void *)(o + 1);
    char *p = (char *)(vals + nparams);
    size_t n = strlen(sql) + 1;
    memcpy(p, sql, n);
    o->sql = p;
    p += n;
    for (int i = 0; i < nparams; i++) {
      if (values[i] == NULL) {
        vals[i] = NULL;
        continue;
      }
      n = strlen(values[i]) + 1;
      memcpy(p, values[i], n);
      vals[i] = p;
      p += n;
    }
    o->values = nparams > 0 ? vals : NULL;
  }
  return o;
}

void pgtag__op_set_error(op *o, pgtag_errcode code, const char *sqlstate, const char *message) {
  char line[256];
  o->code = (uint8_t)code;
  snprintf(o->sqlstate, sizeof o->sqlstate, "%.5s", sqlstate != NULL ? sqlstate : "");
  free(o->message);
  o->message = NULL; /* the code's name */
  if (message == NULL || message[0] == '\0')
    return;
  pgtag__text_line(line, sizeof line, message);
  o->message = strdup(line); /* errors only: the hot path allocates nothing */
}

int pgtag__op_result_ends_session(const PGresult *res) {
  const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
  return severity != NULL && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0);
}

void pgtag__op_set_result(op *o, PGresult *res, int lost) {
  o->res = res;
  if (res == NULL) {
    pgtag__op_set_error(o, PGTAG_ECONN, NULL, "connection lost before the result");
    return;
  }
  switch (PQresultStatus(res)) {
  case PGRES_FATAL_ERROR: {
    /* The primary message; the detail, hint and position stay in res. */
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    lost |= pgtag__op_result_ends_session(res); /* the server is closing it */
    pgtag__op_set_error(o, lost ? PGTAG_ECONN : PGTAG_ESERVER,
                        PQresultErrorField(res, PG_DIAG_SQLSTATE),
                        primary != NULL ? primary : PQresultErrorMessage(res));
    break;
  }
  case PGRES_COPY_IN:
  case PGRES_COPY_OUT:
  case PGRES_COPY_BOTH:
    PQclear(res); /* not an error result: the callback gets none */
    o->res = NULL;
    pgtag__op_set_error(o, PGTAG_EINVAL, NULL, "COPY is not supported by pgtag");
    break;
  case PGRES_PIPELINE_ABORTED:
    pgtag__op_set_error(o, PGTAG_ECONN, NULL,
                        "skipped by the server: a statement before it in its batch failed");
    break;
  case PGRES_BAD_RESPONSE:
  case PGRES_NONFATAL_ERROR:
    pgtag__op_set_error(o, PGTAG_ECONN, NULL, PQresultErrorMessage(res));
    break;
  default:
    if (lost)
      pgtag__op_set_error(o, PGTAG_ECONN, NULL, "connection lost");
    break;
  }
}

static void op_free(op *o) {
  assert(o->kind != OP_FREED); /* exactly once */
  assert(!queue_linked(&o->node));
  if (o->kind != OP_RESET)
    o->pool->outstanding--;
  if (o->kind == OP_ACQUIRE)
    free(o->frames);
  else
    PQclear(o->res);
  free(o->message);
  pgtag_ctx_unref(o->ctx);
  o->kind = OP_FREED;
  op_release(o);
}

/* A query cancelled on purpose (statement timeout, pgtag_ctx_cancel) ends
 * with that reason, whether the server confirmed the cancel (57014) or the
 * connection had to be given up. */
static void apply_cancel(op *o) {
  char msg[256];
  int confirmed = o->code == PGTAG_ESERVER && strcmp(o->sqlstate, "57014") == 0;
  if (!confirmed && o->code != PGTAG_ECONN)
    return; /* it finished first: its real outcome stands */
  int skipped = o->res != NULL && PQresultStatus(o->res) == PGRES_PIPELINE_ABORTED;
  const char *how = confirmed ? "; cancelled on the server"
                    : skipped ? "; it never ran"
                              : "; the connection was closed";
  if (o->cancel_code == PGTAG_ETIMEDOUT && o->by_deadline) {
    snprintf(msg, sizeof msg, "its request's deadline passed%s", how);
    o->pool->stats.deadlines++;
  } else if (o->cancel_code == PGTAG_ETIMEDOUT) {
    snprintf(msg, sizeof msg, "statement timeout: the query ran longer than %d ms%s", o->timeout_ms,
             how);
    o->pool->stats.statement_timeouts++;
  } else if (o->cancel_code == PGTAG_ECANCELED) {
    snprintf(msg, sizeof msg, "canceled: its request was canceled%s", how);
    o->pool->stats.canceled++;
  } else {
    snprintf(msg, sizeof msg, "%s%s", RECLAIMED_MESSAGE, how);
  }
  pgtag__op_set_error(o, o->cancel_code, confirmed ? "57014" : NULL, msg);
}

void pgtag__op_finish(op *o) {
  assert(o->kind == OP_QUERY || o->kind == OP_ACQUIRE); /* once, and never the pool's own */
  assert(!queue_linked(&o->node));                      /* out of every line */
  if (o->cancel_code != PGTAG_OK)
    apply_cancel(o);
  pgtag_error err = {(pgtag_errcode)o->code, o->sqlstate[0] ? o->sqlstate : NULL,
                     o->message != NULL ? o->message : pgtag_strerror((pgtag_errcode)o->code)};
  const pgtag_error *errp = o->code == PGTAG_OK ? NULL : &err;

  pgtag__stats_op_finished(o);
  pgtag_ctx *previous = pgtag_ctx_enter(o->ctx);
  if (o->kind == OP_QUERY) {
    o->cb.result(o->res, errp, o->arg);
  } else if (o->kind == OP_ACQUIRE) {
    pgtag_conn handle = {NULL, 0};
    if (errp == NULL) {
      handle.impl_ = o->conn;
      handle.gen_ = o->gen;
    }
    o->cb.acquire(handle, errp, o->arg);
  }
  pgtag_ctx_leave(previous);
  op_free(o);
}

void pgtag__op_discard(op *o) { op_free(o); }
