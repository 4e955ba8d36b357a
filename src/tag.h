/* Tag encoding: the SQL text a query is sent as. */
#ifndef PGTAG_TAG_H
#define PGTAG_TAG_H

#include "pgtag.h"

#include <stddef.h>

/* A buffer that grows and is reused, so tagging a query allocates nothing
 * once the buffer has reached the size of the longest query. */
typedef struct {
  char *data;
  size_t len;
  size_t cap;
} tag_buf;

void pgtag__tag_buf_free(tag_buf *buf);

/* Room for more bytes and a NUL after what buf holds.  0, or -1 when out
 * of memory. */
int pgtag__tag_buf_reserve(tag_buf *buf, size_t more);

/* Append n bytes of s and keep buf NUL-terminated.  0, or -1 when out of
 * memory. */
int pgtag__tag_buf_append(tag_buf *buf, const char *s, size_t n);

/* The text to send for sql: with ctx NULL or style PGTAG_TAG_NONE, sql
 * itself; otherwise the tagged text, written into buf and valid until buf is
 * next used.  Every value is percent-encoded outside a small safe set, so no
 * value can end the comment or open a nested one.  Returns NULL only when
 * out of memory. */
const char *pgtag__tag_render(tag_buf *buf, pgtag_tag_style style, const char *key,
                              const pgtag_ctx *ctx, const char *sql);

/* Append value percent-encoded: bytes outside [A-Za-z0-9-._~] (plus ':' when
 * allow_colon) become %XX.  Returns 0, or -1 when out of memory. */
int pgtag__tag_encode(tag_buf *buf, const char *value, int allow_colon);

#endif
