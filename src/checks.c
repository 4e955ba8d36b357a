/* The API's checks on the way in (checks.h). */
#include "checks.h"

#include "context.h"
#include "log.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

const call_site pgtag__site_internal = {NULL, 0, "pgtag"};

/* A call site's identity: the file and function strings are the
 * program's own literals, so their addresses name them. */
static uint64_t site_key(const call_site *site, const char *fn, int kind) {
  uint64_t h = (uint64_t)(uintptr_t)(site != NULL && site->file != NULL ? site->file : fn);
  h = (h ^ (uint64_t)(site != NULL ? site->line : 0)) * 0x9E3779B97F4A7C15ULL;
  h ^= (uint64_t)(uintptr_t)fn * 31 + (uint64_t)kind;
  return h != 0 ? h : 1;
}

static void site_text(char *out, size_t len, const call_site *site, const char *fn) {
  if (site != NULL && site->file != NULL)
    snprintf(out, len, "%s at %s:%d (%s)", fn, site->file, site->line,
             site->func != NULL ? site->func : "?");
  else
    snprintf(out, len, "%s", fn);
}

/* Refusals: the last time each of a few dozen sites was logged, per
 * thread (a call off the loop thread is refused on its own thread). */
#define REFUSED_SITES 64
static _Thread_local struct {
  uint64_t key;
  uint64_t at_ms;
} refused[REFUSED_SITES];

pgtag_errcode pgtag__refuse(const pgtag_pool *pool, const call_site *site, const char *fn,
                            const char *why) {
  /* the reason counts too: one mistake repeated is said once a second,
   * a different one at the same site is said at once */
  uint64_t key = site_key(site, fn, 0) ^ ((uint64_t)(uintptr_t)why * 0xff51afd7ed558ccdULL);
  uint64_t now = uv_hrtime() / 1000000;
  unsigned slot = (unsigned)(key % REFUSED_SITES);
  if (refused[slot].key == key && now - refused[slot].at_ms < 1000)
    return PGTAG_EINVAL; /* said within the last second */
  refused[slot].key = key;
  refused[slot].at_ms = now;
  char where[512];
  site_text(where, sizeof where, site, fn);
  if (pool != NULL)
    pgtag__pool_log(pool, PGTAG_LOG_ERROR, "%s: %s; nothing was done (PGTAG_EINVAL)", where, why);
  else
    pgtag__log_default(PGTAG_LOG_ERROR, "%s: %s; nothing was done (PGTAG_EINVAL)", where, why);
  return PGTAG_EINVAL;
}

/* Whether this pool has reported this site for this kind of report yet;
 * marks it reported.  A full table stops new reports, not counting. */
static int first_report(pgtag_pool *pool, const call_site *site, const char *fn, int kind) {
  uint64_t key = site_key(site, fn, kind);
  for (unsigned i = 0; i < POOL_REPORTED_SITES; i++) {
    unsigned slot = (unsigned)((key + i) % POOL_REPORTED_SITES);
    if (pool->reported_sites[slot] == key)
      return 0;
    if (pool->reported_sites[slot] == 0) {
      pool->reported_sites[slot] = key;
      return 1;
    }
  }
  return 0;
}

pgtag_errcode pgtag__check_context(pgtag_pool *pool, const call_site *site, const char *fn) {
  if (site == &pgtag__site_internal)
    return PGTAG_OK;
  pgtag_ctx *ctx = pgtag_ctx_current();
  int none = ctx == NULL;
  if (!none && !ctx->ended)
    return PGTAG_OK;
  if (none)
    pool->stats.no_context++;
  else
    pool->stats.after_end++;
  if (pool->cfg.context_check == PGTAG_CONTEXT_ALLOW)
    return PGTAG_OK;
  const char *what = none ? "no request context is current"
                          : "its request has ended (pgtag_ctx_end): work after the response";
  if (pool->cfg.context_check == PGTAG_CONTEXT_REJECT)
    return pgtag__refuse(pool, site, fn,
                         none ? "no request context is current, and context_check refuses that"
                              : "its request has ended (pgtag_ctx_end), and context_check refuses "
                                "work after the response");
  if (first_report(pool, site, fn, none ? 1 : 2)) {
    char where[512];
    site_text(where, sizeof where, site, fn);
    pgtag__pool_log(pool, PGTAG_LOG_WARN, "%s: %s; it runs %s (reported once for this site)", where,
                    what, none ? "untagged" : "with the ended request's ID");
  }
  return PGTAG_OK;
}

void pgtag__check_left_current(pgtag_pool *pool) {
  call_site site;
  pgtag_ctx *ctx = pgtag__ctx_left_current(&site.file, &site.line, &site.func);
  if (ctx == NULL)
    return;
  pool->stats.left_current++;
  if (!first_report(pool, &site, "pgtag_ctx_enter", 3))
    return;
  char where[512];
  site_text(where, sizeof where, &site, "pgtag_ctx_enter");
  /* pgtag__pool_log names the request: its context is the current one */
  pgtag__pool_log(pool, PGTAG_LOG_WARN,
                  "its context is still current as the loop goes back to waiting: %s was not "
                  "followed by pgtag_ctx_leave, and what runs until another context is entered "
                  "carries this request's ID",
                  where);
}
