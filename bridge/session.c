/*
 * Sessions: the bound, eviction, duplicate detection by peer, Observe
 * registrations. See session.h for the rules.
 */
#include "session.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "dtls.h"
#include "log.h"

/*
 * A handshake younger than this is left to finish: evicting it would let a
 * stream of new devices starve each other's handshakes. ms.
 */
#define HANDSHAKE_GRACE_MS 10000
/* Sessions looked at, from the least recently active, for one that may go. */
#define EVICT_LOOK 64
/* Longest peer key: protocol, family, port, address, identity. */
#define KEY_MAX (1 + 2 + 2 + 16 + MAP_IDENTITY_MAX)

struct peer {
    struct peer *hnext;         /* hash chain */
    struct peer *older, *newer; /* order of peers no session uses */
    sess_t *owner;              /* the live session using it, or NULL */
    uint64_t hash, last_ms;
    struct dedup recent[DEDUP_SLOTS];
    unsigned next;
    size_t keylen;
    uint8_t key[]; /* keylen bytes */
};

struct sessions {
    coap_context_t *ctx; /* borrowed */
    size_t max, count;
    sess_t *oldest[SESS_CLASSES], *newest[SESS_CLASSES];
    sess_t **refused; /* sessions to evict after this turn; owned array */
    size_t nrefused, refused_cap;
    struct peer **buckets; /* owned, with the peers */
    size_t nbuckets, npeers, nidle;
    struct peer *idle_oldest, *idle_newest;
    void (*free_up)(void *up);
    void (*on_ready)(void *arg, coap_session_t *s, const char *identity);
    void *arg;
    presence_t *presence; /* borrowed; NULL for none */
    struct sessions_stats st;
};

sessions_t *sessions_new(coap_context_t *ctx, size_t max_sessions, void (*free_up)(void *up),
                         void (*on_ready)(void *arg, coap_session_t *s, const char *identity),
                         void *arg)
{
    sessions_t *ss = calloc(1, sizeof(*ss));
    if (!ss)
        return NULL;
    ss->ctx = ctx;
    ss->max = max_sessions;
    ss->nbuckets = 1024;
    while (ss->nbuckets < 2 * max_sessions && ss->nbuckets < ((size_t)1 << 20))
        ss->nbuckets *= 2;
    ss->buckets = calloc(ss->nbuckets, sizeof(*ss->buckets));
    if (!ss->buckets) {
        free(ss);
        return NULL;
    }
    ss->free_up = free_up;
    ss->on_ready = on_ready;
    ss->arg = arg;
    return ss;
}

void sessions_set_max(sessions_t *ss, size_t max_sessions)
{
    ss->max = max_sessions;
}

void sessions_set_presence(sessions_t *ss, presence_t *p)
{
    ss->presence = p;
}

/* Peers no session uses, in the order they were left. */
static void idle_unlink(sessions_t *ss, struct peer *p)
{
    if (p->older)
        p->older->newer = p->newer;
    else if (ss->idle_oldest == p)
        ss->idle_oldest = p->newer;
    if (p->newer)
        p->newer->older = p->older;
    else if (ss->idle_newest == p)
        ss->idle_newest = p->older;
    p->older = p->newer = NULL;
    ss->nidle--;
}

static void peer_free(sessions_t *ss, struct peer *p)
{
    struct peer **pp = &ss->buckets[p->hash % ss->nbuckets];
    while (*pp && *pp != p)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = p->hnext;
    if (!p->owner)
        idle_unlink(ss, p);
    ss->npeers--;
    free(p);
}

/* A peer no session uses any more: kept for duplicates, the oldest dropped past max. */
static void peer_leave(sessions_t *ss, struct peer *p)
{
    p->owner = NULL;
    p->older = ss->idle_newest;
    p->newer = NULL;
    if (ss->idle_newest)
        ss->idle_newest->newer = p;
    else
        ss->idle_oldest = p;
    ss->idle_newest = p;
    ss->nidle++;
    uint64_t now = gw_now_ms();
    size_t keep = ss->max > SESS_PEERS_MIN ? ss->max : SESS_PEERS_MIN;
    while (ss->idle_oldest &&
           (ss->nidle > keep || now - ss->idle_oldest->last_ms > EXCHANGE_LIFETIME_MS))
        peer_free(ss, ss->idle_oldest);
}

static void class_unlink(sessions_t *ss, sess_t *s)
{
    if (s->older)
        s->older->newer = s->newer;
    else
        ss->oldest[s->cls] = s->newer;
    if (s->newer)
        s->newer->older = s->older;
    else
        ss->newest[s->cls] = s->older;
    s->older = s->newer = NULL;
}

static void class_link_newest(sessions_t *ss, sess_t *s)
{
    s->older = ss->newest[s->cls];
    s->newer = NULL;
    if (ss->newest[s->cls])
        ss->newest[s->cls]->newer = s;
    else
        ss->oldest[s->cls] = s;
    ss->newest[s->cls] = s;
}

static void refused_forget(sessions_t *ss, sess_t *s)
{
    for (size_t i = 0; i < ss->nrefused; i++) {
        if (ss->refused[i] == s) {
            ss->refused[i] = ss->refused[--ss->nrefused];
            return;
        }
    }
}

/* Frees the bridge's state of a session (dtls_peer_t's free_app). */
static void sess_free(void *app)
{
    sess_t *s = app;
    if (!s)
        return;
    sessions_t *ss = s->ss;
    presence_end(ss->presence, s->presence, s->why ? s->why : "session closed");
    class_unlink(ss, s);
    if (s->refused)
        refused_forget(ss, s);
    if (s->peer)
        peer_leave(ss, s->peer);
    if (ss->free_up && s->up)
        ss->free_up(s->up);
    for (unsigned i = 0; i < s->nobs; i++)
        free(s->obs[i].path);
    ss->st.observers -= s->nobs;
    if (!s->hello)
        ss->count--;
    free(s);
}

void sessions_free(sessions_t *ss)
{
    if (!ss)
        return;
    /* libcoap 4.3 frees the sessions left at the end without an event. */
    dtls_peers_free(sess_free);
    for (size_t b = 0; b < ss->nbuckets; b++) {
        while (ss->buckets[b]) {
            struct peer *p = ss->buckets[b];
            ss->buckets[b] = p->hnext;
            free(p);
        }
    }
    free(ss->buckets);
    free(ss->refused);
    free(ss);
}

/* Whether s may be evicted now. */
static bool evictable(const sess_t *s)
{
    if (s->busy || s->refused)
        return false;
    /* libcoap frees a session still in its ClientHello only by itself. */
    return coap_session_get_type(s->session) == COAP_SESSION_TYPE_SERVER;
}

static sess_t *pick_victim(sessions_t *ss, const sess_t *except)
{
    uint64_t now = gw_now_ms();
    for (int cls = 0; cls < SESS_CLASSES; cls++) {
        int looked = 0;
        for (sess_t *s = ss->oldest[cls]; s && looked < EVICT_LOOK; s = s->newer, looked++) {
            if (cls == SESS_HANDSHAKE && now - s->last_ms < HANDSHAKE_GRACE_MS)
                break; /* the rest are younger still */
            if (s != except && evictable(s))
                return s;
        }
    }
    return NULL;
}

/*
 * Ends a session now: its observers and queued messages go (libcoap), then
 * the bridge's state, then the session itself. libcoap 4.3 has no call that
 * frees a server session; a session made a client one is freed by its last
 * release.
 */
static void evict(sess_t *s)
{
    coap_session_t *session = s->session;
    coap_session_disconnected(session, COAP_NACK_NOT_DELIVERABLE);
    dtls_peer_release(session, sess_free);
    if (coap_session_set_type_client(session))
        coap_session_release(session);
}

sess_t *sess_get(sessions_t *ss, coap_session_t *session)
{
    dtls_peer_t *peer = dtls_peer_get(session);
    if (!peer)
        return NULL;
    if (peer->app)
        return peer->app;
    sess_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->ss = ss;
    s->session = session;
    s->remote = *coap_session_get_addr_remote(session);
    s->ifindex = coap_session_get_ifindex(session);
    s->cls = coap_session_get_proto(session) == COAP_PROTO_DTLS ? SESS_HANDSHAKE : SESS_PLAIN;
    if (s->cls == SESS_HANDSHAKE &&
        coap_session_get_state(session) == COAP_SESSION_STATE_ESTABLISHED)
        s->cls = SESS_DTLS;
    /*
     * A DTLS peer's first ClientHello makes a session before its address is
     * proven (libcoap's cookie exchange): such sessions are bounded by
     * libcoap's handshake limit, and counted here once past it.
     */
    s->hello = coap_session_get_type(session) == COAP_SESSION_TYPE_HELLO;
    s->last_ms = gw_now_ms();
    class_link_newest(ss, s);
    if (!s->hello)
        ss->count++;
    peer->app = s;
    return s;
}

/* Keeps the count within max_sessions now that s is counted: evicts, or refuses s. */
static void make_room(sessions_t *ss, sess_t *s)
{
    if (ss->count <= ss->max)
        return;
    sess_t *victim = pick_victim(ss, s);
    if (victim) {
        ss->st.evicted++;
        victim->why = "evicted for a newer session (coap.max_sessions)";
        evict(victim);
        return;
    }
    /* Every other session is busy: this one goes instead, once libcoap is done with it. */
    if (ss->nrefused == ss->refused_cap) {
        size_t cap = ss->refused_cap ? ss->refused_cap * 2 : 8;
        sess_t **v = realloc(ss->refused, cap * sizeof(*v));
        if (!v)
            return;
        ss->refused = v;
        ss->refused_cap = cap;
    }
    s->refused = true;
    ss->refused[ss->nrefused++] = s;
    ss->st.refused++;
}

sess_t *sess_open(sessions_t *ss, coap_session_t *session)
{
    sess_t *s = sess_get(ss, session);
    if (s && !s->hello)
        make_room(ss, s);
    return s;
}

void sess_close(sessions_t *ss, coap_session_t *session)
{
    dtls_peer_t *peer = coap_session_get_app_data(session);
    sess_t *s = peer ? peer->app : NULL;
    if (s && s->cls == SESS_HANDSHAKE && !s->hello) {
        ss->st.handshakes_failed++;
        dtls_log_failure(session, "handshake not completed");
    }
    dtls_peer_release(session, sess_free);
}

void sess_touch(sess_t *s, uint64_t now_ms)
{
    s->last_ms = now_ms;
    presence_request(s->presence);
    if (s->ss->newest[s->cls] == s)
        return;
    class_unlink(s->ss, s);
    class_link_newest(s->ss, s);
}

void sessions_after_io(sessions_t *ss)
{
    sess_t *next;
    for (sess_t *s = ss->oldest[SESS_HANDSHAKE]; s; s = next) {
        next = s->newer;
        /*
         * libcoap 4.3 frees a ClientHello's session whose DTLS state could not
         * be made without telling (coap_session_new_dtls_session): such a
         * session is no longer found by its peer's address, and must not be
         * touched. Every other session it frees, it tells of
         * (COAP_EVENT_SERVER_SESSION_DEL). The search costs a walk over every
         * session, so it is made for those only: with the cookie gate, a
         * ClientHello's session lasts one datagram.
         */
        if (s->hello) {
            coap_session_t *found = coap_session_get_by_peer(ss->ctx, &s->remote, s->ifindex);
            dtls_peer_t *peer = found ? coap_session_get_app_data(found) : NULL;
            if (found != s->session || !peer || peer->app != s) {
                dtls_peer_forget(s, sess_free);
                continue;
            }
        }
        if (s->hello && coap_session_get_type(s->session) == COAP_SESSION_TYPE_SERVER) {
            /* Past the cookie exchange: counted from now on. */
            s->hello = false;
            ss->count++;
            make_room(ss, s);
        }
        if (coap_session_get_state(s->session) != COAP_SESSION_STATE_ESTABLISHED)
            continue;
        const char *why = NULL;
        if (!dtls_suite_ok(s->session, &why)) {
            gw_debug(DTLS, "handshake refused (%s)", why);
            dtls_log_failure(s->session, why);
            ss->st.handshakes_failed++;
            evict(s);
            continue;
        }
        ss->st.handshakes_ok++;
        class_unlink(ss, s);
        s->cls = SESS_DTLS;
        class_link_newest(ss, s);
        const char *identity = dtls_identity(s->session);
        if (!s->presence)
            s->presence = presence_begin(ss->presence, identity, "coap", &s->remote.addr.sa);
        if (ss->on_ready)
            ss->on_ready(ss->arg, s->session, identity);
    }
    for (size_t i = 0; i < ss->nrefused;) {
        sess_t *s = ss->refused[i];
        if (coap_session_get_type(s->session) != COAP_SESSION_TYPE_SERVER) {
            i++; /* still a ClientHello: libcoap frees it, or it becomes a server session */
            continue;
        }
        s->refused = false;
        ss->refused[i] = ss->refused[--ss->nrefused];
        evict(s);
    }
}

/* The key of s's peer: protocol, address, port and identity. */
static size_t peer_key(const sess_t *s, const char *identity, uint8_t *key)
{
    size_t n = 0;
    key[n++] = (uint8_t)coap_session_get_proto(s->session);
    const struct sockaddr *sa = &s->remote.addr.sa;
    memcpy(key + n, &sa->sa_family, 2);
    n += 2;
    if (sa->sa_family == AF_INET6) {
        memcpy(key + n, &s->remote.addr.sin6.sin6_port, 2);
        memcpy(key + n + 2, &s->remote.addr.sin6.sin6_addr, 16);
        n += 18;
    } else if (sa->sa_family == AF_INET) {
        memcpy(key + n, &s->remote.addr.sin.sin_port, 2);
        memcpy(key + n + 2, &s->remote.addr.sin.sin_addr, 4);
        n += 6;
    }
    size_t idlen = identity ? strlen(identity) : 0;
    if (idlen > MAP_IDENTITY_MAX)
        idlen = MAP_IDENTITY_MAX;
    memcpy(key + n, identity ? identity : "", idlen);
    return n + idlen;
}

static uint64_t hash_of(const uint8_t *key, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ key[i]) * 1099511628211ull;
    return h;
}

/* s's peer, found again when it had a session before, or made. NULL on ENOMEM. */
static struct peer *peer_of(sess_t *s, const char *identity)
{
    sessions_t *ss = s->ss;
    if (s->peer)
        return s->peer;
    uint8_t key[KEY_MAX];
    size_t len = peer_key(s, identity, key);
    uint64_t h = hash_of(key, len);
    struct peer *p;
    for (p = ss->buckets[h % ss->nbuckets]; p; p = p->hnext)
        if (p->hash == h && p->keylen == len && !memcmp(p->key, key, len))
            break;
    if (p && p->owner) {
        /* Another live session of the same peer (a new one while the old lingers). */
        p->owner->peer = NULL;
    } else if (p) {
        idle_unlink(ss, p);
    } else {
        p = calloc(1, sizeof(*p) + len);
        if (!p)
            return NULL;
        p->hash = h;
        p->keylen = len;
        memcpy(p->key, key, len);
        p->hnext = ss->buckets[h % ss->nbuckets];
        ss->buckets[h % ss->nbuckets] = p;
        ss->npeers++;
    }
    p->owner = s;
    s->peer = p;
    return p;
}

const struct dedup *sess_dedup_find(sess_t *s, const char *identity, uint16_t mid, uint64_t now_ms)
{
    struct peer *p = peer_of(s, identity);
    if (!p)
        return NULL;
    for (unsigned i = 0; i < DEDUP_SLOTS; i++) {
        const struct dedup *d = &p->recent[i];
        if (d->used && d->mid == mid && now_ms - d->at_ms < EXCHANGE_LIFETIME_MS)
            return d;
    }
    return NULL;
}

struct dedup *sess_dedup_add(sess_t *s, const char *identity, uint16_t mid, int code,
                             uint32_t block1, int max_age)
{
    static struct dedup none; /* out of memory: remembered nowhere */
    struct peer *p = peer_of(s, identity);
    if (!p)
        return &none;
    struct dedup *d = &p->recent[p->next++ % DEDUP_SLOTS];
    p->last_ms = gw_now_ms();
    *d = (struct dedup){ .used = true,
                         .mid = mid,
                         .code = (uint16_t)code,
                         .block1 = block1,
                         .max_age = (uint16_t)(max_age < 0 ? 0 : max_age),
                         .at_ms = p->last_ms };
    return d;
}

struct dedup *sess_dedup_pending(sess_t *s, uint64_t id)
{
    if (!s->peer)
        return NULL;
    for (unsigned i = 0; i < DEDUP_SLOTS; i++) {
        struct dedup *d = &s->peer->recent[i];
        if (d->used && d->code == CODE_PENDING && d->pending == id)
            return d;
    }
    return NULL;
}

static int obs_find(const sess_t *s, const uint8_t *token, size_t len)
{
    for (unsigned i = 0; i < s->nobs; i++)
        if (s->obs[i].token_len == len && !memcmp(s->obs[i].token, token, len))
            return (int)i;
    return -1;
}

int sess_obs_add(sess_t *s, const uint8_t *token, size_t len, const char *path)
{
    if (len > sizeof(s->obs[0].token))
        return -EINVAL;
    int i = obs_find(s, token, len);
    if (i >= 0 && !strcmp(s->obs[i].path, path))
        return 0;
    if (i < 0 && s->nobs == SESS_OBSERVERS_MAX) {
        s->ss->st.observers_refused++;
        return -ENOSPC;
    }
    char *copy = strdup(path);
    if (!copy)
        return -ENOMEM;
    if (i < 0) {
        i = (int)s->nobs++;
        s->ss->st.observers++;
    } else {
        free(s->obs[i].path);
    }
    memcpy(s->obs[i].token, token, len);
    s->obs[i].token_len = (uint8_t)len;
    s->obs[i].path = copy;
    return 0;
}

void sess_obs_remove(sess_t *s, const uint8_t *token, size_t len)
{
    int i = obs_find(s, token, len);
    if (i < 0)
        return;
    free(s->obs[i].path);
    s->obs[i] = s->obs[--s->nobs];
    s->ss->st.observers--;
}

size_t sessions_silent(sessions_t *ss, uint64_t now, uint64_t idle_ms, sess_t **out, size_t max)
{
    size_t n = 0;
    for (int cls = 0; cls < SESS_CLASSES && n < max; cls++) {
        for (sess_t *s = ss->oldest[cls]; s && n < max; s = s->newer) {
            if (now - s->last_ms < idle_ms)
                break; /* the rest were active since */
            if (!s->nobs || now - s->confirmed_ms < idle_ms)
                continue;
            s->confirmed_ms = now;
            out[n++] = s;
        }
    }
    return n;
}

void sessions_stats(const sessions_t *ss, struct sessions_stats *out)
{
    *out = ss->st;
    out->sessions = ss->count;
    out->peers = ss->npeers;
}

size_t sessions_bytes(const sessions_t *ss)
{
    return ss->count * sizeof(sess_t) + ss->npeers * (sizeof(struct peer) + KEY_MAX / 2) +
           ss->nbuckets * sizeof(struct peer *);
}
