/* Why a connection attempt failed, and whether waiting could fix it.
 *
 * libpq gives no PGresult for a failed connection, so the server's SQLSTATE
 * is read from the error message: conn.c sets PQERRORS_VERBOSE while
 * connecting, which makes libpq write "SEVERITY:  SQLSTATE: message" and a
 * LOCATION line; the message kept for users has neither. */
#ifndef PGTAG_CONNECT_ERROR_H
#define PGTAG_CONNECT_ERROR_H

#include "internal.h"

/* Read libpq's verbose connection error.  needs_password: libpq's
 * PQconnectionNeedsPassword, a refusal of its own (no SQLSTATE). */
void pgtag__connect_error_parse(connect_error *out, const char *pqmsg, int needs_password);

/* Nonzero when sqlstate names a refusal that retrying will not cure: the
 * configuration (conninfo, role, database, privileges, pg_hba.conf) has to
 * change first.  Too many connections, a server starting up or shutting
 * down (53xxx, 57Pxx) and everything else are worth retrying. */
int pgtag__connect_error_permanent(const char *sqlstate);

/* Record a failed attempt as the last connection error (a pool's
 * connect_err), replacing what was there. */
void pgtag__connect_error_note(connect_error *last, const char *pqmsg, int needs_password);

/* A connection was established: forget the last error. */
void pgtag__connect_error_clear(connect_error *last);

#endif
