/* Unit tests: the intrusive queue behind waiters, idle lists and deferred
 * callbacks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "queue.h"

typedef struct {
  int id;
  queue node;
} item;

static void collect(queue *h, int *out, int *n) {
  queue *q;
  *n = 0;
  queue_foreach (q, h)
    out[(*n)++] = queue_data(q, item, node)->id;
}

static void insert_remove_order(void **state) {
  (void)state;
  queue h;
  item it[4] = {{0, {0, 0}}, {1, {0, 0}}, {2, {0, 0}}, {3, {0, 0}}};
  int ids[8], n;
  queue_init(&h);
  assert_true(queue_empty(&h));
  for (int i = 0; i < 3; i++)
    queue_insert_tail(&h, &it[i].node);
  queue_insert_head(&h, &it[3].node);
  collect(&h, ids, &n);
  assert_int_equal(n, 4);
  assert_int_equal(ids[0], 3);
  assert_int_equal(ids[1], 0);
  assert_int_equal(ids[3], 2);
  assert_ptr_equal(queue_data(queue_head(&h), item, node), &it[3]);
  queue_remove(&it[0].node);
  assert_false(queue_linked(&it[0].node));
  assert_true(queue_linked(&it[1].node));
  collect(&h, ids, &n);
  assert_int_equal(n, 3);
  assert_int_equal(ids[1], 1);
  queue_remove(&it[3].node);
  queue_remove(&it[1].node);
  queue_remove(&it[2].node);
  assert_true(queue_empty(&h));
}

static void move_keeps_order(void **state) {
  (void)state;
  queue a, b;
  item it[5];
  int ids[8], n;
  queue_init(&a);
  queue_init(&b);
  for (int i = 0; i < 5; i++) {
    it[i].id = i;
    queue_insert_tail(i < 3 ? &a : &b, &it[i].node);
  }
  queue_move(&a, &b);
  assert_true(queue_empty(&a));
  collect(&b, ids, &n);
  assert_int_equal(n, 5);
  int want[] = {3, 4, 0, 1, 2};
  for (int i = 0; i < 5; i++)
    assert_int_equal(ids[i], want[i]);
  queue_move(&a, &b); /* empty source: no change */
  collect(&b, ids, &n);
  assert_int_equal(n, 5);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(insert_remove_order),
      cmocka_unit_test(move_keeps_order),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
