/* Operations.  op_finish is where the request context comes back: whatever
 * path ended the operation, its callback runs with the context that was
 * current when it was submitted, and that context's reference is dropped
 * exactly once, afterwards. */
#include "op.h"

#include "conn.h"
#include "pool.h"
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

op *op_new(pgtag_pool *pool, op_kind kind, const char *sql, int nparams,
           const char *const *values, int copy_args) {
  size_t extra = 0;
  if (copy_args && sql != NULL) {
    extra = strlen(sql) + 1 + (size_t)nparams * sizeof(char *);
    for (int i = 0; i < nparams; i++)
      if (values[i] != NULL)
        extra += strlen(values[i]) + 1;
  }
  op *o = calloc(1, sizeof *o + extra);
  if (o == NULL)
    return NULL;
  queue_init(&o->node);
  o->kind = kind;
  o->pool = pool;
  o->ctx = kind == OP_RESET ? NULL : pgtag_ctx_ref(pgtag_ctx_current());
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

void op_set_error(op *o, pgtag_errcode code, const char *sqlstate,
                  const char *message) {
  o->code = code;
  snprintf(o->sqlstate, sizeof o->sqlstate, "%.5s", sqlstate != NULL ? sqlstate : "");
  if (message == NULL || message[0] == '\0')
    message = pgtag_strerror(code);
  text_line(o->message, sizeof o->message, message);
}

void op_set_result(op *o, PGresult *res, int lost) {
  o->res = res;
  if (res == NULL) {
    op_set_error(o, PGTAG_ECONN, NULL, "connection lost before the result");
    return;
  }
  switch (PQresultStatus(res)) {
  case PGRES_FATAL_ERROR: {
    /* The primary message; the detail, hint and position stay in res. */
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    op_set_error(o, lost ? PGTAG_ECONN : PGTAG_ESERVER,
                 PQresultErrorField(res, PG_DIAG_SQLSTATE),
                 primary != NULL ? primary : PQresultErrorMessage(res));
    break;
  }
  case PGRES_COPY_IN:
  case PGRES_COPY_OUT:
  case PGRES_COPY_BOTH:
    PQclear(res); /* not an error result: the callback gets none */
    o->res = NULL;
    op_set_error(o, PGTAG_EINVAL, NULL, "COPY is not supported by pgtag");
    break;
  case PGRES_BAD_RESPONSE:
  case PGRES_NONFATAL_ERROR:
    op_set_error(o, PGTAG_ECONN, NULL, PQresultErrorMessage(res));
    break;
  default:
    if (lost)
      op_set_error(o, PGTAG_ECONN, NULL, "connection lost");
    break;
  }
}

static void op_free(op *o) {
  PQclear(o->res);
  free(o->frames);
  pgtag_ctx_unref(o->ctx);
  free(o);
}

/* A query cancelled on purpose (statement timeout, pgtag_ctx_cancel) ends
 * with that reason, whether the server confirmed the cancel (57014) or the
 * connection had to be given up. */
static void apply_cancel(op *o) {
  char msg[sizeof o->message];
  int confirmed = o->code == PGTAG_ESERVER && strcmp(o->sqlstate, "57014") == 0;
  if (!confirmed && o->code != PGTAG_ECONN)
    return; /* it finished first: its real outcome stands */
  const char *how = confirmed ? "; cancelled on the server"
                              : "; the connection was closed";
  if (o->cancel_code == PGTAG_ETIMEDOUT) {
    snprintf(msg, sizeof msg, "statement timeout: the query ran longer than %d ms%s",
             o->timeout_ms, how);
    o->pool->stats.statement_timeouts++;
  } else if (o->cancel_code == PGTAG_ECANCELED) {
    snprintf(msg, sizeof msg, "canceled: its request was canceled%s", how);
    o->pool->stats.canceled++;
  } else {
    snprintf(msg, sizeof msg, "%s%s", RECLAIMED_MESSAGE, how);
  }
  op_set_error(o, o->cancel_code, confirmed ? "57014" : NULL, msg);
}

void op_finish(op *o) {
  if (o->cancel_code != PGTAG_OK)
    apply_cancel(o);
  pgtag_error err = {o->code, o->sqlstate[0] ? o->sqlstate : NULL, o->message};
  const pgtag_error *errp = o->code == PGTAG_OK ? NULL : &err;

  stats_op_finished(o);
  pgtag_ctx *previous = pgtag_ctx_enter(o->ctx);
  if (o->kind == OP_QUERY) {
    o->cb.result(o->res, errp, o->arg);
  } else if (o->kind == OP_ACQUIRE) {
    pgtag_conn handle = {NULL, 0};
    if (errp == NULL) {
      handle.impl_ = o->conn;
      handle.gen_ = o->gen;
      hold_delivered(o->conn, o->gen);
    }
    o->cb.acquire(handle, errp, o->arg);
  }
  pgtag_ctx_leave(previous);
  op_free(o);
}

void op_discard(op *o) { op_free(o); }
