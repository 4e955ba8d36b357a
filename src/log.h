/* Log lines: through the pool's hook, with the current request's ID, and
 * the text helpers that keep every message on one line. */
#ifndef PGTAG_LOG_H
#define PGTAG_LOG_H

#include "internal.h"

#include <stdarg.h>

/* Logging with the pool's hook; "pgtag[name]: " is prepended by the default
 * hook only.  pgtag__log_default: stderr, for calls that have no pool, at WARN and
 * above. */
void pgtag__log_default(pgtag_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void pgtag__pool_log(const pgtag_pool *pool, pgtag_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copy msg into buf (size len) as one line: whitespace runs, newlines
 * included, become one space; nothing trails.  libpq's messages span lines
 * ("...\n\tThis probably means..."); log lines and callbacks get one. */
void pgtag__text_line(char *buf, size_t len, const char *msg);

/* "backend 1234" for log lines, or "backend unknown" when the pid is not
 * known (0: behind a transaction pooler, or not connected).  By value, so
 * a call can sit in an argument list: pgtag__backend_text(pid).s. */
typedef struct {
  char s[24];
} backend_name;
backend_name pgtag__backend_text(int pid);

#endif
