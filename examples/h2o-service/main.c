/*
 * pgtag_h2o_service: a JSON HTTP service on h2o with a loop and a pgtag
 * pool per worker thread.
 *
 *   pgtag_h2o_service [--host H] [--port P] [--threads N] [--pool-size N]
 *                     [--demo-leak] [--no-tag] [--transaction-pooler]
 *                     [--replica CONNINFO]... CONNINFO
 *
 * Reads (GET routes) go to a --replica when one is healthy and not
 * lagging; writes and transactions to CONNINFO.  Each request has a
 * deadline: its route's budget, or less with X-Request-Timeout-Ms.
 *
 * Port 0 picks a free one; the first line on stdout says which.  SIGINT or
 * SIGTERM: stop accepting, finish the requests already accepted, close the
 * pools, exit 0.
 */
#include "service.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void log_line(pgtag_log_level level, const char *msg, void *arg) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  worker *w = arg;
  /* one write per line, so the threads' lines do not interleave */
  fprintf(stderr, "worker %d: %s: %s\n", w->index, names[level], msg);
}

static void on_client_closed(uv_handle_t *h) {
  client *c = (client *)h;
  worker *w = c->w;
  if (c->prev != NULL)
    c->prev->next = c->next;
  else if (w->clients == c)
    w->clients = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  free(c);
}

static void on_accept(uv_stream_t *listener, int status) {
  worker *w = listener->data;
  if (status != 0)
    return;
  client *c = calloc(1, sizeof *c);
  if (c == NULL)
    return;
  uv_tcp_init(listener->loop, &c->tcp);
  c->w = w;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
    uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  c->next = w->clients;
  if (c->next != NULL)
    c->next->prev = c;
  w->clients = c;
  c->sock = h2o_uv_socket_create((uv_stream_t *)&c->tcp, on_client_closed);
  h2o_accept(&w->accept, c->sock);
}

/* h2o 2.2 stops reading an HTTP/1 connection while its request runs, so it
 * would notice a client that hung up only when writing the response: the
 * service watches the socket itself (request_watch_clients). */
int worker_client_fd(worker *w, h2o_socket_t *sock) {
  uv_os_fd_t fd;
  for (client *c = w->clients; c != NULL; c = c->next)
    if (c->sock == sock && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
      return fd;
  return -1;
}

/* Copies this worker's pools' statistics where /metrics, on any worker,
 * reads them. */
void worker_snapshot(worker *w) {
  service *svc = w->svc;
  if (w->db == NULL)
    return;
  int per = 1 + svc->nreplicas;
  uv_mutex_lock(&svc->stats_lock);
  pgtag_pool_stats(pgtag_cluster_primary(w->db), &svc->stats[w->index * per]);
  for (int i = 0; i < svc->nreplicas; i++)
    pgtag_pool_stats(pgtag_cluster_replica(w->db, i), &svc->stats[w->index * per + 1 + i]);
  uv_mutex_unlock(&svc->stats_lock);
}

static void on_snapshot(uv_timer_t *t) { worker_snapshot(t->data); }

/* Once the pool is closed and the last request answered, the loop stops;
 * the connections clients still hold open are h2o's to drop. */
void worker_maybe_stop(worker *w) {
  if (w->pool_closed && w->inflight == 0)
    uv_stop(&w->loop);
}

static void on_pool_closed(void *arg) {
  worker *w = arg;
  w->pool_closed = 1;
  worker_maybe_stop(w);
}

/* Once stopping and no request is left, the pools close: requests that
 * arrive later on kept-alive connections get 503. */
void worker_maybe_close_pool(worker *w) {
  if (!w->stopping || w->inflight > 0 || w->db == NULL)
    return;
  uv_timer_stop(&w->snapshot);
  uv_timer_stop(&w->watch);
  worker_snapshot(w);
  pgtag_cluster *db = w->db;
  w->db = NULL;
  pgtag_cluster_close(db, on_pool_closed, w);
}

static void on_stop(uv_async_t *a) {
  worker *w = a->data;
  if (w->stopping)
    return;
  w->stopping = 1;
  uv_close((uv_handle_t *)&w->listener, NULL);
  h2o_context_request_shutdown(&w->h2o); /* kept-alive connections close */
  worker_maybe_close_pool(w);
}

/* The pool is made on its worker's thread: a pool belongs to the thread
 * that runs its loop. */
static void worker_run(void *arg) {
  worker *w = arg;
  service *svc = w->svc;
  pgtag_cluster_config cc;
  pgtag_cluster_config_init(&cc);
  cc.replicas = svc->replicas;
  cc.nreplicas = svc->nreplicas;
  pgtag_pool_config cfg = cc.primary;
  cfg.conninfo = svc->conninfo;
  cfg.name = w->pool_names[0];
  cfg.max_conns = svc->pool_size;
  cfg.acquire_timeout_ms = 5000;
  cfg.statement_timeout_ms = 10000;
  cfg.leak_policy = PGTAG_LEAK_RECLAIM; /* a leaked connection comes back */
  cfg.tag_style = svc->no_tag ? PGTAG_TAG_NONE : PGTAG_TAG_PREFIX;
  cfg.transaction_pooler = svc->transaction_pooler; /* CONNINFO is PgBouncer */
  cfg.log = log_line;
  cfg.log_arg = w;
  cfg.log_level = PGTAG_LOG_WARN;
  /* a query outside any request, or after its response, is a bug here:
   * said, with its file:line */
  cfg.context_check = PGTAG_CONTEXT_WARN;
  cc.primary = cfg;
  pgtag_errcode rc = pgtag_cluster_new(&w->loop, &cc, &w->db);
  if (rc != PGTAG_OK) {
    fprintf(stderr, "pgtag_cluster_new: %s\n", pgtag_strerror(rc));
    exit(1);
  }
  uv_timer_start(&w->snapshot, on_snapshot, 0, 200);
  uv_timer_start(&w->watch, request_watch_clients, 100, 100);
  uv_run(&w->loop, UV_RUN_DEFAULT);
}

static int worker_init(worker *w) {
  service *svc = w->svc;
  uv_loop_init(&w->loop);
  h2o_context_init(&w->h2o, &w->loop, &svc->config);
  w->accept.ctx = &w->h2o;
  w->accept.hosts = svc->config.hosts;
  int per = 1 + svc->nreplicas;
  snprintf(w->pool_names[0], sizeof w->pool_names[0], "worker-%d", w->index);
  svc->pool_names[w->index * per] = w->pool_names[0];
  for (int i = 0; i < svc->nreplicas; i++) {
    snprintf(w->pool_names[1 + i], sizeof w->pool_names[0], "worker-%d/replica%d", w->index, i);
    svc->pool_names[w->index * per + 1 + i] = w->pool_names[1 + i];
  }

  uv_tcp_init(&w->loop, &w->listener);
  w->listener.data = w;
  if (uv_tcp_open(&w->listener, w->listen_fd) != 0 ||
      uv_listen((uv_stream_t *)&w->listener, 1024, on_accept) != 0)
    return -1;
  uv_async_init(&w->loop, &w->stop, on_stop);
  w->stop.data = w;
  uv_timer_init(&w->loop, &w->snapshot);
  w->snapshot.data = w;
  uv_timer_init(&w->loop, &w->watch);
  w->watch.data = w;
  return 0;
}

/* Every worker listens on the same port (SO_REUSEPORT): the kernel spreads
 * the connections, no thread hands them to another. */
static int listen_socket(const char *host, int *port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)*port)};
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
    return -1;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), on = 1;
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0 ||
      bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 1024) != 0) {
    if (fd >= 0)
      close(fd);
    return -1;
  }
  socklen_t len = sizeof sa;
  getsockname(fd, (struct sockaddr *)&sa, &len);
  *port = ntohs(sa.sin_port);
  return fd;
}

static uv_signal_t sigint, sigterm;

/* The first signal stops the workers; the handlers close, so a second one
 * gets the default action. */
static void on_signal(uv_signal_t *s, int signum) {
  service *svc = s->data;
  fprintf(stderr,
          "service: %s, stopping: no new connections, finishing the requests "
          "accepted\n",
          signum == SIGINT ? "SIGINT" : "SIGTERM");
  for (int i = 0; i < svc->nworkers; i++)
    uv_async_send(&svc->workers[i].stop);
  uv_close((uv_handle_t *)&sigint, NULL);
  uv_close((uv_handle_t *)&sigterm, NULL);
}

static void usage(void) {
  fprintf(stderr, "usage: pgtag_h2o_service [--host H] [--port P] [--threads N] "
                  "[--pool-size N] [--demo-leak] [--no-tag] [--transaction-pooler] "
                  "[--replica CONNINFO]... CONNINFO\n");
  exit(2);
}

int main(int argc, char **argv) {
  static service svc;
  const char *host = "127.0.0.1";
  int port = 8080;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  svc.nworkers = cores > 0 ? (int)cores : 1;
  svc.pool_size = 4;
  for (int i = 1; i < argc; i++) {
    int more = i + 1 < argc;
    if (strcmp(argv[i], "--host") == 0 && more)
      host = argv[++i];
    else if (strcmp(argv[i], "--port") == 0 && more)
      port = atoi(argv[++i]);
    else if (strcmp(argv[i], "--threads") == 0 && more)
      svc.nworkers = atoi(argv[++i]);
    else if (strcmp(argv[i], "--pool-size") == 0 && more)
      svc.pool_size = atoi(argv[++i]);
    else if (strcmp(argv[i], "--demo-leak") == 0)
      svc.demo_leak = 1;
    else if (strcmp(argv[i], "--no-tag") == 0)
      svc.no_tag = 1;
    else if (strcmp(argv[i], "--transaction-pooler") == 0)
      svc.transaction_pooler = 1;
    else if (strcmp(argv[i], "--replica") == 0 && more && svc.nreplicas < 8)
      svc.replicas[svc.nreplicas++] = argv[++i];
    else if (argv[i][0] != '-' && svc.conninfo == NULL)
      svc.conninfo = argv[i];
    else
      usage();
  }
  if (svc.conninfo == NULL || svc.nworkers < 1 || svc.nworkers > 256 || svc.pool_size < 1 ||
      port < 0 || port > 65535)
    usage();
  signal(SIGPIPE, SIG_IGN);

  h2o_config_init(&svc.config);
  h2o_hostconf_t *hostconf =
      h2o_config_register_host(&svc.config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
  h2o_pathconf_t *pathconf = h2o_config_register_path(hostconf, "/", 0);
  h2o_handler_t *handler = h2o_create_handler(pathconf, sizeof *handler);
  handler->on_req = request_handle;

  svc.workers = calloc((size_t)svc.nworkers, sizeof *svc.workers);
  svc.npools = svc.nworkers * (1 + svc.nreplicas);
  svc.stats = calloc((size_t)svc.npools, sizeof *svc.stats);
  svc.pool_names = calloc((size_t)svc.npools, sizeof *svc.pool_names);
  uv_mutex_init(&svc.stats_lock);
  for (int i = 0; i < svc.nworkers; i++) {
    worker *w = &svc.workers[i];
    w->svc = &svc;
    w->index = i;
    w->listen_fd = listen_socket(host, &port); /* port 0: the first picks it */
    if (w->listen_fd < 0) {
      fprintf(stderr, "service: cannot listen on %s:%d: %s\n", host, port, strerror(errno));
      return 1;
    }
    if (worker_init(w) != 0)
      return 1;
  }

  uv_loop_t *main_loop = uv_default_loop();
  uv_signal_init(main_loop, &sigint);
  uv_signal_init(main_loop, &sigterm);
  sigint.data = sigterm.data = &svc;
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_signal_start(&sigterm, on_signal, SIGTERM);

  printf("listening on http://%s:%d (%d workers, %d connections each, %d replicas)\n", host, port,
         svc.nworkers, svc.pool_size, svc.nreplicas);
  fflush(stdout);
  for (int i = 0; i < svc.nworkers; i++)
    uv_thread_create(&svc.workers[i].thread, worker_run, &svc.workers[i]);
  uv_run(main_loop, UV_RUN_DEFAULT); /* until a signal */
  for (int i = 0; i < svc.nworkers; i++)
    uv_thread_join(&svc.workers[i].thread);

  fprintf(stderr, "service: stopped; requests accepted %llu, answered %llu, clients gone %llu\n",
          atomic_load(&svc.accepted), atomic_load(&svc.responded), atomic_load(&svc.gone));
  return 0;
}
