/* Logging through the pool's hook.  The default hook writes one line to
 * stderr. */
#include "log.h"

#include <stdio.h>

static const char *level_name(pgtag_log_level level) {
  switch (level) {
  case PGTAG_LOG_DEBUG:
    return "debug";
  case PGTAG_LOG_INFO:
    return "info";
  case PGTAG_LOG_WARN:
    return "warning";
  case PGTAG_LOG_ERROR:
    return "error";
  }
  return "?";
}

backend_name pgtag__backend_text(int pid) {
  backend_name b;
  if (pid > 0)
    snprintf(b.s, sizeof b.s, "backend %d", pid);
  else
    snprintf(b.s, sizeof b.s, "backend unknown");
  return b;
}

void pgtag__text_line(char *buf, size_t len, const char *msg) {
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

static void pool_vlog(const pgtag_pool *pool, pgtag_log_level level, const char *fmt, va_list ap) {
  char msg[1536];
  int n = 0;
  if (level < pool->cfg.log_level)
    return;
  /* Every line says which request it is about, when there is one. */
  pgtag_ctx *ctx = pgtag_ctx_current();
  if (ctx != NULL)
    n = snprintf(msg, sizeof msg, "request %.128s: ", pgtag_ctx_request_id(ctx));
  vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
  /* One line, whatever a request ID or a server message held: a log line
   * must not be forged by a value. */
  for (char *p = msg; *p != '\0'; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      *p = ' ';
  if (pool->cfg.log != NULL)
    pool->cfg.log(level, msg, pool->cfg.log_arg);
  else
    fprintf(stderr, "pgtag[%s]: %s: %s\n", pool->name, level_name(level), msg);
}

void pgtag__pool_log(const pgtag_pool *pool, pgtag_log_level level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  pool_vlog(pool, level, fmt, ap);
  va_end(ap);
}

void pgtag__log_default(pgtag_log_level level, const char *fmt, ...) {
  /* the default hook and level (WARN, to stderr); never written */
  static const pgtag_pool none = {.cfg = {.log_level = PGTAG_LOG_WARN}, .name = (char *)"pgtag"};
  va_list ap;
  va_start(ap, fmt);
  pool_vlog(&none, level, fmt, ap);
  va_end(ap);
}
