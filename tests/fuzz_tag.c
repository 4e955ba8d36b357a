/* libFuzzer target for the tag encoder: any bytes become a request ID, tag
 * values, a tag key and the SQL; in both styles the comment must start
 * where it should, end exactly once, contain no comment delimiter inside,
 * leave the SQL intact, and stay within its size bound.  Built by
 * ./run test with clang (-DPGTAG_FUZZ=ON) and run for a bounded time. */
#include "context.h"
#include "tag.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...) (fprintf(stderr, __VA_ARGS__), fputc('\n', stderr), abort())

/* Segments of the input, split at 0xFF bytes (NUL bytes end C strings, so
 * they are kept: the value is cut there, as a C caller's would be). */
static const char *segment(const uint8_t *data, size_t size, int want, char *out, size_t cap) {
  size_t start = 0;
  int seg = 0;
  for (size_t i = 0; i <= size; i++) {
    if (i == size || data[i] == 0xFF) {
      if (seg == want) {
        size_t n = i - start < cap - 1 ? i - start : cap - 1;
        memcpy(out, data + start, n);
        out[n] = '\0';
        return out;
      }
      seg++;
      start = i + 1;
    }
  }
  return NULL;
}

static const char *find(const char *s, const char *end, const char *pat) {
  size_t n = strlen(pat);
  for (const char *p = s; p + n <= end; p++)
    if (memcmp(p, pat, n) == 0)
      return p;
  return NULL;
}

static void check_comment(const char *open, const char *close_at, const char *text) {
  if (find(open + 2, close_at, "/*") != NULL || find(open + 2, close_at, "*/") != NULL)
    FAIL("a delimiter inside the comment: %s", text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char id[2048], v1[2048], v2[2048], key[64], sql[2048];
  const char *rid = segment(data, size, 0, id, sizeof id);
  pgtag_ctx *ctx = pgtag_ctx_new(rid);
  if (ctx == NULL)
    return 0;
  if (segment(data, size, 1, v1, sizeof v1) != NULL)
    pgtag_ctx_set(ctx, "route", v1);
  if (segment(data, size, 2, key, sizeof key) != NULL &&
      segment(data, size, 3, v2, sizeof v2) != NULL)
    pgtag_ctx_set(ctx, key, v2); /* refused unless key is a valid key */
  if (segment(data, size, 4, sql, sizeof sql) == NULL)
    strcpy(sql, "SELECT 1");
  if (strstr(sql, "/*") != NULL || strstr(sql, "*/") != NULL || strchr(sql, ';') != NULL)
    strcpy(sql, "SELECT 1"); /* the SQL's own comments are the caller's business */

  size_t slen = strlen(sql);
  size_t bound = slen + 16 + (size_t)(ctx->ntags + 1) * (32 + 4 + 3 * PGTAG_VALUE_MAX);
  tag_buf buf = {0};

  const char *t = pgtag__tag_render(&buf, PGTAG_TAG_PREFIX, "requestId", ctx, sql);
  if (t == NULL)
    FAIL("out of memory");
  size_t len = strlen(t);
  if (len > bound)
    FAIL("prefix output of %zu bytes beyond its bound %zu", len, bound);
  if (strncmp(t, "/* requestId=", 13) != 0)
    FAIL("prefix does not open the comment: %s", t);
  const char *close_at = find(t + 2, t + len, "*/");
  if (close_at == NULL)
    FAIL("comment never closed: %s", t);
  check_comment(t, close_at, t);
  if (strncmp(close_at, "*/ ", 3) != 0 || strcmp(close_at + 3, sql) != 0)
    FAIL("SQL changed after the comment: %s", t);

  t = pgtag__tag_render(&buf, PGTAG_TAG_SQLCOMMENTER, "requestId", ctx, sql);
  if (t == NULL)
    FAIL("out of memory");
  len = strlen(t);
  if (len > bound)
    FAIL("sqlcommenter output of %zu bytes beyond its bound %zu", len, bound);
  /* the comment goes before trailing whitespace */
  size_t body = slen;
  while (body > 0 && strchr(" \t\r\n", sql[body - 1]) != NULL)
    body--;
  if (strncmp(t, sql, body) != 0 || strncmp(t + body, " /*", 3) != 0)
    FAIL("SQL changed before the comment: %s", t);
  const char *open = t + body + 1;
  close_at = find(open + 2, t + len, "*/");
  if (close_at == NULL || strcmp(close_at + 2, sql + body) != 0)
    FAIL("comment not closed right after its tags: %s", t);
  check_comment(open, close_at, t);

  pgtag__tag_buf_free(&buf);
  pgtag_ctx_unref(ctx);
  return 0;
}
