/* The statement classifier: what may share a read-only batch, what needs a
 * sync point of its own, what needs a connection of its own.  It must
 * never call a write a read; words in comments, literals and quoted
 * identifiers do not count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "sqlkind.h"

static void expect(const char *sql, sql_kind want) {
  sql_kind got = pgtag__sql_kind_of(sql);
  if (got != want)
    fail_msg("%s: got %d, want %d", sql ? sql : "(null)", got, want);
}

static void plain_reads(void **state) {
  (void)state;
  expect("SELECT abalance FROM pgbench_accounts WHERE aid = $1", SQL_READ);
  expect("  select 1", SQL_READ);
  expect("(SELECT 1) UNION (SELECT 2)", SQL_READ);
  expect("VALUES (1), (2)", SQL_READ);
  expect("TABLE pgbench_branches", SQL_READ);
  expect("SHOW work_mem", SQL_READ);
  expect("WITH t AS (SELECT 1) SELECT * FROM t", SQL_READ);
  expect("/* requestId=abc */ SELECT 1", SQL_READ);
  expect("-- a comment\nSELECT 1", SQL_READ);
  expect("SELECT pg_sleep(0.2)", SQL_READ);
  expect("SELECT substring(name FOR 3) FROM t", SQL_READ); /* FOR, not a lock */
  expect("SELECT currval('s')", SQL_READ);
}

static void words_that_do_not_count(void **state) {
  (void)state;
  expect("SELECT 'update' FROM t", SQL_READ);
  expect("SELECT 'it''s an insert' FROM t", SQL_READ);
  expect("SELECT E'\\' delete' FROM t", SQL_READ);
  expect("SELECT $$ nextval('s') $$", SQL_READ);
  expect("SELECT $tag$ insert $x$ into $tag$", SQL_READ);
  expect("SELECT \"update\" FROM t", SQL_READ);
  expect("SELECT 1 /* delete /* nested */ into */", SQL_READ);
  expect("SELECT 1 -- FOR UPDATE", SQL_READ);
  expect("SELECT $1::int", SQL_READ);
}

static void writes(void **state) {
  (void)state;
  expect("INSERT INTO t VALUES (1)", SQL_WRITE);
  expect("UPDATE t SET v = v + 1 WHERE id = $1", SQL_WRITE);
  expect("DELETE FROM t", SQL_WRITE);
  expect("MERGE INTO t USING s ON true WHEN MATCHED THEN DO NOTHING", SQL_WRITE);
  expect("CALL p()", SQL_WRITE);
  expect("DO $$ BEGIN END $$", SQL_WRITE);
  expect("CREATE TABLE t (x int)", SQL_WRITE);
  expect("EXPLAIN ANALYZE DELETE FROM t", SQL_WRITE);
  expect("VACUUM t", SQL_WRITE);
  expect("SELECT * INTO t2 FROM t", SQL_WRITE);
  expect("SELECT * FROM t FOR UPDATE", SQL_WRITE);
  expect("SELECT * FROM t FOR NO KEY UPDATE", SQL_WRITE);
  expect("SELECT * FROM t for share", SQL_WRITE);
  expect("SELECT * FROM t FOR KEY SHARE", SQL_WRITE);
  expect("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", SQL_WRITE);
  expect("WITH u AS (UPDATE t SET v = 1 RETURNING *) SELECT 1", SQL_WRITE);
  expect("", SQL_WRITE);
  expect("   ", SQL_WRITE);
  expect("/* only a comment */", SQL_WRITE);
}

static void functions_with_effects(void **state) {
  (void)state;
  expect("SELECT nextval('s')", SQL_WRITE);
  expect("SELECT NEXTVAL('s')", SQL_WRITE);
  expect("SELECT setval('s', 1)", SQL_WRITE);
  expect("SELECT pg_catalog.set_config('a.b', 'c', true)", SQL_WRITE);
  expect("SELECT pg_advisory_xact_lock(1)", SQL_WRITE);
  expect("SELECT pg_try_advisory_lock(1)", SQL_WRITE);
  expect("SELECT * FROM dblink('x', 'select 1') AS t(a int)", SQL_WRITE);
  expect("SELECT pg_notify('c', 'x')", SQL_WRITE);
  expect("SELECT lo_unlink(1)", SQL_WRITE);
  expect("SELECT pg_current_xact_id()", SQL_WRITE);
  expect("SELECT txid_current()", SQL_WRITE);
  expect("SELECT pg_terminate_backend(1)", SQL_WRITE);
  expect("SELECT pg_stat_reset()", SQL_WRITE);
}

static void transaction_and_session_state(void **state) {
  (void)state;
  const char *const exclusive[] = {"BEGIN",
                                   "begin",
                                   "START TRANSACTION",
                                   "COMMIT",
                                   "END",
                                   "ROLLBACK",
                                   "ABORT",
                                   "SAVEPOINT a",
                                   "RELEASE a",
                                   "PREPARE q AS SELECT 1",
                                   "SET x = 1",
                                   "RESET ALL",
                                   "LISTEN c",
                                   "UNLISTEN *",
                                   "DISCARD ALL",
                                   "LOCK t",
                                   "DECLARE c CURSOR FOR SELECT 1",
                                   "CLOSE c",
                                   "FETCH c",
                                   "MOVE c",
                                   "COPY t TO STDOUT",
                                   "DEALLOCATE ALL",
                                   "EXECUTE q",
                                   "/* requestId=x */ BEGIN",
                                   "(begin"};
  for (size_t i = 0; i < sizeof exclusive / sizeof exclusive[0]; i++)
    expect(exclusive[i], SQL_EXCLUSIVE);
}

static void hostile_text_ends(void **state) {
  (void)state;
  /* Unterminated quotes, comments and dollar quotes end the scan safely. */
  expect("SELECT 'unterminated", SQL_READ);
  expect("SELECT /* unterminated", SQL_READ);
  expect("SELECT $$ unterminated", SQL_READ);
  expect("SELECT \"unterminated", SQL_READ);
  expect("SELECT E'\\", SQL_READ);
  expect(NULL, SQL_WRITE);
}

/* What may go as one simple query: nothing after a ';' but more of them
 * and whitespace (a ';' anywhere else counts, even quoted), and no FETCH. */
static void one_statement_or_maybe_more(void **state) {
  (void)state;
  assert_true(pgtag__sql_simple_ok("BEGIN"));
  assert_true(pgtag__sql_simple_ok("COMMIT;"));
  assert_true(pgtag__sql_simple_ok("COMMIT ; ;\n\t "));
  assert_true(pgtag__sql_simple_ok(""));
  assert_false(pgtag__sql_simple_ok("SELECT 1; SELECT 2"));
  assert_false(pgtag__sql_simple_ok("BEGIN;DROP TABLE t"));
  assert_false(pgtag__sql_simple_ok("SELECT ';'"));
  assert_false(pgtag__sql_simple_ok("COMMIT; -- done"));
  assert_false(pgtag__sql_simple_ok(NULL));
  assert_false(pgtag__sql_simple_ok("FETCH 10 FROM c"));
  assert_false(pgtag__sql_simple_ok("/* x */ fetch all in c"));
  assert_true(pgtag__sql_simple_ok("MOVE 10 IN c"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(one_statement_or_maybe_more),
      cmocka_unit_test(plain_reads),
      cmocka_unit_test(words_that_do_not_count),
      cmocka_unit_test(writes),
      cmocka_unit_test(functions_with_effects),
      cmocka_unit_test(transaction_and_session_state),
      cmocka_unit_test(hostile_text_ends),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
