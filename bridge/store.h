/*
 * The current values of the down direction: one entry per concrete resource,
 * found by path, kept in least-recently-used order, and indexed by the device
 * identity it belongs to (or shared by every device), so that what one device
 * may see is found without looking at the others'. Bounded by the caller,
 * which evicts (store_lru) before inserting past its limits.
 */
#ifndef TANDEM_STORE_H
#define TANDEM_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct store_entry {
    char *path;     /* owned: the resource path, e.g. "bikes/bike-7/commands" */
    size_t map;     /* index of the mapping it comes from */
    uint8_t *value; /* owned; NULL until a value arrives */
    size_t len;
    bool has_value;
    int cf;                    /* CoAP Content-Format, -1 when unknown */
    uint64_t expires_ms;       /* monotonic ms when the value expires, 0 = never */
    uint32_t version;          /* bumped at each value; the ETag */
    void *res;                 /* the coap_resource_t, owned by the CoAP context */
    struct store_owner *owner; /* the identity it belongs to; NULL when shared */
    struct store_entry *hnext, *older, *newer;
    struct store_entry *inext, *iprev; /* the owner's entries, or the shared ones */
} store_entry_t;

typedef struct store store_t;

store_t *store_new(size_t buckets);
/* Frees every entry (not their resources: the CoAP context owns those). */
void store_free(store_t *st);

store_entry_t *store_find(const store_t *st, const char *path, size_t len);
/*
 * Adds an entry without a value, as the most recently used. identity: the
 * device it belongs to (copied), NULL when every device may read it. NULL on
 * ENOMEM.
 */
store_entry_t *store_add(store_t *st, const char *path, size_t len, size_t map,
                         const char *identity);
/* The entries of identity (then e->inext), or NULL. */
store_entry_t *store_owned(const store_t *st, const char *identity);
/* The entries every device may read (then e->inext), or NULL. */
store_entry_t *store_shared(const store_t *st);
/* Replaces e's value (copied). Returns 0 or -ENOMEM (e keeps its old value). */
int store_set(store_t *st, store_entry_t *e, const void *value, size_t len, int cf,
              uint64_t expires_ms);
/* Drops e's value; e stays, without one. */
void store_clear(store_t *st, store_entry_t *e);
void store_remove(store_t *st, store_entry_t *e);
/* Marks e most recently used. */
void store_touch(store_t *st, store_entry_t *e);
/* The least recently used entry, or NULL when empty. */
store_entry_t *store_lru(const store_t *st);
/* Iterates from the most recently used: store_mru(st), then e->older. */
store_entry_t *store_mru(const store_t *st);

size_t store_count(const store_t *st);
size_t store_bytes(const store_t *st); /* value bytes held */

#endif
