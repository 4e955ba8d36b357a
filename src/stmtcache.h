/* The statement cache of one connection: statement texts prepared on its
 * server process, so that a tagged query goes out as
 *
 *     / * requestId=... * / EXECUTE _pgtag_12('literal', ...)
 *
 * and the server runs a plan it keeps rather than parsing and planning the
 * whole text each time, while the tag stays in the text that
 * pg_stat_activity and the server log show.  A statement is prepared
 * (protocol Parse, untagged) in the same pipeline just ahead of its first
 * use: no round trip of its own. */
#ifndef PGTAG_STMTCACHE_H
#define PGTAG_STMTCACHE_H

#include "tag.h"

#include <libpq-fe.h>
#include <stdint.h>

/* Statements per set: the cache is set-associative, least recently used
 * first out within a set. */
#define STMT_WAYS 8

/* Parameters longer than this in all go the old way: lexing a long
 * literal costs the server more than the plan it saves.  Measured, one
 * value, literal in an EXECUTE against the parameter of an unnamed
 * statement: 0.69x the time at 64 bytes, 0.95x at 4 KB, 1.10x at 8 KB,
 * 1.79x at 64 KB. */
#define STMT_LITERALS_MAX 4096

typedef struct {
  uint64_t hash;   /* of sql; 0: a free slot */
  char *sql;       /* the text prepared, owned; its excerpt follows it */
  char *excerpt;   /* " / * the text * /", in excerpt_enc (stmtcache.c) */
  uint32_t id;     /* names it: _pgtag_<id> */
  uint32_t used;   /* the cache's clock at its last use */
  int excerpt_enc; /* the client encoding the excerpt was cut for */
  uint8_t head_len;
  char head[27]; /* "EXECUTE _pgtag_<id>" */
} stmt_entry;

typedef struct {
  stmt_entry *slots; /* nsets * STMT_WAYS; NULL: the cache is off */
  int nsets;
  uint32_t clock;
  uint32_t next_id;
  tag_buf text;          /* the EXECUTE statement being built */
  char prepare_name[24]; /* the name to prepare, when there is one */
  char dealloc_sql[48];  /* the DEALLOCATE of an evicted one */
} stmt_cache;

/* What to send for one query through the cache. */
typedef struct {
  const char *execute;      /* the EXECUTE statement, untagged */
  const char *prepare_name; /* non-NULL: prepare the text under this name first */
  const char *dealloc;      /* non-NULL: send this DEALLOCATE first */
  uint32_t id;              /* the statement's id, for what its results say */
} stmt_plan;

/* A cache of about size statements (rounded up to whole sets); 0 = off.
 * Returns 0, or -1 when out of memory (the cache is then off). */
int pgtag__stmtcache_init(stmt_cache *c, int size);
void pgtag__stmtcache_free(stmt_cache *c);

/* Forget every statement: the server process lost them (DISCARD ALL,
 * DEALLOCATE ALL), or may have. */
void pgtag__stmtcache_clear(stmt_cache *c);

/* How to send sql (whose hash is hash) with these text parameters through
 * the cache: 0 with *plan filled (valid until the next call), or -1 when it
 * must go the old way: the cache is off, the server does not have
 * standard_conforming_strings on, the text is not a statement that can be
 * prepared, the parameters are too long, one is not valid in the client
 * encoding, or one has a backslash and the query is not settled (something
 * ahead of it on the wire could change the setting before libpq sees it).
 * Values are quoted with PQescapeStringConn: quotes doubled, nothing else
 * interpreted; NULL is NULL. */
int pgtag__stmtcache_plan(stmt_cache *c, PGconn *pg, uint64_t hash, const char *sql, int nparams,
                          const char *const *values, int settled, stmt_plan *plan);

/* Statement id (of hash) is not, or no longer, prepared: forget it. */
void pgtag__stmtcache_forget(stmt_cache *c, uint64_t hash, uint32_t id);

#endif
