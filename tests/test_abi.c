/* What programs built against one 0.x header rely on in a later 0.x
 * library: the error codes' values, names, messages and metrics labels.
 * Pure logic, no server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "pgtag.h"

#include <stdlib.h>
#include <string.h>

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
      cmocka_unit_test(shipped_codes_keep_value_name_message_label),
      cmocka_unit_test(codes_run_from_zero_without_gaps),
      cmocka_unit_test(every_code_has_name_message_label),
      cmocka_unit_test(metrics_label_every_error_code),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
