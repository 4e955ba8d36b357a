/* The pool's statistics in the Prometheus text exposition format. */
#include "pool.h"

#include <stdarg.h>
#include <stdio.h>

typedef struct {
  char *buf;
  size_t len;               /* capacity */
  size_t used;              /* what the whole text needs so far */
  const pgtag_stats *stats; /* one snapshot per pool */
  const char *const *names;
  int n;
  char label[160]; /* pool="<escaped name>" of the pool being written */
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

/* Make pool i the one whose label the next lines carry. */
static const pgtag_stats *pool_at(out *o, int i) {
  char name[128];
  escape_label(name, sizeof name, o->names[i] != NULL ? o->names[i] : "pgtag");
  snprintf(o->label, sizeof o->label, "pool=\"%s\"", name);
  return &o->stats[i];
}

static void header(out *o, const char *name, const char *type, const char *help) {
  put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family has one HELP and TYPE, then every pool's samples: the format
 * allows no family twice. */
#define FAMILY(o, name, type, help, st, ...)             \
  do {                                                   \
    header((o), (name), (type), (help));                 \
    for (int pool_i_ = 0; pool_i_ < (o)->n; pool_i_++) { \
      const pgtag_stats *st = pool_at((o), pool_i_);     \
      __VA_ARGS__;                                       \
    }                                                    \
  } while (0)

#define COUNTER(o, name, help, field)   \
  FAMILY(o, name, "counter", help, st_, \
         put((o), "%s{%s} %llu\n", (name), (o)->label, (unsigned long long)st_->field))

#define GAUGE(o, name, help, field)   \
  FAMILY(o, name, "gauge", help, st_, \
         put((o), "%s{%s} %lld\n", (name), (o)->label, (long long)st_->field))

static void histogram_samples(out *o, const char *name, const pgtag_histogram *h) {
  uint64_t cumulative = 0;
  for (int i = 0; i < PGTAG_HISTOGRAM_BUCKETS; i++) {
    cumulative += h->buckets[i];
    put(o, "%s_bucket{%s,le=\"%g\"} %llu\n", name, o->label,
        (double)pgtag_histogram_bound_us(i) / 1e6, (unsigned long long)cumulative);
  }
  put(o, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, o->label, (unsigned long long)h->count);
  put(o, "%s_sum{%s} %.6f\n", name, o->label, (double)h->sum_us / 1e6);
  put(o, "%s_count{%s} %llu\n", name, o->label, (unsigned long long)h->count);
}

/* The code="..." label of pgtag_errors_total, from PGTAG_ERRNO_MAP. */
static const char *code_label(pgtag_errcode code) {
  switch (code) {
#define PGTAG_LABEL_(name, value, message, label) \
  case PGTAG_##name:                              \
    return label;
    PGTAG_ERRNO_MAP(PGTAG_LABEL_)
#undef PGTAG_LABEL_
  }
  return "unknown";
}

int pgtag_stats_metrics(const pgtag_stats *stats, const char *const *names, int n, char *buf,
                        size_t len) {
  if (n < 0 || (n > 0 && (stats == NULL || names == NULL)) || (buf == NULL && len > 0))
    return -1;
  out o = {.buf = buf, .len = len, .stats = stats, .names = names, .n = n};
  if (len > 0)
    buf[0] = '\0';

  FAMILY(&o, "pgtag_connections", "gauge", "Open connections by state.", st, {
    const struct {
      const char *state;
      int n;
    } states[] = {{"idle", st->idle},
                  {"busy", st->busy},
                  {"held", st->held},
                  {"connecting", st->connecting}};
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++)
      put(&o, "pgtag_connections{%s,state=\"%s\"} %d\n", o.label, states[i].state, states[i].n);
  });
  GAUGE(&o, "pgtag_connections_max", "max_conns of the pool.", max_conns);
  GAUGE(&o, "pgtag_waiting", "Operations waiting for a connection.", waiting);

  COUNTER(&o, "pgtag_acquired_total", "Connections handed to pgtag_acquire callers.", acquired);
  COUNTER(&o, "pgtag_queries_total", "Queries completed, any outcome.", queries);
  FAMILY(&o, "pgtag_errors_total", "counter", "Operations ended with an error, by code.", st, {
    for (int c = 1; c < PGTAG_NERRCODES; c++)
      put(&o, "pgtag_errors_total{%s,code=\"%s\"} %llu\n", o.label, code_label((pgtag_errcode)c),
          (unsigned long long)st->errors_by_code[c]);
  });
  COUNTER(&o, "pgtag_acquire_timeouts_total", "Waits ended by acquire_timeout_ms.", timeouts);
  COUNTER(&o, "pgtag_statement_timeouts_total", "Queries ended by a statement timeout.",
          statement_timeouts);
  COUNTER(&o, "pgtag_deadlines_total", "Operations ended by their request's deadline.", deadlines);
  COUNTER(&o, "pgtag_canceled_total", "Operations ended by pgtag_ctx_cancel.", canceled);
  COUNTER(&o, "pgtag_no_context_total", "Operations submitted with no request context current.",
          no_context);
  COUNTER(&o, "pgtag_after_end_total",
          "Operations submitted in the context of a request that had ended.", after_end);
  COUNTER(&o, "pgtag_left_current_total",
          "Contexts found current as the loop went back to waiting.", left_current);
  COUNTER(&o, "pgtag_connects_total", "Connections established.", connects);
  COUNTER(&o, "pgtag_connect_failures_total", "Connection attempts that failed.", connect_failures);
  COUNTER(&o, "pgtag_connections_lost_total", "Established connections that died.", conns_lost);
  COUNTER(&o, "pgtag_reconnects_total", "Connections established to replace lost ones.",
          reconnects);
  COUNTER(&o, "pgtag_reads_retried_total",
          "Cluster reads that failed on this replica's connection and were sent elsewhere.",
          reads_retried);
  COUNTER(&o, "pgtag_left_recovery_total",
          "Times this replica was found promoted (out of recovery) and left out of reads.",
          left_recovery);
  FAMILY(&o, "pgtag_leaks_total", "counter", "Leak reports, by kind.", st, {
    put(&o, "pgtag_leaks_total{%s,kind=\"request_ended\"} %llu\n", o.label,
        (unsigned long long)st->leaks_ended);
    put(&o, "pgtag_leaks_total{%s,kind=\"threshold\"} %llu\n", o.label,
        (unsigned long long)st->leaks_threshold);
    put(&o, "pgtag_leaks_total{%s,kind=\"returned\"} %llu\n", o.label,
        (unsigned long long)st->leaks_returned);
  });
  COUNTER(&o, "pgtag_reclaimed_total", "Connections taken back from their holder.", reclaimed);
  FAMILY(&o, "pgtag_acquire_wait_seconds", "histogram",
         "Time from submitting to getting a connection.", st,
         histogram_samples(&o, "pgtag_acquire_wait_seconds", &st->acquire_wait));
  FAMILY(&o, "pgtag_query_duration_seconds", "histogram",
         "Time from sending a query to its result.", st,
         histogram_samples(&o, "pgtag_query_duration_seconds", &st->query_time));
  return o.used > (size_t)2147483647 ? 2147483647 : (int)o.used;
}

int pgtag_pool_metrics(const pgtag_pool *pool, char *buf, size_t len) {
  if (pool == NULL)
    return -1;
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  const char *name = pool->name;
  return pgtag_stats_metrics(&st, &name, 1, buf, len);
}
