/* The request context's layout, shared with the tag encoder. */
#ifndef PGTAG_CONTEXT_H
#define PGTAG_CONTEXT_H

#include "pgtag.h"
#include "queue.h"

typedef struct {
  char *key; /* one allocation: key, NUL, value, NUL */
  const char *value;
} ctx_tag;

struct pgtag_ctx {
  int refs;
  int ended;
  queue held; /* connections held by this request, in any pool (leak.h) */
  int nheld;
  char *request_id;
  int ntags;
  ctx_tag tags[PGTAG_TAGS_MAX]; /* sorted by key, so encoders need not sort */
};

/* Nonzero when key is 1 to 32 characters from [A-Za-z0-9_.-]. */
int ctx_key_valid(const char *key);

#endif
