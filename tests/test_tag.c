/* Unit tests: the tag encoder, above all that no value escapes the
 * comment. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdint.h>
#include <string.h>

#include "pgtag.h"
#include "tag.h"

static tag_buf buf;

static int teardown(void **state) {
  (void)state;
  pgtag__tag_buf_free(&buf);
  return 0;
}

static const char *prefix(const pgtag_ctx *ctx, const char *sql) {
  return pgtag__tag_render(&buf, PGTAG_TAG_PREFIX, "requestId", ctx, sql);
}

static void no_context_no_comment(void **state) {
  (void)state;
  const char *sql = "SELECT 1";
  assert_ptr_equal(prefix(NULL, sql), sql);
  pgtag_ctx *ctx = pgtag_ctx_new("abc");
  assert_ptr_equal(pgtag__tag_render(&buf, PGTAG_TAG_NONE, "requestId", ctx, sql), sql);
  pgtag_ctx_unref(ctx);
}

static void prefix_plain(void **state) {
  (void)state;
  pgtag_ctx *ctx = pgtag_ctx_new("3f2a-uuid:1");
  assert_string_equal(prefix(ctx, "SELECT 1"), "/* requestId=3f2a-uuid:1 */ SELECT 1");
  assert_string_equal(pgtag__tag_render(&buf, PGTAG_TAG_PREFIX, "rid", ctx, "SELECT 2"),
                      "/* rid=3f2a-uuid:1 */ SELECT 2");
  pgtag_ctx_unref(ctx);
}

static void prefix_with_tags_sorted_and_encoded(void **state) {
  (void)state;
  pgtag_ctx *ctx = pgtag_ctx_new("r1");
  pgtag_ctx_set(ctx, "tenant", "acme corp");
  pgtag_ctx_set(ctx, "route", "/orders/:id");
  pgtag_ctx_set(ctx, "requestId", "spoofed"); /* the real ID owns that key */
  assert_string_equal(prefix(ctx, "SELECT 1"),
                      "/* requestId=r1 route=%2Forders%2F:id tenant=acme%20corp */ SELECT 1");
  pgtag_ctx_unref(ctx);
}

static void encode_escapes_everything_unsafe(void **state) {
  (void)state;
  buf.len = 0;
  assert_int_equal(pgtag__tag_encode(&buf, "*/ DROP TABLE x; --", 1), 0);
  assert_string_equal(buf.data, "%2A%2F%20DROP%20TABLE%20x%3B%20--");
  buf.len = 0;
  pgtag__tag_encode(&buf, "a'b\"c\\d\ne%f\xc3\xa9/*", 1);
  assert_string_equal(buf.data, "a%27b%22c%5Cd%0Ae%25f%C3%A9%2F%2A");
  buf.len = 0;
  pgtag__tag_encode(&buf, "a:b~c", 0);
  assert_string_equal(buf.data, "a%3Ab~c");
}

/* The comment opened at the start is the only one, and it ends exactly where
 * the encoder put its end, whatever the values held. */
static void assert_contained(const char *out, const char *sql) {
  size_t n = strlen(out), s = strlen(sql);
  assert_true(n > s + 6);
  assert_memory_equal(out + n - s, sql, s);
  assert_memory_equal(out, "/* ", 3);
  const char *end = strstr(out, "*/");
  assert_ptr_equal(end, out + n - s - 3);
  for (const char *p = out + 3; p < end - 1; p++) {
    assert_false(p[0] == '/' && p[1] == '*');
    assert_non_null(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                           "0123456789-._~:%= ",
                           *p));
  }
}

static void hostile_values_stay_inside(void **state) {
  (void)state;
  char big[10001];
  memset(big, '*', 5000);
  memset(big + 5000, '/', 5000);
  big[10000] = '\0';
  const char *hostile[] = {"*/ DROP TABLE x; --",
                           "/*",
                           "*/",
                           "/* nested /* */",
                           "'; SELECT pg_sleep(10); --",
                           "line\nbreak\r\n",
                           "tab\there",
                           "back\\slash",
                           "100%",
                           "\x01\x7f\xff",
                           "\" OR 1=1 --",
                           "$1",
                           "$$ dollar $$",
                           "*",
                           "/",
                           big};
  for (size_t i = 0; i < sizeof hostile / sizeof *hostile; i++) {
    pgtag_ctx *ctx = pgtag_ctx_new(hostile[i]);
    pgtag_ctx_set(ctx, "route", hostile[i]);
    pgtag_ctx_set(ctx, "traceparent", hostile[i]);
    const char *out = prefix(ctx, "SELECT 1");
    assert_non_null(out);
    assert_contained(out, "SELECT 1");
    assert_true(strlen(out) < 3 * 3 * PGTAG_VALUE_MAX + 100);
    pgtag_ctx_unref(ctx);
  }
}

static void sqlcommenter_style(void **state) {
  (void)state;
  pgtag_ctx *ctx = pgtag_ctx_new("r:1");
  pgtag_ctx_set(ctx, "route", "/x y");
  pgtag_ctx_set(ctx, "action", "get'it");
  const char *out = pgtag__tag_render(&buf, PGTAG_TAG_SQLCOMMENTER, "requestId", ctx, "SELECT 1");
  assert_string_equal(out, "SELECT 1 /*action='get%27it',requestId='r%3A1',route='%2Fx%20y'*/");
  out = pgtag__tag_render(&buf, PGTAG_TAG_SQLCOMMENTER, "requestId", ctx, "SELECT 1;  \n");
  assert_string_equal(out,
                      "SELECT 1 /*action='get%27it',requestId='r%3A1',route='%2Fx%20y'*/;  \n");
  pgtag_ctx_set(ctx, "zeta", "z");
  pgtag_ctx_set(ctx, "action", NULL);
  pgtag_ctx_set(ctx, "route", NULL);
  out = pgtag__tag_render(&buf, PGTAG_TAG_SQLCOMMENTER, "requestId", ctx, "SELECT 2");
  assert_string_equal(out, "SELECT 2 /*requestId='r%3A1',zeta='z'*/");
  pgtag_ctx_unref(ctx);
  ctx = pgtag_ctx_new("*/--");
  out = pgtag__tag_render(&buf, PGTAG_TAG_SQLCOMMENTER, "requestId", ctx, "SELECT 3");
  assert_string_equal(out, "SELECT 3 /*requestId='%2A%2F--'*/");
  pgtag_ctx_unref(ctx);
}

static void buffer_is_reused(void **state) {
  (void)state;
  pgtag_ctx *ctx = pgtag_ctx_new("r");
  char sql[2000];
  memset(sql, 'x', sizeof sql - 1);
  sql[sizeof sql - 1] = '\0';
  prefix(ctx, sql);
  char *data = buf.data;
  size_t cap = buf.cap;
  for (int i = 0; i < 100; i++)
    assert_non_null(prefix(ctx, i % 2 ? "SELECT 1" : sql));
  assert_ptr_equal(buf.data, data); /* no new allocation per query */
  assert_int_equal(buf.cap, cap);
  pgtag_ctx_unref(ctx);
}

/* Random values over an alphabet rich in comment and quote characters: the
 * rendered text always has exactly one comment, closed where pgtag closed
 * it, whatever the bytes. */
static void random_values_never_escape(void **state) {
  (void)state;
  static const char alphabet[] = "*/*/-'\"\\\n\r\t;%$ aZ9:~._\x01\x7f\x80\xff";
  uint32_t seed = 12345;
  char value[64];
  for (int round = 0; round < 20000; round++) {
    size_t len = 1 + (seed >> 8) % (sizeof value - 1);
    for (size_t i = 0; i < len; i++) {
      seed = seed * 1103515245u + 12345u;
      value[i] = alphabet[(seed >> 16) % (sizeof alphabet - 1)];
    }
    value[len] = '\0';
    for (size_t i = 0; i < len; i++)
      if (value[i] == '\0')
        value[i] = '*';
    pgtag_ctx *ctx = pgtag_ctx_new(value);
    pgtag_ctx_set(ctx, "route", value);
    assert_contained(prefix(ctx, "SELECT 1"), "SELECT 1");
    const char *sc = pgtag__tag_render(&buf, PGTAG_TAG_SQLCOMMENTER, "requestId", ctx, "SELECT 1");
    const char *open = strstr(sc, "/*"), *close = strstr(sc, "*/");
    assert_ptr_equal(open, sc + 9);
    assert_ptr_equal(close, sc + strlen(sc) - 2);
    assert_null(strstr(open + 2, "/*"));
    assert_null(strchr(open, '\\'));
    /* quotes only as delimiters: key='value' pairs */
    int quotes = 0;
    for (const char *p = open; *p; p++)
      quotes += *p == '\'';
    assert_int_equal(quotes, 4);
    pgtag_ctx_unref(ctx);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(no_context_no_comment),
      cmocka_unit_test(prefix_plain),
      cmocka_unit_test(prefix_with_tags_sorted_and_encoded),
      cmocka_unit_test(encode_escapes_everything_unsafe),
      cmocka_unit_test(hostile_values_stay_inside),
      cmocka_unit_test(sqlcommenter_style),
      cmocka_unit_test(buffer_is_reused),
      cmocka_unit_test(random_values_never_escape),
  };
  return cmocka_run_group_tests(tests, NULL, teardown);
}
