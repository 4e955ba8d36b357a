/* Tag encoding.  The safety argument is small on purpose: a comment can only
 * be ended by "*" "/" and nested by "/" "*", and neither character (nor a
 * quote, backslash, whitespace or '%') survives pgtag__tag_encode; keys are checked
 * against [A-Za-z0-9_.-] before they get here. */
#include "tag.h"

#include "context.h"

#include <stdlib.h>
#include <string.h>

void pgtag__tag_buf_free(tag_buf *buf) {
  free(buf->data);
  buf->data = NULL;
  buf->len = buf->cap = 0;
}

int pgtag__tag_buf_reserve(tag_buf *buf, size_t more) {
  size_t need = buf->len + more + 1;
  if (need <= buf->cap)
    return 0;
  size_t cap = buf->cap ? buf->cap : 256;
  while (cap < need)
    cap *= 2;
  char *data = realloc(buf->data, cap);
  if (data == NULL)
    return -1;
  buf->data = data;
  buf->cap = cap;
  return 0;
}

int pgtag__tag_buf_append(tag_buf *buf, const char *s, size_t n) {
  if (pgtag__tag_buf_reserve(buf, n) != 0)
    return -1;
  memcpy(buf->data + buf->len, s, n);
  buf->len += n;
  buf->data[buf->len] = '\0';
  return 0;
}

static int append_str(tag_buf *buf, const char *s) {
  return pgtag__tag_buf_append(buf, s, strlen(s));
}

/* Bytes kept as they are: 1 in both styles, 2 in the prefix style only
 * (':'); everything else is percent-encoded.  A table: this runs for every
 * byte of every request ID of every query. */
/* clang-format off */
static const unsigned char safe[256] = {
    ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1, [':'] = 2,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,
    ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1,
    ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,
    ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1,
    ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1,
    ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};
/* clang-format on */

int pgtag__tag_encode(tag_buf *buf, const char *value, int allow_colon) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = strlen(value);
  if (pgtag__tag_buf_reserve(buf, 3 * n) != 0)
    return -1;
  char *out = buf->data + buf->len;
  unsigned char keep = allow_colon ? 3 : 1;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)value[i];
    if (safe[c] & keep) {
      *out++ = (char)c;
    } else {
      *out++ = '%';
      *out++ = hex[c >> 4];
      *out++ = hex[c & 15];
    }
  }
  *out = '\0';
  buf->len = (size_t)(out - buf->data);
  return 0;
}

/* "/" "* requestId=abc route=x *" "/ SELECT ..." */
static int render_prefix(tag_buf *buf, const char *key, const pgtag_ctx *ctx, const char *sql) {
  if (append_str(buf, "/* ") || append_str(buf, key) || pgtag__tag_buf_append(buf, "=", 1) ||
      pgtag__tag_encode(buf, ctx->request_id, 1))
    return -1;
  for (int i = 0; i < ctx->ntags; i++) {
    if (strcmp(ctx->tags[i].key, key) == 0)
      continue; /* the request ID owns that key */
    if (pgtag__tag_buf_append(buf, " ", 1) || append_str(buf, ctx->tags[i].key) ||
        pgtag__tag_buf_append(buf, "=", 1) || pgtag__tag_encode(buf, ctx->tags[i].value, 1))
      return -1;
  }
  return pgtag__tag_buf_append(buf, " */ ", 4) || append_str(buf, sql) ? -1 : 0;
}

static int append_pair(tag_buf *buf, int *first, const char *key, const char *value) {
  int comma = !*first;
  *first = 0;
  if ((comma && pgtag__tag_buf_append(buf, ",", 1)) || append_str(buf, key) ||
      pgtag__tag_buf_append(buf, "='", 2) || pgtag__tag_encode(buf, value, 0) ||
      pgtag__tag_buf_append(buf, "'", 1))
    return -1;
  return 0;
}

/* "SELECT ... /" "*requestId='abc',route='x'*" "/", keys sorted, the comment
 * placed before a final semicolon as the sqlcommenter spec asks. */
static int render_sqlcommenter(tag_buf *buf, const char *key, const pgtag_ctx *ctx,
                               const char *sql) {
  size_t end = strlen(sql);
  while (end > 0 && strchr(" \t\r\n", sql[end - 1]) != NULL)
    end--;
  size_t body = end > 0 && sql[end - 1] == ';' ? end - 1 : end;

  if (pgtag__tag_buf_append(buf, sql, body) || pgtag__tag_buf_append(buf, " /*", 3))
    return -1;
  int first = 1, key_done = 0;
  for (int i = 0; i < ctx->ntags; i++) {
    int c = strcmp(ctx->tags[i].key, key);
    if (c == 0)
      continue;
    if (c > 0 && !key_done) {
      if (append_pair(buf, &first, key, ctx->request_id))
        return -1;
      key_done = 1;
    }
    if (append_pair(buf, &first, ctx->tags[i].key, ctx->tags[i].value))
      return -1;
  }
  if (!key_done && append_pair(buf, &first, key, ctx->request_id))
    return -1;
  return pgtag__tag_buf_append(buf, "*/", 2) || append_str(buf, sql + body) ? -1 : 0;
}

const char *pgtag__tag_render(tag_buf *buf, pgtag_tag_style style, const char *key,
                              const pgtag_ctx *ctx, const char *sql) {
  int rc;
  if (ctx == NULL || style == PGTAG_TAG_NONE)
    return sql;
  buf->len = 0;
  if (style == PGTAG_TAG_SQLCOMMENTER)
    rc = render_sqlcommenter(buf, key, ctx, sql);
  else
    rc = render_prefix(buf, key, ctx, sql);
  return rc == 0 ? buf->data : NULL;
}
