/*
 * The MQTT listener's slot table (see slots.h): a chained hash of entries,
 * grown as it fills, and for the addresses with connections in their
 * handshake one list per count, so that the address holding the most is
 * found at once.
 */
#include "slots.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "listener.h"
#include "listener_int.h"

struct slots {
    slot_t **bucket;
    size_t nbuckets, n;
    size_t with_sessions; /* identity entries that hold sessions */
    /* Addresses by their number of connections in their handshake (index 0 unused). */
    slot_t *by_count[LISTENER_HANDSHAKE_PER_ADDR + 1];
};

static uint32_t hash_key(const uint8_t *k, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a: the keys are addresses and identities, not secrets */
    for (size_t i = 0; i < len; i++)
        h = (h ^ k[i]) * 16777619u;
    return h;
}

slots_t *slots_new(void)
{
    slots_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->nbuckets = 256;
    s->bucket = calloc(s->nbuckets, sizeof(*s->bucket));
    if (!s->bucket) {
        free(s);
        return NULL;
    }
    return s;
}

void slots_free(slots_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nbuckets; i++)
        for (slot_t *e = s->bucket[i], *nx; e; e = nx) {
            nx = e->chain;
            free(e->sessions);
            free(e);
        }
    free(s->bucket);
    free(s);
}

static void grow(slots_t *s)
{
    size_t n = s->nbuckets * 2;
    slot_t **b = calloc(n, sizeof(*b));
    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < s->nbuckets; i++)
        for (slot_t *e = s->bucket[i], *nx; e; e = nx) {
            nx = e->chain;
            e->chain = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    free(s->bucket);
    s->bucket = b;
    s->nbuckets = n;
}

slot_t *slots_get(slots_t *s, enum slot_kind kind, const void *key, size_t len)
{
    uint8_t k[1 + MAP_IDENTITY_MAX + 16];
    if (len + 1 > sizeof(k))
        return NULL;
    k[0] = (uint8_t)kind;
    memcpy(k + 1, key, len);
    len++;
    uint32_t h = hash_key(k, len);
    for (slot_t *e = s->bucket[h & (s->nbuckets - 1)]; e; e = e->chain)
        if (e->hash == h && e->keylen == len && !memcmp(e->key, k, len)) {
            e->refs++;
            return e;
        }
    slot_t *e = calloc(1, sizeof(*e) + len);
    if (!e)
        return NULL;
    e->hash = h;
    e->keylen = len;
    memcpy(e->key, k, len);
    e->refs = 1;
    e->chain = s->bucket[h & (s->nbuckets - 1)];
    s->bucket[h & (s->nbuckets - 1)] = e;
    if (++s->n > 2 * s->nbuckets)
        grow(s);
    return e;
}

static void drop_if_unused(slots_t *s, slot_t *e)
{
    if (e->refs || e->nsessions)
        return;
    for (slot_t **pp = &s->bucket[e->hash & (s->nbuckets - 1)]; *pp; pp = &(*pp)->chain)
        if (*pp == e) {
            *pp = e->chain;
            break;
        }
    s->n--;
    free(e->sessions);
    free(e);
}

void slots_put(slots_t *s, slot_t *e)
{
    if (!e)
        return;
    e->refs--;
    drop_if_unused(s, e);
}

/* ------------------------------------------------------------------ handshakes */

static void by_count_unlink(slots_t *s, slot_t *a)
{
    if (!a->halfopen)
        return;
    if (a->by_prev)
        a->by_prev->by_next = a->by_next;
    else
        s->by_count[a->halfopen] = a->by_next;
    if (a->by_next)
        a->by_next->by_prev = a->by_prev;
    a->by_prev = a->by_next = NULL;
}

static void by_count_link(slots_t *s, slot_t *a)
{
    if (!a->halfopen)
        return;
    a->by_prev = NULL;
    a->by_next = s->by_count[a->halfopen];
    if (a->by_next)
        a->by_next->by_prev = a;
    s->by_count[a->halfopen] = a;
}

void slots_halfopen_add(slots_t *s, slot_t *a, lconn_t *c)
{
    if (c->halfopen || a->halfopen >= LISTENER_HANDSHAKE_PER_ADDR)
        return; /* the caller made room first */
    by_count_unlink(s, a);
    c->h_prev = a->newest;
    c->h_next = NULL;
    if (a->newest)
        a->newest->h_next = c;
    else
        a->oldest = c;
    a->newest = c;
    a->halfopen++;
    c->halfopen = true;
    by_count_link(s, a);
}

void slots_halfopen_del(slots_t *s, lconn_t *c)
{
    slot_t *a = c->addr;
    if (!c->halfopen || !a)
        return;
    by_count_unlink(s, a);
    if (c->h_prev)
        c->h_prev->h_next = c->h_next;
    else
        a->oldest = c->h_next;
    if (c->h_next)
        c->h_next->h_prev = c->h_prev;
    else
        a->newest = c->h_prev;
    c->h_prev = c->h_next = NULL;
    c->halfopen = false;
    a->halfopen--;
    by_count_link(s, a);
}

lconn_t *slots_halfopen_victim(const slots_t *s)
{
    for (size_t n = LISTENER_HANDSHAKE_PER_ADDR; n > 0; n--)
        if (s->by_count[n])
            return s->by_count[n]->oldest;
    return NULL;
}

/* ------------------------------------------------------------------ sessions */

static struct slot_session *session_find(slot_t *e, const uint8_t key[16])
{
    for (size_t i = 0; i < e->nsessions; i++)
        if (!memcmp(e->sessions[i].key, key, 16))
            return &e->sessions[i];
    return NULL;
}

static void session_remove(slots_t *s, slot_t *e, struct slot_session *ss)
{
    *ss = e->sessions[--e->nsessions];
    if (e->nsessions == 0) {
        free(e->sessions);
        e->sessions = NULL;
        s->with_sessions--;
    }
}

/* Forgets the sessions the broker has dropped by now. */
static void sessions_expire(slots_t *s, slot_t *e, uint64_t now_ms)
{
    for (size_t i = e->nsessions; i-- > 0;) {
        struct slot_session *ss = &e->sessions[i];
        if (!ss->live && ss->expires_ms != UINT64_MAX && ss->expires_ms <= now_ms)
            session_remove(s, e, ss);
    }
}

int slots_session_take(slots_t *s, slot_t *e, const uint8_t key[16], bool persistent, size_t max,
                       uint64_t now_ms, bool *used)
{
    *used = false;
    sessions_expire(s, e, now_ms);
    struct slot_session *ss = session_find(e, key);
    if (ss) {
        ss->live++;
        *used = true;
        return 0;
    }
    if (!persistent)
        return 0;
    if (e->nsessions >= max ||
        (!e->nsessions && s->with_sessions >= LISTENER_SESSION_IDENTITIES_MAX))
        return -EDQUOT;
    if (!e->sessions) {
        e->sessions = calloc(max, sizeof(*e->sessions));
        if (!e->sessions)
            return -ENOMEM;
        s->with_sessions++;
    }
    ss = &e->sessions[e->nsessions++];
    memcpy(ss->key, key, 16);
    ss->live = 1;
    ss->expires_ms = 0; /* new: not left at the broker yet */
    *used = true;
    return 0;
}

void slots_session_release(slots_t *s, slot_t *e, const uint8_t key[16], uint32_t expiry_s,
                           bool established, uint64_t now_ms)
{
    struct slot_session *ss = session_find(e, key);
    if (!ss)
        return;
    if (ss->live)
        ss->live--;
    if (ss->live)
        return; /* another connection of the same client id decides (a takeover) */
    if (!established) {
        if (ss->expires_ms == 0) /* the broker never had it */
            session_remove(s, e, ss);
    } else if (expiry_s == 0) {
        session_remove(s, e, ss);
    } else {
        ss->expires_ms = expiry_s == UINT32_MAX ? UINT64_MAX : now_ms + (uint64_t)expiry_s * 1000;
    }
    drop_if_unused(s, e);
}
