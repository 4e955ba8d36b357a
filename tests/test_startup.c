/* A pool as a newcomer first meets it, against the real server: a wrong
 * database or role fails the waiting request at once with the server's
 * SQLSTATE and whole message (and the pool recovers once the DBA fixes
 * it), a server that is merely down is waited for, pgtag_pool_close does
 * not wait out a reconnect backoff, and the log levels say what the header
 * says.  Also the reading of libpq's connection errors, without a server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "connect_error.h"
#include "harness.h"

/* Every log line, with its level. */
#define MAX_LINES 256
static struct {
  pgtag_log_level level;
  char text[512];
} lines[MAX_LINES];
static int nlines;

static void capture(pgtag_log_level level, const char *msg, void *arg) {
  (void)arg;
  if (nlines < MAX_LINES) {
    lines[nlines].level = level;
    snprintf(lines[nlines].text, sizeof lines[nlines].text, "%s", msg);
  }
  nlines++;
}

static int count_lines(pgtag_log_level level, const char *needle) {
  int n = 0;
  for (int i = 0; i < nlines && i < MAX_LINES; i++)
    if (lines[i].level == level && strstr(lines[i].text, needle) != NULL)
      n++;
  return n;
}

static void capturing_config(pgtag_pool_config *cfg, pgtag_log_level level) {
  test_config(cfg);
  nlines = 0;
  cfg->log = capture;
  cfg->log_level = level;
}

/* A loopback port nobody listens on: connecting is refused at once. */
static int refused_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

static void closed_cb(void *arg) { (*(int *)arg)++; }

/* ------------------------------------------------------------------------
 * Reading libpq's messages (no server)
 * ------------------------------------------------------------------------ */

static void parses_libpq_connection_errors(void **state) {
  (void)state;
  connect_error e;

  pgtag__connect_error_parse(&e,
                             "connection to server on socket \"/tmp/x/.s.PGSQL.5432\" failed: "
                             "FATAL:  3D000: database \"nosuchdb\" does not exist\n"
                             "LOCATION:  InitPostgres, postinit.c:948\n",
                             0);
  assert_true(e.refused);
  assert_string_equal(e.sqlstate, "3D000");
  assert_string_equal(e.message, "connection to server on socket \"/tmp/x/.s.PGSQL.5432\" "
                                 "failed: FATAL: database \"nosuchdb\" does not exist");
  free(e.message);

  /* translated words: only the punctuation and the SQLSTATE count */
  pgtag__connect_error_parse(&e,
                             "Verbindung zum Server fehlgeschlagen: SCHWERWIEGEND:  28P01: "
                             "Passwort-Authentifizierung fehlgeschlagen\n"
                             "DETAIL:  Rolle hat kein Passwort\n"
                             "ORT:  auth_failed, auth.c:323\n",
                             0);
  assert_true(e.refused);
  assert_string_equal(e.sqlstate, "28P01");
  assert_string_equal(e.message, "Verbindung zum Server fehlgeschlagen: SCHWERWIEGEND: "
                                 "Passwort-Authentifizierung fehlgeschlagen DETAIL: Rolle "
                                 "hat kein Passwort");
  free(e.message);

  /* one host down, the other refusing: the first may come back */
  pgtag__connect_error_parse(&e,
                             "connection to server at \"127.0.0.1\", port 1 failed: Connection "
                             "refused\n\tIs the server running on that host?\n"
                             "connection to server at \"127.0.0.1\", port 2 failed: FATAL:  28000: "
                             "role \"x\" does not exist\nLOCATION:  InitializeSessionUserId, "
                             "miscinit.c:768\n",
                             0);
  assert_false(e.refused);
  assert_string_equal(e.sqlstate, "28000");
  free(e.message);

  /* errors worth waiting out */
  const char *transient[] = {"53300", "57P03", "57P01", "08006", "XX000", "40001"};
  for (size_t i = 0; i < sizeof transient / sizeof transient[0]; i++) {
    char msg[256];
    snprintf(msg, sizeof msg, "connection to server failed: FATAL:  %s: busy\n", transient[i]);
    pgtag__connect_error_parse(&e, msg, 0);
    assert_false(e.refused);
    assert_string_equal(e.sqlstate, transient[i]);
    free(e.message);
  }
  const char *refusals[] = {"28000", "28P01", "3D000", "42501", "42704", "22023", "0A000", "55000"};
  for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++)
    assert_true(pgtag__connect_error_permanent(refusals[i]));

  /* no SQLSTATE: a refusal only when libpq itself had no password */
  pgtag__connect_error_parse(&e, "connection to server failed: fe_sendauth: no password supplied\n",
                             0);
  assert_false(e.refused);
  assert_string_equal(e.sqlstate, "");
  free(e.message);
  pgtag__connect_error_parse(&e, "connection to server failed: fe_sendauth: no password supplied\n",
                             1);
  assert_true(e.refused);
  free(e.message);
  pgtag__connect_error_parse(&e, "connection attempt timed out after 5000 ms", 0);
  assert_false(e.refused);
  assert_string_equal(e.message, "connection attempt timed out after 5000 ms");
  free(e.message);
}

/* ------------------------------------------------------------------------
 * A wrong setting fails fast
 * ------------------------------------------------------------------------ */

/* A pool on a database that does not exist: the waiting query fails in
 * well under a second with ECONN, 3D000 and the server's whole message;
 * the pool keeps trying (with backoff, on demand), says so once, and
 * serves requests as soon as the database exists. */
static void missing_database_fails_fast_then_recovers(void **state) {
  (void)state;
  char conninfo[1024];
  pgtag_pool_config cfg;
  capturing_config(&cfg, PGTAG_LOG_DEBUG);
  snprintf(conninfo, sizeof conninfo, "%s dbname=pgtag_missing_db", test_conninfo());
  cfg.conninfo = conninfo;
  cfg.reconnect_base_ms = 20;
  cfg.reconnect_max_ms = 40;
  admin_exec("DROP DATABASE IF EXISTS pgtag_missing_db WITH (FORCE)");
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("first-hour");

  rec q = {0}, a = {0};
  uint64_t t0 = now_ms();
  assert_int_equal(query_in(pool, ctx, "SELECT 1", &q), PGTAG_OK);
  assert_true(run_until(&loop, &q.calls, 1, 1000));
  assert_true(now_ms() - t0 < 1000);
  assert_done(&q, ctx, PGTAG_ECONN);
  assert_string_equal(q.sqlstate, "3D000");
  assert_non_null(strstr(q.message, "failed: FATAL: database \"pgtag_missing_db\" does not exist"));
  assert_true(strncmp(q.message, "connection to server on socket \"", 32) == 0);
  assert_null(strstr(q.message, "3D000")); /* in sqlstate, not in the text */
  assert_null(strstr(q.message, "postinit.c"));
  assert_false(q.has_res);

  /* an acquire too, in its own request */
  t0 = now_ms();
  assert_int_equal(acquire_in(pool, ctx, &a), PGTAG_OK);
  assert_true(run_until(&loop, &a.calls, 1, 1000));
  assert_true(now_ms() - t0 < 1000);
  assert_done(&a, ctx, PGTAG_ECONN);
  assert_string_equal(a.sqlstate, "3D000");
  assert_false(pgtag_conn_held(a.conn));

  /* Requests keep coming: each fails at once, attempts go on with backoff,
   * and the log says it once, however many attempts fail. */
  pgtag_stats st;
  for (uint64_t end = wait_deadline(5000); now_ms() < end;) {
    pgtag_pool_stats(pool, &st);
    if (st.connect_failures >= 5)
      break;
    memset(&q, 0, sizeof q);
    assert_int_equal(query_in(pool, ctx, "SELECT 1", &q), PGTAG_OK);
    assert_true(run_until(&loop, &q.calls, 1, 1000));
    assert_done(&q, ctx, PGTAG_ECONN);
    assert_string_equal(q.sqlstate, "3D000");
    run_for(&loop, 10); /* the next request comes 10 ms later */
  }
  pgtag_pool_stats(pool, &st);
  assert_true(st.connect_failures >= 5);
  assert_int_equal(st.connects, 0);
  assert_int_equal(count_lines(PGTAG_LOG_WARN, "connection attempt failed"), 1);
  assert_int_equal(count_lines(PGTAG_LOG_WARN, "does not exist"), 1);
  assert_true(count_lines(PGTAG_LOG_DEBUG, "connection attempt failed") >= 4);

  /* The DBA creates it: the pool serves again, and says so once. */
  admin_exec("CREATE DATABASE pgtag_missing_db");
  int served = 0;
  for (uint64_t end = wait_deadline(5000); !served && now_ms() < end;) {
    memset(&q, 0, sizeof q);
    assert_int_equal(query_in(pool, ctx, "SELECT current_database()", &q), PGTAG_OK);
    assert_true(run_until(&loop, &q.calls, 1, 2000));
    if (q.code == PGTAG_OK) {
      assert_string_equal(q.value, "pgtag_missing_db");
      served = 1;
    } else {
      assert_done(&q, ctx, PGTAG_ECONN); /* only until the next attempt */
      run_for(&loop, 10);                /* the next request comes 10 ms later */
    }
  }
  assert_true(served);
  assert_int_equal(count_lines(PGTAG_LOG_WARN, "connected again after"), 1);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* The database the test above creates, dropped again even when it failed
 * half-way: the shared server is left as it was. */
static int drop_missing_db(void **state) {
  (void)state;
  admin_exec("DROP DATABASE IF EXISTS pgtag_missing_db WITH (FORCE)");
  return 0;
}

static void unknown_role_fails_fast(void **state) {
  (void)state;
  char conninfo[1024];
  pgtag_pool_config cfg;
  capturing_config(&cfg, PGTAG_LOG_WARN);
  snprintf(conninfo, sizeof conninfo, "%s user=pgtag_no_such_role", test_conninfo());
  cfg.conninfo = conninfo;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *ctx = pgtag_ctx_new("who-am-i");
  rec q = {0};
  uint64_t t0 = now_ms();
  query_in(pool, ctx, "SELECT 1", &q);
  assert_true(run_until(&loop, &q.calls, 1, 1000));
  assert_true(now_ms() - t0 < 1000);
  assert_done(&q, ctx, PGTAG_ECONN);
  assert_string_equal(q.sqlstate, "28000");
  assert_non_null(strstr(q.message, "role \"pgtag_no_such_role\" does not exist"));
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* A server that is down may come back: the request waits (acquire_timeout_ms)
 * and then names the connection error, whole. */
static void server_down_is_waited_for(void **state) {
  (void)state;
  char conninfo[256];
  pgtag_pool_config cfg;
  capturing_config(&cfg, PGTAG_LOG_WARN);
  snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d user=postgres dbname=postgres",
           refused_port());
  cfg.conninfo = conninfo;
  cfg.acquire_timeout_ms = 300;
  cfg.reconnect_base_ms = 20;
  cfg.reconnect_max_ms = 40;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  rec q = {0};
  uint64_t t0 = now_ms();
  query_in(pool, NULL, "SELECT 1", &q);
  assert_true(run_until(&loop, &q.calls, 1, 3000));
  assert_true(now_ms() - t0 >= 290);
  assert_done(&q, NULL, PGTAG_ETIMEDOUT);
  assert_string_equal(q.sqlstate, "");
  assert_non_null(strstr(q.message, "(last connection error: connection to server at "
                                    "\"127.0.0.1\""));
  assert_non_null(strstr(q.message, "Connection refused"));
  assert_int_equal(q.message[strlen(q.message) - 1], ')'); /* whole, not cut */
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_true(st.connect_failures >= 3);
  assert_int_equal(count_lines(PGTAG_LOG_WARN, "connection attempt failed"), 1);
  test_pool_close(&loop, pool);
}

/* ------------------------------------------------------------------------
 * Closing
 * ------------------------------------------------------------------------ */

/* A reconnect is pending for seconds (backoff): close cancels it and
 * finishes at once, with or without a waiter; a second call before done
 * is ignored. */
static void close_with_backoff_pending(int with_waiter) {
  char conninfo[256];
  pgtag_pool_config cfg;
  capturing_config(&cfg, PGTAG_LOG_WARN);
  snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d", refused_port());
  cfg.conninfo = conninfo;
  cfg.acquire_timeout_ms = 100;
  cfg.reconnect_base_ms = 4000; /* the first retry: 2 to 4 s after a failure */
  cfg.reconnect_max_ms = 8000;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);

  rec q = {0}, w = {0};
  query_in(pool, NULL, "SELECT 1", &q);
  assert_true(run_until(&loop, &q.calls, 1, 3000));
  assert_done(&q, NULL, PGTAG_ETIMEDOUT); /* and the backoff is pending */
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.connect_failures, 1);
  if (with_waiter)
    query_in(pool, NULL, "SELECT 2", &w);

  int closed = 0, closed_twice = 0;
  uint64_t t0 = now_ms();
  pgtag_pool_close(pool, closed_cb, &closed);
  pgtag_pool_close(pool, closed_cb, &closed_twice); /* before done: ignored */
  assert_true(run_until(&loop, &closed, 1, 5000));
  uint64_t took = now_ms() - t0;
  if (took >= 500)
    fail_msg("pgtag_pool_close took %llu ms to call done", (unsigned long long)took);
  uv_run(&loop, UV_RUN_NOWAIT);
  assert_int_equal(closed, 1);
  assert_int_equal(closed_twice, 0);
  assert_int_equal(count_lines(PGTAG_LOG_WARN, "already closing"), 1);
  if (with_waiter)
    assert_done(&w, NULL, PGTAG_ECLOSED);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void close_does_not_wait_out_the_backoff(void **state) {
  (void)state;
  close_with_backoff_pending(0);
  assert_int_equal(uv_loop_init(&loop), 0);
  close_with_backoff_pending(1);
}

/* ------------------------------------------------------------------------
 * Log levels
 * ------------------------------------------------------------------------ */

/* INFO is the pool opened and closed, saying where it connects and never
 * the password; DEBUG adds each connection. */
static void log_levels_as_documented(void **state) {
  (void)state;
  char conninfo[1024];
  pgtag_pool_config cfg;
  snprintf(conninfo, sizeof conninfo, "%s password=not-for-logs-123", test_conninfo());

  for (pgtag_log_level level = PGTAG_LOG_DEBUG; level <= PGTAG_LOG_WARN; level++) {
    capturing_config(&cfg, level);
    cfg.conninfo = conninfo;
    cfg.name = "levels";
    pgtag_pool *pool = test_pool_new(&loop, &cfg);
    rec q = {0};
    query_in(pool, NULL, "SELECT 1", &q);
    assert_true(run_until(&loop, &q.calls, 1, 5000));
    assert_done(&q, NULL, PGTAG_OK);
    test_pool_close(&loop, pool);
    uv_loop_init(&loop);

    for (int i = 0; i < nlines; i++) {
      assert_true(lines[i].level >= level);
      assert_null(strstr(lines[i].text, "not-for-logs-123"));
    }
    int info = level <= PGTAG_LOG_INFO;
    assert_int_equal(count_lines(PGTAG_LOG_INFO, "pool opened: host "), info);
    assert_int_equal(count_lines(PGTAG_LOG_INFO, "database postgres, user postgres, "
                                                 "max_conns 4, min_conns 0"),
                     info);
    assert_int_equal(count_lines(PGTAG_LOG_INFO, "pool closed"), info);
    assert_int_equal(count_lines(PGTAG_LOG_DEBUG, "connected (backend "), level == PGTAG_LOG_DEBUG);
    /* nothing else happened that deserves a line */
    assert_int_equal(nlines, 3 * (level == PGTAG_LOG_DEBUG) + 2 * (level == PGTAG_LOG_INFO));
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(parses_libpq_connection_errors),
      cmocka_unit_test_setup_teardown(missing_database_fails_fast_then_recovers, loop_setup,
                                      drop_missing_db),
      cmocka_unit_test_setup(unknown_role_fails_fast, loop_setup),
      cmocka_unit_test_setup(server_down_is_waited_for, loop_setup),
      cmocka_unit_test_setup(close_does_not_wait_out_the_backoff, loop_setup),
      cmocka_unit_test_setup(log_levels_as_documented, loop_setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
