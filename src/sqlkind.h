/* What a statement may do, as far as its text tells: whether it may share
 * a read-only batch with other requests' reads, needs a sync point of its
 * own, or a connection of its own.  Pure: no pool, no server. */
#ifndef PGTAG_SQLKIND_H
#define PGTAG_SQLKIND_H

#include <stdint.h>

typedef enum {
  SQL_READ,     /* a plain read: may share a read-only batch */
  SQL_WRITE,    /* may write, lock or have an effect: a sync point of its own */
  SQL_EXCLUSIVE /* changes transaction or session state: a connection of its
                   own, nothing pipelined with it */
} sql_kind;

/* What sql may do, from its text alone, erring towards SQL_WRITE:
 * SQL_EXCLUSIVE when its first keyword changes transaction or session
 * state (BEGIN, COMMIT, SET, LOCK, ...); SQL_READ for a SELECT, VALUES,
 * TABLE, SHOW or WITH that writes nothing (no INSERT, UPDATE, DELETE or
 * MERGE part, no SELECT INTO), locks no rows (no FOR UPDATE/SHARE) and
 * calls none of the functions known to have effects (nextval, set_config,
 * advisory locks, dblink, ...); SQL_WRITE for everything else.  Words in
 * comments, string literals and quoted identifiers do not count.  A read
 * that writes all the same (a function with effects) is caught at run time
 * by the read-only batch it runs in (pipeline.c). */
sql_kind pgtag__sql_kind_of(const char *sql);

/* Nonzero when sql is a statement SQL's EXECUTE can run once prepared:
 * SELECT, INSERT, UPDATE, DELETE, MERGE, VALUES, TABLE or WITH. */
int pgtag__sql_preparable(const char *sql);

/* Nonzero when sql, without parameters, does the same as one simple
 * query as in the extended protocol: it cannot hold a second statement
 * (no ';' but trailing ones, followed by nothing but whitespace and more
 * of them; a simple query would run a second one, the extended protocol
 * refuses it), and it is not a FETCH (a BINARY cursor's rows come as
 * binary in a simple query; the extended protocol asks for text).  Errs
 * towards 0: a ';' in a literal or a comment counts. */
int pgtag__sql_simple_ok(const char *sql);

/* A statement text's identity for the pool's tables (FNV-1a; never 0). */
uint64_t pgtag__sql_hash(const char *sql);

#endif
