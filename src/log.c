/* Logging through the pool's hook.  The default hook writes one line to
 * stderr. */
#include "pool.h"

#include <stdio.h>

static const char *level_name(pgtag_log_level level) {
  switch (level) {
  case PGTAG_LOG_DEBUG: return "debug";
  case PGTAG_LOG_INFO: return "info";
  case PGTAG_LOG_WARN: return "warning";
  case PGTAG_LOG_ERROR: return "error";
  }
  return "?";
}

void pool_log(const pgtag_pool *pool, pgtag_log_level level, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  if (level < pool->cfg.log_level)
    return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (pool->cfg.log != NULL)
    pool->cfg.log(level, msg, pool->cfg.log_arg);
  else
    fprintf(stderr, "pgtag[%s]: %s: %s\n", pool->name, level_name(level), msg);
}
