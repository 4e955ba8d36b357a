/* The statement cache against the real server: queries go out as the
 * tagged EXECUTE of a statement prepared on their connection; the server's
 * refusals for the cache's reasons are recovered from, once, where nothing
 * ran; the least recently used statements are deallocated; what cannot go
 * through the cache goes the old way; and quoting values as literals gives
 * the server exactly the bytes a parameter would, in every client encoding
 * it accepts, whatever the bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static pgtag_pool *one_conn_pool(const char *conninfo, int cache) {
  pgtag_pool_config cfg;
  test_config(&cfg);
  if (conninfo != NULL)
    cfg.conninfo = conninfo;
  cfg.max_conns = cfg.min_conns = 1;
  cfg.statement_cache = cache;
  cfg.log_level = PGTAG_LOG_ERROR;
  return test_pool_new(&loop, &cfg);
}

/* One query, waited for; opts may be NULL. */
static void run_query(pgtag_pool *pool, const char *sql, const char *param,
                      const pgtag_query_opts *opts, rec *r) {
  const char *vals[1] = {param};
  memset(r, 0, sizeof *r);
  assert_int_equal(pgtag_query_ex(pool, sql, param != NULL, param != NULL ? vals : NULL, opts,
                                  rec_result, r),
                   PGTAG_OK);
  assert_true(run_until(&loop, &r->calls, 1, 10000));
}

static void run_held(pgtag_conn conn, const char *sql, rec *r) {
  memset(r, 0, sizeof *r);
  assert_int_equal(pgtag_conn_query(conn, sql, 0, NULL, rec_result, r), PGTAG_OK);
  assert_true(run_until(&loop, &r->calls, 1, 10000));
}

static const pgtag_query_opts as_text = {.no_cache = 1};

/* Prepared statements of pgtag's on the pool's one connection. */
static int prepared_here(pgtag_pool *pool) {
  rec r;
  run_query(pool, "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE '\\_pgtag\\_%'",
            NULL, &as_text, &r);
  assert_int_equal(r.code, PGTAG_OK);
  return atoi(r.value);
}

static void queries_run_as_tagged_executes(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL); /* the defaults */
  pgtag_ctx *ctx = pgtag_ctx_new("cached");
  rec r;
  for (int i = 0; i < 3; i++) {
    memset(&r, 0, sizeof r);
    assert_int_equal(query_param_in(pool, ctx, "SELECT current_query(), $1::text", "it's", &r),
                     PGTAG_OK);
    assert_true(run_until(&loop, &r.calls, 1, 10000));
    assert_done(&r, ctx, PGTAG_OK);
    assert_string_equal(r.value2, "it's");
    assert_string_equal(r.value, "/* requestId=cached */ EXECUTE _pgtag_1('it''s') "
                                 "/* SELECT current_query(), $1::text */");
  }
  pgtag_ctx *prev = pgtag_ctx_enter(ctx); /* submitted in the request, run outside it */
  const char *plain[1] = {"plain"};
  memset(&r, 0, sizeof r);
  assert_int_equal(pgtag_query_ex(pool, "SELECT current_query(), $1::text", 1, plain, &as_text,
                                  rec_result, &r),
                   PGTAG_OK);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &r.calls, 1, 10000));
  assert_done(&r, ctx, PGTAG_OK);
  assert_string_equal(r.value, "/* requestId=cached */ SELECT current_query(), $1::text");
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* The statement is gone from the server without pgtag seeing it (a
 * DEALLOCATE it cannot recognise): 26000 before anything ran, so it is
 * prepared again and the query runs once more, on a held connection as on
 * a pooled one. */
static void statement_gone_is_prepared_again(void **state) {
  (void)state;
  pgtag_pool *pool = one_conn_pool(NULL, 256);
  rec r, acq = {0}, d;
  run_query(pool, "SELECT 'pooled ' || $1", "1", NULL, &r);
  assert_done(&r, NULL, PGTAG_OK);
  acquire_in(pool, NULL, &acq);
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  memset(&r, 0, sizeof r);
  assert_int_equal(pgtag_conn_query(acq.conn, "SELECT 'held ' || $1", 1, (const char *[]){"1"},
                                    rec_result, &r),
                   PGTAG_OK);
  assert_true(run_until(&loop, &r.calls, 1, 5000));
  run_held(acq.conn, "/* unseen */ DEALLOCATE ALL", &d);
  assert_done(&d, NULL, PGTAG_OK);
  memset(&r, 0, sizeof r);
  assert_int_equal(pgtag_conn_query(acq.conn, "SELECT 'held ' || $1", 1, (const char *[]){"2"},
                                    rec_result, &r),
                   PGTAG_OK);
  assert_true(run_until(&loop, &r.calls, 1, 5000));
  assert_done(&r, NULL, PGTAG_OK);
  assert_string_equal(r.value, "held 2");
  run_held(acq.conn, "/* unseen */ DEALLOCATE ALL", &d);
  pgtag_release(acq.conn);
  run_query(pool, "SELECT 'pooled ' || $1", "2", NULL, &r);
  assert_done(&r, NULL, PGTAG_OK);
  assert_string_equal(r.value, "pooled 2");
  test_pool_close(&loop, pool);
}

/* After ALTER TABLE changes a cached statement's result, the server
 * refuses the old plan (0A000) before running it: planned again, the
 * query runs once more.  Inside a transaction block the error has aborted
 * the transaction: the query fails, and the next one is planned anew. */
static void altered_table_is_planned_again(void **state) {
  (void)state;
  pgtag_pool *pool = one_conn_pool(NULL, 256);
  admin_exec("DROP TABLE IF EXISTS pgtag_altered; CREATE TABLE pgtag_altered (a int); "
             "INSERT INTO pgtag_altered VALUES (1)");
  rec r, acq = {0}, step;
  run_query(pool, "SELECT * FROM pgtag_altered", NULL, NULL, &r);
  assert_done(&r, NULL, PGTAG_OK);
  admin_exec("ALTER TABLE pgtag_altered ADD COLUMN b text DEFAULT 'new'");
  run_query(pool, "SELECT * FROM pgtag_altered", NULL, NULL, &r);
  assert_done(&r, NULL, PGTAG_OK);
  assert_string_equal(r.value2, "new");

  acquire_in(pool, NULL, &acq);
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  run_held(acq.conn, "BEGIN", &step);
  admin_exec("ALTER TABLE pgtag_altered ADD COLUMN c int DEFAULT 3");
  run_held(acq.conn, "SELECT * FROM pgtag_altered", &r);
  assert_done(&r, NULL, PGTAG_ESERVER);
  assert_string_equal(r.sqlstate, "0A000");
  run_held(acq.conn, "ROLLBACK", &step);
  run_held(acq.conn, "SELECT * FROM pgtag_altered", &r);
  assert_done(&r, NULL, PGTAG_OK);
  pgtag_release(acq.conn);
  test_pool_close(&loop, pool);
}

/* The pool closes while a query the server refused for the cache's
 * reasons (0A000 after an ALTER TABLE) is on its way to be sent again:
 * with no connection left to send it on, it fails with PGTAG_ECLOSED, once,
 * and the pool finishes closing.  (It was left in the line, its callback
 * never called, and the pool freed under it.) */
static void closing_while_a_query_goes_again(void **state) {
  (void)state;
  pgtag_pool *pool = one_conn_pool(NULL, 256);
  admin_exec("DROP TABLE IF EXISTS pgtag_closing; CREATE TABLE pgtag_closing (a int); "
             "INSERT INTO pgtag_closing VALUES (1)");
  rec r, again = {0};
  run_query(pool, "SELECT * FROM pgtag_closing", NULL, NULL, &r);
  assert_done(&r, NULL, PGTAG_OK);
  admin_exec("ALTER TABLE pgtag_closing ADD COLUMN b int");
  assert_int_equal(query_in(pool, NULL, "SELECT * FROM pgtag_closing", &again), PGTAG_OK);
  test_pool_close(&loop, pool); /* while the query is on the wire */
  assert_done(&again, NULL, PGTAG_ECLOSED);
  admin_exec("DROP TABLE pgtag_closing");
}

/* An application's statement took the name pgtag was about to use: the
 * prepare fails (42P05), the query goes again under another name. */
static void name_taken_is_skipped(void **state) {
  (void)state;
  pgtag_pool *pool = one_conn_pool(NULL, 256);
  rec acq = {0}, step, r;
  acquire_in(pool, NULL, &acq); /* the connection's first statement follows */
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  run_held(acq.conn, "PREPARE _pgtag_1 AS SELECT 'theirs'", &step);
  assert_done(&step, NULL, PGTAG_OK);
  pgtag_release(acq.conn);
  run_query(pool, "SELECT 'mine ' || $1", "1", NULL, &r);
  assert_done(&r, NULL, PGTAG_OK);
  assert_string_equal(r.value, "mine 1");
  test_pool_close(&loop, pool);
}

/* A connection that dies takes its statements with it; its replacement
 * prepares its own. */
static void new_connection_new_statements(void **state) {
  (void)state;
  pgtag_pool *pool = one_conn_pool(NULL, 256);
  rec r, pid;
  run_query(pool, "SELECT pg_backend_pid()::text", NULL, NULL, &pid);
  run_query(pool, "SELECT 'before ' || $1", "x", NULL, &r);
  char sql[96];
  snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", atoi(pid.value));
  admin_exec(sql);
  pgtag_stats st; /* the pool saw it go */
  WAIT_FOR(&loop, (pgtag_pool_stats(pool, &st), st.conns_lost == 1), 10000);
  assert_int_equal(st.conns_lost, 1);
  rec after;
  run_query(pool, "SELECT 'after ' || $1", "y", NULL, &after);
  assert_int_equal(after.code, PGTAG_OK);
  assert_string_equal(after.value, "after y");
  run_query(pool, "SELECT 'before ' || $1", "z", NULL, &r);
  assert_done(&r, NULL, PGTAG_OK);
  assert_string_equal(r.value, "before z");
  test_pool_close(&loop, pool);
}

/* statement_cache bounds what a connection keeps prepared: the least
 * recently used go (DEALLOCATE), and every query still gets its own
 * statement's result. */
static void least_recently_used_are_deallocated(void **state) {
  (void)state;
  pgtag_pool *pool = one_conn_pool(NULL, 8);
  for (int round = 0; round < 3; round++) {
    for (int k = 0; k < 30; k++) {
      char sql[64], want[16];
      rec r;
      snprintf(sql, sizeof sql, "SELECT $1::int + %d", k);
      snprintf(want, sizeof want, "%d", 100 + k);
      run_query(pool, sql, "100", NULL, &r);
      assert_done(&r, NULL, PGTAG_OK);
      assert_string_equal(r.value, want);
    }
  }
  int n = prepared_here(pool);
  print_message("%d statements prepared after 90 queries of 30 texts, cache of 8\n", n);
  assert_true(n >= 1 && n <= 8);
  test_pool_close(&loop, pool);
}

/* What goes the old way: a query asked to, a statement that cannot be
 * prepared, parameters too long to be worth it, and every query on a
 * connection without standard_conforming_strings, where doubling quotes
 * would not be enough.  Each gives the right result. */
static void what_goes_the_old_way(void **state) {
  (void)state;
  pgtag_pool *pool = one_conn_pool(NULL, 256);
  rec r, acq = {0}, step;
  run_query(pool, "SHOW standard_conforming_strings", NULL, NULL, &r);
  assert_string_equal(r.value, "on");
  static char big[20001];
  memset(big, 'q', sizeof big - 1);
  big[1000] = '\'';
  run_query(pool, "SELECT length($1)", big, NULL, &r);
  assert_done(&r, NULL, PGTAG_OK);
  assert_string_equal(r.value, "20000");
  int before = prepared_here(pool);

  acquire_in(pool, NULL, &acq);
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  run_held(acq.conn, "SET standard_conforming_strings = off", &step);
  assert_done(&step, NULL, PGTAG_OK);
  memset(&r, 0, sizeof r);
  const char *tricky = "a\\'b";
  assert_int_equal(pgtag_conn_query(acq.conn, "SELECT $1::text, length($1)", 1, &tricky, rec_result,
                                    &r),
                   PGTAG_OK);
  assert_true(run_until(&loop, &r.calls, 1, 5000));
  assert_done(&r, NULL, PGTAG_OK);
  assert_string_equal(r.value, tricky);
  assert_string_equal(r.value2, "4");
  run_held(acq.conn, "RESET standard_conforming_strings", &step);
  pgtag_release(acq.conn);
  assert_int_equal(prepared_here(pool), before); /* neither was prepared */
  test_pool_close(&loop, pool);
}

/* A statement that turns standard_conforming_strings off, with a cached
 * query pipelined behind it: libpq learns of the change only when the
 * statement's sync point arrives, after the query was quoted.  A quote doubled for
 * the old setting would be a backslash-escaped quote under the new one,
 * and the value would end its literal early; so a value with a backslash
 * goes through the cache only with nothing ahead of it on the wire.
 * Without one, doubling the quotes is right under both settings. */
static void a_setting_changed_in_flight_cannot_open_a_literal(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = cfg.min_conns = 1;
  cfg.pipeline_fast_ms = 600000; /* whatever the machine's speed, they pipeline */
  cfg.log_level = PGTAG_LOG_ERROR;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  const char *off = "SELECT set_config('standard_conforming_strings', $1, false)";
  const char *hostile = "\\'||upper(chr(97))) --";
  const char *quotes = "it's ''";
  rec set = {0}, q = {0}, plain = {0}, reset = {0};
  run_query(pool, off, "on", NULL, &set); /* known now: the others go behind it */
  run_query(pool, "SELECT $1::text", "warm", NULL, &q);
  run_query(pool, "SELECT $1::text || '!'", "warm", NULL, &plain);
  memset(&set, 0, sizeof set);
  memset(&q, 0, sizeof q);
  memset(&plain, 0, sizeof plain);
  const char *values[1] = {"off"};
  assert_int_equal(pgtag_query(pool, off, 1, values, rec_result, &set), PGTAG_OK);
  assert_int_equal(pgtag_query(pool, "SELECT $1::text", 1, &hostile, rec_result, &q), PGTAG_OK);
  assert_int_equal(pgtag_query(pool, "SELECT $1::text || '!'", 1, &quotes, rec_result, &plain),
                   PGTAG_OK);
  assert_true(run_until(&loop, &plain.calls, 1, 5000));
  assert_done(&set, NULL, PGTAG_OK);
  assert_string_equal(set.value, "off");
  assert_done(&q, NULL, PGTAG_OK);
  assert_string_equal(q.value, hostile);
  assert_done(&plain, NULL, PGTAG_OK);
  assert_string_equal(plain.value, "it's ''!");
  run_query(pool, off, "on", NULL, &reset);
  assert_done(&reset, NULL, PGTAG_OK);
  test_pool_close(&loop, pool);
}

/* The line of the server's log with both tag and what ("" if none yet),
 * and the line after it. */
static void logged_line(const char *tag, const char *what, char *line, char *next, size_t len) {
  char path[512], buf[4096];
  snprintf(path, sizeof path, "%s/server.log", getenv("PGHOST"));
  FILE *f = fopen(path, "r");
  if (f == NULL)
    fail_msg("cannot read %s", path);
  line[0] = next[0] = '\0';
  while (fgets(buf, sizeof buf, f) != NULL) {
    if (line[0] != '\0') {
      snprintf(next, len, "%s", buf);
      break;
    }
    if (strstr(buf, tag) != NULL && strstr(buf, what) != NULL)
      snprintf(line, len, "%s", buf);
  }
  fclose(f);
}

/* The server runs a statement of the request with this ID now. */
static int running(const char *id) {
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
           "AND query LIKE '/* requestId=%s */ %%'",
           id);
  return admin_int(sql) == 1;
}

/* A statement already prepared that goes out alone, while a query that
 * comes meanwhile would have a free connection of its own (or on a held
 * connection), leaves pipeline mode: the server gets one simple query, and its log line for a slow
 * statement adds the prepared text.  Once the pool is busy, a statement
 * stays in the pipeline so that others can join it; one that comes while
 * the simple query runs goes elsewhere or waits. */
static void alone_it_goes_as_one_simple_query(void **state) {
  (void)state;
  char conninfo[512], ids[5][64], tag[400], line[4096], next[4096];
  snprintf(conninfo, sizeof conninfo, "%s options='-c log_min_duration_statement=0'",
           test_conninfo());
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.conninfo = conninfo;
  cfg.max_conns = cfg.min_conns = 2;
  cfg.log_level = PGTAG_LOG_ERROR;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_stats st;
  WAIT_FOR(&loop, (pgtag_pool_stats(pool, &st), st.idle == 2), 10000);
  assert_int_equal(st.idle, 2);
  const char *sql = "SELECT $1::text || ' alone', pg_sleep(0.5)";
  pgtag_ctx *ctx[5];
  rec r[5];
  /* IDs of this run's own: the log keeps earlier runs' lines */
  for (int i = 0; i < 5; i++) {
    snprintf(ids[i], sizeof ids[i], "simple-%d-%llu-%d", (int)getpid(),
             (unsigned long long)now_ms(), i);
    ctx[i] = pgtag_ctx_new(ids[i]);
    memset(&r[i], 0, sizeof r[i]);
  }
  /* the first use on each connection: its prepare goes just ahead of it,
   * in the pipeline */
  assert_int_equal(query_param_in(pool, ctx[0], sql, "0", &r[0]), PGTAG_OK);
  assert_int_equal(query_param_in(pool, ctx[1], sql, "1", &r[1]), PGTAG_OK);
  assert_true(run_until(&loop, &r[1].calls, 1, 10000));
  assert_true(run_until(&loop, &r[0].calls, 1, 10000));
  /* prepared on both: the first alone, the other connection free, goes
   * as a simple query; the second, the pool busy, in the pipeline; the
   * third comes while both run */
  assert_int_equal(query_param_in(pool, ctx[2], sql, "2", &r[2]), PGTAG_OK);
  WAIT_FOR(&loop, running(ids[2]), 10000);
  assert_true(running(ids[2]));
  assert_int_equal(query_param_in(pool, ctx[3], sql, "3", &r[3]), PGTAG_OK);
  WAIT_FOR(&loop, running(ids[3]), 10000);
  assert_true(running(ids[3]));
  assert_int_equal(query_param_in(pool, ctx[4], sql, "4", &r[4]), PGTAG_OK);
  assert_true(run_until(&loop, &r[4].calls, 1, 10000));
  assert_true(run_until(&loop, &r[3].calls, 1, 10000));
  for (int i = 0; i < 5; i++) {
    assert_done(&r[i], ctx[i], PGTAG_OK);
    char want[32];
    snprintf(want, sizeof want, "%d alone", i);
    assert_string_equal(r[i].value, want);
  }

  /* log_min_duration_statement logs a simple query as a "statement",
   * and the three steps of one in the pipeline as "parse", "bind" and
   * "execute" */
  snprintf(tag, sizeof tag, "/* requestId=%s */ EXECUTE _pgtag_1('2')", ids[2]);
  WAIT_FOR(&loop, (logged_line(tag, "statement: ", line, next, sizeof line), next[0] != '\0'),
           10000);
  assert_non_null(strstr(line, "statement: /* requestId="));
  assert_non_null(strstr(next, "DETAIL:  prepare: SELECT $1::text || ' alone', pg_sleep(0.5)"));
  logged_line(tag, "execute <unnamed>: ", line, next, sizeof line);
  assert_string_equal(line, "");
  /* a held connection sends its holder's statements one at a time: each
   * alone */
  rec acq = {0}, held = {0};
  acquire_in(pool, ctx[1], &acq);
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  const char *five[1] = {"5"};
  pgtag_ctx *prev = pgtag_ctx_enter(ctx[1]);
  assert_int_equal(pgtag_conn_query(acq.conn, sql, 1, five, rec_result, &held), PGTAG_OK);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &held.calls, 1, 5000));
  assert_done(&held, ctx[1], PGTAG_OK);
  /* without parameters and without room for a second statement, the
   * application's own text goes so too; with room, it does not (a simple
   * query would run both) */
  rec two = {0};
  conn_query_in(acq.conn, ctx[1], "SELECT 'one'; SELECT 'two'", &two);
  assert_true(run_until(&loop, &two.calls, 1, 5000));
  assert_done(&two, ctx[1], PGTAG_ESERVER);
  assert_string_equal(two.sqlstate, "42601");
  memset(&held, 0, sizeof held);
  conn_query_in(acq.conn, ctx[1], "SHOW standard_conforming_strings;", &held);
  assert_true(run_until(&loop, &held.calls, 1, 5000));
  assert_done(&held, ctx[1], PGTAG_OK);
  assert_string_equal(held.value, "on");
  pgtag_release(acq.conn);
  snprintf(tag, sizeof tag, "/* requestId=%s */ EXECUTE _pgtag_1('5')", ids[1]);
  WAIT_FOR(&loop, (logged_line(tag, "statement: ", line, next, sizeof line), line[0] != '\0'),
           10000);
  assert_non_null(strstr(line, "statement: /* requestId="));
  snprintf(tag, sizeof tag, "/* requestId=%s */ SHOW standard_conforming_strings;", ids[1]);
  WAIT_FOR(&loop, (logged_line(tag, "statement: ", line, next, sizeof line), line[0] != '\0'),
           10000);
  assert_non_null(strstr(line, "statement: /* requestId="));

  for (int i = 0; i < 4; i += 3) {
    snprintf(tag, sizeof tag, "/* requestId=%s */ EXECUTE _pgtag_1('%d')", ids[i], i);
    WAIT_FOR(&loop,
             (logged_line(tag, "execute <unnamed>: ", line, next, sizeof line), line[0] != '\0'),
             10000);
    logged_line(tag, "statement: ", line, next, sizeof line);
    assert_string_equal(line, "");
  }
  for (int i = 0; i < 5; i++)
    pgtag_ctx_unref(ctx[i]);
  test_pool_close(&loop, pool);
}

/* ------------------------------------------------------------------------
 * Literals: the same bytes as a parameter, in every client encoding
 * ------------------------------------------------------------------------ */

static uint32_t rng = 0x9e3779b9u;
static unsigned next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 17;
  rng ^= rng << 5;
  return rng;
}

/* Bytes biased to what could end a literal or a comment. */
static void random_value(char *out, size_t cap) {
  static const char special[] = "'\\*/;-$\" \n\tEe0x%";
  size_t len = next_rand() % (cap - 1);
  for (size_t i = 0; i < len; i++) {
    unsigned r = next_rand();
    char c = r % 3 == 0 ? special[(r >> 8) % (sizeof special - 1)] : (char)(1 + (r >> 8) % 255);
    out[i] = c;
  }
  out[len] = '\0';
}

/* clang-format off */
static const char *const hostile[] = {
    "'", "''", "\\", "\\'", "'; DROP TABLE pgtag_victim; --", "*/ SELECT 1 /*", "/*", "*/",
    "$$", "$tag$", "E'\\x27'", "\xe3\x81\x82'", "\x95\\", "\x81\x27", "\xa4\x5c'", "%27", "NULL",
};
/* clang-format on */

typedef struct {
  int compared, equal_ok, both_failed, differ;
  char first_diff[512];
} fuzz_tally;

static void compare_one(pgtag_pool *pool, const char *value, fuzz_tally *t) {
  rec old, cached;
  run_query(pool, "SELECT $1::text", value, &as_text, &old);
  run_query(pool, "SELECT $1::text", value, NULL, &cached);
  t->compared++;
  if (old.code == PGTAG_OK && cached.code == PGTAG_OK && strcmp(old.value, cached.value) == 0) {
    t->equal_ok++;
    return;
  }
  if (old.code != PGTAG_OK && cached.code == old.code &&
      strcmp(old.sqlstate, cached.sqlstate) == 0) {
    t->both_failed++;
    return;
  }
  if (t->differ++ == 0)
    snprintf(t->first_diff, sizeof t->first_diff, "%s / %.200s vs %s / %.200s", old.sqlstate,
             old.value, cached.sqlstate, cached.value);
}

static void literals_give_the_server_the_same_bytes(void **state) {
  (void)state;
  /* clang-format off */
  static const char *const encodings[] = {
      "SQL_ASCII", "UTF8", "EUC_JP", "EUC_CN", "EUC_KR", "EUC_TW", "EUC_JIS_2004",
      "LATIN1", "LATIN2", "LATIN3", "LATIN4", "LATIN5", "LATIN6", "LATIN7", "LATIN8",
      "LATIN9", "LATIN10", "WIN1256", "WIN1258", "WIN866", "WIN874", "KOI8R", "WIN1251",
      "WIN1252", "ISO_8859_5", "ISO_8859_6", "ISO_8859_7", "ISO_8859_8", "WIN1250",
      "WIN1253", "WIN1254", "WIN1255", "WIN1257", "KOI8U", "SJIS", "BIG5", "GBK", "UHC",
      "GB18030", "JOHAB", "SHIFT_JIS_2004", "MULE_INTERNAL"};
  /* clang-format on */
  int tested = 0, total = 0, ok = 0, failed = 0, loop_closed = 0;
  for (size_t e = 0; e < sizeof encodings / sizeof *encodings; e++) {
    /* accepted by this server as a client encoding? */
    char conninfo[600];
    snprintf(conninfo, sizeof conninfo, "%s client_encoding=%s", test_conninfo(), encodings[e]);
    PGconn *c = PQconnectdb(conninfo);
    int accepted = PQstatus(c) == CONNECTION_OK;
    PQfinish(c);
    if (!accepted)
      continue; /* the server has no conversion to it */
    tested++;
    if (loop_closed)
      assert_int_equal(uv_loop_init(&loop), 0);
    pgtag_pool *pool = one_conn_pool(conninfo, 256);
    fuzz_tally t;
    memset(&t, 0, sizeof t);
    for (size_t h = 0; h < sizeof hostile / sizeof *hostile; h++)
      compare_one(pool, hostile[h], &t);
    for (int i = 0; i < 150; i++) {
      char value[48];
      random_value(value, sizeof value);
      compare_one(pool, value, &t);
    }
    if (t.differ > 0)
      fail_msg("%s: %d of %d values differ, first: %s", encodings[e], t.differ, t.compared,
               t.first_diff);
    assert_true(t.equal_ok > 0); /* hostile ASCII values at least */
    total += t.compared;
    ok += t.equal_ok;
    failed += t.both_failed;
    test_pool_close(&loop, pool); /* closes the loop */
    loop_closed = 1;
  }
  if (!loop_closed)
    assert_int_equal(uv_loop_close(&loop), 0);
  print_message("%d client encodings, %d values: %d identical results, %d refused alike\n", tested,
                total, ok, failed);
  assert_true(tested >= 30);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(queries_run_as_tagged_executes, loop_setup),
      cmocka_unit_test_setup(statement_gone_is_prepared_again, loop_setup),
      cmocka_unit_test_setup(altered_table_is_planned_again, loop_setup),
      cmocka_unit_test_setup(closing_while_a_query_goes_again, loop_setup),
      cmocka_unit_test_setup(name_taken_is_skipped, loop_setup),
      cmocka_unit_test_setup(new_connection_new_statements, loop_setup),
      cmocka_unit_test_setup(least_recently_used_are_deallocated, loop_setup),
      cmocka_unit_test_setup(what_goes_the_old_way, loop_setup),
      cmocka_unit_test_setup(alone_it_goes_as_one_simple_query, loop_setup),
      cmocka_unit_test_setup(a_setting_changed_in_flight_cannot_open_a_literal, loop_setup),
      cmocka_unit_test_setup(literals_give_the_server_the_same_bytes, loop_setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
