/* What the server's side of each way to send the W1 point select costs,
 * with libpq alone (no pgtag): the ceiling each way leaves for a pool, on
 * the same machine, in one run.  bench/protocols.sh runs it.
 *
 *   pgtag_protocols WAY DEPTH CONNECTIONS SECONDS CONNINFO
 *
 * Each connection is a process of its own, blocking in libpq, so that the
 * client costs as little as it can.  WAY:
 *   prepared  untagged, Bind and Execute of a statement prepared at the
 *             protocol level (what pgbench -M prepared sends)
 *   unnamed   tagged, Parse, Bind and Execute of the whole text with $1
 *             (what pgbench -M extended sends; pgtag without its cache)
 *   execute   tagged EXECUTE of a statement prepared on the connection,
 *             sent in pipeline mode (libpq 15: the extended protocol)
 *   simple    the same EXECUTE as one simple query (DEPTH 1 only)
 *   multi     DEPTH tagged EXECUTEs in one simple query (one string)
 * DEPTH statements go out together, then one sync point; prints queries
 * per second. */
#include <libpq-fe.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SELECT "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
#define TAG "/* requestId=00000000-0000-4000-8000-000000000000 */ "
#define DEPTH_MAX 64

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(PGconn *pg, const char *what) {
  fprintf(stderr, "pgtag_protocols: %s: %s", what, PQerrorMessage(pg));
  exit(1);
}

static void check(PGconn *pg, PGresult *res, ExecStatusType want, const char *what) {
  if (res == NULL || PQresultStatus(res) != want) {
    fprintf(stderr, "pgtag_protocols: %s: %s", what,
            res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(pg));
    exit(1);
  }
  PQclear(res);
}

/* One round of depth queries in the pipeline, then its sync point. */
static void pipelined(PGconn *pg, const char *way, int depth) {
  char text[256], aid[16];
  const char *values[1] = {aid};
  for (int i = 0; i < depth; i++) {
    snprintf(aid, sizeof aid, "%d", rand() % 1000000 + 1);
    int ok;
    if (strcmp(way, "prepared") == 0) {
      ok = PQsendQueryPrepared(pg, "p", 1, values, NULL, NULL, 0);
    } else if (strcmp(way, "unnamed") == 0) {
      ok = PQsendQueryParams(pg, TAG SELECT, 1, NULL, values, NULL, NULL, 0);
    } else {
      snprintf(text, sizeof text, TAG "EXECUTE q('%s')", aid);
      ok = PQsendQueryParams(pg, text, 0, NULL, NULL, NULL, NULL, 0);
    }
    if (!ok)
      die(pg, "send");
  }
  if (!PQpipelineSync(pg))
    die(pg, "sync");
  for (int i = 0; i < depth; i++) {
    check(pg, PQgetResult(pg), PGRES_TUPLES_OK, "query");
    if (PQgetResult(pg) != NULL)
      die(pg, "more than one result");
  }
  check(pg, PQgetResult(pg), PGRES_PIPELINE_SYNC, "sync");
}

/* One simple query of depth EXECUTEs. */
static void simple(PGconn *pg, int depth) {
  char text[DEPTH_MAX * 96];
  size_t len = 0;
  text[0] = '\0';
  for (int i = 0; i < depth; i++)
    len += (size_t)snprintf(text + len, sizeof text - len, TAG "EXECUTE q('%d');",
                            rand() % 1000000 + 1);
  if (!PQsendQuery(pg, text))
    die(pg, "send");
  for (int i = 0; i < depth; i++)
    check(pg, PQgetResult(pg), PGRES_TUPLES_OK, "query");
  if (PQgetResult(pg) != NULL)
    die(pg, "more results than statements");
}

static long run(const char *way, int depth, double seconds, const char *conninfo) {
  PGconn *pg = PQconnectdb(conninfo);
  if (PQstatus(pg) != CONNECTION_OK)
    die(pg, "connect");
  check(pg, PQexec(pg, "PREPARE q(int) AS " SELECT), PGRES_COMMAND_OK, "PREPARE");
  check(pg, PQprepare(pg, "p", SELECT, 1, NULL), PGRES_COMMAND_OK, "prepare");
  int piped = strcmp(way, "simple") != 0 && strcmp(way, "multi") != 0;
  if (piped && !PQenterPipelineMode(pg))
    die(pg, "pipeline mode");
  srand((unsigned)getpid());
  long queries = 0;
  for (double end = now_s() + seconds; now_s() < end; queries += depth) {
    if (piped)
      pipelined(pg, way, depth);
    else
      simple(pg, depth);
  }
  PQfinish(pg);
  return queries;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: pgtag_protocols prepared|unnamed|execute|simple|multi DEPTH "
                    "CONNECTIONS SECONDS CONNINFO\n");
    return 2;
  }
  const char *way = argv[1];
  int depth = atoi(argv[2]), conns = atoi(argv[3]);
  double seconds = atof(argv[4]);
  if (depth < 1 || depth > DEPTH_MAX || conns < 1 || conns > 64 || seconds <= 0 ||
      (strcmp(way, "simple") == 0 && depth != 1) ||
      strstr("prepared unnamed execute simple multi", way) == NULL) {
    fprintf(stderr, "pgtag_protocols: bad arguments\n");
    return 2;
  }
  int fds[64][2];
  for (int i = 0; i < conns; i++) {
    if (pipe(fds[i]) != 0)
      return 1;
    pid_t pid = fork();
    if (pid < 0)
      return 1;
    if (pid == 0) {
      long n = run(way, depth, seconds, argv[5]);
      dprintf(fds[i][1], "%ld\n", n);
      _exit(0);
    }
  }
  long total = 0;
  int failed = 0;
  for (int i = 0; i < conns; i++) {
    char buf[32] = "";
    ssize_t got = read(fds[i][0], buf, sizeof buf - 1);
    if (got <= 0)
      failed = 1;
    total += atol(buf);
  }
  int status;
  while (wait(&status) > 0)
    failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
  if (failed)
    return 1;
  printf("way=%s depth=%d connections=%d qps=%.0f\n", way, depth, conns, (double)total / seconds);
  return 0;
}
