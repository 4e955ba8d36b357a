/* Host names resolved on libuv's thread pool.  See resolve.h. */
#include "resolve.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* One name of the conninfo: its lookup under way, if any, and its latest
 * answer.  Generations order lookups and answers: an attempt waits for the
 * lookup that was under way when it joined, or one it started. */
typedef struct {
  resolver *r;
  char *name;
  uv_getaddrinfo_t *req; /* under way, or NULL */
  unsigned started;      /* generation of the latest lookup begun */
  unsigned answered;     /* ... and of the latest answer */
  int status;            /* of that answer: 0 or a UV_EAI_* code */
  tag_buf addrs;         /* its addresses, numeric, comma-separated */
  int naddrs;
} lookup;

/* A host of the conninfo, in order. */
typedef struct {
  char *host;     /* "" for libpq's default */
  char *hostaddr; /* the user's own, or "" */
  char *port;     /* this host's, when the conninfo has one per host */
  int name;       /* index of its lookup, or -1: passed through */
} entry;

struct resolver {
  pgtag_pool *pool;
  entry *entries;
  int nentries;
  lookup *names;
  int nnames;
  int per_host_ports;
  queue waiting; /* of attempt, in the order they joined */
};

/* A connection attempt waiting for answers. */
typedef struct resolve_attempt {
  queue node;
  struct conn *conn;
  void (*done)(struct conn *conn);
  unsigned need[]; /* per name: the generation it waits for */
} attempt;

static int count_elems(const char *list) {
  int n = 1;
  for (const char *p = list; *p != '\0'; p++)
    n += *p == ',';
  return n;
}

/* Element i of a comma-separated list, as libpq splits them (no escapes). */
static char *elem(const char *list, int i) {
  const char *s = list;
  for (; i > 0; i--)
    s = strchr(s, ',') + 1;
  const char *e = strchr(s, ',');
  size_t n = e != NULL ? (size_t)(e - s) : strlen(s);
  char *out = malloc(n + 1);
  if (out != NULL) {
    memcpy(out, s, n);
    out[n] = '\0';
  }
  return out;
}

/* An IP address, not a name: getaddrinfo with AI_NUMERICHOST never asks a
 * resolver, so this costs nothing on the loop. */
static int numeric_host(const char *host) {
  struct addrinfo hints = {.ai_flags = AI_NUMERICHOST,
                           .ai_family = AF_UNSPEC,
                           .ai_socktype = SOCK_STREAM};
  struct addrinfo *res = NULL;
  if (getaddrinfo(host, NULL, &hints, &res) != 0)
    return 0;
  freeaddrinfo(res);
  return 1;
}

static const char *option(const PQconninfoOption *opts, const char *keyword) {
  for (const PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++)
    if (strcmp(o->keyword, keyword) == 0)
      return o->val;
  return NULL;
}

/* The conninfo's value, else libpq's default (its environment variable),
 * as libpq fills in options the conninfo does not set. */
static const char *effective(const PQconninfoOption *opts, const PQconninfoOption *defaults,
                             const char *keyword) {
  const char *v = option(opts, keyword);
  return v != NULL ? v : option(defaults, keyword);
}

void pgtag__resolver_free(resolver *r) {
  if (r == NULL)
    return;
  for (int i = 0; i < r->nentries; i++) {
    free(r->entries[i].host);
    free(r->entries[i].hostaddr);
    free(r->entries[i].port);
  }
  for (int i = 0; i < r->nnames; i++) {
    free(r->names[i].name);
    pgtag__tag_buf_free(&r->names[i].addrs);
  }
  free(r->entries);
  free(r->names);
  free(r);
}

static int add_name(resolver *r, const char *host) {
  for (int i = 0; i < r->nnames; i++)
    if (strcmp(r->names[i].name, host) == 0)
      return i;
  lookup *l = &r->names[r->nnames];
  memset(l, 0, sizeof *l);
  l->r = r;
  l->name = strdup(host);
  if (l->name == NULL)
    return -2;
  return r->nnames++;
}

/* Fill r's entries from the three lists; 0 when libpq would refuse them
 * (it then says why), -1 when out of memory, else 1. */
static int plan(resolver *r, const char *hosts, const char *addrs, const char *ports) {
  int n = addrs != NULL && addrs[0] != '\0'   ? count_elems(addrs)
          : hosts != NULL && hosts[0] != '\0' ? count_elems(hosts)
                                              : 1;
  if (hosts != NULL && hosts[0] != '\0' && count_elems(hosts) != n)
    return 0;
  int nports = ports != NULL && ports[0] != '\0' ? count_elems(ports) : 0;
  if (nports > 1 && nports != n)
    return 0;
  r->per_host_ports = nports > 1;
  r->entries = calloc((size_t)n, sizeof *r->entries);
  r->names = calloc((size_t)n, sizeof *r->names);
  if (r->entries == NULL || r->names == NULL)
    return -1;
  for (int i = 0; i < n; i++) {
    entry *e = &r->entries[r->nentries++];
    e->host = hosts != NULL && hosts[0] != '\0' ? elem(hosts, i) : strdup("");
    e->hostaddr = addrs != NULL && addrs[0] != '\0' ? elem(addrs, i) : strdup("");
    e->port = r->per_host_ports ? elem(ports, i) : NULL;
    e->name = -1;
    if (e->host == NULL || e->hostaddr == NULL || (r->per_host_ports && e->port == NULL))
      return -1;
    /* libpq's rules: its own hostaddr wins; "" is the default socket
     * directory; '/' or '@' begin a socket path. */
    if (e->hostaddr[0] != '\0' || e->host[0] == '\0' || e->host[0] == '/' || e->host[0] == '@' ||
        numeric_host(e->host))
      continue;
    e->name = add_name(r, e->host);
    if (e->name == -2)
      return -1;
  }
  return 1;
}

int pgtag__resolver_new(pgtag_pool *pool, const char *conninfo, resolver **out) {
  *out = NULL;
  PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
  if (opts == NULL)
    return -1;
  const char *service = option(opts, "service");
  if (service != NULL && service[0] != '\0') {
    PQconninfoFree(opts);
    return 0;
  }
  PQconninfoOption *defaults = PQconndefaults();
  resolver *r = calloc(1, sizeof *r);
  int rc = r == NULL || defaults == NULL
               ? -1
               : plan(r, effective(opts, defaults, "host"), effective(opts, defaults, "hostaddr"),
                      effective(opts, defaults, "port"));
  PQconninfoFree(opts);
  PQconninfoFree(defaults);
  if (rc <= 0 || r->nnames == 0) {
    pgtag__resolver_free(r);
    return rc < 0 ? -1 : 0;
  }
  r->pool = pool;
  queue_init(&r->waiting);
  *out = r;
  return 0;
}

/* Whether the comma-separated list holds s as one of its elements. */
static int has_elem(const char *list, const char *s) {
  size_t n = strlen(s);
  for (const char *p = list; p != NULL && *p != '\0';) {
    const char *comma = strchr(p, ',');
    size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
    if (len == n && memcmp(p, s, n) == 0)
      return 1;
    p = comma != NULL ? comma + 1 : NULL;
  }
  return 0;
}

/* Keep an answer: its addresses, numeric, each once (getaddrinfo may give
 * one address twice), in the order given, which is the order libpq would
 * have tried them in. */
static void keep_answer(lookup *l, int status, const struct addrinfo *res) {
  l->answered = l->started;
  l->status = status;
  l->naddrs = 0;
  l->addrs.len = 0;
  if (l->addrs.data != NULL)
    l->addrs.data[0] = '\0';
  for (const struct addrinfo *a = res; status == 0 && a != NULL; a = a->ai_next) {
    char host[NI_MAXHOST];
    if (getnameinfo(a->ai_addr, a->ai_addrlen, host, sizeof host, NULL, 0, NI_NUMERICHOST) != 0 ||
        has_elem(l->addrs.data, host))
      continue;
    size_t n = strlen(host);
    if (pgtag__tag_buf_reserve(&l->addrs, n + 1) != 0)
      break; /* out of memory: the addresses so far */
    if (l->naddrs++ > 0)
      pgtag__tag_buf_append(&l->addrs, ",", 1);
    pgtag__tag_buf_append(&l->addrs, host, n);
  }
  if (status == 0 && l->naddrs == 0)
    l->status = UV_EAI_NODATA;
}

static int ready(const resolver *r, const attempt *a) {
  for (int i = 0; i < r->nnames; i++)
    if ((int)(r->names[i].answered - a->need[i]) < 0)
      return 0;
  return 1;
}

static void on_lookup(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  lookup *l = req->data;
  resolver *r = l->r;
  pgtag_pool *pool = r->pool;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  free(req);
  l->req = NULL;
  keep_answer(l, status, res);
  uv_freeaddrinfo(res);
  /* The attempts every name of which has answered now go on; connecting
   * may close others (and take them off this list), so those ready are
   * moved out first. */
  queue go;
  queue_init(&go);
  queue *q = queue_head(&r->waiting);
  while (q != &r->waiting) {
    attempt *a = queue_data(q, attempt, node);
    q = q->next;
    if (ready(r, a)) {
      queue_remove(&a->node);
      queue_insert_tail(&go, &a->node);
    }
  }
  while (!queue_empty(&go)) {
    attempt *a = queue_data(queue_head(&go), attempt, node);
    struct conn *conn = a->conn;
    void (*done)(struct conn *) = a->done;
    queue_remove(&a->node);
    free(a);
    conn->resolving = NULL;
    done(conn);
  }
  pgtag_ctx_leave(previous);
  pool->on->handle_closed(pool); /* last: it may free the pool, and r with it */
}

static int lookup_start(lookup *l) {
  static const struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  pgtag_pool *pool = l->r->pool;
  uv_getaddrinfo_t *req = malloc(sizeof *req);
  if (req == NULL)
    return UV_ENOMEM;
  req->data = l;
  /* libpq's own hints: the same addresses, in the same order. */
  int rc = uv_getaddrinfo(pool->loop, req, on_lookup, l->name, NULL, &hints);
  if (rc != 0) {
    free(req);
    return rc;
  }
  l->req = req;
  l->started++;
  pool->handles++;
  return 0;
}

int pgtag__resolver_join(resolver *r, struct conn *conn, void (*done)(struct conn *conn),
                         char *errbuf, size_t errlen) {
  attempt *a = malloc(sizeof *a + (size_t)r->nnames * sizeof a->need[0]);
  if (a == NULL) {
    snprintf(errbuf, errlen, "out of memory");
    return -1;
  }
  for (int i = 0; i < r->nnames; i++) {
    lookup *l = &r->names[i];
    int rc = l->req != NULL ? 0 : lookup_start(l);
    if (rc != 0) {
      /* The lookups started for it stay under way; a later attempt joins
       * them. */
      snprintf(errbuf, errlen, "could not translate host name \"%s\" to address: %s", l->name,
               uv_strerror(rc));
      free(a);
      return -1;
    }
    a->need[i] = l->started;
  }
  a->conn = conn;
  a->done = done;
  queue_insert_tail(&r->waiting, &a->node);
  conn->resolving = a;
  return 0;
}

void pgtag__resolver_leave(struct conn *conn) {
  attempt *a = conn->resolving;
  if (a == NULL)
    return;
  queue_remove(&a->node);
  free(a);
  conn->resolving = NULL;
}

void pgtag__resolver_pending(const struct conn *conn, char *buf, size_t len) {
  const resolver *r = conn->pool->resolver;
  const attempt *a = conn->resolving;
  size_t w = 0;
  buf[0] = '\0';
  for (int i = 0; r != NULL && a != NULL && i < r->nnames && w < len; i++) {
    if ((int)(r->names[i].answered - a->need[i]) >= 0)
      continue;
    int n = snprintf(buf + w, len - w, "%s\"%s\"", w > 0 ? ", " : "", r->names[i].name);
    if (n < 0)
      break;
    w += (size_t)n;
  }
}

void pgtag__resolver_cancel(resolver *r) {
  for (int i = 0; r != NULL && i < r->nnames; i++)
    if (r->names[i].req != NULL)
      uv_cancel((uv_req_t *)r->names[i].req); /* fails once a thread runs it */
}

static int add_entry(resolved *out, int n, const char *host, const char *addr, const char *port) {
  const char *sep = n > 0 ? "," : "";
  if (pgtag__tag_buf_append(&out->host, sep, strlen(sep)) != 0 ||
      pgtag__tag_buf_append(&out->host, host, strlen(host)) != 0 ||
      pgtag__tag_buf_append(&out->hostaddr, sep, strlen(sep)) != 0 ||
      pgtag__tag_buf_append(&out->hostaddr, addr, strlen(addr)) != 0)
    return -1;
  if (port != NULL && (pgtag__tag_buf_append(&out->port, sep, strlen(sep)) != 0 ||
                       pgtag__tag_buf_append(&out->port, port, strlen(port)) != 0))
    return -1;
  return 0;
}

int pgtag__resolver_params(const resolver *r, resolved *out) {
  int n = 0;
  out->has_port = r->per_host_ports;
  /* Room for each, so that an empty list is "" rather than NULL. */
  if (pgtag__tag_buf_reserve(&out->host, 1) != 0 ||
      pgtag__tag_buf_reserve(&out->hostaddr, 1) != 0 ||
      pgtag__tag_buf_reserve(&out->port, 1) != 0 || pgtag__tag_buf_reserve(&out->notes, 1) != 0)
    return -1;
  out->host.data[0] = out->hostaddr.data[0] = out->port.data[0] = out->notes.data[0] = '\0';
  for (int i = 0; i < r->nentries; i++) {
    const entry *e = &r->entries[i];
    if (e->name < 0) {
      if (add_entry(out, n++, e->host, e->hostaddr, e->port) != 0)
        return -1;
      continue;
    }
    const lookup *l = &r->names[e->name];
    if (l->status != 0) {
      char line[512];
      snprintf(line, sizeof line, "could not translate host name \"%s\" to address: %s\n", e->host,
               uv_strerror(l->status));
      if (pgtag__tag_buf_append(&out->notes, line, strlen(line)) != 0)
        return -1;
      continue;
    }
    for (const char *s = l->addrs.data; s != NULL && *s != '\0';) {
      const char *comma = strchr(s, ',');
      size_t len = comma != NULL ? (size_t)(comma - s) : strlen(s);
      char addr[NI_MAXHOST];
      snprintf(addr, sizeof addr, "%.*s", (int)len, s);
      if (add_entry(out, n++, e->host, addr, e->port) != 0)
        return -1;
      s = comma != NULL ? comma + 1 : NULL;
    }
  }
  /* libpq ignores an empty value, and would take the conninfo's list or
   * the environment's instead: the default host alone is written as
   * itself twice. */
  if (n == 1 && out->host.data[0] == '\0' && out->hostaddr.data[0] == '\0') {
    char *port = r->per_host_ports ? strdup(out->port.data) : NULL;
    int failed = (r->per_host_ports && port == NULL) || add_entry(out, n++, "", "", port) != 0;
    free(port);
    if (failed)
      return -1;
  }
  return n;
}

void pgtag__resolved_free(resolved *out) {
  pgtag__tag_buf_free(&out->host);
  pgtag__tag_buf_free(&out->hostaddr);
  pgtag__tag_buf_free(&out->port);
  pgtag__tag_buf_free(&out->notes);
}

/* Element i of list (comma-separated) as a pointer and length; 0 when the
 * list is shorter. */
static int nth(const char *list, int i, const char **at, size_t *len) {
  const char *s = list;
  for (; i > 0 && s != NULL; i--) {
    s = strchr(s, ',');
    if (s != NULL)
      s++;
  }
  if (s == NULL)
    return 0;
  const char *comma = strchr(s, ',');
  *at = s;
  *len = comma != NULL ? (size_t)(comma - s) : strlen(s);
  return 1;
}

int pgtag__resolved_explain(const resolved *r, const char *pqmsg, tag_buf *out) {
  out->len = 0;
  if (pgtag__tag_buf_append(out, r->notes.data ? r->notes.data : "", r->notes.len) != 0)
    return -1;
  for (const char *p = pqmsg; *p != '\0';) {
    const char *q = strchr(p, '"');
    if (q == NULL)
      return pgtag__tag_buf_append(out, p, strlen(p));
    if (pgtag__tag_buf_append(out, p, (size_t)(q - p)) != 0)
      return -1;
    p = q;
    /* A quoted address of ours, the entry's name not being the address. */
    const char *addr, *host;
    size_t alen, hlen;
    int found = 0;
    for (int i = 0; !found && nth(r->hostaddr.data, i, &addr, &alen); i++)
      found = alen > 0 && strncmp(q + 1, addr, alen) == 0 && q[1 + alen] == '"' &&
              nth(r->host.data, i, &host, &hlen) && hlen > 0 &&
              (hlen != alen || memcmp(host, addr, alen) != 0);
    if (!found) {
      if (pgtag__tag_buf_append(out, "\"", 1) != 0)
        return -1;
      p++;
      continue;
    }
    if (pgtag__tag_buf_append(out, "\"", 1) != 0 || pgtag__tag_buf_append(out, host, hlen) != 0 ||
        pgtag__tag_buf_append(out, "\" (", 3) != 0 || pgtag__tag_buf_append(out, addr, alen) != 0 ||
        pgtag__tag_buf_append(out, ")", 1) != 0)
      return -1;
    p = q + alen + 2;
  }
  return 0;
}
