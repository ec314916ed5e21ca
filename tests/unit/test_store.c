/*
 * The down direction's value store: lookup, LRU order, byte accounting.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "store.h"

Test(store, find_set_and_lru_order)
{
    store_t *st = store_new(4); /* few buckets: chains get exercised */
    char path[32];
    for (int i = 0; i < 20; i++) {
        snprintf(path, sizeof(path), "bikes/b%d/commands", i);
        cr_assert_not_null(store_add(st, path, strlen(path), (size_t)i));
    }
    cr_assert_eq(store_count(st), 20);
    store_entry_t *e = store_find(st, "bikes/b7/commands", 17);
    cr_assert_not_null(e);
    cr_assert_eq(e->map, 7);
    cr_assert_not(e->has_value);
    cr_assert_null(store_find(st, "bikes/b7/command", 16));
    /* A prefix of a longer path is not that path. */
    cr_assert_null(store_find(st, "bikes/b1", 8));

    cr_assert_str_eq(store_lru(st)->path, "bikes/b0/commands");
    store_touch(st, store_lru(st));
    cr_assert_str_eq(store_lru(st)->path, "bikes/b1/commands");
    cr_assert_str_eq(store_mru(st)->path, "bikes/b0/commands");

    cr_assert_eq(store_set(st, e, "hello", 5, 0, 0), 0);
    cr_assert_eq(store_bytes(st), 5);
    uint32_t v = e->version;
    cr_assert_eq(store_set(st, e, "hi", 2, 50, 0), 0);
    cr_assert_eq(store_bytes(st), 2);
    cr_assert_gt(e->version, v);
    cr_assert_eq(memcmp(e->value, "hi", 2), 0);
    cr_assert_eq(e->cf, 50);

    store_remove(st, e);
    cr_assert_null(store_find(st, "bikes/b7/commands", 17));
    cr_assert_eq(store_count(st), 19);
    cr_assert_eq(store_bytes(st), 0);
    size_t n = 0;
    for (store_entry_t *x = store_mru(st); x; x = x->older)
        n++;
    cr_assert_eq(n, 19);
    while (store_lru(st))
        store_remove(st, store_lru(st));
    cr_assert_eq(store_count(st), 0);
    store_free(st);
}
