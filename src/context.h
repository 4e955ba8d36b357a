/* The request context's layout, shared with the tag encoder. */
#ifndef PGTAG_CONTEXT_H
#define PGTAG_CONTEXT_H

#include "pgtag.h"
#include "queue.h"

typedef struct {
  char *key; /* one allocation: key, NUL, value, NUL */
  const char *value;
} ctx_tag;

/* A statement's count within one request, for the N+1 detector. */
typedef struct {
  uint64_t hash; /* of the statement text, tag stripped; 0 = free slot */
  uint32_t count;
  uint32_t reported;
} ctx_statement;

#define CTX_STATEMENTS 16

/* Room for request IDs up to this long (UUIDs and the like) inside the
 * context itself; contexts of that size are recycled per thread. */
#define CTX_ID_INLINE 64

struct pgtag_ctx {
  int refs;
  int ended;
  queue held; /* connections held by this request, in any pool (leak.h) */
  int nheld;
  /* leak.c's, set with its first hold: told when the request is over
   * while it holds connections, so this file knows nothing of leaks */
  void (*held_request_over)(pgtag_ctx *ctx);
  char *request_id; /* id_buf, or its own allocation when longer */
  int ntags;
  ctx_tag *tags; /* PGTAG_TAGS_MAX of them once the first is set; sorted by
                    key, so encoders need not sort */
  pgtag_request_stats stats;
  ctx_statement *statements; /* CTX_STATEMENTS of them once counting */
  uint64_t deadline_ns;      /* uv_hrtime() by which its work must be done; 0 = none */
  uint64_t wrote;            /* clusters it wrote through (one bit each, cluster.c):
                                its reads there go to the primary from then on */
  char id_buf[CTX_ID_INLINE];
};

/* Nonzero when key is 1 to 32 characters from [A-Za-z0-9_.-]. */
int pgtag__ctx_key_valid(const char *key);

/* The context current as the loop goes back to waiting, once per time it
 * is left current: with where the application entered it (file NULL when
 * not known).  NULL when none is, or it was reported already. */
pgtag_ctx *pgtag__ctx_left_current(const char **file, int *line, const char **func);

/* Milliseconds ctx has left before its deadline at now_ns (uv_hrtime());
 * -1 when it has none (or ctx is NULL), 0 once it has passed. */
int64_t pgtag__ctx_left_ms(const pgtag_ctx *ctx, uint64_t now_ns);

#endif
