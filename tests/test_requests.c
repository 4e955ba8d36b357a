/* A request's context that cannot get lost silently, against the real
 * server: deadlines bound every operation of a request; the context comes
 * back across libuv's own timers, thread pool and file system requests;
 * lost and leaked contexts are reported; every EINVAL says why. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#include "context.h"
#include "harness.h"

/* ------------------------------------------------------------------------
 * Deadlines
 * ------------------------------------------------------------------------ */

static int running_tagged(const char *id) {
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
           "AND query LIKE '/* requestId=%s */%%'",
           id);
  return admin_int(sql);
}

/* 100 ms on a request running pg_sleep(60): ETIMEDOUT in its context
 * within 250 ms, and the query gone from the server (longer than any
 * bound of the wait for that, scaled or not). */
static void deadline_cancels_the_running_query(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *ctx = pgtag_ctx_new("deadline-run");
  rec r = {0};
  assert_int_equal(pgtag_ctx_set_deadline(ctx, 100), PGTAG_OK);
  uint64_t t0 = now_ms();
  query_in(pool, ctx, "SELECT pg_sleep(60)", &r);
  assert_true(run_until(&loop, &r.calls, 1, 5000));
  uint64_t took = now_ms() - t0;
  assert_done(&r, ctx, PGTAG_ETIMEDOUT);
  assert_non_null(strstr(r.message, "deadline"));
  print_message("ETIMEDOUT after %llu ms for a 100 ms deadline\n", (unsigned long long)took);
  assert_true(took >= 95 && took < 250 * (uint64_t)time_scale());
  WAIT_FOR(&loop, running_tagged("deadline-run") == 0, 5000); /* the cancel is on its way */
  assert_int_equal(running_tagged("deadline-run"), 0);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.deadlines, 1);
  assert_int_equal(st.statement_timeouts, 0);
  assert_int_equal(pgtag_ctx_time_left_ms(ctx), 0);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* Waiting for a connection: the waiter with a deadline fails at it
 * (within 50 ms), even behind one that waits on, and leaves the line. */
static void deadline_while_waiting_for_a_connection(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *holder = pgtag_ctx_new("holds-it"), *patient = pgtag_ctx_new("patient"),
            *hurried = pgtag_ctx_new("hurried");
  rec acq = {0}, first = {0}, second = {0};
  acquire_in(pool, holder, &acq);
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  query_in(pool, patient, "SELECT 'patient'", &first); /* no deadline, ahead */
  assert_int_equal(pgtag_ctx_set_deadline(hurried, 150), PGTAG_OK);
  uint64_t t0 = now_ms();
  query_in(pool, hurried, "SELECT 'hurried'", &second);
  assert_true(run_until(&loop, &second.calls, 1, 5000));
  uint64_t took = now_ms() - t0;
  assert_done(&second, hurried, PGTAG_ETIMEDOUT);
  print_message("ETIMEDOUT after %llu ms for a 150 ms deadline\n", (unsigned long long)took);
  assert_true(took >= 145 && took < 200 * (uint64_t)time_scale());
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.waiting, 1); /* the patient one waits on */
  assert_int_equal(first.calls, 0);
  pgtag_release(acq.conn);
  assert_true(run_until(&loop, &first.calls, 1, 5000));
  assert_done(&first, patient, PGTAG_OK);
  pgtag_ctx_unref(holder);
  pgtag_ctx_unref(patient);
  pgtag_ctx_unref(hurried);
  test_pool_close(&loop, pool);
}

/* A waiter's deadline passes and its callback, run while the pool looks
 * through the line, cancels the request waiting behind it: the pool's
 * walk is not thrown off by what the callback changed (it once followed
 * the cancelled one into the queue of deferred outcomes, and never came
 * back). */
typedef struct {
  rec r;
  pgtag_ctx *victim;
  int canceled;
} cancelling_rec;

static void cancel_victim(PGresult *res, const pgtag_error *err, void *arg) {
  cancelling_rec *c = arg;
  rec_result(res, err, &c->r);
  c->canceled = pgtag_ctx_cancel(c->victim);
}

static void an_expired_waiters_callback_may_change_the_line(void **state) {
  (void)state;
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.max_conns = 1;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  pgtag_ctx *holder = pgtag_ctx_new("holds-it"), *patient = pgtag_ctx_new("patient"),
            *hurried = pgtag_ctx_new("hurried"), *behind = pgtag_ctx_new("behind");
  rec acq = {0}, first = {0}, last = {0};
  cancelling_rec c = {.victim = behind};
  acquire_in(pool, holder, &acq);
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  query_in(pool, patient, "SELECT 'patient'", &first); /* no deadline: the head */
  assert_int_equal(pgtag_ctx_set_deadline(hurried, 100), PGTAG_OK);
  pgtag_ctx *previous = pgtag_ctx_enter(hurried);
  assert_int_equal(pgtag_query(pool, "SELECT 'hurried'", 0, NULL, cancel_victim, &c), PGTAG_OK);
  pgtag_ctx_leave(previous);
  query_in(pool, behind, "SELECT 'behind'", &last);
  assert_true(run_until(&loop, &last.calls, 1, 5000));
  assert_done(&c.r, hurried, PGTAG_ETIMEDOUT);
  assert_int_equal(c.canceled, 1);
  assert_done(&last, behind, PGTAG_ECANCELED);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.waiting, 1); /* the patient one waits on */
  pgtag_release(acq.conn);
  assert_true(run_until(&loop, &first.calls, 1, 5000));
  assert_done(&first, patient, PGTAG_OK);
  pgtag_ctx_unref(holder);
  pgtag_ctx_unref(patient);
  pgtag_ctx_unref(hurried);
  pgtag_ctx_unref(behind);
  test_pool_close(&loop, pool);
}

/* Submitted after the deadline: failed through its callback (from the
 * loop), and never sent: its effect is nowhere, nor its text in
 * pg_stat_statements. */
static void after_the_deadline_nothing_is_sent(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *ctx = pgtag_ctx_new("too-late");
  rec q = {0}, acq = {0};
  admin_exec("CREATE TABLE IF NOT EXISTS pgtag_late (marker text)");
  admin_exec("DELETE FROM pgtag_late");
  assert_int_equal(pgtag_ctx_set_deadline(ctx, 1), PGTAG_OK);
  WAIT_FOR(NULL, pgtag_ctx_time_left_ms(ctx) == 0, 1000);
  assert_int_equal(pgtag_ctx_time_left_ms(ctx), 0);
  assert_int_equal(query_in(pool, ctx, "INSERT INTO pgtag_late VALUES ('pgtag_never_sent')", &q),
                   PGTAG_OK);
  assert_int_equal(acquire_in(pool, ctx, &acq), PGTAG_OK);
  assert_int_equal(q.calls, 0); /* not inside the call */
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  assert_true(run_until(&loop, &q.calls, 1, 5000));
  assert_done(&q, ctx, PGTAG_ETIMEDOUT);
  assert_done(&acq, ctx, PGTAG_ETIMEDOUT);
  assert_int_equal(admin_int("SELECT count(*) FROM pgtag_late"), 0);
  assert_int_equal(admin_int("SELECT count(*) FROM pg_stat_statements "
                             "WHERE query LIKE '%pgtag_never_sent%'"),
                   0);
  /* a cleared deadline lets the request run again */
  assert_int_equal(pgtag_ctx_set_deadline(ctx, 0), PGTAG_OK);
  assert_int_equal(pgtag_ctx_time_left_ms(ctx), -1);
  memset(&q, 0, sizeof q);
  query_in(pool, ctx, "SELECT 'in time'", &q);
  assert_true(run_until(&loop, &q.calls, 1, 5000));
  assert_done(&q, ctx, PGTAG_OK);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* A held connection: its running query is cancelled at the deadline, the
 * query queued behind it fails unsent, and the connection stays held
 * until its holder releases it. */
static void deadline_on_a_held_connection(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *ctx = pgtag_ctx_new("held-deadline");
  rec acq = {0}, begin = {0}, slow = {0}, queued = {0};
  acquire_in(pool, ctx, &acq);
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  conn_query_in(acq.conn, ctx, "BEGIN", &begin);
  assert_true(run_until(&loop, &begin.calls, 1, 5000));
  assert_int_equal(pgtag_ctx_set_deadline(ctx, 150), PGTAG_OK);
  conn_query_in(acq.conn, ctx, "SELECT pg_sleep(5)", &slow);
  conn_query_in(acq.conn, ctx, "SELECT 'queued'", &queued);
  assert_true(run_until(&loop, &queued.calls, 1, 5000));
  assert_done(&slow, ctx, PGTAG_ETIMEDOUT);
  assert_string_equal(slow.sqlstate, "57014");
  assert_done(&queued, ctx, PGTAG_ETIMEDOUT);
  assert_true(pgtag_conn_held(acq.conn));
  assert_int_equal(pgtag_release(acq.conn), PGTAG_OK);
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* The effective limit is the smallest of the query's own timeout and the
 * time the request has left, and the message says which it was. */
static void the_smaller_limit_wins(void **state) {
  (void)state;
  pgtag_pool *pool = test_pool_new(&loop, NULL);
  pgtag_ctx *a = pgtag_ctx_new("short-deadline"), *b = pgtag_ctx_new("short-timeout");
  rec ra = {0}, rb = {0};
  pgtag_query_opts long_timeout = {.timeout_ms = 10000}, short_timeout = {.timeout_ms = 100};
  pgtag_ctx_set_deadline(a, 100);
  pgtag_ctx_set_deadline(b, 10000);
  pgtag_ctx *prev = pgtag_ctx_enter(a);
  pgtag_query_ex(pool, "SELECT pg_sleep(5)", 0, NULL, &long_timeout, rec_result, &ra);
  pgtag_ctx_enter(b);
  pgtag_query_ex(pool, "SELECT pg_sleep(5)", 0, NULL, &short_timeout, rec_result, &rb);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &completions, 2, 5000));
  assert_done(&ra, a, PGTAG_ETIMEDOUT);
  assert_non_null(strstr(ra.message, "deadline"));
  assert_done(&rb, b, PGTAG_ETIMEDOUT);
  assert_non_null(strstr(rb.message, "statement timeout"));
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  test_pool_close(&loop, pool);
}

/* ------------------------------------------------------------------------
 * Hops through libuv
 * ------------------------------------------------------------------------ */

/* One request: a timer, work on the thread pool, a file read, a query;
 * at each step its own context must be current. */
typedef struct hop_req {
  pgtag_ctx *ctx;
  pgtag_timer timer;
  pgtag_work work;
  pgtag_fs fs;
  uv_buf_t buf;
  char bytes[16];
  unsigned long hash;
  rec q;
  struct hop_run *run;
} hop_req;

typedef struct hop_run {
  pgtag_pool *pool;
  uv_file file;
  int done, wrong, none, steps, closed;
  int worker_wrong;
} hop_run;

static void hop_check(hop_req *r) {
  pgtag_ctx *cur = pgtag_ctx_current();
  r->run->steps++;
  if (cur == NULL)
    r->run->none++;
  else if (cur != r->ctx)
    r->run->wrong++;
}

static void hop_queried(PGresult *res, const pgtag_error *err, void *arg) {
  hop_req *r = arg;
  rec_result(res, err, &r->q);
  hop_check(r);
  char want[96];
  snprintf(want, sizeof want, "/* requestId=%s */ SELECT current_query()",
           pgtag_ctx_request_id(r->ctx));
  if (err != NULL || !sent_as(r->q.value, want))
    r->run->wrong++;
  r->run->done++;
}

static void hop_read(pgtag_fs *fs) {
  hop_req *r = fs->data;
  hop_check(r);
  if (fs->req.result != 4 || memcmp(r->bytes, "hop!", 4) != 0)
    r->run->wrong++;
  uv_fs_req_cleanup(&fs->req);
  /* the query goes out from here, in the context the request began in */
  if (pgtag_query(r->run->pool, "SELECT current_query()", 0, NULL, hop_queried, r) != PGTAG_OK)
    r->run->wrong++;
}

static void hop_worked(pgtag_work *w, int status) {
  hop_req *r = w->data;
  hop_check(r);
  if (status != 0)
    r->run->wrong++;
  r->buf = uv_buf_init(r->bytes, sizeof r->bytes);
  uv_fs_cb cb = pgtag_fs_start(&r->fs, hop_read);
  if (uv_fs_read(w->req.loop, &r->fs.req, r->run->file, &r->buf, 1, 0, cb) != 0) {
    pgtag_fs_abandon(&r->fs);
    r->run->wrong++;
  }
}

static void hop_work(pgtag_work *w) { /* on a thread of the pool */
  hop_req *r = w->data;
  if (pgtag_ctx_current() != r->ctx)
    __atomic_fetch_add(&r->run->worker_wrong, 1, __ATOMIC_RELAXED);
  const char *id = pgtag_ctx_request_id(pgtag_ctx_current());
  unsigned long h = 5381;
  for (int i = 0; i < 2000; i++) /* a little hashing, as a password check would */
    for (const char *p = id; p != NULL && *p != '\0'; p++)
      h = h * 33 + (unsigned char)*p;
  r->hash = h;
}

static void hop_timed(pgtag_timer *t) {
  hop_req *r = t->data;
  hop_check(r);
  if (pgtag_queue_work(t->handle.loop, &r->work, hop_work, hop_worked) != 0)
    r->run->wrong++;
}

static void hop_timer_closed(pgtag_timer *t) {
  hop_req *r = t->data;
  r->run->closed++;
}

static void every_hop_keeps_its_context(void **state) {
  (void)state;
  enum { N = 1000 };
  hop_run run;
  memset(&run, 0, sizeof run);
  run.pool = test_pool_new(&loop, NULL);
  char path[] = "/tmp/pgtag-hop.XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, "hop!", 4), 4);
  close(fd);
  uv_fs_t open_req;
  run.file = uv_fs_open(NULL, &open_req, path, 0, 0, NULL); /* synchronous: setup only */
  uv_fs_req_cleanup(&open_req);
  assert_true(run.file >= 0);
  hop_req *reqs = calloc(N, sizeof *reqs);
  for (int i = 0; i < N; i++) {
    char id[32];
    snprintf(id, sizeof id, "hop-%d", i);
    reqs[i].ctx = pgtag_ctx_new(id);
    reqs[i].run = &run;
    reqs[i].timer.data = reqs[i].work.data = reqs[i].fs.data = &reqs[i];
    assert_int_equal(pgtag_timer_init(&loop, &reqs[i].timer), 0);
    pgtag_ctx *prev = pgtag_ctx_enter(reqs[i].ctx);
    assert_int_equal(pgtag_timer_start(&reqs[i].timer, hop_timed, (uint64_t)(i % 7), 0), 0);
    pgtag_ctx_leave(prev);
  }
  assert_null(pgtag_ctx_current());
  assert_true(run_until(&loop, &run.done, N, 60000));
  print_message("%d requests, %d steps checked: %d in another's context, %d in none, "
                "%d on a worker thread in the wrong one\n",
                run.done, run.steps, run.wrong, run.none, run.worker_wrong);
  assert_int_equal(run.wrong, 0);
  assert_int_equal(run.none, 0);
  assert_int_equal(run.worker_wrong, 0);
  assert_int_equal(run.steps, 4 * N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(reqs[i].ctx->refs, 1); /* every hop let its context go */
    pgtag_timer_close(&reqs[i].timer, hop_timer_closed);
  }
  assert_true(run_until(&loop, &run.closed, N, 5000));
  for (int i = 0; i < N; i++)
    pgtag_ctx_unref(reqs[i].ctx);
  free(reqs);
  uv_fs_t close_req;
  uv_fs_close(NULL, &close_req, run.file, NULL);
  uv_fs_req_cleanup(&close_req);
  unlink(path);
  test_pool_close(&loop, run.pool);
}

/* A repeating timer: each tick in the context it was started in; started
 * again from another context, it runs in that one; stopped, it lets the
 * context go. */
typedef struct {
  pgtag_ctx *want;
  int ticks, wrong;
} tick_run;

static void on_tick(pgtag_timer *t) {
  tick_run *run = t->data;
  if (pgtag_ctx_current() != run->want)
    run->wrong++;
  run->ticks++;
}

static void a_repeating_timer_keeps_its_context_until_stopped(void **state) {
  (void)state;
  pgtag_ctx *a = pgtag_ctx_new("ticks-a"), *b = pgtag_ctx_new("ticks-b");
  tick_run run = {a, 0, 0};
  pgtag_timer t;
  assert_int_equal(pgtag_timer_init(&loop, &t), 0);
  t.data = &run;
  pgtag_ctx *prev = pgtag_ctx_enter(a);
  assert_int_equal(pgtag_timer_start(&t, on_tick, 1, 1), 0);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &run.ticks, 3, 5000));
  assert_int_equal(a->refs, 2);
  prev = pgtag_ctx_enter(b); /* started again: b replaces a */
  run.want = b;
  assert_int_equal(pgtag_timer_start(&t, on_tick, 1, 1), 0);
  pgtag_ctx_leave(prev);
  assert_int_equal(a->refs, 1);
  assert_int_equal(b->refs, 2);
  run.ticks = 0;
  assert_true(run_until(&loop, &run.ticks, 3, 5000));
  assert_int_equal(pgtag_timer_stop(&t), 0);
  assert_int_equal(b->refs, 1);
  assert_int_equal(run.wrong, 0);
  pgtag_timer_close(&t, NULL);
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  uv_run(&loop, UV_RUN_NOWAIT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* The wrappers' bad arguments: errors, nothing captured. */
static void hop_wrappers_refuse_bad_arguments(void **state) {
  (void)state;
  pgtag_ctx *ctx = pgtag_ctx_new("bad-args");
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  pgtag_timer t;
  pgtag_work w;
  assert_int_equal(pgtag_timer_init(NULL, &t), UV_EINVAL);
  assert_int_equal(pgtag_timer_init(&loop, &t), 0);
  assert_int_equal(pgtag_timer_start(&t, NULL, 1, 0), UV_EINVAL);
  assert_int_equal(pgtag_queue_work(&loop, &w, NULL, NULL), UV_EINVAL);
  assert_int_equal(pgtag_queue_work(NULL, &w, (pgtag_work_cb)1, NULL), UV_EINVAL);
  assert_null(pgtag_fs_start(NULL, (pgtag_fs_cb)1));
  assert_int_equal(ctx->refs, 1);
  /* a repeating timer keeps its context until it is stopped */
  assert_int_equal(pgtag_timer_start(&t, (pgtag_timer_cb)1, 100000, 100000), 0);
  assert_int_equal(ctx->refs, 2);
  pgtag_timer_close(&t, NULL);
  assert_int_equal(ctx->refs, 1);
  pgtag_ctx_leave(prev);
  pgtag_ctx_unref(ctx);
  uv_run(&loop, UV_RUN_NOWAIT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ------------------------------------------------------------------------
 * Lost and leaked contexts, and the reasons of refusals
 * ------------------------------------------------------------------------ */

/* Every log line, kept for the tests to read. */
static char logged[64][512];
static pgtag_log_level logged_level[64];
static int nlogged;

static void keep_log(pgtag_log_level level, const char *msg, void *arg) {
  (void)arg;
  if (nlogged < 64) {
    logged_level[nlogged] = level;
    snprintf(logged[nlogged++], sizeof logged[0], "%s", msg);
  }
}

/* How many lines at level say all of the given words. */
static int lines_saying(pgtag_log_level level, const char *a, const char *b, const char *c) {
  int n = 0;
  for (int i = 0; i < nlogged; i++)
    if (logged_level[i] == level && strstr(logged[i], a) != NULL &&
        (b == NULL || strstr(logged[i], b) != NULL) && (c == NULL || strstr(logged[i], c) != NULL))
      n++;
  return n;
}

static pgtag_pool *logging_pool(pgtag_context_check check) {
  pgtag_pool_config cfg;
  test_config(&cfg);
  cfg.log = keep_log;
  cfg.context_check = check;
  nlogged = 0;
  return test_pool_new(&loop, &cfg);
}

/* A handler that forgets pgtag_ctx_leave: reported once, naming the
 * request and where it entered; the next request's query, in its own
 * context, carries its own tag. */
static void forgotten_leave_is_reported(void **state) {
  (void)state;
  pgtag_pool *pool = logging_pool(PGTAG_CONTEXT_ALLOW);
  pgtag_ctx *a = pgtag_ctx_new("forgets-to-leave"), *b = pgtag_ctx_new("next-request");
  rec ra = {0}, rb = {0};
  char site[64];
  snprintf(site, sizeof site, "test_requests.c:%d", __LINE__ + 1);
  pgtag_ctx_enter(a); /* and no pgtag_ctx_leave */
  assert_int_equal(pgtag_query(pool, "SELECT 'a'", 0, NULL, rec_result, &ra), PGTAG_OK);
  assert_true(run_until(&loop, &ra.calls, 1, 5000));
  /* said as the loop goes back to waiting */
  WAIT_FOR(&loop,
           lines_saying(PGTAG_LOG_WARN, "request forgets-to-leave", site, "pgtag_ctx_leave") > 0,
           5000);
  assert_int_equal(lines_saying(PGTAG_LOG_WARN, "request forgets-to-leave", site,
                                "pgtag_ctx_leave"),
                   1);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.left_current, 1);
  /* the next request enters its own context: its own tag */
  pgtag_ctx *prev = pgtag_ctx_enter(b);
  assert_int_equal(pgtag_query(pool, "SELECT current_query()", 0, NULL, rec_result, &rb), PGTAG_OK);
  pgtag_ctx_leave(prev);
  assert_true(run_until(&loop, &rb.calls, 1, 5000));
  assert_sent_as(rb.value, "/* requestId=next-request */ SELECT current_query()");
  pgtag_ctx_leave(NULL);
  run_for(&loop, 20); /* a time for a second report that must not come */
  pgtag_pool_stats(pool, &st);
  assert_int_equal(st.left_current, 1); /* reported once */
  pgtag_ctx_unref(a);
  pgtag_ctx_unref(b);
  test_pool_close(&loop, pool);
}

/* context_check at each level: no context, and an ended request. */
static void context_check_levels(void **state) {
  (void)state;
  static const pgtag_context_check levels[] = {PGTAG_CONTEXT_ALLOW, PGTAG_CONTEXT_WARN,
                                               PGTAG_CONTEXT_REJECT};
  for (int l = 0; l < 3; l++) {
    if (l > 0)
      assert_int_equal(uv_loop_init(&loop), 0);
    pgtag_pool *pool = logging_pool(levels[l]);
    pgtag_ctx *ended = pgtag_ctx_new("already-answered");
    pgtag_ctx_end(ended);
    rec r[6];
    memset(r, 0, sizeof r);
    pgtag_errcode rc[6];
    int line_none = __LINE__ + 2;
    for (int i = 0; i < 2; i++) /* one site, twice: reported once */
      rc[i] = pgtag_query(pool, "SELECT 1", 0, NULL, rec_result, &r[i]);
    pgtag_ctx *prev = pgtag_ctx_enter(ended);
    int line_ended = __LINE__ + 1;
    rc[2] = pgtag_query(pool, "SELECT 2", 0, NULL, rec_result, &r[2]);
    rc[3] = pgtag_acquire(pool, rec_acquire, &r[3]);
    pgtag_ctx_leave(prev);
    char none_site[64], ended_site[64];
    snprintf(none_site, sizeof none_site, "test_requests.c:%d", line_none);
    snprintf(ended_site, sizeof ended_site, "test_requests.c:%d", line_ended);
    if (levels[l] == PGTAG_CONTEXT_REJECT) {
      for (int i = 0; i < 4; i++)
        assert_int_equal(rc[i], PGTAG_EINVAL);
      assert_true(lines_saying(PGTAG_LOG_ERROR, none_site, "no request context", NULL) >= 1);
      assert_int_equal(lines_saying(PGTAG_LOG_ERROR, ended_site, "has ended", NULL), 1);
    } else {
      for (int i = 0; i < 4; i++)
        assert_int_equal(rc[i], PGTAG_OK);
      assert_true(run_until(&loop, &completions, 4, 5000));
      assert_int_equal(r[0].code, PGTAG_OK);
      pgtag_release(r[3].conn);
      int want = levels[l] == PGTAG_CONTEXT_WARN;
      assert_int_equal(lines_saying(PGTAG_LOG_WARN, none_site, "no request context", NULL), want);
      assert_int_equal(lines_saying(PGTAG_LOG_WARN, ended_site, "has ended", NULL), want);
    }
    pgtag_stats st;
    pgtag_pool_stats(pool, &st);
    assert_int_equal(st.no_context, 2); /* counted at every level */
    assert_int_equal(st.after_end, 2);
    char metrics[8192];
    pgtag_pool_metrics(pool, metrics, sizeof metrics);
    assert_non_null(strstr(metrics, "pgtag_no_context_total{pool=\"test\"} 2"));
    pgtag_ctx_unref(ended);
    completions = 0;
    test_pool_close(&loop, pool);
  }
  assert_int_equal(uv_loop_init(&loop), 0);
  uv_loop_close(&loop);
}

/* Every PGTAG_EINVAL says why, in one ERROR line with the call site, and
 * a hot loop repeating one mistake says it once a second. */
static void every_refusal_says_why(void **state) {
  (void)state;
  pgtag_pool *pool = logging_pool(PGTAG_CONTEXT_ALLOW);
  pgtag_ctx *ctx = pgtag_ctx_new("refused");
  pgtag_ctx *prev = pgtag_ctx_enter(ctx);
  rec r = {0};
  const char *vals[1] = {"1"};
  /* each checked as it happens: the line names the function, the
   * reason and this file and function as the site */
#define REFUSED(call, fn, why)                                           \
  do {                                                                   \
    int before_ = nlogged;                                               \
    assert_int_equal((call), PGTAG_EINVAL);                              \
    if (nlogged != before_ + 1 || strstr(logged[before_], fn) == NULL || \
        strstr(logged[before_], why) == NULL ||                          \
        strstr(logged[before_], "test_requests.c:") == NULL ||           \
        strstr(logged[before_], "every_refusal_says_why") == NULL)       \
      fail_msg("no one line saying \"%s: %s\" with its site", fn, why);  \
  } while (0)
  REFUSED(pgtag_query(pool, NULL, 0, NULL, rec_result, &r), "pgtag_query", "sql is NULL");
  REFUSED(pgtag_query(pool, "SELECT 1", 0, NULL, NULL, &r), "pgtag_query", "callback is NULL");
  REFUSED(pgtag_query(pool, "SELECT 1", -1, vals, rec_result, &r), "pgtag_query",
          "nparams is negative");
  REFUSED(pgtag_query(pool, "SELECT $1", 1, NULL, rec_result, &r), "pgtag_query", "values is NULL");
  REFUSED(pgtag_acquire(pool, NULL, &r), "pgtag_acquire", "callback is NULL");
  /* a connection handle that never was: no pool to log to, refused */
  assert_int_equal(pgtag_conn_query((pgtag_conn){0}, "SELECT 1", 0, NULL, rec_result, &r),
                   PGTAG_EINVAL);
#undef REFUSED
  /* a released connection, and a call off the loop thread */
  rec acq = {0};
  acquire_in(pool, ctx, &acq);
  assert_true(run_until(&loop, &acq.calls, 1, 5000));
  pgtag_release(acq.conn);
  assert_int_equal(pgtag_conn_query(acq.conn, "SELECT 1", 0, NULL, rec_result, &r), PGTAG_EINVAL);
  assert_int_equal(lines_saying(PGTAG_LOG_ERROR, "not held", "test_requests.c:", NULL), 1);
  assert_int_equal(pgtag_release(acq.conn), PGTAG_EINVAL);
  assert_int_equal(lines_saying(PGTAG_LOG_ERROR, "pgtag_release", "released twice", NULL), 1);
  /* one mistake in a hot loop: said once within the second */
  int before = nlogged;
  for (int i = 0; i < 1000; i++)
    pgtag_query(pool, NULL, 0, NULL, rec_result, &r);
  assert_int_equal(nlogged, before + 1);
  pgtag_ctx_leave(prev);
  run_for(&loop, 20);           /* a time for a callback that must not come */
  assert_int_equal(r.calls, 0); /* no refusal calls back */
  pgtag_ctx_unref(ctx);
  test_pool_close(&loop, pool);
}

/* From another thread: refused, and said. */
static pgtag_pool *offthread_pool;
static pgtag_errcode offthread_rc;
static void *offthread_query(void *arg) {
  (void)arg;
  rec r = {0};
  offthread_rc = pgtag_query(offthread_pool, "SELECT 1", 0, NULL, rec_result, &r);
  return NULL;
}

static void a_call_off_the_loop_thread_says_so(void **state) {
  (void)state;
  offthread_pool = logging_pool(PGTAG_CONTEXT_ALLOW);
  pthread_t t;
  pthread_create(&t, NULL, offthread_query, NULL);
  pthread_join(t, NULL);
  assert_int_equal(offthread_rc, PGTAG_EINVAL);
  assert_int_equal(lines_saying(PGTAG_LOG_ERROR, "off the pool's loop thread",
                                "test_requests.c:", NULL),
                   1);
  test_pool_close(&loop, offthread_pool);
}

/* W3C trace context: valid ones stored as the tag, invalid ones refused
 * (and not stored), the reason on stderr. */
static void traceparent_is_validated(void **state) {
  (void)state;
  pgtag_ctx *ctx = pgtag_ctx_new("traced");
  const char *good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  assert_int_equal(pgtag_ctx_set_traceparent(ctx, good), PGTAG_OK);
  assert_string_equal(pgtag_ctx_get(ctx, "traceparent"), good);
  /* a later version's extra fields are dropped */
  assert_int_equal(pgtag_ctx_set_traceparent(
                       ctx, "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
                   PGTAG_OK);
  assert_string_equal(pgtag_ctx_get(ctx, "traceparent"),
                      "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  static const char *const bad[] = {
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   /* zero trace ID */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   /* zero parent */
      "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* version ff */
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   /* upper case */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", /* 00 with more */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",      /* short */
      "00-4bf92f3577b34da6a3ce929d0e0e4736*/00f067aa0ba902b7-01",  "",
  };
  /* the reasons go to stderr: caught in a file */
  char path[] = "/tmp/pgtag-stderr.XXXXXX";
  int fd = mkstemp(path), saved = dup(2);
  dup2(fd, 2);
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    assert_int_equal(pgtag_ctx_set_traceparent(ctx, bad[i]), PGTAG_EINVAL);
  assert_int_equal(pgtag_ctx_set(ctx, "bad key", "x"), PGTAG_EINVAL);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  char said[2048] = "";
  lseek(fd, 0, SEEK_SET);
  ssize_t n = read(fd, said, sizeof said - 1);
  said[n > 0 ? n : 0] = '\0';
  close(fd);
  unlink(path);
  assert_non_null(strstr(said, "pgtag_ctx_set_traceparent: not a W3C traceparent"));
  assert_non_null(strstr(said, "pgtag_ctx_set: the key must be"));
  /* still the last good one */
  assert_string_equal(pgtag_ctx_get(ctx, "traceparent"),
                      "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  assert_int_equal(pgtag_ctx_set_traceparent(ctx, NULL), PGTAG_OK);
  assert_null(pgtag_ctx_get(ctx, "traceparent"));
  pgtag_ctx_unref(ctx);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(deadline_cancels_the_running_query, loop_setup),
      cmocka_unit_test_setup(deadline_while_waiting_for_a_connection, loop_setup),
      cmocka_unit_test_setup(an_expired_waiters_callback_may_change_the_line, loop_setup),
      cmocka_unit_test_setup(after_the_deadline_nothing_is_sent, loop_setup),
      cmocka_unit_test_setup(deadline_on_a_held_connection, loop_setup),
      cmocka_unit_test_setup(the_smaller_limit_wins, loop_setup),
      cmocka_unit_test_setup(every_hop_keeps_its_context, loop_setup),
      cmocka_unit_test_setup(a_repeating_timer_keeps_its_context_until_stopped, loop_setup),
      cmocka_unit_test_setup(hop_wrappers_refuse_bad_arguments, loop_setup),
      cmocka_unit_test_setup(forgotten_leave_is_reported, loop_setup),
      cmocka_unit_test_setup(context_check_levels, loop_setup),
      cmocka_unit_test_setup(every_refusal_says_why, loop_setup),
      cmocka_unit_test_setup(a_call_off_the_loop_thread_says_so, loop_setup),
      cmocka_unit_test_setup(traceparent_is_validated, loop_setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
