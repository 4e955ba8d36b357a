#include "harness.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int in_submit;
pgtag_errcode _submit_rc;
int completions;

/* The statement cache's form of sql: "EXECUTE _pgtag_<digits>", its
 * arguments or none, then sql as a comment, whitespace runs made one
 * space (test statements are short and hold no comment delimiters). */
static int cached_form(const char *s, size_t len, const char *sql, size_t sql_len) {
  const char *p = "EXECUTE _pgtag_";
  size_t n = strlen(p);
  if (len < n + 1 || strncmp(s, p, n) != 0 || s[n] < '0' || s[n] > '9')
    return 0;
  char excerpt[512];
  size_t e = 0;
  int space = 0;
  e += (size_t)snprintf(excerpt, sizeof excerpt, " /* ");
  for (size_t i = 0; i < sql_len && e < sizeof excerpt - 8; i++) {
    if (sql[i] == ' ' || sql[i] == '\n' || sql[i] == '\t') {
      space = e > 4;
      continue;
    }
    if (space)
      excerpt[e++] = ' ';
    space = 0;
    excerpt[e++] = sql[i];
  }
  memcpy(excerpt + e, " */", 4);
  e += 3;
  return len > n + e && memcmp(s + len - e, excerpt, e) == 0;
}

int sent_as(const char *seen, const char *want) {
  if (strcmp(seen, want) == 0)
    return 1;
  size_t sl = strlen(seen), wl = strlen(want);
  if (strncmp(want, "/* ", 3) == 0 && strstr(want, " */ ") != NULL) { /* prefix */
    size_t tag = (size_t)(strstr(want, " */ ") - want) + 4;
    return sl > tag && strncmp(seen, want, tag) == 0 &&
           cached_form(seen + tag, sl - tag, want + tag, wl - tag);
  }
  const char *c = strstr(want, " /*");
  if (c != NULL && wl >= 2 && strcmp(want + wl - 2, "*/") == 0) { /* sqlcommenter */
    size_t tag = wl - (size_t)(c - want);
    return sl > tag && strcmp(seen + sl - tag, want + wl - tag) == 0 &&
           cached_form(seen, sl - tag, want, wl - tag);
  }
  return cached_form(seen, sl, want, wl); /* untagged */
}

int time_scale(void) {
  const char *s = getenv("PGTAG_TEST_TIME_SCALE");
  int n = s != NULL ? atoi(s) : 1;
  return n >= 1 ? n : 1;
}

uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

const char *test_conninfo(void) {
  const char *c = getenv("PGTAG_TEST_CONNINFO");
  if (c == NULL || c[0] == '\0')
    fail_msg("PGTAG_TEST_CONNINFO is not set: run the tests with ./run test, "
             "which starts the throwaway server");
  return c;
}

static PGconn *admin;

static void ignore_notice(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

static PGconn *admin_conn(void) {
  if (admin == NULL || PQstatus(admin) != CONNECTION_OK) {
    PQfinish(admin);
    admin = PQconnectdb(test_conninfo());
    if (PQstatus(admin) != CONNECTION_OK)
      fail_msg("admin connection failed: %s", PQerrorMessage(admin));
    PQsetNoticeProcessor(admin, ignore_notice, NULL);
  }
  return admin;
}

static PGresult *admin_run(const char *sql) {
  PGresult *res = PQexec(admin_conn(), sql);
  if (PQstatus(admin) == CONNECTION_BAD) { /* the server was restarted */
    PQclear(res);
    res = PQexec(admin_conn(), sql);
  }
  ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
    PQclear(res);
    fail_msg("admin query failed: %s: %s", sql, msg);
  }
  return res;
}

void admin_exec(const char *sql) { PQclear(admin_run(sql)); }

void admin_value(const char *sql, char *out, size_t len) {
  PGresult *res = admin_run(sql);
  snprintf(out, len, "%s", PQntuples(res) > 0 && PQnfields(res) > 0 ? PQgetvalue(res, 0, 0) : "");
  PQclear(res);
}

int admin_int(const char *sql) {
  char v[64];
  admin_value(sql, v, sizeof v);
  return atoi(v);
}

static PGresult *run_on(const char *conninfo, const char *sql, PGconn **out) {
  PGconn *c = PQconnectdb(conninfo);
  if (PQstatus(c) != CONNECTION_OK) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
    PQfinish(c);
    fail_msg("connection to %s failed: %s", conninfo, msg);
  }
  PQsetNoticeProcessor(c, ignore_notice, NULL);
  PGresult *res = PQexec(c, sql);
  ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(c);
    fail_msg("query on %s failed: %s: %s", conninfo, sql, msg);
  }
  *out = c;
  return res;
}

int admin_int_on(const char *conninfo, const char *sql) {
  PGconn *c;
  PGresult *res = run_on(conninfo, sql, &c);
  int v = PQntuples(res) > 0 && PQnfields(res) > 0 ? atoi(PQgetvalue(res, 0, 0)) : 0;
  PQclear(res);
  PQfinish(c);
  return v;
}

void admin_exec_on(const char *conninfo, const char *sql) {
  PGconn *c;
  PQclear(run_on(conninfo, sql, &c));
  PQfinish(c);
}

static void shell(const char *line) {
  if (system(line) != 0)
    fail_msg("%s failed", line);
}

int dir_port(const char *dir) {
  char path[512];
  snprintf(path, sizeof path, "%s/port", dir);
  FILE *f = fopen(path, "r");
  int port = 0;
  if (f == NULL || fscanf(f, "%d", &port) != 1)
    fail_msg("no port in %s", path);
  fclose(f);
  return port;
}

void pair_start(server_pair *p) {
  char line[1024];
  snprintf(p->dir, sizeof p->dir, "/tmp/pgtag-pair.XXXXXX");
  if (mkdtemp(p->dir) == NULL || chmod(p->dir, 0755) != 0)
    fail_msg("mkdtemp failed");
  snprintf(line, sizeof line,
           "export PGTAG_SERVER_OWNER=%d; '%s/tests/pgserver.sh' start '%s/p' && "
           "'%s/tests/pgserver.sh' standby '%s/s' '%s/p'",
           (int)getpid(), PGTAG_SOURCE_DIR, p->dir, PGTAG_SOURCE_DIR, p->dir, p->dir);
  shell(line);
  char d[300];
  snprintf(d, sizeof d, "%s/p", p->dir);
  p->primary_port = dir_port(d);
  snprintf(d, sizeof d, "%s/s", p->dir);
  p->standby_port = dir_port(d);
  snprintf(p->primary, sizeof p->primary, "host=%s/p port=%d user=postgres dbname=postgres", p->dir,
           p->primary_port);
  snprintf(p->standby, sizeof p->standby, "host=%s/s port=%d user=postgres dbname=postgres", p->dir,
           p->standby_port);
}

void pair_ctl(server_pair *p, const char *side, const char *cmd, const char *arg) {
  char line[1024];
  snprintf(line, sizeof line, "PGTAG_SERVER_OWNER=%d '%s/tests/pgserver.sh' %s '%s/%s' %s",
           (int)getpid(), PGTAG_SOURCE_DIR, cmd, p->dir, side, arg ? arg : "");
  shell(line);
}

void pair_stop(server_pair *p) {
  char line[1024];
  snprintf(line, sizeof line,
           "'%s/tests/pgserver.sh' stop '%s/s' immediate; "
           "'%s/tests/pgserver.sh' stop '%s/p' immediate; rm -rf '%s'",
           PGTAG_SOURCE_DIR, p->dir, PGTAG_SOURCE_DIR, p->dir, p->dir);
  if (system(line) != 0)
    fail_msg("%s failed", line);
}

static PGconn *gate;

void gate_shut(void) {
  admin_exec("CREATE OR REPLACE FUNCTION " GATE " RETURNS void LANGUAGE sql "
             "AS 'SELECT pg_advisory_xact_lock_shared(4242)'");
  if (gate != NULL)
    fail_msg("the gate is shut already");
  gate = PQconnectdb(test_conninfo());
  PGresult *res = PQexec(gate, "SELECT pg_advisory_lock(4242)");
  int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
  PQclear(res);
  if (!ok)
    fail_msg("the gate did not shut: %s", PQerrorMessage(gate));
}

void gate_open(void) {
  PQfinish(gate); /* the lock ends with the session */
  gate = NULL;
}

static char own_dir[256];

int own_server_setup(void **state) {
  (void)state;
  char line[1024], pgdir[300], v[600];
  snprintf(own_dir, sizeof own_dir, "/tmp/pgtag-own.XXXXXX");
  if (mkdtemp(own_dir) == NULL || chmod(own_dir, 0755) != 0)
    fail_msg("mkdtemp failed");
  snprintf(pgdir, sizeof pgdir, "%s/pg", own_dir);
  snprintf(line, sizeof line, "PGTAG_SERVER_OWNER=%d '%s/tests/pgserver.sh' start '%s'",
           (int)getpid(), PGTAG_SOURCE_DIR, pgdir);
  shell(line);
  int port = dir_port(pgdir);
  snprintf(v, sizeof v, "%d", port);
  setenv("PGPORT", v, 1);
  setenv("PGHOST", pgdir, 1);
  snprintf(v, sizeof v, "%s/data", pgdir);
  setenv("PGTAG_TEST_PGDATA", v, 1);
  snprintf(v, sizeof v, "host=%s port=%d user=postgres dbname=postgres", pgdir, port);
  setenv("PGTAG_TEST_CONNINFO", v, 1);
  PQfinish(admin); /* the next admin query connects to this server */
  admin = NULL;
  return 0;
}

int own_server_teardown(void **state) {
  (void)state;
  char line[1024];
  PQfinish(admin);
  admin = NULL;
  snprintf(line, sizeof line, "'%s/tests/pgserver.sh' stop '%s/pg' immediate; rm -rf '%s'",
           PGTAG_SOURCE_DIR, own_dir, own_dir);
  return system(line) == 0 ? 0 : -1;
}

static void on_deadline(uv_timer_t *t) { *(int *)t->data = 1; }

int run_until(uv_loop_t *lp, const int *flag, int want, int timeout_ms) {
  uv_timer_t timer;
  int expired = 0;
  uv_timer_init(lp, &timer);
  timer.data = &expired;
  uv_timer_start(&timer, on_deadline, (uint64_t)timeout_ms, 0);
  while (*flag < want && !expired)
    uv_run(lp, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&timer, NULL);
  uv_run(lp, UV_RUN_NOWAIT);
  return *flag >= want;
}

void run_for(uv_loop_t *lp, int ms) {
  int never = 0;
  run_until(lp, &never, 1, ms);
}

uint64_t wait_deadline(int timeout_ms) {
  return now_ms() + (uint64_t)timeout_ms * (uint64_t)time_scale();
}

int wait_step(uv_loop_t *lp, uint64_t end) {
  if (now_ms() >= end)
    return 0;
  if (lp != NULL)
    run_for(lp, 10);
  else
    usleep(10000);
  return 1;
}

uv_loop_t loop;

int loop_setup(void **state) {
  (void)state;
  completions = 0;
  /* a fresh admin session: what a failed test left open in it (a
   * transaction, a lock) must not reach the next test */
  PQfinish(admin);
  admin = NULL;
  gate_open();
  return uv_loop_init(&loop);
}

void wait_rec(const rec *r) {
  if (!run_until(&loop, &r->calls, 1, 20000 * time_scale()))
    fail_msg("no callback within %d ms", 20000 * time_scale());
}

void test_config(pgtag_pool_config *cfg) {
  pgtag_pool_config_init(cfg);
  cfg->conninfo = test_conninfo();
  cfg->max_conns = 4;
  cfg->name = "test";
}

pgtag_pool *test_pool_new(uv_loop_t *lp, const pgtag_pool_config *cfg) {
  pgtag_pool_config def;
  pgtag_pool *pool = NULL;
  if (cfg == NULL) {
    test_config(&def);
    cfg = &def;
  }
  assert_int_equal(pgtag_pool_new(lp, cfg, &pool), PGTAG_OK);
  assert_non_null(pool);
  return pool;
}

static void on_closed(void *arg) {
  (*(int *)arg)++;
  assert_null(pgtag_ctx_current()); /* pool work runs with no context */
}

void test_pool_close(uv_loop_t *lp, pgtag_pool *pool) {
  int closed = 0;
  pgtag_stats st;
  pgtag_pool_stats(pool, &st); /* what closing has to wait for */
  uint64_t t0 = now_ms();
  pgtag_pool_close(pool, on_closed, &closed);
  /* Closing waits for what runs: a cancelled statement may take up to
   * CANCEL_GRACE_MS (5 s) to end, the pool's ROLLBACK up to
   * RESET_TIMEOUT_MS (5 s) more; the bound is well above their sum. */
  if (!run_until(lp, &closed, 1, 30000 * time_scale()))
    fail_msg("the pool did not close in %llu ms; as it began: %d busy, %d held, %d connecting",
             (unsigned long long)(now_ms() - t0), st.busy, st.held, st.connecting);
  uint64_t took = now_ms() - t0;
  if (took > 1000)
    print_message("closing took %llu ms (as it began: %d busy, %d held, %d connecting)\n",
                  (unsigned long long)took, st.busy, st.held, st.connecting);
  assert_int_equal(closed, 1);
  uv_run(lp, UV_RUN_NOWAIT);
  assert_int_equal(uv_loop_close(lp), 0);
}

static void rec_common(rec *r, const pgtag_error *err) {
  r->calls++;
  r->ctx_seen = pgtag_ctx_current();
  r->order = ++completions;
  r->inside_submit = in_submit;
  r->code = err ? err->code : PGTAG_OK;
  snprintf(r->sqlstate, sizeof r->sqlstate, "%s", err && err->sqlstate ? err->sqlstate : "");
  snprintf(r->message, sizeof r->message, "%s", err ? err->message : "");
}

void rec_result(PGresult *res, const pgtag_error *err, void *arg) {
  rec *r = arg;
  rec_common(r, err);
  r->has_res = res != NULL;
  r->value[0] = r->value2[0] = '\0';
  if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0) {
    snprintf(r->value, sizeof r->value, "%s", PQgetvalue(res, 0, 0));
    if (PQnfields(res) > 1)
      snprintf(r->value2, sizeof r->value2, "%s", PQgetvalue(res, 0, 1));
  }
}

void rec_acquire(pgtag_conn conn, const pgtag_error *err, void *arg) {
  rec *r = arg;
  rec_common(r, err);
  r->conn = conn;
}

void server_ctl(const char *cmd, const char *mode) {
  const char *dir = getenv("PGHOST");
  char line[1024];
  assert_non_null(dir);
  snprintf(line, sizeof line, "'%s/tests/pgserver.sh' %s '%s' %s", PGTAG_SOURCE_DIR, cmd, dir,
           mode ? mode : "");
  if (system(line) != 0)
    fail_msg("%s failed", line);
}

void server_restart(const char *mode) { server_ctl("restart", mode); }

pgtag_errcode query_in(pgtag_pool *pool, pgtag_ctx *ctx, const char *sql, rec *r) {
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  pgtag_errcode rc = SUBMIT(pgtag_query(pool, sql, 0, NULL, rec_result, r));
  pgtag_ctx_leave(prev);
  return rc;
}

pgtag_errcode query_param_in(pgtag_pool *pool, pgtag_ctx *ctx, const char *sql, const char *param,
                             rec *r) {
  const char *vals[1] = {param};
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  pgtag_errcode rc = SUBMIT(pgtag_query(pool, sql, 1, vals, rec_result, r));
  pgtag_ctx_leave(prev);
  return rc;
}

pgtag_errcode acquire_in_at(pgtag_pool *pool, pgtag_ctx *ctx, rec *r, const char *file, int line,
                            const char *func) {
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  pgtag_errcode rc = SUBMIT(pgtag_acquire_at(pool, rec_acquire, r, file, line, func));
  pgtag_ctx_leave(prev);
  return rc;
}

pgtag_errcode conn_query_in(pgtag_conn conn, pgtag_ctx *ctx, const char *sql, rec *r) {
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  pgtag_errcode rc = SUBMIT(pgtag_conn_query(conn, sql, 0, NULL, rec_result, r));
  pgtag_ctx_leave(prev);
  return rc;
}

void assert_done(const rec *r, pgtag_ctx *ctx, pgtag_errcode code) {
  assert_int_equal(r->calls, 1);
  assert_false(r->inside_submit);
  assert_ptr_equal(r->ctx_seen, ctx);
  if (r->code != code)
    fail_msg("expected %s, got %s: %s", pgtag_strerror(code), pgtag_strerror(r->code), r->message);
}
