/* What programs built against one 0.x header rely on in a later 0.x
 * library: the layout of the structs they allocate, the zeros in their
 * reserved space, and the error codes' values, names, messages and metrics
 * labels.  Pure logic, no server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "pgtag.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Struct layout
 *
 * A program built against 0.1 allocates the structs below at the size its
 * header gave them and finds their fields where that header put them; a
 * 0.2 library writes and reads them at its own idea of both.  So the size
 * of every struct a caller allocates, and the offset and size of every
 * field, are pinned here as 0.1 has them on 64-bit Linux (x86_64 and
 * aarch64 lay them out alike).  Adding a field: take its room from the
 * struct's reserved_ (a uint64_t or a pointer per slot), add a FIELD line
 * for it, change the reserved_ line's offset and size; no other number
 * here may change.  pgtag_error and pgtag_leak are pgtag's, handed out by
 * pointer, so they may grow at their end: only their fields are pinned.
 * The wrappers of libuv types are pinned relative to the libuv type, whose
 * size is libuv's promise.
 * ------------------------------------------------------------------------ */

typedef struct {
  const char *type, *field; /* field NULL: the struct's size */
  size_t offset, size;      /* as built */
  size_t want_offset, want_size;
} layout;

#define SIZE(T, n) \
  { #T, NULL, 0, sizeof(T), 0, n }
#define FIELD(T, f, off, n) \
  { #T, #f, offsetof(T, f), sizeof(((T *)0)->f), off, n }
/* Sizes and offsets past the libuv handle or request each wrapper starts with. */
#define HOP(T, U, n) \
  { #T, NULL, 0, sizeof(T) - sizeof(U), 0, n }
#define HOP_FIELD(T, f, U, off, n) \
  { #T, #f, offsetof(T, f) - sizeof(U), sizeof(((T *)0)->f), off, n }

static const layout shipped_layout[] = {
    SIZE(pgtag_pool_config, 240),
    FIELD(pgtag_pool_config, conninfo, 0, 8),
    FIELD(pgtag_pool_config, name, 8, 8),
    FIELD(pgtag_pool_config, min_conns, 16, 4),
    FIELD(pgtag_pool_config, max_conns, 20, 4),
    FIELD(pgtag_pool_config, acquire_timeout_ms, 24, 4),
    FIELD(pgtag_pool_config, max_waiting, 28, 4),
    FIELD(pgtag_pool_config, connect_timeout_ms, 32, 4),
    FIELD(pgtag_pool_config, idle_timeout_ms, 36, 4),
    FIELD(pgtag_pool_config, max_lifetime_ms, 40, 4),
    FIELD(pgtag_pool_config, reconnect_base_ms, 44, 4),
    FIELD(pgtag_pool_config, reconnect_max_ms, 48, 4),
    FIELD(pgtag_pool_config, reconnect_waiting_max_ms, 52, 4),
    FIELD(pgtag_pool_config, statement_timeout_ms, 56, 4),
    FIELD(pgtag_pool_config, pipeline_depth, 60, 4),
    FIELD(pgtag_pool_config, pipeline_fast_ms, 64, 4),
    FIELD(pgtag_pool_config, statement_cache, 68, 4),
    FIELD(pgtag_pool_config, tcp_keepalive_s, 72, 4),
    FIELD(pgtag_pool_config, transaction_pooler, 76, 4),
    FIELD(pgtag_pool_config, tag_style, 80, 4),
    FIELD(pgtag_pool_config, tag_key, 88, 8),
    FIELD(pgtag_pool_config, log, 96, 8),
    FIELD(pgtag_pool_config, log_arg, 104, 8),
    FIELD(pgtag_pool_config, log_level, 112, 4),
    FIELD(pgtag_pool_config, context_check, 116, 4),
    FIELD(pgtag_pool_config, leak_threshold_ms, 120, 4),
    FIELD(pgtag_pool_config, leak_policy, 124, 4),
    FIELD(pgtag_pool_config, leak_backtrace, 128, 4),
    FIELD(pgtag_pool_config, on_leak, 136, 8),
    FIELD(pgtag_pool_config, on_leak_arg, 144, 8),
    FIELD(pgtag_pool_config, slow_query_ms, 152, 4),
    FIELD(pgtag_pool_config, n_plus_one_threshold, 156, 4),
    FIELD(pgtag_pool_config, on_n_plus_one, 160, 8),
    FIELD(pgtag_pool_config, on_n_plus_one_arg, 168, 8),
    FIELD(pgtag_pool_config, reserved_, 176, 64),
    SIZE(pgtag_cluster_config, 296),
    FIELD(pgtag_cluster_config, primary, 0, 240),
    FIELD(pgtag_cluster_config, replicas, 240, 8),
    FIELD(pgtag_cluster_config, nreplicas, 248, 4),
    FIELD(pgtag_cluster_config, max_replica_lag_ms, 252, 4),
    FIELD(pgtag_cluster_config, lag_check_interval_ms, 256, 4),
    FIELD(pgtag_cluster_config, reserved_, 264, 32),
    SIZE(pgtag_query_opts, 40),
    FIELD(pgtag_query_opts, timeout_ms, 0, 4),
    FIELD(pgtag_query_opts, no_cache, 4, 4),
    FIELD(pgtag_query_opts, reserved_, 8, 32),
    SIZE(pgtag_stats, 864),
    FIELD(pgtag_stats, total, 0, 4),
    FIELD(pgtag_stats, idle, 4, 4),
    FIELD(pgtag_stats, busy, 8, 4),
    FIELD(pgtag_stats, held, 12, 4),
    FIELD(pgtag_stats, connecting, 16, 4),
    FIELD(pgtag_stats, waiting, 20, 4),
    FIELD(pgtag_stats, max_conns, 24, 4),
    FIELD(pgtag_stats, acquired, 32, 8),
    FIELD(pgtag_stats, queries, 40, 8),
    FIELD(pgtag_stats, errors, 48, 8),
    FIELD(pgtag_stats, timeouts, 56, 8),
    FIELD(pgtag_stats, statement_timeouts, 64, 8),
    FIELD(pgtag_stats, deadlines, 72, 8),
    FIELD(pgtag_stats, no_context, 80, 8),
    FIELD(pgtag_stats, after_end, 88, 8),
    FIELD(pgtag_stats, left_current, 96, 8),
    FIELD(pgtag_stats, canceled, 104, 8),
    FIELD(pgtag_stats, connects, 112, 8),
    FIELD(pgtag_stats, connect_failures, 120, 8),
    FIELD(pgtag_stats, leaks_ended, 128, 8),
    FIELD(pgtag_stats, leaks_threshold, 136, 8),
    FIELD(pgtag_stats, leaks_returned, 144, 8),
    FIELD(pgtag_stats, reclaimed, 152, 8),
    FIELD(pgtag_stats, conns_lost, 160, 8),
    FIELD(pgtag_stats, reconnects, 168, 8),
    FIELD(pgtag_stats, reads_retried, 176, 8),
    FIELD(pgtag_stats, left_recovery, 184, 8),
    FIELD(pgtag_stats, errors_by_code, 192, 128),
    FIELD(pgtag_stats, acquire_wait, 320, 144),
    FIELD(pgtag_stats, query_time, 464, 144),
    FIELD(pgtag_stats, reserved_, 608, 256),
    SIZE(pgtag_request_stats, 304),
    FIELD(pgtag_request_stats, queries, 0, 8),
    FIELD(pgtag_request_stats, errors, 8, 8),
    FIELD(pgtag_request_stats, db_time_us, 16, 8),
    FIELD(pgtag_request_stats, slowest_us, 24, 8),
    FIELD(pgtag_request_stats, slowest_sql, 32, 201),
    FIELD(pgtag_request_stats, reserved_, 240, 64),
    SIZE(pgtag_histogram, 144),
    FIELD(pgtag_histogram, count, 0, 8),
    FIELD(pgtag_histogram, sum_us, 8, 8),
    FIELD(pgtag_histogram, buckets, 16, 128),
    HOP(pgtag_timer, uv_timer_t, 64),
    HOP_FIELD(pgtag_timer, data, uv_timer_t, 0, 8),
    HOP_FIELD(pgtag_timer, ctx_, uv_timer_t, 8, 8),
    HOP_FIELD(pgtag_timer, cb_, uv_timer_t, 16, 8),
    HOP_FIELD(pgtag_timer, closed_, uv_timer_t, 24, 8),
    HOP_FIELD(pgtag_timer, reserved_, uv_timer_t, 32, 32),
    HOP(pgtag_work, uv_work_t, 64),
    HOP_FIELD(pgtag_work, data, uv_work_t, 0, 8),
    HOP_FIELD(pgtag_work, ctx_, uv_work_t, 8, 8),
    HOP_FIELD(pgtag_work, work_cb_, uv_work_t, 16, 8),
    HOP_FIELD(pgtag_work, after_cb_, uv_work_t, 24, 8),
    HOP_FIELD(pgtag_work, reserved_, uv_work_t, 32, 32),
    HOP(pgtag_fs, uv_fs_t, 56),
    HOP_FIELD(pgtag_fs, data, uv_fs_t, 0, 8),
    HOP_FIELD(pgtag_fs, ctx_, uv_fs_t, 8, 8),
    HOP_FIELD(pgtag_fs, cb_, uv_fs_t, 16, 8),
    HOP_FIELD(pgtag_fs, reserved_, uv_fs_t, 24, 32),
    SIZE(pgtag_conn, 16),
    FIELD(pgtag_conn, impl_, 0, 8),
    FIELD(pgtag_conn, gen_, 8, 8),
    SIZE(pgtag_tag, 16),
    FIELD(pgtag_tag, key, 0, 8),
    FIELD(pgtag_tag, value, 8, 8),
    FIELD(pgtag_error, code, 0, 4),
    FIELD(pgtag_error, sqlstate, 8, 8),
    FIELD(pgtag_error, message, 16, 8),
    FIELD(pgtag_leak, kind, 0, 4),
    FIELD(pgtag_leak, pool_name, 8, 8),
    FIELD(pgtag_leak, request_id, 16, 8),
    FIELD(pgtag_leak, tags, 24, 8),
    FIELD(pgtag_leak, ntags, 32, 4),
    FIELD(pgtag_leak, file, 40, 8),
    FIELD(pgtag_leak, line, 48, 4),
    FIELD(pgtag_leak, func, 56, 8),
    FIELD(pgtag_leak, held_ms, 64, 8),
    FIELD(pgtag_leak, backend_pid, 72, 4),
    FIELD(pgtag_leak, last_sql, 80, 8),
    FIELD(pgtag_leak, tx_state, 88, 4),
    FIELD(pgtag_leak, reclaimed, 92, 4),
    FIELD(pgtag_leak, frames, 96, 8),
    FIELD(pgtag_leak, nframes, 104, 4),

};

static void struct_layout_is_pinned(void **state) {
  (void)state;
#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
  int bad = 0;
  for (size_t i = 0; i < sizeof shipped_layout / sizeof shipped_layout[0]; i++) {
    const layout *l = &shipped_layout[i];
    if (l->offset != l->want_offset || l->size != l->want_size) {
      print_error("%s%s%s: offset %zu size %zu, pinned at offset %zu size %zu\n", l->type,
                  l->field ? "." : "", l->field ? l->field : "", l->offset, l->size, l->want_offset,
                  l->want_size);
      bad++;
    }
  }
  assert_int_equal(bad, 0);
  /* The libuv handle or request comes first: code that casts between the
   * two, as libuv's own container_of does, keeps working. */
  assert_int_equal(offsetof(pgtag_timer, handle), 0);
  assert_int_equal(offsetof(pgtag_work, req), 0);
  assert_int_equal(offsetof(pgtag_fs, req), 0);
#else
  skip(); /* the numbers are 64-bit Linux's; the checks below hold anywhere */
#endif
}

/* reserved_ is the last member and nothing follows it, not even padding:
 * a field added after it, or before it without shrinking it, changes the
 * size, which the pinned numbers catch; and pgtag's zeroing of reserved_
 * covers the struct's whole tail. */
#define ENDS_IN_RESERVED(T)                                                         \
  _Static_assert(offsetof(T, reserved_) + sizeof(((T *)0)->reserved_) == sizeof(T), \
                 #T " ends in reserved_")
ENDS_IN_RESERVED(pgtag_pool_config);
ENDS_IN_RESERVED(pgtag_cluster_config);
ENDS_IN_RESERVED(pgtag_query_opts);
ENDS_IN_RESERVED(pgtag_stats);
ENDS_IN_RESERVED(pgtag_request_stats);
ENDS_IN_RESERVED(pgtag_timer);
ENDS_IN_RESERVED(pgtag_work);
ENDS_IN_RESERVED(pgtag_fs);
_Static_assert(PGTAG_NERRCODES <= PGTAG_ERRCODES_MAX, "errors_by_code has room for every code");
_Static_assert(sizeof(((pgtag_stats *)0)->errors_by_code) == PGTAG_ERRCODES_MAX * sizeof(uint64_t),
               "errors_by_code is sized by PGTAG_ERRCODES_MAX, not by the codes there are");

static int all_zero(const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i] != 0)
      return 0;
  return 1;
}

#define RESERVED_ZERO(s) all_zero((s).reserved_, sizeof(s).reserved_)

/* The _init functions zero reserved_: a later library that gives a slot a
 * meaning finds "as before" there. */
static void init_zeroes_reserved(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  memset(&cfg, 0xa5, sizeof cfg);
  pgtag_pool_config_init(&cfg);
  assert_true(RESERVED_ZERO(cfg));
  pgtag_cluster_config ccfg;
  memset(&ccfg, 0xa5, sizeof ccfg);
  pgtag_cluster_config_init(&ccfg);
  assert_true(RESERVED_ZERO(ccfg));
  assert_true(RESERVED_ZERO(ccfg.primary));
}

static void closed(void *arg) { *(int *)arg = 1; }

/* Snapshots write zeros to reserved_ and to the codes this library does
 * not have, whatever the caller's struct held; a pool ignores what its
 * config's reserved_ holds.  No server is needed: an idle pool with
 * min_conns 0 never connects. */
static void snapshots_zero_reserved_and_config_reserved_is_not_read(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  pgtag_pool_config cfg;
  pgtag_pool_config_init(&cfg);
  cfg.conninfo = "host=/nonexistent dbname=abi";
  memset(cfg.reserved_, 0xa5, sizeof cfg.reserved_);
  pgtag_pool *pool = NULL;
  assert_int_equal(pgtag_pool_new(&loop, &cfg, &pool), PGTAG_OK);

  pgtag_stats st;
  memset(&st, 0xa5, sizeof st);
  pgtag_pool_stats(pool, &st);
  assert_true(RESERVED_ZERO(st));
  assert_int_equal(st.max_conns, 10);
  assert_true(all_zero(st.errors_by_code, sizeof st.errors_by_code));

  pgtag_ctx *ctx = pgtag_ctx_new("abi");
  assert_non_null(ctx);
  pgtag_request_stats rs;
  memset(&rs, 0xa5, sizeof rs);
  pgtag_ctx_stats(ctx, &rs);
  assert_true(RESERVED_ZERO(rs));
  assert_int_equal(rs.queries, 0);
  memset(&rs, 0xa5, sizeof rs);
  pgtag_ctx_stats(NULL, &rs);
  assert_true(all_zero(&rs, sizeof rs));
  pgtag_ctx_unref(ctx);

  int done = 0;
  pgtag_pool_close(pool, closed, &done);
  while (!done)
    uv_run(&loop, UV_RUN_ONCE);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void on_timer(pgtag_timer *t) { (void)t; }
static void timer_closed(pgtag_timer *t) { *(int *)t->data = 1; }
static void work(pgtag_work *w) { (void)w; }
static void after_work(pgtag_work *w, int status) {
  (void)status;
  *(int *)w->data = 1;
}
static void on_fs(pgtag_fs *fs) { (void)fs; }

/* The libuv wrappers zero their reserved_ when pgtag takes them over. */
static void hops_zero_reserved(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  int timer_done = 0, work_done = 0;

  pgtag_timer timer;
  memset(&timer, 0xa5, sizeof timer);
  assert_int_equal(pgtag_timer_init(&loop, &timer), 0);
  assert_true(RESERVED_ZERO(timer));
  timer.data = &timer_done;
  assert_int_equal(pgtag_timer_start(&timer, on_timer, 0, 0), 0);
  pgtag_timer_close(&timer, timer_closed);

  pgtag_work w;
  memset(&w, 0xa5, sizeof w);
  w.data = &work_done;
  assert_int_equal(pgtag_queue_work(&loop, &w, work, after_work), 0);
  assert_true(RESERVED_ZERO(w));

  pgtag_fs fs;
  memset(&fs, 0xa5, sizeof fs);
  assert_non_null(pgtag_fs_start(&fs, on_fs));
  assert_true(RESERVED_ZERO(fs));
  pgtag_fs_abandon(&fs);

  while (!timer_done || !work_done)
    uv_run(&loop, UV_RUN_ONCE);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ------------------------------------------------------------------------
 * Error codes
 * ------------------------------------------------------------------------ */

/* Written out by hand, not from PGTAG_ERRNO_MAP: what 0.1 shipped, which a
 * later list may extend but not change.  Dashboards select on the labels,
 * programs compare messages and names. */
static const struct {
  pgtag_errcode code;
  int value;
  const char *name, *message, *label;
} shipped[] = {
    {PGTAG_OK, 0, "PGTAG_OK", "success", "ok"},
    {PGTAG_EINVAL, 1, "PGTAG_EINVAL", "invalid argument", "invalid"},
    {PGTAG_ESERVER, 2, "PGTAG_ESERVER", "server error", "server"},
    {PGTAG_ECONN, 3, "PGTAG_ECONN", "connection failed or lost", "connection"},
    {PGTAG_ETIMEDOUT, 4, "PGTAG_ETIMEDOUT", "timed out", "timeout"},
    {PGTAG_ECANCELED, 5, "PGTAG_ECANCELED", "canceled", "canceled"},
    {PGTAG_ECLOSED, 6, "PGTAG_ECLOSED", "pool closed", "closed"},
    {PGTAG_EQUEUEFULL, 7, "PGTAG_EQUEUEFULL", "too many waiting operations", "queue_full"},
    {PGTAG_ERECLAIMED, 8, "PGTAG_ERECLAIMED", "connection reclaimed by the pool", "reclaimed"},
    {PGTAG_ENOMEM, 9, "PGTAG_ENOMEM", "out of memory", "no_memory"},
};
#define NSHIPPED (int)(sizeof shipped / sizeof shipped[0])

static void shipped_codes_keep_value_name_message_label(void **state) {
  (void)state;
  assert_true(PGTAG_NERRCODES >= NSHIPPED);
  for (int i = 0; i < NSHIPPED; i++) {
    assert_int_equal((int)shipped[i].code, shipped[i].value);
    assert_string_equal(pgtag_err_name(shipped[i].code), shipped[i].name);
    assert_string_equal(pgtag_strerror(shipped[i].code), shipped[i].message);
  }
#define CHECK_LABEL_(NAME, VALUE, MESSAGE, LABEL) \
  if ((VALUE) < NSHIPPED)                         \
    assert_string_equal(LABEL, shipped[VALUE].label);
  PGTAG_ERRNO_MAP(CHECK_LABEL_)
#undef CHECK_LABEL_
}

/* The list is in order of value with no gap, so PGTAG_NERRCODES bounds
 * them and arrays indexed by code (errors_by_code) hold every one. */
static void codes_run_from_zero_without_gaps(void **state) {
  (void)state;
  int next = 0;
#define CHECK_ORDER_(NAME, VALUE, MESSAGE, LABEL) \
  assert_int_equal(PGTAG_##NAME, next);           \
  next++;
  PGTAG_ERRNO_MAP(CHECK_ORDER_)
#undef CHECK_ORDER_
  assert_int_equal(next, PGTAG_NERRCODES);
}

/* Every code has a name of its own spelled as in C, a message and a label
 * of its own; other values get the documented fallbacks. */
static void every_code_has_name_message_label(void **state) {
  (void)state;
  const char *names[PGTAG_NERRCODES], *labels[PGTAG_NERRCODES];
  int n = 0;
#define COLLECT_(NAME, VALUE, MESSAGE, LABEL) \
  names[n] = #NAME;                           \
  labels[n] = LABEL;                          \
  assert_true(strlen(MESSAGE) > 0);           \
  n++;
  PGTAG_ERRNO_MAP(COLLECT_)
#undef COLLECT_
  for (int c = 0; c < PGTAG_NERRCODES; c++) {
    char want[64];
    snprintf(want, sizeof want, "PGTAG_%s", names[c]);
    assert_string_equal(pgtag_err_name((pgtag_errcode)c), want);
    assert_string_not_equal(pgtag_strerror((pgtag_errcode)c), "unknown error");
    assert_true(strlen(labels[c]) > 0);
    for (int d = 0; d < c; d++) {
      assert_string_not_equal(pgtag_err_name((pgtag_errcode)c), pgtag_err_name((pgtag_errcode)d));
      assert_string_not_equal(pgtag_strerror((pgtag_errcode)c), pgtag_strerror((pgtag_errcode)d));
      assert_string_not_equal(labels[c], labels[d]);
    }
  }
  const pgtag_errcode unknown[] = {(pgtag_errcode)PGTAG_NERRCODES, (pgtag_errcode)-1,
                                   (pgtag_errcode)999};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    assert_string_equal(pgtag_err_name(unknown[i]), "PGTAG_UNKNOWN");
    assert_string_equal(pgtag_strerror(unknown[i]), "unknown error");
  }
}

/* The metrics carry a sample per error code, labelled from the list. */
static void metrics_label_every_error_code(void **state) {
  (void)state;
  pgtag_stats st;
  memset(&st, 0, sizeof st);
  for (int c = 0; c < PGTAG_NERRCODES; c++)
    st.errors_by_code[c] = 100 + (uint64_t)c;
  const char *name = "abi";
  int len = pgtag_stats_metrics(&st, &name, 1, NULL, 0);
  assert_true(len > 0);
  char *text = malloc((size_t)len + 1);
  assert_non_null(text);
  assert_int_equal(pgtag_stats_metrics(&st, &name, 1, text, (size_t)len + 1), len);
  int samples = 0;
#define CHECK_SAMPLE_(NAME, VALUE, MESSAGE, LABEL)                                          \
  if ((VALUE) != 0) {                                                                       \
    char line[160];                                                                         \
    snprintf(line, sizeof line, "pgtag_errors_total{pool=\"abi\",code=\"%s\"} %d\n", LABEL, \
             100 + (VALUE));                                                                \
    if (strstr(text, line) == NULL)                                                         \
      fail_msg("no sample \"%.*s\" in the metrics", (int)strlen(line) - 1, line);           \
    samples++;                                                                              \
  }
  PGTAG_ERRNO_MAP(CHECK_SAMPLE_)
#undef CHECK_SAMPLE_
  assert_int_equal(samples, PGTAG_NERRCODES - 1); /* PGTAG_OK is no error */
  for (const char *p = text; (p = strstr(p, "pgtag_errors_total{")) != NULL; p++)
    samples--;
  assert_int_equal(samples, 0); /* and no sample for anything else */
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(struct_layout_is_pinned),
      cmocka_unit_test(init_zeroes_reserved),
      cmocka_unit_test(snapshots_zero_reserved_and_config_reserved_is_not_read),
      cmocka_unit_test(hops_zero_reserved),
      cmocka_unit_test(shipped_codes_keep_value_name_message_label),
      cmocka_unit_test(codes_run_from_zero_without_gaps),
      cmocka_unit_test(every_code_has_name_message_label),
      cmocka_unit_test(metrics_label_every_error_code),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
