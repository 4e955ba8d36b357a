/* How fast a pool with the default settings follows a failover, and how
 * many connection attempts it makes meanwhile (bench/failover.sh runs it).
 *
 *   pgtag_failover_bench RUNS [WAITING_MAX_MS [PROMOTE_AFTER_MS [fence]]]
 *
 * Each run: a primary and a streaming standby of their own
 * (tests/pgserver.sh), a pool on both (target_session_attrs=read-write)
 * with every setting at its default (WAITING_MAX_MS, when given, sets
 * reconnect_waiting_max_ms), 64 requests writing all the time; the primary
 * is stopped (-m immediate; with "fence", made read-only instead), the
 * standby promoted PROMOTE_AFTER_MS later (default 300; a failover tool
 * takes seconds to decide).  One line per run: the first write after
 * `pg_ctl promote -w` returned, the outage (primary broken to that write),
 * the failed connection attempts, how many of them per second of outage. */
#include "pgtag.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

enum { WRITERS = 64 };

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

static void die(const char *what) {
  fprintf(stderr, "pgtag_failover_bench: %s\n", what);
  exit(1);
}

/* tests/pgserver.sh CMD DIR [ARG] */
static void ctl(const char *cmd, const char *dir, const char *arg) {
  char line[1024];
  snprintf(line, sizeof line, "'%s/tests/pgserver.sh' %s '%s' %s >/dev/null", PGTAG_SOURCE_DIR, cmd,
           dir, arg != NULL ? arg : "");
  if (system(line) != 0)
    die(line);
}

static void exec_on(const char *conninfo, const char *sql, char *out, size_t len) {
  PGconn *c = PQconnectdb(conninfo);
  PGresult *res = PQexec(c, sql);
  ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
    die(PQerrorMessage(c));
  if (out != NULL)
    snprintf(out, len, "%s", PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "");
  PQclear(res);
  PQfinish(c);
}

static int port_of(const char *dir) {
  char path[512];
  snprintf(path, sizeof path, "%s/port", dir);
  FILE *f = fopen(path, "r");
  int port = 0;
  if (f == NULL || fscanf(f, "%d", &port) != 1)
    die("no port file");
  fclose(f);
  return port;
}

typedef struct {
  pgtag_pool *pool;
  int stop, submitted, completed, ok;
  volatile uint64_t since; /* pg_ctl promote -w returned */
  uint64_t first_ok_after;
} writers;

static void submit(writers *w);

static void done(PGresult *res, const pgtag_error *err, void *arg) {
  writers *w = arg;
  (void)res;
  w->completed++;
  if (err == NULL) {
    w->ok++;
    if (w->since != 0 && w->first_ok_after == 0)
      w->first_ok_after = now_ms();
  }
  if (!w->stop)
    submit(w);
}

static void submit(writers *w) {
  if (pgtag_query(w->pool, "INSERT INTO fo_bench DEFAULT VALUES", 0, NULL, done, w) != PGTAG_OK)
    die("submit refused");
  w->submitted++;
}

typedef struct {
  char primary_dir[300], standby_dir[300], primary[512];
  int fence, promote_after_ms;
  writers *w;
  volatile uint64_t broken_at;
  volatile int finished;
} failover;

static void *failover_thread(void *arg) {
  failover *f = arg;
  sleep_ms(300);
  f->broken_at = now_ms();
  if (f->fence) {
    exec_on(f->primary, "ALTER SYSTEM SET default_transaction_read_only = on", NULL, 0);
    exec_on(f->primary, "SELECT pg_reload_conf()", NULL, 0);
  } else {
    ctl("stop", f->primary_dir, "immediate");
  }
  sleep_ms(f->promote_after_ms);
  ctl("promote", f->standby_dir, NULL);
  f->w->since = now_ms();
  f->finished = 1;
  return NULL;
}

static void on_tick(uv_timer_t *t) { (void)t; }

static void run_for(uv_loop_t *loop, int ms) {
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, on_tick, (uint64_t)ms, 0);
  uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

static void on_closed(void *arg) { *(int *)arg = 1; }

static void one_run(int run, int waiting_max_ms, int promote_after_ms, int fence) {
  char dir[] = "/tmp/pgtag-fobench.XXXXXX";
  if (mkdtemp(dir) == NULL || chmod(dir, 0755) != 0)
    die("mkdtemp");
  failover f = {.fence = fence, .promote_after_ms = promote_after_ms};
  snprintf(f.primary_dir, sizeof f.primary_dir, "%s/p", dir);
  snprintf(f.standby_dir, sizeof f.standby_dir, "%s/s", dir);
  ctl("start", f.primary_dir, NULL);
  snprintf(f.primary, sizeof f.primary, "host=%s port=%d user=postgres dbname=postgres",
           f.primary_dir, port_of(f.primary_dir));
  exec_on(f.primary, "CREATE TABLE fo_bench (at timestamptz DEFAULT now())", NULL, 0);
  char quoted[320];
  snprintf(quoted, sizeof quoted, "'%s'", f.primary_dir);
  ctl("standby", f.standby_dir, quoted);
  char standby[512], conninfo[1024], count[32] = "0";
  snprintf(standby, sizeof standby, "host=%s port=%d user=postgres dbname=postgres", f.standby_dir,
           port_of(f.standby_dir));
  for (int i = 0; i < 100 && strcmp(count, "1") != 0; i++) {
    exec_on(standby, "SELECT count(*) FROM pg_tables WHERE tablename = 'fo_bench'", count,
            sizeof count);
    sleep_ms(20);
  }
  snprintf(conninfo, sizeof conninfo,
           "host=%s,%s port=%d,%d user=postgres dbname=postgres "
           "target_session_attrs=read-write",
           f.primary_dir, f.standby_dir, port_of(f.primary_dir), port_of(f.standby_dir));

  uv_loop_t loop;
  uv_loop_init(&loop);
  pgtag_pool_config cfg;
  pgtag_pool_config_init(&cfg);
  cfg.conninfo = conninfo;
  cfg.log_level = PGTAG_LOG_ERROR;
  if (waiting_max_ms > 0)
    cfg.reconnect_waiting_max_ms = waiting_max_ms;
  writers w = {0};
  if (pgtag_pool_new(&loop, &cfg, &w.pool) != PGTAG_OK)
    die("pgtag_pool_new");
  for (int i = 0; i < WRITERS; i++)
    submit(&w);
  while (w.ok < 1000)
    run_for(&loop, 10);

  pgtag_stats before, after;
  pgtag_pool_stats(w.pool, &before);
  f.w = &w;
  pthread_t t;
  pthread_create(&t, NULL, failover_thread, &f);
  while (!f.finished)
    run_for(&loop, 10);
  pthread_join(t, NULL);
  int ok_at_promotion = w.ok;
  uint64_t give_up = now_ms() + 20000;
  while (w.ok < ok_at_promotion + 500 && now_ms() < give_up)
    run_for(&loop, 10);
  pgtag_pool_stats(w.pool, &after);
  w.stop = 1;
  while (w.completed < w.submitted)
    run_for(&loop, 10);

  uint64_t failures = after.connect_failures - before.connect_failures;
  if (w.first_ok_after == 0) {
    printf("run %d: no write within 20 s of the promotion; %llu failed attempts\n", run,
           (unsigned long long)failures);
  } else {
    uint64_t outage = w.first_ok_after - f.broken_at;
    printf("run %d: first write %llu ms after the promotion; outage %llu ms; "
           "%llu failed connection attempts (%.1f per second of outage)\n",
           run, (unsigned long long)(w.first_ok_after - w.since), (unsigned long long)outage,
           (unsigned long long)failures, outage > 0 ? failures * 1000.0 / (double)outage : 0.0);
  }
  fflush(stdout);
  int closed = 0;
  pgtag_pool_close(w.pool, on_closed, &closed);
  while (!closed)
    run_for(&loop, 10);
  uv_loop_close(&loop);
  ctl("stop", f.standby_dir, "immediate");
  ctl("stop", f.primary_dir, "immediate");
  char rm[64];
  snprintf(rm, sizeof rm, "rm -rf '%s'", dir);
  if (system(rm) != 0)
    die(rm);
}

int main(int argc, char **argv) {
  if (argc < 2)
    die("usage: pgtag_failover_bench RUNS [WAITING_MAX_MS [PROMOTE_AFTER_MS [fence]]]");
  int runs = atoi(argv[1]);
  int waiting_max_ms = argc > 2 ? atoi(argv[2]) : 0;
  int promote_after_ms = argc > 3 ? atoi(argv[3]) : 300;
  int fence = argc > 4 && strcmp(argv[4], "fence") == 0;
  for (int i = 1; i <= runs; i++)
    one_run(i, waiting_max_ms, promote_after_ms, fence);
  return 0;
}
