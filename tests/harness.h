/* Helpers for the integration tests: the throwaway server's conninfo, a
 * blocking admin connection for setup and checks (the tests may block; the
 * library may not), and running the loop until something happened. */
#ifndef PGTAG_HARNESS_H
#define PGTAG_HARNESS_H

#include "pgtag.h"

#include <stdint.h>

/* The server started by tests/pgserver.sh; fails the test when absent. */
const char *test_conninfo(void);

/* Run sql on a blocking admin connection; fails the test on error. */
void admin_exec(const char *sql);
/* First column of the first row, copied into out ("" for none/NULL). */
void admin_value(const char *sql, char *out, size_t len);
int admin_int(const char *sql);

/* Run the loop until *flag >= want or timeout_ms passed; returns 1 when the
 * flag got there. */
int run_until(uv_loop_t *lp, const int *flag, int want, int timeout_ms);
/* Run the loop for ms milliseconds.  Only to show that something does NOT
 * happen within a time, or to let time pass on purpose: a test waiting for
 * something to happen waits for it (run_until, WAIT_FOR). */
void run_for(uv_loop_t *lp, int ms);

/* Run lp (or, when lp is NULL, sleep) until cond holds, testing it every
 * 10 ms, for timeout_ms at most, scaled by time_scale().  A generous bound
 * for a wait on something that should happen: the caller then asserts
 * cond, which may have been false all along. */
#define WAIT_FOR(lp, cond, timeout_ms)              \
  do {                                              \
    uint64_t wait_end_ = wait_deadline(timeout_ms); \
    while (!(cond) && wait_step((lp), wait_end_))   \
      continue;                                     \
  } while (0)
uint64_t wait_deadline(int timeout_ms);
/* One step of WAIT_FOR: 0 once past end, else runs loop (sleeps) 10 ms. */
int wait_step(uv_loop_t *lp, uint64_t end);

/* The loop the tests of a program run on, one test at a time. */
extern uv_loop_t loop;
/* A cmocka setup: a fresh loop, completions 0, a fresh admin session.
 * Each test closes the loop (test_pool_close or uv_loop_close). */
int loop_setup(void **state);

/* A pool on loop with test defaults: the test server, max_conns 4. */
void test_config(pgtag_pool_config *cfg);
pgtag_pool *test_pool_new(uv_loop_t *lp, const pgtag_pool_config *cfg);
/* Close the pool, wait for done, and check the loop is left with nothing
 * (uv_loop_close succeeds). */
void test_pool_close(uv_loop_t *lp, pgtag_pool *pool);

/* Set while a test is inside a submitting call; callbacks fail the test if
 * they see it set. */
extern int in_submit;
#define SUBMIT(call) (in_submit = 1, _submit_rc = (call), in_submit = 0, _submit_rc)
extern pgtag_errcode _submit_rc;

/* What one query's callback saw. */
typedef struct {
  int calls;
  pgtag_ctx *ctx_seen; /* current context during the callback */
  pgtag_errcode code;
  char sqlstate[6];
  char message[256];
  int has_res;
  char value[4096];  /* row 0, column 0 */
  char value2[4096]; /* row 0, column 1 */
  int order;         /* global completion order */
  pgtag_conn conn;   /* acquire: the connection */
  int inside_submit; /* the callback ran inside a submitting call */
} rec;

extern int completions; /* bumped by every rec callback */

/* Run the loop until r's callback ran; fails the test after 20 s (scaled). */
void wait_rec(const rec *r);

void rec_result(PGresult *res, const pgtag_error *err, void *arg);
void rec_acquire(pgtag_conn conn, const pgtag_error *err, void *arg);

/* Submit with ctx current, as a request would. */
pgtag_errcode query_in(pgtag_pool *pool, pgtag_ctx *ctx, const char *sql, rec *r);
pgtag_errcode conn_query_in(pgtag_conn conn, pgtag_ctx *ctx, const char *sql, rec *r);
/* query_in with one parameter, $1. */
pgtag_errcode query_param_in(pgtag_pool *pool, pgtag_ctx *ctx, const char *sql, const char *param,
                             rec *r);
/* A macro, so leak reports name the test's line, as pgtag_acquire would. */
#define acquire_in(pool, ctx, r) acquire_in_at((pool), (ctx), (r), __FILE__, __LINE__, __func__)
pgtag_errcode acquire_in_at(pgtag_pool *pool, pgtag_ctx *ctx, rec *r, const char *file, int line,
                            const char *func);

/* Exactly one callback, outside any submitting call, in ctx, with code. */
void assert_done(const rec *r, pgtag_ctx *ctx, pgtag_errcode code);

uint64_t now_ms(void);

/* How much slower than the machine's own pace the tests run:
 * PGTAG_TEST_TIME_SCALE (./run sets 10 under valgrind), else 1.  Upper
 * bounds on how long something may take are multiplied by it. */
int time_scale(void);

/* The text the server saw for a query (current_query(), pg_stat_activity)
 * is want, the query as tagged, or its form through the statement cache:
 * the same tag around "EXECUTE _pgtag_<n>" and its arguments.  Nonzero
 * when it is; sent_as_explain says why not. */
int sent_as(const char *seen, const char *want);
#define assert_sent_as(seen, want)                                                    \
  do {                                                                                \
    if (!sent_as((seen), (want)))                                                     \
      fail_msg("the server saw \"%s\", not \"%s\" (or its EXECUTE)", (seen), (want)); \
  } while (0)

/* One query on a fresh blocking connection to conninfo; the first column
 * of the first row as an int (0 for none).  Fails the test on error. */
int admin_int_on(const char *conninfo, const char *sql);
void admin_exec_on(const char *conninfo, const char *sql);

/* A primary and a streaming standby of it (tests/pgserver.sh start and
 * standby), each on its own socket directory and port, under a temporary
 * directory: for the failover and replica tests. */
/* The port a server of tests/pgserver.sh or tests/pgbouncer.sh started in
 * dir listens on (dir/port); fails the test when there is none. */
int dir_port(const char *dir);

typedef struct {
  char dir[256];
  char primary[512]; /* conninfo of each */
  char standby[512];
  int primary_port, standby_port;
} server_pair;
void pair_start(server_pair *p);
/* tests/pgserver.sh cmd on one side ("p" or "s"), e.g. stop immediate. */
void pair_ctl(server_pair *p, const char *side, const char *cmd, const char *arg);
void pair_stop(server_pair *p);

/* A gate on the test server.  While it is shut, a query that calls GATE
 * (one row: "SELECT x FROM " GATE) waits, active on the server, until the
 * test opens it: for a query that must still be running when the test
 * looks, however slow the machine; a pg_sleep of a fixed time is not that.
 * It waits as it runs, not as it is prepared (as a locked table would),
 * and it is a read to pgtag (pg_advisory_* by name is a write).  The gate
 * is an advisory lock held on a connection of its own; the next test's
 * loop_setup opens a gate a failed test left shut. */
#define GATE "pgtag_gate()"
void gate_shut(void);
void gate_open(void);

/* A server of the program's own, for a program that stops, restarts or
 * reconfigures its server: a cmocka group setup that starts one
 * (tests/pgserver.sh, in a temporary directory) and points the environment
 * at it (PGTAG_TEST_CONNINFO, PGHOST, PGPORT, PGTAG_TEST_PGDATA), so that
 * test_conninfo(), admin_exec() and server_ctl() act on it and never on
 * the server other programs share; and the group teardown that stops and
 * removes it.  A program that dies first takes its server with it
 * (PGTAG_SERVER_OWNER). */
int own_server_setup(void **state);
int own_server_teardown(void **state);

/* Restart the test server (pg_ctl restart -m mode); returns once it is up. */
void server_restart(const char *mode);
/* tests/pgserver.sh cmd (stop, up, restart) on the test server. */
void server_ctl(const char *cmd, const char *mode);

#endif
