/* The pool's statistics in the Prometheus text exposition format. */
#include "pool.h"

#include <stdarg.h>
#include <stdio.h>

typedef struct {
  char *buf;
  size_t len;   /* capacity */
  size_t used;  /* what the whole text needs so far */
  char label[160]; /* pool="<escaped name>" */
} out;

static void put(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(out *o, const char *fmt, ...) {
  va_list ap;
  size_t room = o->used < o->len ? o->len - o->used : 0;
  va_start(ap, fmt);
  int n = vsnprintf(room > 0 ? o->buf + o->used : NULL, room, fmt, ap);
  va_end(ap);
  if (n > 0)
    o->used += (size_t)n;
}

/* Label values escape backslash, double quote and newline. */
static void escape_label(char *dst, size_t cap, const char *src) {
  size_t n = 0;
  for (; *src != '\0' && n + 3 < cap; src++) {
    char c = *src;
    if (c == '\\' || c == '"') {
      dst[n++] = '\\';
      dst[n++] = c;
    } else if (c == '\n') {
      dst[n++] = '\\';
      dst[n++] = 'n';
    } else {
      dst[n++] = c;
    }
  }
  dst[n] = '\0';
}

static void header(out *o, const char *name, const char *type, const char *help) {
  put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(out *o, const char *name, const char *help, uint64_t v) {
  header(o, name, "counter", help);
  put(o, "%s{%s} %llu\n", name, o->label, (unsigned long long)v);
}

static void gauge(out *o, const char *name, const char *help, long long v) {
  header(o, name, "gauge", help);
  put(o, "%s{%s} %lld\n", name, o->label, v);
}

static void histogram(out *o, const char *name, const char *help, const pgtag_histogram *h) {
  uint64_t cumulative = 0;
  header(o, name, "histogram", help);
  for (int i = 0; i < PGTAG_HISTOGRAM_BUCKETS; i++) {
    cumulative += h->buckets[i];
    put(o, "%s_bucket{%s,le=\"%g\"} %llu\n", name, o->label,
        (double)pgtag_histogram_bound_us(i) / 1e6, (unsigned long long)cumulative);
  }
  put(o, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, o->label, (unsigned long long)h->count);
  put(o, "%s_sum{%s} %.6f\n", name, o->label, (double)h->sum_us / 1e6);
  put(o, "%s_count{%s} %llu\n", name, o->label, (unsigned long long)h->count);
}

static const char *code_label(pgtag_errcode code) {
  static const char *names[PGTAG_NERRCODES] = {
      "ok",      "invalid",  "server", "connection", "timeout",
      "canceled", "closed", "queue_full", "reclaimed", "no_memory"};
  return (int)code >= 0 && code < PGTAG_NERRCODES ? names[code] : "unknown";
}

int pgtag_pool_metrics(const pgtag_pool *pool, char *buf, size_t len) {
  if (pool == NULL)
    return -1;
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  out o = {.buf = buf, .len = len};
  char name[128];
  escape_label(name, sizeof name, pool->name);
  snprintf(o.label, sizeof o.label, "pool=\"%s\"", name);
  if (len > 0)
    buf[0] = '\0';

  header(&o, "pgtag_connections", "gauge", "Open connections by state.");
  const struct {
    const char *state;
    int n;
  } states[] = {{"idle", st.idle}, {"busy", st.busy}, {"held", st.held},
                {"connecting", st.connecting}};
  for (size_t i = 0; i < sizeof states / sizeof states[0]; i++)
    put(&o, "pgtag_connections{%s,state=\"%s\"} %d\n", o.label, states[i].state, states[i].n);
  gauge(&o, "pgtag_connections_max", "max_conns of the pool.", pool->cfg.max_conns);
  gauge(&o, "pgtag_waiting", "Operations waiting for a connection.", st.waiting);

  counter(&o, "pgtag_acquired_total", "Connections handed to pgtag_acquire callers.", st.acquired);
  counter(&o, "pgtag_queries_total", "Queries completed, any outcome.", st.queries);
  header(&o, "pgtag_errors_total", "counter", "Operations ended with an error, by code.");
  for (int c = 1; c < PGTAG_NERRCODES; c++)
    put(&o, "pgtag_errors_total{%s,code=\"%s\"} %llu\n", o.label, code_label((pgtag_errcode)c),
        (unsigned long long)st.errors_by_code[c]);
  counter(&o, "pgtag_acquire_timeouts_total", "Waits ended by acquire_timeout_ms.", st.timeouts);
  counter(&o, "pgtag_statement_timeouts_total", "Queries ended by a statement timeout.",
          st.statement_timeouts);
  counter(&o, "pgtag_canceled_total", "Operations ended by pgtag_ctx_cancel.", st.canceled);
  counter(&o, "pgtag_connects_total", "Connections established.", st.connects);
  counter(&o, "pgtag_connect_failures_total", "Connection attempts that failed.",
          st.connect_failures);
  counter(&o, "pgtag_connections_lost_total", "Established connections that died.",
          st.conns_lost);
  counter(&o, "pgtag_reconnects_total", "Connections established to replace lost ones.",
          st.reconnects);
  header(&o, "pgtag_leaks_total", "counter", "Leak reports, by kind.");
  put(&o, "pgtag_leaks_total{%s,kind=\"request_ended\"} %llu\n", o.label,
      (unsigned long long)st.leaks_ended);
  put(&o, "pgtag_leaks_total{%s,kind=\"threshold\"} %llu\n", o.label,
      (unsigned long long)st.leaks_threshold);
  put(&o, "pgtag_leaks_total{%s,kind=\"returned\"} %llu\n", o.label,
      (unsigned long long)st.leaks_returned);
  counter(&o, "pgtag_reclaimed_total", "Connections taken back from their holder.", st.reclaimed);
  histogram(&o, "pgtag_acquire_wait_seconds", "Time from submitting to getting a connection.",
            &st.acquire_wait);
  histogram(&o, "pgtag_query_duration_seconds", "Time from sending a query to its result.",
            &st.query_time);
  return o.used > (size_t)2147483647 ? 2147483647 : (int)o.used;
}
