/* The statement classifier: a small SQL tokenizer that sees words, not
 * what is quoted or commented.  It only has to be right in one direction:
 * whatever it calls a read runs in a read-only transaction, where a write
 * fails without effect and is then run again on its own. */
#include "sqlkind.h"

#include <stddef.h>
#include <string.h>
#include <strings.h>

/* First words of statements that change transaction or session state. */
/* clang-format off */
static const char *const exclusive_words[] = {
    "begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release",
    "prepare", "set", "reset", "listen", "unlisten", "discard", "lock", "declare",
    "close", "fetch", "move", "copy", "deallocate", "execute"};
/* clang-format on */

/* First words of statements that may be reads. */
static const char *const read_words[] = {"select", "values", "table", "show", "with"};

/* Words anywhere that make a statement a write: data-modifying parts (a
 * WITH may hold them) and SELECT INTO, which creates a table. */
static const char *const write_words[] = {"insert", "update", "delete", "merge", "into"};

/* Functions with effects a read-only transaction does not stop, or that
 * lock or change state beyond the statement; names, or prefixes with '*'. */
/* clang-format off */
static const char *const effect_functions[] = {
    "nextval",        "setval",         "set_config",    "pg_advisory*",
    "pg_try_advisory*", "dblink*",      "pg_notify",     "lo_*",
    "pg_current_xact_id*", "txid_current*", "pg_terminate_backend", "pg_cancel_backend",
    "pg_reload_conf", "pg_rotate_logfile", "pg_switch_wal", "pg_create_*",
    "pg_drop_*",      "pg_logical_*",   "pg_replication_*", "pg_stat_reset*",
    "pg_promote",     "pg_wal_replay_*", "pg_backup_*",   "pg_file_*",
    "pg_import_system_collations"};
/* clang-format on */

typedef struct {
  const char *p;
  const char *word; /* the last word read */
  size_t len;
} lexer;

static int word_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (unsigned char)c >= 0x80;
}

static int word_char(char c) { return word_start(c) || (c >= '0' && c <= '9') || c == '$'; }

/* Skip a quoted run that starts at p (one past the opening quote); ''
 * (or "") inside is the quote itself; backslash escapes when asked. */
static const char *skip_quoted(const char *p, char quote, int backslash) {
  for (; *p != '\0'; p++) {
    if (backslash && *p == '\\' && p[1] != '\0') {
      p++;
    } else if (*p == quote) {
      if (p[1] != quote)
        return p + 1;
      p++;
    }
  }
  return p;
}

/* $tag$ ... $tag$: p at the first '$'.  Returns NULL if it is not one. */
static const char *skip_dollar(const char *p) {
  const char *q = p + 1;
  while (*q != '\0' && *q != '$' && word_char(*q) && *q != '$')
    q++;
  if (*q != '$')
    return NULL;
  size_t taglen = (size_t)(q - p) + 1;
  for (const char *r = q + 1; *r != '\0'; r++)
    if (*r == '$' && strncmp(r, p, taglen) == 0)
      return r + taglen;
  return q + strlen(q);
}

/* The next word, skipping comments, literals, quoted identifiers and
 * punctuation.  Returns 0 at the end. */
static int next_word(lexer *lx) {
  const char *p = lx->p;
  while (*p != '\0') {
    if (p[0] == '-' && p[1] == '-') {
      while (*p != '\0' && *p != '\n')
        p++;
    } else if (p[0] == '/' && p[1] == '*') { /* comments nest in PostgreSQL */
      int depth = 1;
      p += 2;
      while (*p != '\0' && depth > 0) {
        if (p[0] == '/' && p[1] == '*')
          depth++, p += 2;
        else if (p[0] == '*' && p[1] == '/')
          depth--, p += 2;
        else
          p++;
      }
    } else if (*p == '\'') {
      p = skip_quoted(p + 1, '\'', 0);
    } else if (*p == '"') {
      p = skip_quoted(p + 1, '"', 0);
    } else if ((*p == 'E' || *p == 'e') && p[1] == '\'') {
      p = skip_quoted(p + 2, '\'', 1);
    } else if (*p == '$' && skip_dollar(p) != NULL) {
      p = skip_dollar(p);
    } else if (word_start(*p)) {
      const char *w = p;
      while (word_char(*p))
        p++;
      lx->word = w;
      lx->len = (size_t)(p - w);
      lx->p = p;
      return 1;
    } else {
      p++;
    }
  }
  lx->p = p;
  return 0;
}

static int word_is(const lexer *lx, const char *w) {
  return strlen(w) == lx->len && strncasecmp(lx->word, w, lx->len) == 0;
}

static int word_in(const lexer *lx, const char *const *list, size_t n) {
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(list[i]);
    if (list[i][len - 1] == '*') {
      if (lx->len >= len - 1 && strncasecmp(lx->word, list[i], len - 1) == 0)
        return 1;
    } else if (len == lx->len && strncasecmp(lx->word, list[i], len) == 0) {
      return 1;
    }
  }
  return 0;
}

#define IN(lx, list) word_in((lx), (list), sizeof(list) / sizeof((list)[0]))

/* What PREPARE takes (and so what SQL's EXECUTE runs). */
static const char *const preparable_words[] = {"select", "insert", "update", "delete",
                                               "merge",  "values", "table",  "with"};

int pgtag__sql_preparable(const char *sql) {
  lexer lx = {sql, NULL, 0};
  return sql != NULL && next_word(&lx) && IN(&lx, preparable_words);
}

int pgtag__sql_simple_ok(const char *sql) {
  lexer lx = {sql, NULL, 0};
  if (sql == NULL || (next_word(&lx) && word_is(&lx, "fetch")))
    return 0;
  const char *semi = strchr(sql, ';');
  for (; semi != NULL && *semi != '\0'; semi++)
    if (*semi != ';' && *semi != ' ' && *semi != '\t' && *semi != '\n' && *semi != '\r')
      return 0;
  return 1;
}

uint64_t pgtag__sql_hash(const char *s) {
  uint64_t h = 14695981039346656037ULL;
  for (; *s != '\0'; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h != 0 ? h : 1;
}

sql_kind pgtag__sql_kind_of(const char *sql) {
  lexer lx = {sql, NULL, 0};
  if (sql == NULL || !next_word(&lx))
    return SQL_WRITE; /* nothing to go by */
  if (IN(&lx, exclusive_words))
    return SQL_EXCLUSIVE;
  if (!IN(&lx, read_words))
    return SQL_WRITE;
  while (next_word(&lx)) {
    if (IN(&lx, write_words) || IN(&lx, effect_functions))
      return SQL_WRITE;
    if (word_is(&lx, "for")) { /* FOR UPDATE, FOR [NO KEY] SHARE ... */
      lexer ahead = lx;
      if (next_word(&ahead) && (word_is(&ahead, "update") || word_is(&ahead, "share") ||
                                word_is(&ahead, "no") || word_is(&ahead, "key")))
        return SQL_WRITE;
    }
  }
  return SQL_READ;
}
