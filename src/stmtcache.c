/* The statement cache of one connection (stmtcache.h). */
#include "stmtcache.h"

#include "sqlkind.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int pgtag__stmtcache_init(stmt_cache *c, int size) {
  memset(c, 0, sizeof *c);
  if (size <= 0)
    return 0;
  c->nsets = (size + STMT_WAYS - 1) / STMT_WAYS;
  c->slots = calloc((size_t)c->nsets * STMT_WAYS, sizeof *c->slots);
  if (c->slots == NULL) {
    c->nsets = 0;
    return -1;
  }
  return 0;
}

static void entry_free(stmt_entry *e) {
  free(e->sql);
  memset(e, 0, sizeof *e);
}

void pgtag__stmtcache_clear(stmt_cache *c) {
  for (int i = 0; c->slots != NULL && i < c->nsets * STMT_WAYS; i++)
    if (c->slots[i].hash != 0)
      entry_free(&c->slots[i]);
}

void pgtag__stmtcache_free(stmt_cache *c) {
  pgtag__stmtcache_clear(c);
  free(c->slots);
  pgtag__tag_buf_free(&c->text);
  memset(c, 0, sizeof *c);
}

static stmt_entry *set_of(const stmt_cache *c, uint64_t hash) {
  return &c->slots[(hash % (uint64_t)c->nsets) * STMT_WAYS];
}

/* The statement's text as a comment after the EXECUTE, so that
 * pg_stat_activity and the server log (which shows no prepared text for an
 * EXECUTE sent in the extended protocol) still say what runs: at most
 * STMT_EXCERPT_MAX bytes, cut between characters of the client encoding,
 * whitespace runs made one space, and the comment's delimiters broken up
 * ("*" "/" becomes "* /"), so the text cannot end the comment or open a
 * nested one.  '*' and '/' are never part of a multibyte character in
 * PostgreSQL's client encodings.  Written into out, which has room for
 * 2 * STMT_EXCERPT_MAX + 8 bytes; returns its length. */
#define STMT_EXCERPT_MAX 200
#define STMT_EXCERPT_ROOM (2 * STMT_EXCERPT_MAX + 8)

static size_t write_excerpt(char *out, const char *sql, int enc) {
  size_t used = 0;
  int space = 0;
  memcpy(out, " /* ", 4);
  out += 4;
  for (const char *p = sql; *p != '\0';) {
    int n = PQmblen(p, enc);
    if (n < 1)
      n = 1;
    if (strnlen(p, (size_t)n) < (size_t)n || used + (size_t)n > STMT_EXCERPT_MAX)
      break;
    if (n == 1 && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
      space = used > 0;
      p++;
      continue;
    }
    if (space)
      out[used++] = ' ';
    space = 0;
    memcpy(out + used, p, (size_t)n);
    used += (size_t)n;
    if (n == 1 && ((p[0] == '*' && p[1] == '/') || (p[0] == '/' && p[1] == '*')))
      out[used++] = ' ';
    p += n;
  }
  memcpy(out + used, " */", 4);
  return used + 7;
}

/* A new entry for sql: its text, then its excerpt, in one allocation. */
static int entry_fill(stmt_entry *e, uint64_t hash, const char *sql, uint32_t id, int enc) {
  size_t len = strlen(sql);
  char *block = malloc(len + 1 + STMT_EXCERPT_ROOM);
  if (block == NULL)
    return -1;
  memcpy(block, sql, len + 1);
  write_excerpt(block + len + 1, sql, enc);
  e->hash = hash;
  e->sql = block;
  e->excerpt = block + len + 1;
  e->excerpt_enc = enc;
  e->id = id;
  e->head_len = (uint8_t)snprintf(e->head, sizeof e->head, "EXECUTE _pgtag_%u", id);
  return 0;
}

/* "EXECUTE _pgtag_<id>('v1', NULL, ...) / * sql * /" into c->text.
 * Returns -1 when it must go the old way. */
static int build_execute(stmt_cache *c, PGconn *pg, stmt_entry *e, int nparams,
                         const char *const *values, int settled) {
  tag_buf *b = &c->text;
  int enc = PQclientEncoding(pg);
  if (e->excerpt_enc != enc) /* SET client_encoding on a held connection */
    write_excerpt(e->excerpt, e->sql, e->excerpt_enc = enc);
  b->len = 0;
  if (pgtag__tag_buf_append(b, e->head, e->head_len) != 0)
    return -1;
  size_t literals = 0;
  for (int i = 0; i < nparams; i++) {
    if (pgtag__tag_buf_append(b, i == 0 ? "(" : ", ", i == 0 ? 1 : 2) != 0)
      return -1;
    if (values[i] == NULL) {
      if (pgtag__tag_buf_append(b, "NULL", 4) != 0)
        return -1;
      continue;
    }
    size_t len = strlen(values[i]);
    literals += len;
    if (literals > STMT_LITERALS_MAX)
      return -1;
    /* Quotes doubled mean the same under either standard_conforming_strings;
     * a backslash does not, and a statement ahead may change the setting
     * before libpq can tell. */
    if (!settled && memchr(values[i], '\\', len) != NULL)
      return -1;
    /* room for the escaped value (at most twice as long) and its quotes */
    if (pgtag__tag_buf_append(b, "'", 1) != 0 || pgtag__tag_buf_reserve(b, 2 * len + 2) != 0)
      return -1;
    int error = 0;
    size_t out = PQescapeStringConn(pg, b->data + b->len, values[i], len, &error);
    if (error)
      return -1; /* not valid in the client encoding: the server says so, the old way */
    b->len += out;
    if (pgtag__tag_buf_append(b, "'", 1) != 0)
      return -1;
  }
  if (nparams > 0 && pgtag__tag_buf_append(b, ")", 1) != 0)
    return -1;
  return pgtag__tag_buf_append(b, e->excerpt, strlen(e->excerpt));
}

int pgtag__stmtcache_plan(stmt_cache *c, PGconn *pg, uint64_t hash, const char *sql, int nparams,
                          const char *const *values, int settled, stmt_plan *plan) {
  if (c->slots == NULL || sql == NULL || !pgtag__sql_preparable(sql))
    return -1;
  /* Quoting is plain doubling only with standard-conforming strings. */
  const char *scs = PQparameterStatus(pg, "standard_conforming_strings");
  if (scs == NULL || strcmp(scs, "on") != 0)
    return -1;
  stmt_entry *set = set_of(c, hash), *e = NULL, *victim = &set[0];
  for (int i = 0; i < STMT_WAYS; i++) {
    stmt_entry *s = &set[i];
    if (s->hash == hash && strcmp(s->sql, sql) == 0) {
      e = s;
      break;
    }
    if (s->hash == 0 || (victim->hash != 0 && s->used < victim->used))
      victim = s;
  }
  plan->prepare_name = NULL;
  plan->dealloc = NULL;
  if (e == NULL) {
    /* Its values must be quotable before anything is evicted for it. */
    stmt_entry fresh;
    memset(&fresh, 0, sizeof fresh);
    if (entry_fill(&fresh, hash, sql, c->next_id + 1, PQclientEncoding(pg)) != 0)
      return -1;
    if (build_execute(c, pg, &fresh, nparams, values, settled) != 0) {
      free(fresh.sql);
      return -1;
    }
    if (victim->hash != 0) {
      snprintf(c->dealloc_sql, sizeof c->dealloc_sql, "DEALLOCATE _pgtag_%u", victim->id);
      plan->dealloc = c->dealloc_sql;
      entry_free(victim);
    }
    *victim = fresh;
    e = victim;
    c->next_id++;
    memcpy(c->prepare_name, e->head + 8, (size_t)e->head_len - 8 + 1); /* "_pgtag_<id>" */
    plan->prepare_name = c->prepare_name;
  } else if (build_execute(c, pg, e, nparams, values, settled) != 0) {
    return -1;
  }
  plan->execute = c->text.data;
  e->used = ++c->clock;
  plan->id = e->id;
  return 0;
}

void pgtag__stmtcache_forget(stmt_cache *c, uint64_t hash, uint32_t id) {
  if (c->slots == NULL)
    return;
  stmt_entry *set = set_of(c, hash);
  for (int i = 0; i < STMT_WAYS; i++)
    if (set[i].hash == hash && set[i].id == id)
      entry_free(&set[i]);
}
