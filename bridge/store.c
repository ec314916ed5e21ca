#include "store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The entries of one identity. */
struct store_owner {
    struct store_owner *hnext;
    store_entry_t *first;
    size_t count;
    char id[]; /* NUL-terminated */
};

struct store {
    store_entry_t **buckets; /* owned; chains own their entries */
    size_t nbuckets, count, bytes;
    store_entry_t *oldest, *newest;
    struct store_owner **owners; /* owned, nbuckets chains */
    store_entry_t *shared;
};

static size_t hash(const char *s, size_t len)
{
    size_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

store_t *store_new(size_t buckets)
{
    store_t *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->nbuckets = buckets ? buckets : 1;
    st->buckets = calloc(st->nbuckets, sizeof(*st->buckets));
    st->owners = calloc(st->nbuckets, sizeof(*st->owners));
    if (!st->buckets || !st->owners) {
        free(st->buckets);
        free(st->owners);
        free(st);
        return NULL;
    }
    return st;
}

static void entry_free(store_entry_t *e)
{
    free(e->path);
    free(e->value);
    free(e);
}

void store_free(store_t *st)
{
    if (!st)
        return;
    while (st->oldest)
        store_remove(st, st->oldest);
    free(st->buckets);
    free(st->owners);
    free(st);
}

store_entry_t *store_find(const store_t *st, const char *path, size_t len)
{
    for (store_entry_t *e = st->buckets[hash(path, len) % st->nbuckets]; e; e = e->hnext)
        if (!strncmp(e->path, path, len) && e->path[len] == '\0')
            return e;
    return NULL;
}

static void unlink_lru(store_t *st, store_entry_t *e)
{
    if (e->older)
        e->older->newer = e->newer;
    else
        st->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        st->newest = e->older;
    e->older = e->newer = NULL;
}

static void link_newest(store_t *st, store_entry_t *e)
{
    e->older = st->newest;
    e->newer = NULL;
    if (st->newest)
        st->newest->newer = e;
    else
        st->oldest = e;
    st->newest = e;
}

static struct store_owner **owner_slot(const store_t *st, const char *identity)
{
    struct store_owner **pp = &st->owners[hash(identity, strlen(identity)) % st->nbuckets];
    while (*pp && strcmp((*pp)->id, identity))
        pp = &(*pp)->hnext;
    return pp;
}

store_entry_t *store_owned(const store_t *st, const char *identity)
{
    struct store_owner *o = identity ? *owner_slot(st, identity) : NULL;
    return o ? o->first : NULL;
}

store_entry_t *store_shared(const store_t *st)
{
    return st->shared;
}

/* Puts e at the head of its index list: its owner's, or the shared one. */
static int index_link(store_t *st, store_entry_t *e, const char *identity)
{
    store_entry_t **head = &st->shared;
    if (identity) {
        struct store_owner **pp = owner_slot(st, identity);
        if (!*pp) {
            size_t n = strlen(identity);
            struct store_owner *o = calloc(1, sizeof(*o) + n + 1);
            if (!o)
                return -ENOMEM;
            memcpy(o->id, identity, n + 1);
            *pp = o;
        }
        e->owner = *pp;
        e->owner->count++;
        head = &e->owner->first;
    }
    e->iprev = NULL;
    e->inext = *head;
    if (*head)
        (*head)->iprev = e;
    *head = e;
    return 0;
}

static void index_unlink(store_t *st, store_entry_t *e)
{
    store_entry_t **head = e->owner ? &e->owner->first : &st->shared;
    if (e->iprev)
        e->iprev->inext = e->inext;
    else
        *head = e->inext;
    if (e->inext)
        e->inext->iprev = e->iprev;
    if (e->owner && --e->owner->count == 0) {
        struct store_owner **pp = owner_slot(st, e->owner->id);
        *pp = e->owner->hnext;
        free(e->owner);
    }
    e->owner = NULL;
}

store_entry_t *store_add(store_t *st, const char *path, size_t len, size_t map,
                         const char *identity)
{
    store_entry_t *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->path = strndup(path, len);
    if (!e->path || index_link(st, e, identity) < 0) {
        free(e->path);
        free(e);
        return NULL;
    }
    e->map = map;
    e->cf = -1;
    size_t b = hash(path, len) % st->nbuckets;
    e->hnext = st->buckets[b];
    st->buckets[b] = e;
    link_newest(st, e);
    st->count++;
    return e;
}

int store_set(store_t *st, store_entry_t *e, const void *value, size_t len, int cf,
              uint64_t expires_ms)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, value, len);
    st->bytes -= e->has_value ? e->len : 0;
    free(e->value);
    e->value = copy;
    e->len = len;
    e->has_value = true;
    e->cf = cf;
    e->expires_ms = expires_ms;
    e->version++;
    st->bytes += len;
    return 0;
}

void store_clear(store_t *st, store_entry_t *e)
{
    st->bytes -= e->has_value ? e->len : 0;
    free(e->value);
    e->value = NULL;
    e->len = 0;
    e->has_value = false;
    e->version++;
}

void store_remove(store_t *st, store_entry_t *e)
{
    store_entry_t **pp = &st->buckets[hash(e->path, strlen(e->path)) % st->nbuckets];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    unlink_lru(st, e);
    index_unlink(st, e);
    st->count--;
    st->bytes -= e->has_value ? e->len : 0;
    entry_free(e);
}

void store_touch(store_t *st, store_entry_t *e)
{
    if (st->newest == e)
        return;
    unlink_lru(st, e);
    link_newest(st, e);
}

store_entry_t *store_lru(const store_t *st)
{
    return st->oldest;
}

store_entry_t *store_mru(const store_t *st)
{
    return st->newest;
}

size_t store_count(const store_t *st)
{
    return st->count;
}

size_t store_bytes(const store_t *st)
{
    return st->bytes;
}
