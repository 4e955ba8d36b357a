/* Cancel requests.  PQcancel opens a new connection to the server and
 * blocks until the server has taken the request, so it runs on the libuv
 * thread pool, never on the loop. */
#ifndef PGTAG_CANCEL_H
#define PGTAG_CANCEL_H

#include "internal.h"

#include <stddef.h>

/* Ask the server to cancel what conn is running.  conn->cancel is set until
 * the request has been delivered (or failed); then the pool hears it
 * (pool_events.cancel_done), on the loop.  Returns 0, or -1 if no request could be started. */
int pgtag__cancel_start(struct conn *conn);

/* conn is going away before its cancel request finished: forget it. */
void pgtag__cancel_detach(struct conn *conn);

/* Cancel o, on conn's wire, on the server; it ends with why.  The cancel
 * request goes out when it is safe (pgtag__pipeline_cancel_safe) and no other is
 * under way on conn; until then o's deadline stays 0 and
 * pgtag__conn_retry_cancels brings it back. */
void pgtag__cancel_op(struct conn *conn, op *o, pgtag_errcode why);

/* conn's timer fired: each statement on its wire past its deadline gets
 * its cancel request (its statement timeout, or its request's deadline).
 * Returns 1, why filled, when the connection must be given up instead: the
 * pool's ROLLBACK did not answer within RESET_TIMEOUT_MS, or a cancelled
 * statement did not end within CANCEL_GRACE_MS.  Else 0. */
int pgtag__cancel_expired(struct conn *conn, char *why, size_t len);

#endif
