/* Host names resolved off the loop.
 *
 * libpq resolves a host name with getaddrinfo inside PQconnectStart and
 * PQconnectPoll: a blocking call, ten seconds long when the resolver does
 * not answer, and every request on the loop waits through it.  So the pool
 * resolves the names of its conninfo itself, on libuv's thread pool
 * (uv_getaddrinfo), and hands libpq the addresses as hostaddr, keeping
 * host: libpq still uses the name for TLS verification (sslmode=
 * verify-full), the password file and its messages.
 *
 * Every connection attempt waits for an answer that comes after it began,
 * so a name moved to another server (DNS-based failover) is followed from
 * the next attempt on.  Attempts that overlap share a lookup: a resolver
 * that does not answer holds one thread of libuv's pool per name, not one
 * per attempt. */
#ifndef PGTAG_RESOLVE_H
#define PGTAG_RESOLVE_H

#include "internal.h"

#include <stddef.h>

typedef struct resolver resolver;

/* The host names in conninfo (libpq's environment defaults filled in, as
 * libpq would: PGHOST, PGHOSTADDR, PGPORT).  A unix socket path, an IP
 * address and a host that has its own hostaddr are passed to libpq as they
 * are.  *out is NULL when there is no name to resolve, or conninfo names
 * a service (its hosts are not visible here; libpq resolves them).
 * Returns 0, or -1 when out of memory. */
int pgtag__resolver_new(pgtag_pool *pool, const char *conninfo, resolver **out);

/* No lookup may be under way: each holds a handle of the pool's. */
void pgtag__resolver_free(resolver *r);

/* The pool is closing: lookups not yet running are cancelled, so that
 * closing waits only for one a thread is running. */
void pgtag__resolver_cancel(resolver *r);

/* Look up conn's names, or join the lookups under way; done(conn) follows,
 * from the loop, once each has answered.  Returns 0, or -1 with errbuf
 * filled (conn untouched). */
int pgtag__resolver_join(resolver *r, struct conn *conn, void (*done)(struct conn *conn),
                         char *errbuf, size_t errlen);

/* conn stops waiting (its attempt timed out or was given up).  Safe on a
 * conn that does not wait. */
void pgtag__resolver_leave(struct conn *conn);

/* For a message: the names conn still waits for, quoted, comma-separated. */
void pgtag__resolver_pending(const struct conn *conn, char *buf, size_t len);

/* What libpq gets for one attempt, from the latest answers: host,
 * hostaddr and (one per host when the conninfo has one per host) port
 * lists of the same length, a name with several addresses becoming as many
 * entries, in the resolver's order, as libpq would try them.  A name that
 * could not be resolved is left out, with a line in notes in libpq's words
 * ("could not translate host name ..."). */
typedef struct resolved {
  tag_buf host, hostaddr, port, notes;
  int has_port;
} resolved;

/* Fill out (zeroed by the caller).  Returns how many entries there are (0:
 * no name could be resolved, notes say why), or -1 when out of memory. */
int pgtag__resolver_params(const resolver *r, resolved *out);
void pgtag__resolved_free(resolved *out);

/* libpq's message for a failed attempt, as it would have been had libpq
 * resolved the names: it names a host given by hostaddr by its address
 * alone ("connection to server at \"10.0.0.5\", port ..."), so each
 * quoted address of ours becomes the name and the address, as libpq writes
 * them for a name ("\"db.example\" (10.0.0.5)"); the notes come first.
 * Nothing but the quoted address is looked for, so translated messages
 * work too.  Into out; returns 0, or -1 when out of memory. */
int pgtag__resolved_explain(const resolved *r, const char *pqmsg, tag_buf *out);

#endif
