/* pgtag's benchmark: simulated requests against a real server, one result
 * line of key=value pairs per run, for scripts (bench/compare.sh).
 *
 *   pgtag_bench [-w W1|W2|W3|HOT|SLOW] [-c concurrency] [-p pool] [-t seconds]
 *               [-d pipeline_depth] [-r rows] [-n] [-u] CONNINFO
 *
 *   W1  C concurrent requests over a pool of P connections; each request
 *       gets a fresh context with its own request ID, runs one tagged point
 *       select on pgbench_accounts with a random aid, and ends.
 *   W2  the same, but each request holds a connection for a transaction:
 *       BEGIN; SELECT; UPDATE pgbench_accounts; INSERT INTO pgbench_history;
 *       COMMIT (all five queued at once; pgtag runs them in order).
 *   W3  a burst of C requests (default 10,000) at once against the pool:
 *       pgtag's memory per waiting request, and the completion order.
 *   HOT C concurrent requests, each ONE autocommit statement
 *       UPDATE pgtag_bench_hot SET v = v + 1 WHERE id = $1 on a table of R
 *       rows (-r, default 4): the pipelining safety workload.  Reports the
 *       deadlocks the server broke (SQLSTATE 40P01 seen by a callback, and
 *       pg_stat_database's count), and checks that the table's sum equals
 *       the updates that succeeded: every statement applied exactly once.
 *   SLOW C concurrent requests of the W1 point select, and every 100 ms
 *       one more request runs SELECT pg_sleep(0.2): the head-of-line
 *       workload.  Reports the fast queries at or over 100 ms and the
 *       slowest; qps counts the fast queries only.
 *   -d  pipeline_depth (default: the library's); -d 1 turns pipelining off.
 *   -j  worker threads, each with its own loop and pool (connections and
 *       requests divided between them), as a server with a loop per
 *       thread runs pgtag; default 1.
 *   -n  no tag (tag_style NONE), to measure what tagging costs.
 *   -u  no statement cache (statement_cache 0): every query an unnamed
 *       statement, as before the cache.
 *
 * Heap allocations are counted by wrapping malloc, calloc and realloc at
 * link time (-Wl,--wrap): only calls from code linked statically, that is
 * pgtag and this program, which allocates nothing once running.  libpq and
 * libuv are shared libraries and not counted. */
#include "pgtag.h"

#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * Allocation counting
 * ------------------------------------------------------------------------ */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);

static unsigned long long allocs;
static long long live_bytes;

/* Relaxed atomics: with -j the workers allocate concurrently. */
static void count(long long bytes, int call) {
  __atomic_fetch_add(&allocs, (unsigned long long)call, __ATOMIC_RELAXED);
  __atomic_fetch_add(&live_bytes, bytes, __ATOMIC_RELAXED);
}

void *__wrap_malloc(size_t n) {
  void *p = __real_malloc(n);
  count(p ? (long long)malloc_usable_size(p) : 0, 1);
  return p;
}

void *__wrap_calloc(size_t n, size_t m) {
  void *p = __real_calloc(n, m);
  count(p ? (long long)malloc_usable_size(p) : 0, 1);
  return p;
}

void *__wrap_realloc(void *old, size_t n) {
  long long before = old ? (long long)malloc_usable_size(old) : 0;
  void *p = __real_realloc(old, n);
  count(p != NULL ? (long long)malloc_usable_size(p) - before : 0, 1);
  return p;
}

void __wrap_free(void *p) {
  if (p != NULL)
    count(-(long long)malloc_usable_size(p), 0);
  __real_free(p);
}

/* ------------------------------------------------------------------------
 * Options and measurements
 * ------------------------------------------------------------------------ */

static const char *workload = "W1";
static int concurrency = 64, pool_size = 8, seconds = 10, depth = 0, tagged = 1, threads = 1;
static int cached = 1;
static const char *conninfo;
static int naccounts = 1000000; /* pgbench scale 10 */
static int hot_rows = 4;        /* HOT: rows the updates share */

/* Per worker thread (-j): each has its own loop and pool, as a server with
 * one loop per thread has; the main thread is worker 0. */
#define LAT_MAX_US 2000000
static _Thread_local uv_loop_t *loop;
static _Thread_local pgtag_pool *pool;
static _Thread_local unsigned *latency; /* per microsecond, up to 2 s */
static _Thread_local unsigned long long lat_over, completed, queries, failures, next_id;
static _Thread_local uint64_t t_start, t_end;
static _Thread_local int running = 1, warm;
static _Thread_local unsigned long long allocs_at_warm, queries_at_warm;
static _Thread_local struct rusage ru_at_warm;

static _Thread_local uint64_t rng = 88172645463325252ULL;
static unsigned rand_aid(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (unsigned)(rng % (uint64_t)naccounts) + 1;
}

static void record_latency(uint64_t ns) {
  uint64_t us = ns / 1000;
  if (us < LAT_MAX_US)
    latency[us]++;
  else
    lat_over++;
}

static unsigned long long percentile_us(double p) {
  unsigned long long total = lat_over, seen = 0;
  for (int i = 0; i < LAT_MAX_US; i++)
    total += latency[i];
  unsigned long long want = (unsigned long long)(p * (double)total);
  for (int i = 0; i < LAT_MAX_US; i++) {
    seen += latency[i];
    if (seen > want)
      return (unsigned long long)i;
  }
  return LAT_MAX_US;
}

/* ------------------------------------------------------------------------
 * Requests
 * ------------------------------------------------------------------------ */

typedef struct {
  uint64_t started;
  pgtag_ctx *ctx;
  pgtag_conn conn;
  int steps;
  unsigned long long order; /* W3: submission number */
  char aid[16], delta[16], tid[16], bid[16];
} request;

static _Thread_local request *requests;
static unsigned long long w3_first, w3_done, w3_max_overtaken;
/* HOT and SLOW: one loop thread, so plain counters. */
static unsigned long long hot_applied, hot_deadlocks, slow_over_100ms, slow_max_us, slow_runs;

static void request_start(request *r);

static void request_end(request *r, int failed) {
  uint64_t now = uv_hrtime();
  record_latency(now - r->started);
  completed++;
  failures += failed != 0;
  pgtag_ctx_end(r->ctx);
  pgtag_ctx_unref(r->ctx);
  r->ctx = NULL;
  if (running)
    request_start(r);
}

static void on_select(PGresult *res, const pgtag_error *err, void *arg) {
  (void)res;
  queries++;
  request_end(arg, err != NULL);
}

static int is_deadlock(const pgtag_error *err) {
  return err != NULL && err->sqlstate != NULL && strcmp(err->sqlstate, "40P01") == 0;
}

static void on_hot(PGresult *res, const pgtag_error *err, void *arg) {
  (void)res;
  queries++;
  hot_deadlocks += is_deadlock(err);
  hot_applied += err == NULL;
  request_end(arg, err != NULL);
}

static void on_fast(PGresult *res, const pgtag_error *err, void *arg) {
  request *r = arg;
  uint64_t us = (uv_hrtime() - r->started) / 1000;
  if (warm && running) {
    slow_over_100ms += us >= 100000;
    if (us > slow_max_us)
      slow_max_us = us;
  }
  on_select(res, err, arg);
}

static void on_step(PGresult *res, const pgtag_error *err, void *arg) {
  request *r = arg;
  (void)res;
  queries++;
  if (err != NULL)
    r->steps = -1000; /* failed: still ends after the last step */
  if (++r->steps == 5 || r->steps == -995) {
    pgtag_release(r->conn);
    request_end(r, r->steps < 0);
  }
}

static void on_conn(pgtag_conn conn, const pgtag_error *err, void *arg) {
  request *r = arg;
  if (err != NULL) {
    request_end(r, 1);
    return;
  }
  r->conn = conn;
  r->steps = 0;
  snprintf(r->delta, sizeof r->delta, "%d", (int)(rand_aid() % 10001) - 5000);
  snprintf(r->tid, sizeof r->tid, "%u", rand_aid() % 100 + 1);
  snprintf(r->bid, sizeof r->bid, "%u", rand_aid() % 10 + 1);
  const char *sel[1] = {r->aid};
  const char *upd[2] = {r->delta, r->aid};
  const char *ins[4] = {r->tid, r->bid, r->aid, r->delta};
  pgtag_conn_query(conn, "BEGIN", 0, NULL, on_step, r);
  pgtag_conn_query(conn, "SELECT abalance FROM pgbench_accounts WHERE aid = $1", 1, sel, on_step,
                   r);
  pgtag_conn_query(conn, "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", 2,
                   upd, on_step, r);
  pgtag_conn_query(conn,
                   "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
                   "VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
                   4, ins, on_step, r);
  pgtag_conn_query(conn, "COMMIT", 0, NULL, on_step, r);
}

static void on_w3(PGresult *res, const pgtag_error *err, void *arg) {
  request *r = arg;
  (void)res;
  queries++;
  /* FIFO dispatch over P connections: a request can be overtaken only by
   * those dispatched just before it on other connections. */
  unsigned long long pos = w3_done++, order = r->order - w3_first;
  unsigned long long d = pos > order ? pos - order : order - pos;
  if (d > w3_max_overtaken)
    w3_max_overtaken = d;
  request_end(r, err != NULL);
}

/* Written by hand: the benchmark should spend its time in pgtag, not in
 * printf. */
static char *put_hex(char *p, unsigned long long v, int digits) {
  static const char hex[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; i--)
    p[i] = hex[v & 15], v >>= 4;
  return p + digits;
}

static void put_uint(char *p, unsigned v) {
  char tmp[12];
  int n = 0;
  do
    tmp[n++] = (char)('0' + v % 10);
  while ((v /= 10) > 0);
  while (n > 0)
    *p++ = tmp[--n];
  *p = '\0';
}

static pgtag_ctx *new_request_ctx(void) {
  char id[40], *p = id;
  /* An ID as a server would get it from X-Request-Id: UUID-shaped, unique. */
  unsigned long long n = ++next_id;
  p = put_hex(p, n * 2654435761ULL, 8);
  *p++ = '-';
  p = put_hex(p, n >> 32, 4);
  *p++ = '-';
  *p++ = '4';
  p = put_hex(p, n, 3);
  *p++ = '-';
  p = put_hex(p, 0x8000, 4);
  *p++ = '-';
  p = put_hex(p, n, 12);
  *p = '\0';
  return pgtag_ctx_new(id);
}

static void request_start(request *r) {
  if (r->ctx == NULL)
    r->ctx = new_request_ctx();
  r->started = uv_hrtime();
  put_uint(r->aid, rand_aid());
  const char *params[1] = {r->aid};
  pgtag_ctx *previous = pgtag_ctx_enter(r->ctx);
  pgtag_errcode rc;
  if (strcmp(workload, "W2") == 0) {
    rc = pgtag_acquire(pool, on_conn, r);
  } else if (strcmp(workload, "HOT") == 0) {
    char id[16];
    put_uint(id, rand_aid() % (unsigned)hot_rows + 1);
    const char *hot[1] = {id};
    rc = pgtag_query(pool, "UPDATE pgtag_bench_hot SET v = v + 1 WHERE id = $1", 1, hot, on_hot, r);
  } else if (strcmp(workload, "SLOW") == 0) {
    rc = pgtag_query(pool, "SELECT abalance FROM pgbench_accounts WHERE aid = $1", 1, params,
                     on_fast, r);
  } else if (strcmp(workload, "W3") == 0) {
    rc = pgtag_query(pool, "SELECT abalance FROM pgbench_accounts WHERE aid = $1", 1, params, on_w3,
                     r);
  } else {
    rc = pgtag_query(pool, "SELECT abalance FROM pgbench_accounts WHERE aid = $1", 1, params,
                     on_select, r);
  }
  pgtag_ctx_leave(previous);
  if (rc != PGTAG_OK) {
    fprintf(stderr, "pgtag_bench: submit refused: %s\n", pgtag_strerror(rc));
    exit(1);
  }
}

/* ------------------------------------------------------------------------
 * Phases: one second of warm-up, then the measured run
 * ------------------------------------------------------------------------ */

static _Thread_local uv_timer_t phase;
static uv_timer_t slow_timer; /* SLOW: the 200 ms query every 100 ms */

static void on_slow_done(PGresult *res, const pgtag_error *err, void *arg) {
  (void)res;
  (void)arg;
  slow_runs++;
  failures += err != NULL;
}

static void on_slow_tick(uv_timer_t *t) {
  (void)t;
  pgtag_ctx *ctx = new_request_ctx();
  pgtag_ctx *previous = pgtag_ctx_enter(ctx);
  pgtag_query(pool, "SELECT pg_sleep(0.2)", 0, NULL, on_slow_done, NULL);
  pgtag_ctx_leave(previous);
  pgtag_ctx_end(ctx);
  pgtag_ctx_unref(ctx);
}

static void on_closed(void *arg) { (void)arg; }

static void on_phase(uv_timer_t *t) {
  if (!warm) {
    warm = 1;
    memset(latency, 0, LAT_MAX_US * sizeof *latency);
    lat_over = completed = failures = 0;
    allocs_at_warm = allocs;
    queries_at_warm = queries;
    getrusage(RUSAGE_SELF, &ru_at_warm);
    t_start = uv_hrtime();
    uv_timer_start(t, on_phase, (uint64_t)seconds * 1000, 0);
    return;
  }
  t_end = uv_hrtime();
  running = 0;
  uv_close((uv_handle_t *)t, NULL);
  if (uv_is_active((uv_handle_t *)&slow_timer))
    uv_close((uv_handle_t *)&slow_timer, NULL);
}

static double cpu_seconds(const struct rusage *a, const struct rusage *b) {
  return (double)(b->ru_utime.tv_sec - a->ru_utime.tv_sec) +
         (double)(b->ru_utime.tv_usec - a->ru_utime.tv_usec) / 1e6 +
         (double)(b->ru_stime.tv_sec - a->ru_stime.tv_sec) +
         (double)(b->ru_stime.tv_usec - a->ru_stime.tv_usec) / 1e6;
}

/* What one worker measured. */
typedef struct {
  int index, requests, conns;
  unsigned long long queries, completed, failures, lat_over, allocs;
  double elapsed, cpu;
  unsigned *latency;
  int failed_to_start;
} worker;

static pgtag_pool *make_pool(int conns, int max_waiting) {
  pgtag_pool_config cfg;
  pgtag_pool *p = NULL;
  pgtag_pool_config_init(&cfg);
  cfg.conninfo = conninfo;
  cfg.name = "bench";
  cfg.max_conns = conns;
  cfg.min_conns = conns;
  cfg.max_waiting = max_waiting;
  cfg.acquire_timeout_ms = 60000;
  cfg.tag_style = tagged ? PGTAG_TAG_PREFIX : PGTAG_TAG_NONE;
  cfg.pipeline_depth = depth;
  if (!cached)
    cfg.statement_cache = 0;
  return pgtag_pool_new(loop, &cfg, &p) == PGTAG_OK ? p : NULL;
}

static void *run_worker(void *arg) {
  worker *w = arg;
  uv_loop_t own;
  loop = w->index == 0 ? uv_default_loop() : &own;
  if (w->index != 0)
    uv_loop_init(&own);
  latency = __real_calloc(LAT_MAX_US, sizeof *latency);
  requests = __real_calloc((size_t)w->requests, sizeof *requests);
  next_id = (unsigned long long)w->index << 40; /* IDs unique across workers */
  rng ^= (uint64_t)w->index * 0x9E3779B97F4A7C15ULL;
  pool = make_pool(w->conns, w->requests + 1);
  if (pool == NULL) {
    w->failed_to_start = 1;
    return NULL;
  }
  for (int i = 0; i < w->requests; i++)
    request_start(&requests[i]);
  uv_timer_init(loop, &phase);
  uv_timer_start(&phase, on_phase, 1000, 0);
  if (strcmp(workload, "SLOW") == 0) {
    uv_timer_init(loop, &slow_timer);
    uv_timer_start(&slow_timer, on_slow_tick, 100, 100);
  }
  uv_run(loop, UV_RUN_DEFAULT); /* ends once the last requests are done */

  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru); /* the process: all workers, same period */
  w->elapsed = (double)(t_end - t_start) / 1e9;
  w->queries = queries - queries_at_warm;
  w->completed = completed;
  w->failures = failures;
  w->lat_over = lat_over;
  w->latency = latency;
  w->cpu = cpu_seconds(&ru_at_warm, &ru);
  w->allocs = allocs - allocs_at_warm;
  pgtag_pool_close(pool, on_closed, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  __real_free(requests);
  if (w->index != 0)
    uv_loop_close(&own);
  return NULL;
}

static void run_steady(void) {
  worker *w = __real_calloc((size_t)threads, sizeof *w);
  pthread_t *tid = __real_calloc((size_t)threads, sizeof *tid);
  for (int t = 0; t < threads; t++) {
    w[t].index = t;
    w[t].requests = concurrency / threads + (t < concurrency % threads);
    w[t].conns = pool_size / threads + (t < pool_size % threads);
  }
  for (int t = 1; t < threads; t++)
    pthread_create(&tid[t], NULL, run_worker, &w[t]);
  run_worker(&w[0]);
  for (int t = 1; t < threads; t++)
    pthread_join(tid[t], NULL);

  /* Sums over the workers; CPU and allocations are the process's over the
   * measured period, as worker 0 saw them. */
  double qps = 0, rps = 0;
  unsigned long long q = 0, done = 0, failed = 0;
  for (int t = 0; t < threads; t++) {
    if (w[t].failed_to_start) {
      fprintf(stderr, "pgtag_bench: worker %d could not create its pool\n", t);
      exit(1);
    }
    qps += (double)w[t].queries / w[t].elapsed;
    rps += (double)w[t].completed / w[t].elapsed;
    q += w[t].queries;
    done += w[t].completed;
    failed += w[t].failures;
    if (t > 0) {
      for (int i = 0; i < LAT_MAX_US; i++)
        w[0].latency[i] += w[t].latency[i];
      w[0].lat_over += w[t].lat_over;
    }
  }
  latency = w[0].latency;
  lat_over = w[0].lat_over;
  failures = failed;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("workload=%s concurrency=%d pool=%d depth=%d tag=%d cache=%d threads=%d seconds=%.2f "
         "requests=%llu queries=%llu failures=%llu qps=%.0f rps=%.0f p50_us=%llu p99_us=%llu "
         "p999_us=%llu cpu_us_per_query=%.2f allocs_per_query=%.4f peak_rss_kb=%ld\n",
         workload, concurrency, pool_size, depth, tagged, cached, threads, w[0].elapsed, done, q,
         failed, qps, rps, percentile_us(0.50), percentile_us(0.99), percentile_us(0.999),
         w[0].cpu * 1e6 / (double)q, (double)w[0].allocs / (double)q, ru.ru_maxrss);
}

/* HOT: a table of hot_rows rows at zero, and the server's deadlock count
 * before the run.  Blocking libpq: this is the benchmark, not the pool. */
static void quiet(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

static PGconn *admin_connect(void) {
  PGconn *c = PQconnectdb(conninfo);
  if (PQstatus(c) != CONNECTION_OK) {
    fprintf(stderr, "pgtag_bench: %s", PQerrorMessage(c));
    exit(1);
  }
  PQsetNoticeProcessor(c, quiet, NULL);
  return c;
}

static long long admin_number(PGconn *c, const char *sql) {
  PGresult *res = PQexec(c, sql);
  ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
    fprintf(stderr, "pgtag_bench: %s: %s", sql, PQresultErrorMessage(res));
    exit(1);
  }
  long long v = st == PGRES_TUPLES_OK && PQntuples(res) > 0 ? atoll(PQgetvalue(res, 0, 0)) : 0;
  PQclear(res);
  return v;
}

#define DEADLOCKS_SQL "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"

static long long hot_setup(void) {
  char sql[256];
  PGconn *c = admin_connect();
  admin_number(
      c, "CREATE TABLE IF NOT EXISTS pgtag_bench_hot (id int PRIMARY KEY, v bigint NOT NULL)");
  admin_number(c, "TRUNCATE pgtag_bench_hot");
  snprintf(sql, sizeof sql, "INSERT INTO pgtag_bench_hot SELECT g, 0 FROM generate_series(1, %d) g",
           hot_rows);
  admin_number(c, sql);
  long long deadlocks = admin_number(c, DEADLOCKS_SQL);
  PQfinish(c);
  return deadlocks;
}

/* Every update that succeeded is in the table exactly once; the server's
 * count is read once the pool's backends have exited (they flush their
 * statistics then). */
static void hot_report(long long deadlocks_before) {
  PGconn *c = admin_connect();
  long long sum = admin_number(c, "SELECT coalesce(sum(v), 0) FROM pgtag_bench_hot");
  long long deadlocks = 0;
  for (int i = 0; i < 20; i++) {
    deadlocks = admin_number(c, DEADLOCKS_SQL) - deadlocks_before;
    if (deadlocks >= (long long)hot_deadlocks)
      break;
    usleep(100000);
  }
  PQfinish(c);
  printf("hot rows=%d deadlocks_client=%llu deadlocks_server=%lld applied=%llu table_sum=%lld "
         "exactly_once=%d\n",
         hot_rows, hot_deadlocks, deadlocks, hot_applied, sum, sum == (long long)hot_applied);
}

static void run_burst(void) {
  /* Warm the pool up first, so that the burst measures waiting, not
   * connecting. */
  running = 0;
  request_start(&requests[0]);
  uv_run(loop, UV_RUN_DEFAULT);
  completed = queries = failures = 0;
  /* The requests' contexts exist before they queue: what queueing costs
   * is measured alone. */
  long long before_ctx = live_bytes;
  for (int i = 0; i < concurrency; i++) {
    requests[i].ctx = new_request_ctx();
    requests[i].order = (unsigned long long)i;
  }
  long long before = live_bytes;
  w3_first = 0;
  w3_done = w3_max_overtaken = 0;
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < concurrency; i++)
    request_start(&requests[i]);
  long long during = live_bytes;
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  uv_run(loop, UV_RUN_DEFAULT);
  double elapsed = (double)(uv_hrtime() - t0) / 1e9;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("workload=W3 requests=%d pool=%d waiting_at_peak=%d completed=%llu failures=%llu "
         "seconds=%.2f bytes_per_waiting_request=%.0f bytes_per_context=%.0f "
         "max_overtaken=%llu p50_us=%llu p99_us=%llu peak_rss_kb=%ld\n",
         concurrency, pool_size, st.waiting, completed, failures, elapsed,
         (double)(during - before) / (double)concurrency,
         (double)(before - before_ctx) / (double)concurrency, w3_max_overtaken, percentile_us(0.5),
         percentile_us(0.99), ru.ru_maxrss);
}

int main(int argc, char **argv) {
  int opt;
  while ((opt = getopt(argc, argv, "w:c:p:t:d:j:r:nu")) != -1) {
    switch (opt) {
    case 'w':
      workload = optarg;
      break;
    case 'c':
      concurrency = atoi(optarg);
      break;
    case 'p':
      pool_size = atoi(optarg);
      break;
    case 't':
      seconds = atoi(optarg);
      break;
    case 'd':
      depth = atoi(optarg);
      break;
    case 'n':
      tagged = 0;
      break;
    case 'u':
      cached = 0;
      break;
    case 'j':
      threads = atoi(optarg);
      break;
    case 'r':
      hot_rows = atoi(optarg);
      break;
    default:
      fprintf(stderr, "usage: pgtag_bench [-w W1|W2|W3|HOT|SLOW] [-c n] [-p n] [-t s] [-d n] "
                      "[-j n] [-r rows] [-n] [-u] CONNINFO\n");
      return 2;
    }
  }
  int burst = strcmp(workload, "W3") == 0;
  if (burst && concurrency == 64)
    concurrency = 10000;
  conninfo = optind < argc ? argv[optind] : getenv("PGTAG_TEST_CONNINFO");
  if (conninfo == NULL || concurrency < 1 || seconds < 1 || threads < 1 || hot_rows < 1 ||
      threads > pool_size || threads > concurrency) {
    fprintf(stderr, "pgtag_bench: a conninfo (or PGTAG_TEST_CONNINFO) is required\n");
    return 2;
  }
  const char *scale = getenv("PGTAG_BENCH_ACCOUNTS");
  if (scale != NULL)
    naccounts = atoi(scale);

  if (depth == 0) { /* the library's default, reported as such */
    pgtag_pool_config defaults;
    pgtag_pool_config_init(&defaults);
    depth = defaults.pipeline_depth;
  }
  int hot = strcmp(workload, "HOT") == 0, slow = strcmp(workload, "SLOW") == 0;
  if ((hot || slow) && threads != 1) {
    fprintf(stderr, "pgtag_bench: HOT and SLOW run on one loop thread\n");
    return 2;
  }
  if (!burst) {
    long long deadlocks_before = hot ? hot_setup() : 0;
    run_steady();
    if (hot) {
      hot_report(deadlocks_before);
      return 0; /* deadlocks are failures the report counts, not the run's */
    }
    if (slow)
      printf("slow fast_at_or_over_100ms=%llu fast_max_us=%llu slow_queries=%llu\n",
             slow_over_100ms, slow_max_us, slow_runs);
    return failures == 0 ? 0 : 1;
  }
  latency = __real_calloc(LAT_MAX_US, sizeof *latency);
  requests = __real_calloc((size_t)concurrency, sizeof *requests);
  loop = uv_default_loop();
  pool = make_pool(pool_size, concurrency + 1);
  if (pool == NULL)
    return 1;
  run_burst();
  pgtag_pool_close(pool, on_closed, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  return failures == 0 ? 0 : 1;
}
