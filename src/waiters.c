/* Operations waiting for a connection: first in, first out, each with the
 * time it may wait (acquire_timeout_ms, or its request's deadline when
 * that comes first), and the one timer that fails them when it is up. */
#include "waiters.h"

#include "context.h"
#include "op.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_wait_timeout(uv_timer_t *timer);

/* The timer fires at the first waiter's deadline, or earlier.  Deadlines
 * of acquire_timeout_ms rise along the line; those of a request's own
 * deadline (pgtag_ctx_set_deadline) do not, and the earliest of them is
 * kept apart (deadlined_at: it may be stale, and early, never late).  A
 * timer set for a waiter that got a connection since is left to fire, and
 * on_wait_timeout sets it again: that spares a timer-heap update per query
 * under load.  While nobody waits it does not keep the loop alive. */
void pgtag__wait_timer_arm(pgtag_pool *pool) {
  uv_timer_t *t = &pool->wait_timer;
  uint64_t deadline = queue_empty(&pool->waiters) ? 0 : op_first(&pool->waiters)->deadline;
  if (pool->ndeadlined > 0 && (deadline == 0 || pool->deadlined_at < deadline))
    deadline = pool->deadlined_at;
  if (deadline == 0) {
    uv_unref((uv_handle_t *)t);
    return;
  }
  uv_ref((uv_handle_t *)t);
  if (uv_is_active((uv_handle_t *)t) && pool->wait_timer_at <= deadline)
    return;
  uint64_t now = uv_now(pool->loop);
  pool->wait_timer_at = deadline;
  uv_timer_start(t, on_wait_timeout, deadline > now ? deadline - now : 0, 0);
}

void pgtag__waiter_add(pgtag_pool *pool, op *o) {
  assert(!queue_linked(&o->node));
  int was_empty = queue_empty(&pool->waiters);
  /* The loop's time is that of its last turn: a program that worked long
   * since (or a slow machine) would have its wait cut short by as much. */
  uv_update_time(pool->loop);
  uint64_t now = uv_now(pool->loop);
  if (pool->cfg.acquire_timeout_ms > 0)
    o->deadline = now + (uint64_t)pool->cfg.acquire_timeout_ms;
  o->waiting_ns = uv_hrtime();
  int64_t left = pgtag__ctx_left_ms(o->ctx, o->waiting_ns);
  if (left >= 0 && (o->deadline == 0 || now + (uint64_t)left < o->deadline)) {
    o->deadline = now + (uint64_t)left; /* its request's deadline comes first */
    o->by_deadline = 1;
    if (pool->ndeadlined++ == 0 || o->deadline < pool->deadlined_at)
      pool->deadlined_at = o->deadline;
    was_empty = 1; /* the timer may have to fire earlier */
  }
  queue_insert_tail(&pool->waiters, &o->node);
  pool->nwaiting++;
  if (was_empty)
    pgtag__wait_timer_arm(pool);
  /* Someone waits now: a pending reconnect must keep the loop alive. */
  uv_ref((uv_handle_t *)&pool->retry_timer);
}

void pgtag__waiter_remove(pgtag_pool *pool, op *o) {
  assert(pool->nwaiting > 0 && (!o->by_deadline || pool->ndeadlined > 0));
  queue_remove(&o->node);
  pool->nwaiting--;
  if (o->by_deadline)
    pool->ndeadlined--;
}

/* o goes back into the line before q (its place kept, or ahead of others
 * to be sent again), with the deadline it had. */
void pgtag__waiter_put_back(pgtag_pool *pool, op *o, queue *q) {
  queue_insert_tail(q, &o->node); /* before q */
  pool->nwaiting++;
  if (o->by_deadline && (pool->ndeadlined++ == 0 || o->deadline < pool->deadlined_at))
    pool->deadlined_at = o->deadline;
  pgtag__wait_timer_arm(pool);
}

void pgtag__waiters_take_all(pgtag_pool *pool, queue *out) {
  queue_init(out);
  queue_move(&pool->waiters, out);
  pool->nwaiting = pool->ndeadlined = 0;
  pgtag__wait_timer_arm(pool);
}

op *pgtag__waiter_pop(pgtag_pool *pool) {
  assert(!queue_empty(&pool->waiters));
  op *o = op_first(&pool->waiters);
  pgtag__waiter_remove(pool, o);
  return o;
}

/* Why a wait ended: with the last connection error, whole (it names the
 * host and the server's reason), when connecting is what failed. */
static void set_wait_timeout_error(const pgtag_pool *pool, op *o) {
  const char *last = pool->connect_failures_in_row > 0 ? pool->connect_err.message : NULL;
  char head[96];
  snprintf(head, sizeof head, "no connection became free within %d ms",
           pool->cfg.acquire_timeout_ms);
  pgtag__op_set_error(o, PGTAG_ETIMEDOUT, NULL, head);
  if (last == NULL || last[0] == '\0')
    return;
  size_t n = strlen(head) + strlen(last) + 32;
  char *msg = malloc(n);
  if (msg == NULL)
    return; /* the head alone */
  snprintf(msg, n, "%s (last connection error: %s)", head, last);
  free(o->message);
  o->message = msg;
}

/* A waiter's time is up: out of the line, to fail by its request's
 * deadline or by acquire_timeout_ms, and counted as such. */
static void wait_expired(pgtag_pool *pool, op *o, queue *expired) {
  pgtag__waiter_remove(pool, o);
  if (o->by_deadline) {
    pool->stats.deadlines++;
    pgtag__op_set_error(o, PGTAG_ETIMEDOUT, NULL,
                        "its request's deadline passed while it waited for a connection");
  } else {
    pool->stats.timeouts++;
    set_wait_timeout_error(pool, o);
  }
  queue_insert_tail(expired, &o->node);
}

/* acquire_timeout_ms deadlines rise along the line: the expired ones are at
 * its head.  Requests' own deadlines can be anywhere: while any waits, the
 * whole line is looked through, and the earliest left is noted.  The
 * expired are taken out first and their callbacks run after: a callback
 * may change the line (cancel a request, release a connection that goes
 * to the next waiter) under a walk that is still going. */
static void on_wait_timeout(uv_timer_t *timer) {
  pgtag_pool *pool = timer->data;
  pgtag_ctx *previous = pgtag_ctx_enter(NULL);
  uint64_t now = uv_now(pool->loop);
  queue expired;
  queue_init(&expired);

  while (!queue_empty(&pool->waiters)) {
    op *o = op_first(&pool->waiters);
    if (o->deadline == 0 || o->deadline > now)
      break;
    wait_expired(pool, o, &expired);
  }
  if (pool->ndeadlined > 0) {
    uint64_t earliest = 0;
    queue *q = queue_head(&pool->waiters);
    while (q != &pool->waiters) {
      op *o = queue_data(q, op, node);
      q = q->next;
      if (!o->by_deadline)
        continue;
      if (o->deadline <= now)
        wait_expired(pool, o, &expired);
      else if (earliest == 0 || o->deadline < earliest)
        earliest = o->deadline;
    }
    pool->deadlined_at = earliest;
  }
  pgtag__wait_timer_arm(pool);
  while (!queue_empty(&expired)) {
    op *o = op_first(&expired);
    queue_remove(&o->node);
    pgtag__op_finish(o);
  }
  pool->on->settle(pool); /* a closing pool may be done now */
  pgtag_ctx_leave(previous);
}
