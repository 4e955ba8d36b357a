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

void text_line(char *buf, size_t len, const char *msg) {
  size_t n = 0;
  if (len == 0)
    return;
  for (const char *p = msg; *p != '\0' && n + 1 < len; p++) {
    int space = *p == ' ' || *p == '\n' || *p == '\t' || *p == '\r';
    if (!space)
      buf[n++] = *p;
    else if (n > 0 && buf[n - 1] != ' ')
      buf[n++] = ' ';
  }
  while (n > 0 && buf[n - 1] == ' ')
    n--;
  buf[n] = '\0';
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
