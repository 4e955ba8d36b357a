/* Request contexts and the thread's current one. */
#include "context.h"

#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static _Thread_local pgtag_ctx *current;

/* Where the application last entered a context (pgtag_ctx_enter_at), and
 * the context current now that was already reported as left current. */
static _Thread_local const char *enter_file, *enter_func;
static _Thread_local int enter_line;
static _Thread_local const pgtag_ctx *reported_left;

/* A context function refused its arguments: one line on stderr saying why
 * (a context belongs to no pool, so there is no pool's log hook to use),
 * at most once a second per function. */
static pgtag_errcode refuse_ctx(const char *fn, const char *why) {
  static _Thread_local const char *last_fn;
  static _Thread_local uint64_t last_ms;
  uint64_t now = uv_hrtime() / 1000000;
  if (fn != last_fn || now - last_ms >= 1000) {
    last_fn = fn;
    last_ms = now;
    fprintf(stderr, "pgtag: error: %s: %s; nothing was done (PGTAG_EINVAL)\n", fn, why);
  }
  return PGTAG_EINVAL;
}

int pgtag__ctx_key_valid(const char *key) {
  size_t n = 0;
  if (key == NULL)
    return 0;
  for (; key[n] != '\0'; n++) {
    char c = key[n];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '_' || c == '.' || c == '-';
    if (!ok || n >= 32)
      return 0;
  }
  return n > 0;
}

/* getrandom() cannot fail for 16 bytes once the kernel pool is ready; the
 * fallback only keeps IDs distinct if it ever does. */
static void random_bytes(unsigned char *buf, size_t len) {
  static _Thread_local uint64_t state;
  if (getrandom(buf, len, GRND_NONBLOCK) == (ssize_t)len)
    return;
  if (state == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    state = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40) ^
            (uint64_t)(uintptr_t)&state;
  }
  for (size_t i = 0; i < len; i++) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    buf[i] = (unsigned char)(state >> 24);
  }
}

static void uuid_write(char out[37]) {
  unsigned char b[16];
  random_bytes(b, sizeof b);
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
  snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
           b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
           b[15]);
}

/* Contexts are made and dropped once per request: this thread keeps the
 * ones it freed (those with an inline ID) for the next requests, so a
 * server in its steady state allocates none.  The cache goes with the
 * thread (a key destructor frees it). */
#define CTX_CACHE_MAX 256
static _Thread_local pgtag_ctx *cache_head;
static _Thread_local int cache_count;
static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void cache_drop(void *unused) {
  (void)unused;
  while (cache_head != NULL) {
    pgtag_ctx *next = *(pgtag_ctx **)(void *)cache_head;
    free(cache_head);
    cache_head = next;
  }
  cache_count = 0;
}

static void cache_key_make(void) { pthread_key_create(&cache_key, cache_drop); }

static void cache_put(pgtag_ctx *ctx) {
  if (cache_count == 0) {
    pthread_once(&cache_once, cache_key_make);
    pthread_setspecific(cache_key, (void *)1); /* so that cache_drop runs */
  }
  *(pgtag_ctx **)(void *)ctx = cache_head; /* the first bytes link the free list */
  cache_head = ctx;
  cache_count++;
}

pgtag_ctx *pgtag_ctx_new(const char *request_id) {
  char uuid[37];
  if (request_id == NULL || request_id[0] == '\0') {
    uuid_write(uuid);
    request_id = uuid;
  }
  size_t len = strnlen(request_id, PGTAG_VALUE_MAX);
  pgtag_ctx *ctx;
  if (len < CTX_ID_INLINE && cache_head != NULL) {
    ctx = cache_head;
    cache_head = *(pgtag_ctx **)(void *)ctx;
    cache_count--;
  } else {
    ctx = malloc(sizeof *ctx + (len < CTX_ID_INLINE ? 0 : len + 1));
    if (ctx == NULL)
      return NULL;
  }
  memset(ctx, 0, sizeof *ctx);
  ctx->request_id = len < CTX_ID_INLINE ? ctx->id_buf : (char *)(ctx + 1);
  memcpy(ctx->request_id, request_id, len);
  ctx->request_id[len] = '\0';
  ctx->refs = 1;
  queue_init(&ctx->held);
  return ctx;
}

static int tag_find(const pgtag_ctx *ctx, const char *key, int *pos) {
  int lo = 0, hi = ctx->ntags;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    int c = strcmp(ctx->tags[mid].key, key);
    if (c == 0) {
      *pos = mid;
      return 1;
    }
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  *pos = lo;
  return 0;
}

pgtag_errcode pgtag_ctx_set(pgtag_ctx *ctx, const char *key, const char *value) {
  int pos;
  if (ctx == NULL)
    return refuse_ctx("pgtag_ctx_set", "ctx is NULL");
  if (!pgtag__ctx_key_valid(key))
    return refuse_ctx("pgtag_ctx_set", "the key must be 1 to 32 characters from [A-Za-z0-9_.-]");
  int found = tag_find(ctx, key, &pos);
  if (value == NULL) {
    if (found) {
      free(ctx->tags[pos].key);
      memmove(&ctx->tags[pos], &ctx->tags[pos + 1],
              (size_t)(ctx->ntags - pos - 1) * sizeof(ctx_tag));
      ctx->ntags--;
    }
    return PGTAG_OK;
  }
  if (!found && ctx->ntags == PGTAG_TAGS_MAX)
    return refuse_ctx("pgtag_ctx_set", "the context has PGTAG_TAGS_MAX tags already");
  if (ctx->tags == NULL) {
    ctx->tags = malloc(PGTAG_TAGS_MAX * sizeof *ctx->tags);
    if (ctx->tags == NULL)
      return PGTAG_ENOMEM;
  }
  size_t klen = strlen(key);
  size_t vlen = strnlen(value, PGTAG_VALUE_MAX);
  char *mem = malloc(klen + vlen + 2);
  if (mem == NULL)
    return PGTAG_ENOMEM;
  memcpy(mem, key, klen + 1);
  memcpy(mem + klen + 1, value, vlen);
  mem[klen + 1 + vlen] = '\0';
  if (found) {
    free(ctx->tags[pos].key);
  } else {
    memmove(&ctx->tags[pos + 1], &ctx->tags[pos], (size_t)(ctx->ntags - pos) * sizeof(ctx_tag));
    ctx->ntags++;
  }
  ctx->tags[pos].key = mem;
  ctx->tags[pos].value = mem + klen + 1;
  return PGTAG_OK;
}

const char *pgtag_ctx_get(const pgtag_ctx *ctx, const char *key) {
  int pos;
  if (ctx == NULL || key == NULL || !tag_find(ctx, key, &pos))
    return NULL;
  return ctx->tags[pos].value;
}

const char *pgtag_ctx_request_id(const pgtag_ctx *ctx) {
  return ctx != NULL ? ctx->request_id : NULL;
}

pgtag_ctx *pgtag_ctx_ref(pgtag_ctx *ctx) {
  if (ctx != NULL)
    ctx->refs++;
  return ctx;
}

void pgtag_ctx_unref(pgtag_ctx *ctx) {
  if (ctx == NULL)
    return;
  assert(ctx->refs > 0 && ctx->nheld <= ctx->refs);
  if (--ctx->refs > 0) {
    /* Only the connections it holds keep it alive: nobody can release
     * them any more, the request is over. */
    if (ctx->refs == ctx->nheld && !ctx->ended)
      ctx->held_request_over(ctx);
    return;
  }
  if (current == ctx)
    current = NULL; /* never leave a dangling current context behind */
  if (reported_left == ctx)
    reported_left = NULL;
  for (int i = 0; i < ctx->ntags; i++)
    free(ctx->tags[i].key);
  free(ctx->tags);
  free(ctx->statements);
  if (ctx->request_id == ctx->id_buf && cache_count < CTX_CACHE_MAX)
    cache_put(ctx);
  else
    free(ctx);
}

void pgtag_ctx_end(pgtag_ctx *ctx) {
  if (ctx == NULL || ctx->ended)
    return;
  ctx->ended = 1;
  if (ctx->nheld > 0)
    ctx->held_request_over(ctx);
}

void pgtag_ctx_stats(const pgtag_ctx *ctx, pgtag_request_stats *out) {
  if (out == NULL)
    return;
  if (ctx == NULL)
    memset(out, 0, sizeof *out);
  else
    *out = ctx->stats;
}

int pgtag_ctx_ended(const pgtag_ctx *ctx) { return ctx != NULL && ctx->ended; }

pgtag_errcode pgtag_ctx_set_deadline(pgtag_ctx *ctx, uint64_t timeout_ms) {
  if (ctx == NULL)
    return refuse_ctx("pgtag_ctx_set_deadline", "ctx is NULL");
  ctx->deadline_ns = timeout_ms == 0 ? 0 : uv_hrtime() + timeout_ms * 1000000;
  return PGTAG_OK;
}

int64_t pgtag__ctx_left_ms(const pgtag_ctx *ctx, uint64_t now_ns) {
  if (ctx == NULL || ctx->deadline_ns == 0)
    return -1;
  /* rounded up: a request with 0.4 ms left still has some */
  return ctx->deadline_ns > now_ns ? (int64_t)((ctx->deadline_ns - now_ns + 999999) / 1000000) : 0;
}

int64_t pgtag_ctx_time_left_ms(const pgtag_ctx *ctx) {
  return pgtag__ctx_left_ms(ctx, uv_hrtime());
}

/* n characters of lowercase hex; *zero says whether all were '0'. */
static int lower_hex(const char *s, size_t n, int *zero) {
  *zero = 1;
  for (size_t i = 0; i < n; i++) {
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
    *zero &= s[i] == '0';
  }
  return 1;
}

/* W3C trace context, level 1: version-traceid-parentid-flags, 2-32-16-2
 * lowercase hex; version ff and all-zero IDs are invalid; version 00 is
 * exactly that, a later version may have more fields after a '-'. */
static int traceparent_valid(const char *v) {
  int zero_version, zero_trace, zero_parent, zero_flags;
  size_t len = strnlen(v, 512);
  if (len < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-')
    return 0;
  if (!lower_hex(v, 2, &zero_version) || memcmp(v, "ff", 2) == 0)
    return 0;
  if (memcmp(v, "00", 2) == 0 ? len != 55 : len > 55 && v[55] != '-')
    return 0;
  return lower_hex(v + 3, 32, &zero_trace) && !zero_trace && lower_hex(v + 36, 16, &zero_parent) &&
         !zero_parent && lower_hex(v + 53, 2, &zero_flags);
}

pgtag_errcode pgtag_ctx_set_traceparent(pgtag_ctx *ctx, const char *traceparent) {
  static const char fn[] = "pgtag_ctx_set_traceparent";
  if (ctx == NULL)
    return refuse_ctx(fn, "ctx is NULL");
  if (traceparent == NULL)
    return pgtag_ctx_set(ctx, "traceparent", NULL);
  if (!traceparent_valid(traceparent))
    return refuse_ctx(fn, "not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, lowercase, "
                          "IDs not all zero)");
  /* only the four fields of level 1 go into the tag */
  char value[56];
  memcpy(value, traceparent, 55);
  value[55] = '\0';
  return pgtag_ctx_set(ctx, "traceparent", value);
}

pgtag_ctx *pgtag_ctx_current(void) { return current; }

pgtag_ctx *pgtag_ctx_enter(pgtag_ctx *ctx) {
  pgtag_ctx *previous = current;
  current = ctx;
  return previous;
}

/* pgtag's own enters (around its callbacks) keep the application's site:
 * only this one, the macro's, records one. */
pgtag_ctx *pgtag_ctx_enter_at(pgtag_ctx *ctx, const char *file, int line, const char *func) {
  if (ctx != NULL) {
    enter_file = file;
    enter_line = line;
    enter_func = func;
  }
  return pgtag_ctx_enter(ctx);
}

pgtag_ctx *pgtag__ctx_left_current(const char **file, int *line, const char **func) {
  if (current == NULL) {
    reported_left = NULL;
    return NULL;
  }
  if (current == reported_left)
    return NULL;
  reported_left = current;
  *file = enter_file;
  *line = enter_line;
  *func = enter_func;
  return current;
}

void pgtag_ctx_leave(pgtag_ctx *previous) { current = previous; }

void pgtag_ctx_run(pgtag_ctx *ctx, void (*fn)(void *arg), void *arg) {
  if (fn == NULL)
    return;
  pgtag_ctx *previous = pgtag_ctx_enter(ctx);
  fn(arg);
  pgtag_ctx_leave(previous);
}
