/* One PostgreSQL connection: libpq's non-blocking state machine, polled by
 * a uv_poll_t. */
#ifndef PGTAG_CONN_H
#define PGTAG_CONN_H

#include "internal.h"

/* Start connecting: with the pool's resolver (resolve.h), once its host
 * names are resolved, else at once.  Returns the connection (state
 * CONN_CONNECTING, not yet linked into the pool), or NULL with errbuf
 * filled when the attempt failed at once.  connect_timeout_ms counts from
 * here, resolution included. */
struct conn *pgtag__conn_start(pgtag_pool *pool, char *errbuf, size_t errlen);

/* Send op's query (tagged with op's context) behind whatever is on the
 * wire: a read that may share a batch is staged, to go out with the
 * others of this loop turn (pgtag__conn_flush_staged); anything else goes out now
 * with a sync point of its own.  Returns 0, or -1 when the connection is
 * broken (op untouched, not linked). */
int pgtag__conn_send(struct conn *conn, op *o);

/* Send the staged reads: one alone with its sync point; two or more as a
 * read-only batch (the opener, the reads, one sync point).  Returns 0 or
 * -1 (the connection is broken; the staged reads are on the wire, to fail
 * with it). */
int pgtag__conn_flush_staged(struct conn *conn);

/* Whether the server says it is read-only now: in hot standby, or
 * default_transaction_read_only on (PostgreSQL 14 and later report both
 * as they change). */
int pgtag__conn_server_read_only(const struct conn *conn);

/* For a connection that has sat idle: nonzero if it still looks usable,
 * zero if the server has closed it (or sent it anything but silence that
 * libpq could not make sense of).  One non-blocking recv(MSG_PEEK). */
int pgtag__conn_alive(struct conn *conn);

/* (Re)start the connection's timer at the earliest deadline on its wire
 * (op: deadline), or stop it. */
void pgtag__conn_arm_timeout(struct conn *conn);

/* Cancels that could not go out (another under way, or not safe while
 * something was on the wire) are tried again now. */
void pgtag__conn_retry_cancels(struct conn *conn);

/* Take o, staged, off conn: it will not be sent. */
void pgtag__conn_unstage(struct conn *conn, op *o);

/* o (on conn's wire, staged, or not yet sent) may be cancelled on the
 * server from now on: counted for the pipelining rules. */
void pgtag__conn_mark_signalable(struct conn *conn, op *o);

/* Re-arm the poll after a state change: readable always, writable while
 * output is pending; keeps the loop alive only while work is under way.
 * Returns 0 or -1. */
int pgtag__conn_poll_update(struct conn *conn);

/* Stop polling and close the libpq connection now; the struct goes to
 * pool->spare once its handles are closed.  The caller has already unlinked it and dealt with
 * its operations. */
void pgtag__conn_close(struct conn *conn);

/* A held connection that died: close libpq and the poll, keep the struct
 * until release. */
void pgtag__conn_shut(struct conn *conn);

#endif
