/* Unit tests: the request context and the current-context slot. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <string.h>

#include "context.h"
#include "pgtag.h"

static void new_keeps_request_id(void **state) {
  (void)state;
  pgtag_ctx *ctx = pgtag_ctx_new("req-1");
  assert_non_null(ctx);
  assert_string_equal(pgtag_ctx_request_id(ctx), "req-1");
  assert_int_equal(ctx->refs, 1);
  pgtag_ctx_unref(ctx);
}

static void assert_uuid_v4(const char *id) {
  assert_int_equal(strlen(id), 36);
  for (int i = 0; i < 36; i++) {
    if (i == 8 || i == 13 || i == 18 || i == 23)
      assert_int_equal(id[i], '-');
    else
      assert_non_null(strchr("0123456789abcdef", id[i]));
  }
  assert_int_equal(id[14], '4');
  assert_non_null(strchr("89ab", id[19]));
}

static void null_or_empty_id_generates_uuid(void **state) {
  (void)state;
  pgtag_ctx *a = pgtag_ctx_new(NULL), *b = pgtag_ctx_new(""), *c = pgtag_ctx_new(NULL);
  assert_uuid_v4(pgtag_ctx_request_id(a));
  assert_uuid_v4(pgtag_ctx_request_id(b));
  assert_string_not_equal(pgtag_ctx_request_id(a), pgtag_ctx_request_id(c));
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  pgtag_ctx_unref(c);
}

static void long_id_is_cut(void **state) {
  (void)state;
  char big[10000];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  pgtag_ctx *ctx = pgtag_ctx_new(big);
  assert_int_equal(strlen(pgtag_ctx_request_id(ctx)), PGTAG_VALUE_MAX);
  assert_int_equal(pgtag_ctx_set(ctx, "route", big), PGTAG_OK);
  assert_int_equal(strlen(pgtag_ctx_get(ctx, "route")), PGTAG_VALUE_MAX);
  pgtag_ctx_unref(ctx);
}

static void set_get_replace_remove(void **state) {
  (void)state;
  pgtag_ctx *ctx = pgtag_ctx_new("r");
  assert_null(pgtag_ctx_get(ctx, "route"));
  assert_int_equal(pgtag_ctx_set(ctx, "route", "/orders"), PGTAG_OK);
  assert_int_equal(pgtag_ctx_set(ctx, "tenant", "t1"), PGTAG_OK);
  assert_int_equal(pgtag_ctx_set(ctx, "app.name", "x"), PGTAG_OK);
  assert_string_equal(pgtag_ctx_get(ctx, "route"), "/orders");
  assert_int_equal(pgtag_ctx_set(ctx, "route", "/users"), PGTAG_OK);
  assert_string_equal(pgtag_ctx_get(ctx, "route"), "/users");
  assert_int_equal(ctx->ntags, 3);
  /* kept sorted by key, which the sqlcommenter encoder relies on */
  assert_string_equal(ctx->tags[0].key, "app.name");
  assert_string_equal(ctx->tags[1].key, "route");
  assert_string_equal(ctx->tags[2].key, "tenant");
  assert_int_equal(pgtag_ctx_set(ctx, "route", NULL), PGTAG_OK);
  assert_null(pgtag_ctx_get(ctx, "route"));
  assert_int_equal(pgtag_ctx_set(ctx, "route", NULL), PGTAG_OK); /* absent: fine */
  assert_int_equal(ctx->ntags, 2);
  assert_string_equal(pgtag_ctx_get(ctx, "tenant"), "t1");
  pgtag_ctx_unref(ctx);
}

static void bad_keys_are_refused(void **state) {
  (void)state;
  pgtag_ctx *ctx = pgtag_ctx_new("r");
  const char *bad[] = {NULL, "",    "a b", "a=b",
                       "*/", "a'b", "k\n", "abcdefghijabcdefghijabcdefghijabc" /* 33 */};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    assert_int_equal(pgtag_ctx_set(ctx, bad[i], "v"), PGTAG_EINVAL);
  assert_int_equal(pgtag_ctx_set(ctx, "abcdefghijabcdefghijabcdefghijab", "v"), PGTAG_OK);
  assert_int_equal(pgtag_ctx_set(NULL, "k", "v"), PGTAG_EINVAL);
  assert_null(pgtag_ctx_get(NULL, "k"));
  assert_null(pgtag_ctx_get(ctx, NULL));
  assert_null(pgtag_ctx_request_id(NULL));
  pgtag_ctx_unref(ctx);
}

static void tag_count_is_capped(void **state) {
  (void)state;
  pgtag_ctx *ctx = pgtag_ctx_new("r");
  char key[16]; /* room for any int: the compiler cannot see i < 16 */
  for (int i = 0; i < PGTAG_TAGS_MAX; i++) {
    snprintf(key, sizeof key, "k%02d", i);
    assert_int_equal(pgtag_ctx_set(ctx, key, "v"), PGTAG_OK);
  }
  assert_int_equal(pgtag_ctx_set(ctx, "one-more", "v"), PGTAG_EINVAL);
  assert_int_equal(pgtag_ctx_set(ctx, "k03", "changed"), PGTAG_OK);
  assert_string_equal(pgtag_ctx_get(ctx, "k03"), "changed");
  pgtag_ctx_unref(ctx);
}

static void refcount(void **state) {
  (void)state;
  pgtag_ctx *ctx = pgtag_ctx_new("r");
  assert_ptr_equal(pgtag_ctx_ref(ctx), ctx);
  assert_int_equal(ctx->refs, 2);
  pgtag_ctx_unref(ctx);
  assert_int_equal(ctx->refs, 1);
  assert_null(pgtag_ctx_ref(NULL));
  pgtag_ctx_unref(NULL);
  pgtag_ctx_unref(ctx); /* freed: ASan would report a leak otherwise */
}

static void end_marks_without_freeing(void **state) {
  (void)state;
  pgtag_ctx *ctx = pgtag_ctx_new("r");
  assert_false(pgtag_ctx_ended(ctx));
  pgtag_ctx_end(ctx);
  assert_true(pgtag_ctx_ended(ctx));
  assert_string_equal(pgtag_ctx_request_id(ctx), "r");
  pgtag_ctx_end(NULL);
  pgtag_ctx_unref(ctx);
}

static void enter_leave_nest(void **state) {
  (void)state;
  pgtag_ctx *a = pgtag_ctx_new("a"), *b = pgtag_ctx_new("b");
  assert_null(pgtag_ctx_current());
  pgtag_ctx *p0 = pgtag_ctx_enter(a);
  assert_null(p0);
  assert_ptr_equal(pgtag_ctx_current(), a);
  pgtag_ctx *p1 = pgtag_ctx_enter(b);
  assert_ptr_equal(p1, a);
  assert_ptr_equal(pgtag_ctx_current(), b);
  pgtag_ctx *p2 = pgtag_ctx_enter(NULL);
  assert_null(pgtag_ctx_current());
  pgtag_ctx_leave(p2);
  assert_ptr_equal(pgtag_ctx_current(), b);
  pgtag_ctx_leave(p1);
  assert_ptr_equal(pgtag_ctx_current(), a);
  pgtag_ctx_leave(p0);
  assert_null(pgtag_ctx_current());
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
}

static void record_current(void *arg) { *(pgtag_ctx **)arg = pgtag_ctx_current(); }

static void run_restores(void **state) {
  (void)state;
  pgtag_ctx *a = pgtag_ctx_new("a"), *b = pgtag_ctx_new("b");
  pgtag_ctx *seen = NULL;
  pgtag_ctx *prev = pgtag_ctx_enter(a);
  pgtag_ctx_run(b, record_current, &seen);
  assert_ptr_equal(seen, b);
  assert_ptr_equal(pgtag_ctx_current(), a);
  pgtag_ctx_run(b, NULL, NULL); /* ignored */
  assert_ptr_equal(pgtag_ctx_current(), a);
  pgtag_ctx_leave(prev);
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
}

static void freeing_current_clears_it(void **state) {
  (void)state;
  pgtag_ctx *a = pgtag_ctx_new("a");
  pgtag_ctx *prev = pgtag_ctx_enter(a);
  pgtag_ctx_unref(a);
  assert_null(pgtag_ctx_current());
  pgtag_ctx_leave(prev);
}

static void *other_thread(void *arg) {
  *(pgtag_ctx **)arg = pgtag_ctx_current();
  return NULL;
}

static void current_is_per_thread(void **state) {
  (void)state;
  pgtag_ctx *a = pgtag_ctx_new("a");
  pgtag_ctx *seen = a;
  pgtag_ctx *prev = pgtag_ctx_enter(a);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, other_thread, &seen), 0);
  pthread_join(t, NULL);
  assert_null(seen);
  assert_ptr_equal(pgtag_ctx_current(), a);
  pgtag_ctx_leave(prev);
  pgtag_ctx_unref(a);
}

static void strerror_names_every_code(void **state) {
  (void)state;
  for (int c = PGTAG_OK; c <= PGTAG_ENOMEM; c++) {
    assert_non_null(pgtag_strerror((pgtag_errcode)c));
    assert_string_not_equal(pgtag_strerror((pgtag_errcode)c), "unknown error");
  }
  assert_string_equal(pgtag_strerror((pgtag_errcode)999), "unknown error");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(new_keeps_request_id),
      cmocka_unit_test(null_or_empty_id_generates_uuid),
      cmocka_unit_test(long_id_is_cut),
      cmocka_unit_test(set_get_replace_remove),
      cmocka_unit_test(bad_keys_are_refused),
      cmocka_unit_test(tag_count_is_capped),
      cmocka_unit_test(refcount),
      cmocka_unit_test(end_marks_without_freeing),
      cmocka_unit_test(enter_leave_nest),
      cmocka_unit_test(run_restores),
      cmocka_unit_test(freeing_current_clears_it),
      cmocka_unit_test(current_is_per_thread),
      cmocka_unit_test(strerror_names_every_code),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
