/*
 * An HTTP service on h2o (its libuv backend) that uses pgtag the way we
 * recommend: one loop and one pgtag pool per worker thread (a cluster:
 * the primary's pool and one per read replica), a pgtag context per HTTP
 * request, ended when the response has been sent.
 */
#ifndef SERVICE_H
#define SERVICE_H

#include <h2o.h>
#include <jansson.h>
#include <pgtag.h>
#include <stdatomic.h>

/* The longest X-Request-Id kept as the request ID. */
#define REQUEST_ID_MAX 128

typedef struct service service;
typedef struct request request;

/* An accepted TCP connection: h2o's socket and the uv handle under it. */
typedef struct worker worker;

typedef struct client {
  uv_tcp_t tcp; /* h2o owns tcp.data */
  worker *w;
  h2o_socket_t *sock;
  struct client *prev, *next;
} client;

/* One thread: its loop, its h2o context, its listening socket, its pool. */
struct worker {
  service *svc;
  int index;
  uv_thread_t thread;
  uv_loop_t loop;
  h2o_context_t h2o;
  h2o_accept_ctx_t accept;
  uv_tcp_t listener;
  int listen_fd;
  uv_async_t stop;            /* the main thread asks for a graceful stop */
  uv_timer_t snapshot;        /* copies the pool's statistics for /metrics */
  uv_timer_t watch;           /* looks for clients gone while their request runs */
  client *clients;            /* open connections */
  request *waiting;           /* requests not answered yet */
  pgtag_cluster *db;          /* the primary's pool and one per --replica;
                                 NULL once closing */
  char pool_names[1 + 8][48]; /* for /metrics: worker-N, worker-N/replicaI */
  int inflight;               /* requests accepted and not yet finished */
  int stopping;
  int pool_closed;
};

struct service {
  h2o_globalconf_t config;
  const char *conninfo;
  int pool_size;
  int demo_leak;           /* --demo-leak: a route forgets its connection */
  int no_tag;              /* --no-tag: SQL sent untagged (benchmark only) */
  int transaction_pooler;  /* --transaction-pooler: CONNINFO is PgBouncer */
  const char *replicas[8]; /* --replica CONNINFO: reads may go there */
  int nreplicas;
  worker *workers;
  int nworkers;
  uv_mutex_t stats_lock; /* guards stats: each worker writes its own slots */
  pgtag_stats *stats;    /* 1 + nreplicas per worker */
  const char **pool_names;
  int npools;              /* nworkers * (1 + nreplicas) */
  atomic_ullong accepted;  /* requests whose handler ran */
  atomic_ullong responded; /* of those, the ones whose response was sent */
  atomic_ullong gone;      /* of those, the ones whose client went away */
};

/* One HTTP request, from its handler to the end of its response.  It
 * outlives the h2o request when the client goes away, until the last of
 * its pgtag callbacks has run. */
struct request {
  worker *w;
  h2o_req_t *req;       /* NULL once h2o disposed of the request */
  int fd;               /* the client's socket (HTTP/1), or -1 */
  request *prev, *next; /* in w->waiting until answered */
  pgtag_ctx *ctx;
  int pending; /* pgtag operations whose callback has not run yet */
  int replied;
  int gone;                       /* the client went away before the response */
  pgtag_conn conn;                /* a held connection (transfer), or all zero */
  int failed;                     /* a statement of the transaction failed */
  long long id, from, to, amount; /* the route's arguments */
  long long balance[2];           /* transfer: from's and to's, locked */
  long long bid;
  long long timeout_ms;                /* X-Request-Timeout-Ms: 0 if absent, -1 if bad */
  pgtag_work hop;                      /* digest: the hash, on libuv's thread pool */
  char digest[17];                     /* digest: its result, hex */
  char hashed_for[REQUEST_ID_MAX + 1]; /* digest: the request ID current there */
};

/* request.c */
int request_handle(h2o_handler_t *self, h2o_req_t *req);
void request_reply(request *r, int status, json_t *body);
void request_reply_text(request *r, int status, const char *type, const char *body, size_t len);
int request_begin_op(request *r, pgtag_errcode submitted);
int request_end_op(request *r);
void request_release(request *r);
void request_forget_conn(request *r);
void request_watch_clients(uv_timer_t *t);

/* main.c */
void worker_maybe_close_pool(worker *w);
void worker_maybe_stop(worker *w);
void worker_snapshot(worker *w);
int worker_client_fd(worker *w, h2o_socket_t *sock);

/* routes.c */
void route(request *r, h2o_iovec_t method, h2o_iovec_t path);

#endif
