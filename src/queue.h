/* An intrusive circular doubly-linked list, the shape libuv uses: a queue
 * head and its nodes are the same struct, embedded in the owner, so linking
 * and unlinking never allocate. */
#ifndef PGTAG_QUEUE_H
#define PGTAG_QUEUE_H

#include <stddef.h>

typedef struct queue {
  struct queue *next;
  struct queue *prev;
} queue;

#define queue_data(ptr, type, field) ((type *)((char *)(ptr) - (offsetof(type, field))))

#define queue_foreach(q, h) for ((q) = (h)->next; (q) != (h); (q) = (q)->next)

static inline void queue_init(queue *q) { q->next = q->prev = q; }

static inline int queue_empty(const queue *h) { return h->next == h; }

static inline queue *queue_head(const queue *h) { return h->next; }

/* A node that has been queue_init'ed or queue_remove'd is unlinked. */
static inline int queue_linked(const queue *q) { return q->next != q; }

static inline void queue_insert_tail(queue *h, queue *q) {
  q->next = h;
  q->prev = h->prev;
  q->prev->next = q;
  h->prev = q;
}

static inline void queue_insert_head(queue *h, queue *q) {
  q->next = h->next;
  q->prev = h;
  q->next->prev = q;
  h->next = q;
}

static inline void queue_remove(queue *q) {
  q->prev->next = q->next;
  q->next->prev = q->prev;
  queue_init(q);
}

/* Move every node of h to the tail of n, leaving h empty. */
static inline void queue_move(queue *h, queue *n) {
  if (queue_empty(h))
    return;
  n->prev->next = h->next;
  h->next->prev = n->prev;
  h->prev->next = n;
  n->prev = h->prev;
  queue_init(h);
}

#endif
