/* Cancel requests.  PQcancel opens a new connection to the server and
 * blocks until the server has taken the request, so it runs on the libuv
 * thread pool, never on the loop. */
#ifndef PGTAG_CANCEL_H
#define PGTAG_CANCEL_H

struct conn;

/* Ask the server to cancel what conn is running.  conn->cancel is set until
 * the request has been delivered (or failed); then pool_on_cancel_done(conn)
 * runs on the loop.  Returns 0, or -1 if no request could be started. */
int cancel_start(struct conn *conn);

/* conn is going away before its cancel request finished: forget it. */
void cancel_detach(struct conn *conn);

#endif
