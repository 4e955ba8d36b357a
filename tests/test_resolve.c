/* Host names, resolved by the pool off the loop, and TLS through them.
 *
 * The program runs in a mount namespace of its own (it needs root): its
 * /etc/resolv.conf names a DNS server on 127.53.x.y that never answers (a
 * UDP socket this program binds and never reads), and its /etc/hosts is a
 * file the tests rewrite.  So a name in that hosts file resolves at once,
 * and any other name hangs in the resolver as long as glibc waits (10 s),
 * as with a DNS server that is down.  The machine's own files are not
 * touched.
 *
 * A server of its own listens on 127.0.0.1 and 127.0.0.2 with ssl = on
 * and a certificate for db.pgtag.test made here (tests/pgserver.sh tls). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "resolve.h"

#define NAME "db.pgtag.test"    /* the certificate's name, 127.0.0.1 */
#define STALLED "db.stall.test" /* in no hosts file: the resolver hangs */

static char dir[] = "/tmp/pgtag-resolve.XXXXXX";
static char server_dir[300]; /* the server's (tests/pgserver.sh) */
static char server[512];     /* its conninfo, on its socket */
static char ca[400];         /* the CA its certificate is verified with */
static int port;
static int dns = -1; /* the DNS server that never answers */

static void shell(const char *line) {
  if (system(line) != 0)
    fail_msg("%s failed", line);
}

static void write_file(const char *path, const char *text) {
  /* In place: a bind mount pins the inode, a rename would not be seen. */
  FILE *f = fopen(path, "w");
  if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0)
    fail_msg("cannot write %s: %s", path, strerror(errno));
}

static char hosts_path[300];

/* The namespace's /etc/hosts: localhost, then lines. */
static void set_hosts(const char *lines) {
  char text[1024];
  snprintf(text, sizeof text, "127.0.0.1 localhost\n%s", lines);
  write_file(hosts_path, text);
}

static int group_setup(void **state) {
  (void)state;
  char path[300], line[1024];
  if (mkdtemp(dir) == NULL || chmod(dir, 0755) != 0)
    fail_msg("mkdtemp: %s", strerror(errno));
  /* Before any thread exists (unshare refuses a threaded process), and
   * before the server starts: it runs in this namespace too. */
  if (unshare(CLONE_NEWNS) != 0)
    fail_msg("unshare(CLONE_NEWNS): %s (the test runs as root)", strerror(errno));
  if (mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) != 0)
    fail_msg("making mounts private: %s", strerror(errno));
  /* The network is shared with whatever else runs on the machine (another
   * run of this test, a resolver on 127.0.0.53): an address of its own in
   * 127.53/16, the first one free from one drawn by the pid. */
  dns = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(53)};
  char nameserver[64];
  int bound = -1;
  for (unsigned i = 0; dns >= 0 && bound != 0 && i < 1000; i++) {
    unsigned n = ((unsigned)getpid() + i) % 65024 + 256; /* 127.53.1.0 up */
    a.sin_addr.s_addr = htonl(0x7f350000u | n);
    bound = bind(dns, (struct sockaddr *)&a, sizeof a);
  }
  if (bound != 0)
    fail_msg("binding a DNS server's address in 127.53/16 (udp): %s", strerror(errno));
  inet_ntop(AF_INET, &a.sin_addr, nameserver, sizeof nameserver);
  char conf[96];
  snprintf(conf, sizeof conf, "nameserver %s\n", nameserver);
  snprintf(path, sizeof path, "%s/resolv.conf", dir);
  write_file(path, conf);
  if (mount(path, "/etc/resolv.conf", "none", MS_BIND, NULL) != 0)
    fail_msg("bind-mounting %s: %s", path, strerror(errno));
  snprintf(hosts_path, sizeof hosts_path, "%s/hosts", dir);
  set_hosts("");
  if (mount(hosts_path, "/etc/hosts", "none", MS_BIND, NULL) != 0)
    fail_msg("bind-mounting %s: %s", hosts_path, strerror(errno));

  snprintf(server_dir, sizeof server_dir, "%s/pg", dir);
  snprintf(line, sizeof line,
           "'%s/tests/pgserver.sh' start '%s' && '%s/tests/pgserver.sh' tls '%s' " NAME,
           PGTAG_SOURCE_DIR, server_dir, PGTAG_SOURCE_DIR, server_dir);
  shell(line);
  port = dir_port(server_dir);
  snprintf(server, sizeof server, "host=%s port=%d user=postgres dbname=postgres", server_dir,
           port);
  snprintf(ca, sizeof ca, "%s/tls/ca.crt", server_dir);
  admin_exec_on(server, "ALTER SYSTEM SET listen_addresses = '127.0.0.1,127.0.0.2'");
  snprintf(line, sizeof line, "'%s/tests/pgserver.sh' restart '%s'", PGTAG_SOURCE_DIR, server_dir);
  shell(line);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  char line[1024];
  snprintf(line, sizeof line, "'%s/tests/pgserver.sh' stop '%s'; rm -rf '%s'", PGTAG_SOURCE_DIR,
           server_dir, dir);
  if (system(line) != 0)
    fprintf(stderr, "%s failed\n", line);
  if (dns >= 0)
    close(dns);
  return 0;
}

static int setup(void **state) {
  (void)state;
  completions = 0;
  set_hosts("127.0.0.1 " NAME "\n");
  return uv_loop_init(&loop);
}

/* Every test ends with its loop closed: nothing of pgtag's left on it. */
static int teardown(void **state) {
  (void)state;
  uv_run(&loop, UV_RUN_NOWAIT);
  return uv_loop_close(&loop);
}

/* test_pool_close, which closes the loop, and a fresh loop for the next
 * pool. */
static void pool_done(pgtag_pool *pool) {
  test_pool_close(&loop, pool);
  assert_int_equal(uv_loop_init(&loop), 0);
}

/* Bounds scale with time_scale(), as the harness's do. */
static void wait_within(const rec *r, int ms) {
  assert_true(run_until(&loop, &r->calls, 1, ms * time_scale()));
}

/* The last WARN line: the whole connection error, where a callback's
 * message is cut. */
static char last_warn[2048];

static void quiet_log(pgtag_log_level level, const char *msg, void *arg) {
  (void)arg;
  if (level == PGTAG_LOG_WARN)
    snprintf(last_warn, sizeof last_warn, "%s", msg);
}

static void on_closed(void *arg) { (*(int *)arg)++; }

static pgtag_pool *pool_on(const char *conninfo, int max_conns) {
  pgtag_pool_config cfg;
  pgtag_pool_config_init(&cfg);
  cfg.conninfo = conninfo;
  cfg.max_conns = max_conns;
  cfg.name = "resolve";
  cfg.log = quiet_log;
  return test_pool_new(&loop, &cfg);
}

/* One query through a fresh pool; its first column. */
static void query_through(const char *conninfo, const char *sql, pgtag_errcode want, rec *r) {
  pgtag_pool *pool = pool_on(conninfo, 1);
  memset(r, 0, sizeof *r);
  assert_int_equal(query_in(pool, NULL, sql, r), PGTAG_OK);
  wait_within(r, 5000);
  assert_done(r, NULL, want);
  pool_done(pool);
}

/* What "never blocks the loop" is held to: a 10 ms timer at most this
 * late.  Under valgrind the program's own work (a TLS handshake's
 * arithmetic, starting libuv's threads) runs some fifty times slower, and
 * the bound scales with time_scale() (2 s there): still far from a
 * blocking lookup's 10 s. */
static uint64_t late_limit(void) { return 200 * (uint64_t)time_scale(); }

/* How late a 10 ms repeating timer fires, at worst, while the loop runs. */
typedef struct {
  uv_timer_t timer;
  uint64_t first, last, worst, worst_at;
} lateness;

static void on_tick(uv_timer_t *t) {
  lateness *l = (lateness *)t;
  uint64_t now = now_ms();
  if (l->last != 0 && now - l->last > 10 && now - l->last - 10 > l->worst) {
    l->worst = now - l->last - 10;
    l->worst_at = now - l->first;
  }
  l->last = now;
}

static void lateness_start(lateness *l) {
  memset(l, 0, sizeof *l);
  uv_timer_init(&loop, &l->timer);
  uv_timer_start(&l->timer, on_tick, 10, 10);
  l->first = l->last = now_ms();
}

static void lateness_stop(lateness *l) {
  uv_close((uv_handle_t *)&l->timer, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
}

/* DNS queries that reached the server that never answers, since the last
 * call. */
static int dns_queries(void) {
  char buf[512];
  int n = 0;
  while (recv(dns, buf, sizeof buf, 0) >= 0)
    n++;
  return n;
}

/* The resolver is asked only for names: a socket path, an IP address, a
 * host with its own hostaddr, or a service file, go to libpq as they
 * are. */
static void what_is_resolved(void **state) {
  (void)state;
  static const struct {
    const char *conninfo;
    int resolves;
  } cases[] = {
      {"host=/run/postgresql port=5432", 0},
      {"host=127.0.0.1", 0},
      {"host=::1 port=5432", 0},
      {"postgresql://[::1]:5432/db", 0},
      {"host=" NAME " hostaddr=127.0.0.1", 0},
      {"host=/tmp,127.0.0.1,::1 port=1,2,3", 0},
      {"host=@abstract", 0},
      {"dbname=postgres", 0}, /* PGHOST, a socket directory here, or the default */
      {"service=nosuch host=" NAME, 0},
      {"host=" NAME, 1},
      {"postgresql://" NAME ":5432/db", 1},
      {"host=/tmp," NAME " port=5432,5433", 1},
      {"host=" NAME ",127.0.0.1 hostaddr=,127.0.0.1", 1},
      {"host=a,b port=1,2,3", 0}, /* libpq refuses it, and says why */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    resolver *r = NULL;
    assert_int_equal(pgtag__resolver_new(NULL, cases[i].conninfo, &r), 0);
    if ((r != NULL) != cases[i].resolves)
      fail_msg("%s: %s", cases[i].conninfo, r ? "resolved by the pool" : "passed through");
    pgtag__resolver_free(r);
  }
}

/* The measurement: a pool on a host name whose resolver does not
 * answer.  libpq resolving it would block the loop for 10 s. */
static void a_resolver_that_does_not_answer_does_not_stop_the_loop(void **state) {
  (void)state;
  char conninfo[256];
  snprintf(conninfo, sizeof conninfo, "host=" STALLED " port=%d user=postgres", port);
  pgtag_pool_config cfg;
  pgtag_pool_config_init(&cfg);
  cfg.conninfo = conninfo;
  cfg.max_conns = 4;
  cfg.connect_timeout_ms = 1000;
  cfg.acquire_timeout_ms = 2500;
  cfg.log = quiet_log;
  dns_queries();
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  lateness late;
  lateness_start(&late);
  pgtag_ctx *ctx = pgtag_ctx_new("stalled");
  rec q = {0}, more[8];
  memset(more, 0, sizeof more);
  uint64_t t0 = now_ms();
  assert_int_equal(query_in(pool, ctx, "SELECT 1", &q), PGTAG_OK);
  /* more requests come while it waits: each attempt joins the lookup */
  for (int i = 0; i < 8; i++) { /* over 3 s, on purpose: the loop is watched */
    run_for(&loop, 250);
    assert_int_equal(query_in(pool, ctx, "SELECT 1", &more[i]), PGTAG_OK);
  }
  while (now_ms() - t0 < 3000)
    run_for(&loop, 50);
  lateness_stop(&late);
  print_message("the loop's 10 ms timer was at worst %llu ms late over 3 s (%llu ms in)\n",
                (unsigned long long)late.worst, (unsigned long long)late.worst_at);
  assert_true(late.worst < late_limit());
  wait_within(&q, 1000);
  if (q.code != PGTAG_ETIMEDOUT && q.code != PGTAG_ECONN)
    fail_msg("the query ended with %s: %s", pgtag_strerror(q.code), q.message);
  assert_done(&q, ctx, q.code);
  print_message("%s: %s\n", pgtag_strerror(q.code), q.message);
  assert_non_null(strstr(q.message, "could not translate host name \"" STALLED "\""));
  assert_non_null(strstr(q.message, "no answer within 1000 ms"));
  /* It was the resolver that was asked and hung, once for all the attempts
   * (A and AAAA): not a lookup per attempt piling up on libuv's threads. */
  int asked = dns_queries();
  print_message("DNS queries sent: %d\n", asked);
  assert_true(asked >= 1 && asked <= 2);
  pgtag_stats st;
  pgtag_pool_stats(pool, &st);
  assert_true(st.connect_failures >= 2); /* attempts went on, each timed out */
  /* Closing waits for the lookup a thread is running: glibc gives up
   * 10 s after it began.  The loop goes on meanwhile. */
  uint64_t closing = now_ms();
  int closed = 0;
  pgtag_pool_close(pool, on_closed, &closed);
  for (int i = 0; i < 8; i++) {
    wait_within(&more[i], 1000);
    assert_done(&more[i], ctx, more[i].code);
    assert_true(more[i].code == PGTAG_ETIMEDOUT || more[i].code == PGTAG_ECLOSED);
  }
  assert_true(run_until(&loop, &closed, 1, 15000));
  print_message("closed %llu ms after pgtag_pool_close\n",
                (unsigned long long)(now_ms() - closing));
  pgtag_ctx_unref(ctx);
}

/* In the same namespace, nothing else waits for the resolver. */
static void addresses_and_sockets_pass_through(void **state) {
  (void)state;
  char conninfo[512];
  rec r;
  dns_queries();
  const char *forms[] = {"host=127.0.0.1 port=%d user=postgres",
                         "host=" STALLED " hostaddr=127.0.0.1 port=%d user=postgres",
                         "host=%s port=%d user=postgres"};
  for (int i = 0; i < 3; i++) {
    if (i < 2)
      snprintf(conninfo, sizeof conninfo, forms[i], port);
    else
      snprintf(conninfo, sizeof conninfo, forms[i], server_dir, port);
    uint64_t t0 = now_ms();
    query_through(conninfo, "SELECT 1", PGTAG_OK, &r);
    /* Well within a stalled lookup's 10 s (connecting alone took 3 s
     * under valgrind with both CPUs busy); the DNS server's count below
     * is what shows that nobody asked it. */
    assert_true(now_ms() - t0 < 3000 * (uint64_t)time_scale());
  }
  assert_int_equal(dns_queries(), 0);
}

static void server_addr(const char *conninfo, const char *want) {
  rec r;
  query_through(conninfo, "SELECT host(inet_server_addr())", PGTAG_OK, &r);
  assert_string_equal(r.value, want);
}

/* A name resolved again at each connection attempt: the hosts file
 * changed between two attempts of one pool, the second goes to the new
 * address. */
static void a_moved_name_is_followed(void **state) {
  (void)state;
  char conninfo[256];
  snprintf(conninfo, sizeof conninfo, "host=db.move.test port=%d user=postgres", port);
  set_hosts("127.0.0.1 db.move.test\n");
  pgtag_pool *pool = pool_on(conninfo, 1);
  rec a = {0}, b = {0};
  query_in(pool, NULL, "SELECT host(inet_server_addr()), pg_backend_pid()", &a);
  wait_within(&a, 5000);
  assert_done(&a, NULL, PGTAG_OK);
  assert_string_equal(a.value, "127.0.0.1");
  /* the name moves; the connection to the old address ends */
  set_hosts("127.0.0.2 db.move.test\n");
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", atoi(a.value2));
  admin_exec_on(server, sql);
  pgtag_stats st = {0};
  WAIT_FOR(&loop, (pgtag_pool_stats(pool, &st), st.conns_lost != 0), 5000);
  assert_int_equal(st.conns_lost, 1);
  query_in(pool, NULL, "SELECT host(inet_server_addr()), pg_backend_pid()", &b);
  wait_within(&b, 5000);
  assert_done(&b, NULL, PGTAG_OK);
  assert_string_equal(b.value, "127.0.0.2");
  pool_done(pool);
}

/* A name with several addresses is tried address by address, as libpq
 * would; a multi-host list keeps its order and its ports. */
static void every_address_in_order(void **state) {
  (void)state;
  char conninfo[512];
  /* glibc gives these in file order: the first refuses (nothing listens
   * on 127.0.0.3), the second answers */
  set_hosts("127.0.0.3 db.multi.test\n127.0.0.2 db.multi.test\n127.0.0.1 " NAME "\n");
  snprintf(conninfo, sizeof conninfo, "host=db.multi.test port=%d user=postgres", port);
  server_addr(conninfo, "127.0.0.2");
  /* two hosts, a port each: the first has nobody listening */
  snprintf(conninfo, sizeof conninfo, "host=db.multi.test,%s port=1,%d user=postgres", NAME, port);
  server_addr(conninfo, "127.0.0.1");
  /* names resolved, then a socket path, in the given order */
  snprintf(conninfo, sizeof conninfo, "host=db.multi.test,%s port=1,%d user=postgres", server_dir,
           port);
  server_addr(conninfo, "");
  /* and when none answers, the message names every address tried, by
   * the name */
  rec r = {0};
  snprintf(conninfo, sizeof conninfo, "host=db.multi.test port=1 user=postgres");
  pgtag_pool_config cfg;
  pgtag_pool_config_init(&cfg);
  cfg.conninfo = conninfo;
  cfg.acquire_timeout_ms = 500;
  cfg.log = quiet_log;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  query_in(pool, NULL, "SELECT 1", &r);
  wait_within(&r, 5000);
  assert_done(&r, NULL, PGTAG_ETIMEDOUT);
  print_message("%s\n", last_warn);
  assert_non_null(strstr(last_warn, "\"db.multi.test\" (127.0.0.3), port 1"));
  assert_non_null(strstr(last_warn, "\"db.multi.test\" (127.0.0.2), port 1"));
  pool_done(pool);
}

/* ---------------------------------------------------------------------
 * TLS through the pool's resolution
 * --------------------------------------------------------------------- */

#define SSL_SQL "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"

static void tls_require(void **state) {
  (void)state;
  char conninfo[512];
  rec r;
  snprintf(conninfo, sizeof conninfo, "host=" NAME " port=%d user=postgres sslmode=require", port);
  query_through(conninfo, SSL_SQL, PGTAG_OK, &r);
  assert_string_equal(r.value, "true");
  /* the same without TLS, to show the query can tell */
  snprintf(conninfo, sizeof conninfo, "host=" NAME " port=%d user=postgres sslmode=disable", port);
  query_through(conninfo, SSL_SQL, PGTAG_OK, &r);
  assert_string_equal(r.value, "false");
}

/* A server that says yes to TLS ('S' to the SSLRequest) and then never
 * answers the ClientHello: libpq is in the middle of its handshake, and
 * waits for the server's reply.  A thread of its own, blocking as it
 * likes. */
typedef struct {
  int listener, port;
  volatile int stop;
  int requests; /* SSLRequests answered */
  int held[16];
  int nheld;
} mute_tls;

static void *mute_tls_serve(void *arg) {
  mute_tls *m = arg;
  while (!m->stop) {
    struct pollfd p = {.fd = m->listener, .events = POLLIN};
    if (poll(&p, 1, 20) <= 0)
      continue;
    int c = accept(m->listener, NULL, NULL);
    if (c < 0)
      continue;
    unsigned char req[8];
    size_t got = 0;
    while (got < sizeof req) {
      ssize_t n = recv(c, req + got, sizeof req - got, 0);
      if (n <= 0)
        break;
      got += (size_t)n;
    }
    /* length 8, then 1234 5679: the SSLRequest */
    static const unsigned char ssl_request[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
    if (got == sizeof req && memcmp(req, ssl_request, 8) == 0 && send(c, "S", 1, 0) == 1)
      m->requests++;
    if (m->nheld < 16)
      m->held[m->nheld++] = c; /* open and silent */
    else
      close(c);
  }
  return NULL;
}

/* The handshake waits for the server the way connecting does, one socket
 * event at a time: a server that stops answering in the middle of it
 * holds the attempt until connect_timeout_ms, never the loop. */
static void tls_handshake_with_a_mute_server_does_not_stop_the_loop(void **state) {
  (void)state;
  mute_tls m = {.listener = socket(AF_INET, SOCK_STREAM, 0)};
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  assert_int_equal(bind(m.listener, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(m.listener, 16), 0);
  getsockname(m.listener, (struct sockaddr *)&a, &len);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, mute_tls_serve, &m), 0);

  set_hosts("127.0.0.1 mute.pgtag.test\n");
  char conninfo[256];
  snprintf(conninfo, sizeof conninfo, "host=mute.pgtag.test port=%d user=postgres sslmode=require",
           ntohs(a.sin_port));
  pgtag_pool_config cfg;
  pgtag_pool_config_init(&cfg);
  cfg.conninfo = conninfo;
  cfg.max_conns = 2;
  cfg.connect_timeout_ms = 1000;
  cfg.acquire_timeout_ms = 2500;
  cfg.log = quiet_log;
  pgtag_pool *pool = test_pool_new(&loop, &cfg);
  lateness late;
  lateness_start(&late);
  rec r = {0};
  assert_int_equal(query_in(pool, NULL, "SELECT 1", &r), PGTAG_OK);
  wait_within(&r, 5000);
  lateness_stop(&late);
  m.stop = 1;
  pthread_join(t, NULL);
  print_message("%d handshakes left hanging; the loop's 10 ms timer at worst %llu ms late; "
                "%s\n",
                m.requests, (unsigned long long)late.worst, r.message);
  assert_done(&r, NULL, PGTAG_ETIMEDOUT);
  assert_true(m.requests >= 1);
  assert_non_null(strstr(r.message, "timed out after 1000 ms"));
  assert_true(late.worst < late_limit());
  pool_done(pool);
  for (int i = 0; i < m.nheld; i++)
    close(m.held[i]);
  close(m.listener);
}

/* verify-full checks the certificate against the host name (which the
 * pool resolved, handing libpq only the address), for eight connections
 * opening at once.  Their handshakes cost the loop some CPU (and the
 * server's eight more): with both CPUs busy elsewhere a 10 ms timer came
 * up to 162 ms late under ASan, so this bound is looser than the
 * blocking one above. */
static void tls_verify_full_checks_the_name(void **state) {
  (void)state;
  char conninfo[768];
  snprintf(conninfo, sizeof conninfo,
           "host=" NAME " port=%d user=postgres sslmode=verify-full sslrootcert=%s", port, ca);
  pgtag_pool *pool = pool_on(conninfo, 8);
  lateness late;
  lateness_start(&late);
  rec acq[8], ssl[8];
  memset(acq, 0, sizeof acq);
  memset(ssl, 0, sizeof ssl);
  for (int i = 0; i < 8; i++)
    assert_int_equal(acquire_in(pool, NULL, &acq[i]), PGTAG_OK);
  assert_true(run_until(&loop, &completions, 8, 10000 * time_scale()));
  for (int i = 0; i < 8; i++) {
    assert_done(&acq[i], NULL, PGTAG_OK);
    conn_query_in(acq[i].conn, NULL, SSL_SQL, &ssl[i]);
  }
  assert_true(run_until(&loop, &completions, 16, 10000 * time_scale()));
  lateness_stop(&late);
  for (int i = 0; i < 8; i++) {
    assert_done(&ssl[i], NULL, PGTAG_OK);
    assert_string_equal(ssl[i].value, "true");
    pgtag_release(acq[i].conn);
  }
  print_message("8 TLS connections opened at once: the loop's 10 ms timer at worst %llu ms "
                "late\n",
                (unsigned long long)late.worst);
  assert_true(late.worst < 500 * (uint64_t)time_scale());
  pool_done(pool);

  /* the same address under a name the certificate does not have */
  set_hosts("127.0.0.1 " NAME "\n127.0.0.1 other.pgtag.test\n");
  snprintf(conninfo, sizeof conninfo,
           "host=other.pgtag.test port=%d user=postgres sslmode=verify-full sslrootcert=%s", port,
           ca);
  pgtag_pool_config cfg;
  pgtag_pool_config_init(&cfg);
  cfg.conninfo = conninfo;
  cfg.acquire_timeout_ms = 500;
  cfg.log = quiet_log;
  pool = test_pool_new(&loop, &cfg);
  rec r = {0};
  query_in(pool, NULL, "SELECT 1", &r);
  wait_within(&r, 5000);
  assert_done(&r, NULL, PGTAG_ETIMEDOUT);
  print_message("%s\n", r.message);
  assert_non_null(strstr(r.message, "does not match host name \"other.pgtag.test\""));
  pool_done(pool);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(what_is_resolved),
      cmocka_unit_test_setup_teardown(a_resolver_that_does_not_answer_does_not_stop_the_loop, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(addresses_and_sockets_pass_through, setup, teardown),
      cmocka_unit_test_setup_teardown(a_moved_name_is_followed, setup, teardown),
      cmocka_unit_test_setup_teardown(every_address_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(tls_require, setup, teardown),
      cmocka_unit_test_setup_teardown(tls_handshake_with_a_mute_server_does_not_stop_the_loop,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(tls_verify_full_checks_the_name, setup, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
