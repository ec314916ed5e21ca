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
        cr_assert_not_null(store_add(st, path, strlen(path), (size_t)i, NULL));
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

static size_t count_list(store_entry_t *e)
{
    size_t n = 0;
    for (; e; e = e->inext)
        n++;
    return n;
}

/* Discovery reads what one device may see without looking at the others'. */
Test(store, index_by_identity)
{
    store_t *st = store_new(8);
    char path[48], id[16];
    for (int i = 0; i < 30; i++) {
        snprintf(id, sizeof(id), "bike-%d", i % 3);
        snprintf(path, sizeof(path), "bikes/%s/c%d", id, i);
        cr_assert_not_null(store_add(st, path, strlen(path), 0, id));
    }
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof(path), "alerts/a%d", i);
        cr_assert_not_null(store_add(st, path, strlen(path), 1, NULL));
    }
    cr_assert_eq(count_list(store_owned(st, "bike-0")), 10);
    cr_assert_eq(count_list(store_owned(st, "bike-2")), 10);
    cr_assert_null(store_owned(st, "bike-9"));
    cr_assert_null(store_owned(st, NULL));
    cr_assert_eq(count_list(store_shared(st)), 5);
    for (store_entry_t *e = store_owned(st, "bike-1"); e; e = e->inext)
        cr_assert(strstr(e->path, "bike-1/"), "%s in bike-1's list", e->path);
    /* Removing entries keeps the lists whole; the last one drops its owner. */
    store_entry_t *e = store_find(st, "bikes/bike-1/c4", 15);
    cr_assert_not_null(e);
    store_remove(st, e);
    cr_assert_eq(count_list(store_owned(st, "bike-1")), 9);
    while (store_owned(st, "bike-1"))
        store_remove(st, store_owned(st, "bike-1"));
    cr_assert_null(store_owned(st, "bike-1"));
    cr_assert_eq(count_list(store_owned(st, "bike-0")), 10);
    cr_assert_eq(store_count(st), 25);
    store_free(st);
}
