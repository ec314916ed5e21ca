/*
 * MQTT -> CoAP (doc/devices.md): subscriptions, current values, GET, Observe,
 * Block2 and discovery.
 *
 * libcoap 4.3 cannot observe its unknown-resource handler, so every concrete
 * resource that can be observed is a real coap_resource_t: for each
 * identity-bound resource when a device's DTLS session is established, for
 * resources without variables at start, for each new concrete topic when its
 * first message arrives, and for any other resource a down mapping matches
 * when a device registers to observe it (observe_first()). They are bounded
 * by coap.max_resources and by STORE_BYTES_MAX; at a limit the least recently
 * used resource that nobody observes is dropped, and when every one is
 * observed a registration that needs a new one is refused (5.03).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "down.h"

#include "clock.h"
#include "dtls.h"
#include "log.h"
#include "mapping.h"
#include "store.h"

/* Value bytes held at most, whatever coap.max_resources says. */
#define STORE_BYTES_MAX (64u << 20)
/* Least recently used candidates looked at per eviction before giving up. */
#define EVICT_TRIES 64
/*
 * After a registration found every resource observed, how long the next ones
 * are refused without looking again, ms: each look notifies the observers of
 * up to EVICT_TRIES resources (observed()), which a device must not be able
 * to cause at the rate it sends requests.
 */
#define FULL_RECHECK_MS 1000
/* Discovery lists at most this many bytes of links. */
#define DISCOVERY_MAX (16u << 10)
/* How long after a subscription's acknowledgement retained values may still be arriving, ms. */
#define RETAINED_GRACE_MS 1000
/*
 * Max-Age of a 4.29 to a session that holds SESS_OBSERVERS_MAX registrations,
 * and of a 5.03 to a registration that finds every resource observed, s.
 */
#define OBSERVE_RETRY_S 60
/* Silent sessions confirmed per tick. */
#define CONFIRM_BATCH 16
/* Largest Block2 size used (szx 6 = 1024 bytes). */
#define BLOCK2_SZX_MAX 6

/* A mapping's state in the down direction. */
struct down_map {
    down_map_stats_t st;
    uint64_t ready_ms; /* when its values can be trusted (subscribed); 0 = not yet */
};

struct down {
    const gw_config_t *cfg;     /* borrowed; the next one from down_reload() */
    coap_context_t *ctx;        /* borrowed */
    resources_t *res;           /* borrowed: where the concrete resources are made */
    mqtt_client_t *const *mqtt; /* borrowed: the bridge's client */
    sessions_t *sessions;       /* borrowed */
    down_wait_fn *wait;
    void *wait_arg;        /* borrowed */
    store_t *store;        /* owned: current values */
    struct down_map *maps; /* owned, one per mapping (and one more) */
    uint64_t sub_gen;      /* the latest set of subscriptions asked for */
    bool subscribe_due;    /* at the next connection, whatever the broker kept */
    uint64_t ready_at_ms;  /* when the values of the last acknowledged set are served; 0 = said */
    uint64_t full_ms;      /* when an Observe registration last found every resource observed */
    down_stats_t st;
};

/*
 * Whether libcoap holds observers for r. libcoap 4.3 does not say so
 * directly; coap_resource_notify_observers() tells, and when there are
 * observers it also schedules a notification of the current value, which is
 * harmless (an observer may always be told the current state again).
 */
static bool observed(coap_resource_t *r)
{
    return r && coap_resource_notify_observers(r, NULL);
}

static void drop_entry(down_t *d, store_entry_t *e)
{
    if (e->res)
        resources_delete(d->res, e->res);
    store_remove(d->store, e);
    d->st.evicted++;
}

/* Evicts until one more entry of need bytes fits. 0, or -ENOSPC. */
static int make_room(down_t *d, size_t need)
{
    size_t max = (size_t)d->cfg->coap.max_resources;
    for (int tries = 0; tries < EVICT_TRIES; tries++) {
        if (store_count(d->store) < max && store_bytes(d->store) + need <= STORE_BYTES_MAX)
            return 0;
        store_entry_t *e = store_lru(d->store);
        if (!e)
            break;
        if (observed(e->res)) {
            store_touch(d->store, e); /* in use: look at the next one */
            continue;
        }
        drop_entry(d, e);
    }
    return store_count(d->store) < max && store_bytes(d->store) + need <= STORE_BYTES_MAX ? 0
                                                                                          : -ENOSPC;
}

/*
 * The entry for a concrete resource, created with its coap_resource_t;
 * identity: the device it belongs to, NULL when any device may read it. NULL
 * when there is no room (then *full is counted) or on ENOMEM.
 */
static store_entry_t *entry_for(down_t *d, const char *path, size_t len, size_t map, size_t need,
                                const char *identity, uint64_t *full)
{
    store_entry_t *e = store_find(d->store, path, len);
    if (e)
        return e;
    if (make_room(d, need) < 0) {
        (*full)++;
        return NULL;
    }
    const map_entry_t *m = map_table_get(d->cfg->maps, map);
    e = store_add(d->store, path, len, map, identity);
    coap_resource_t *r = e ? resources_add(d->res, path, len, map_entry_qos(m) > 0) : NULL;
    if (!r) {
        if (e)
            store_remove(d->store, e);
        return NULL;
    }
    e->res = r;
    return e;
}

/* Creates the resources without variables of down mappings, for identity (may be NULL). */
static void create_fixed(down_t *d, const char *identity)
{
    char path[MAP_PATH_MAX + 1];
    for (size_t i = 0; i < map_table_count(d->cfg->maps); i++) {
        const map_entry_t *m = map_table_get(d->cfg->maps, i);
        if (!(map_entry_direction(m) & MAP_DOWN))
            continue;
        if (!identity && map_entry_uses_identity(m))
            continue;
        if (identity && !map_entry_uses_identity(m))
            continue; /* made once, at start */
        int len = map_entry_fixed_resource(m, identity, path, sizeof(path));
        if (len > 0)
            entry_for(d, path, (size_t)len, i, 0, identity, &d->st.dropped_full);
    }
}

/*
 * A device's handshake succeeded (its key or certificate is proven): its own
 * resources are made ready to observe before its first request.
 */
void down_on_ready(down_t *d, coap_session_t *session, const char *identity)
{
    (void)session;
    if (identity)
        create_fixed(d, identity);
}

down_t *down_new(const gw_config_t *cfg, coap_context_t *ctx, resources_t *res,
                 mqtt_client_t *const *mqtt, sessions_t *sessions, down_wait_fn *wait,
                 void *wait_arg)
{
    down_t *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->cfg = cfg;
    d->ctx = ctx;
    d->res = res;
    d->mqtt = mqtt;
    d->subscribe_due = true;
    d->sessions = sessions;
    d->wait = wait;
    d->wait_arg = wait_arg;
    d->maps = calloc(map_table_count(cfg->maps) + 1, sizeof(*d->maps));
    size_t buckets = (size_t)cfg->coap.max_resources / 2 + 1;
    d->store = store_new(buckets);
    if (!d->maps || !d->store) {
        down_free(d);
        return NULL;
    }
    create_fixed(d, NULL);
    return d;
}

void down_free(down_t *d)
{
    if (!d)
        return;
    /* The resources belong to the CoAP context, which frees them. */
    store_free(d->store);
    free(d->maps);
    free(d);
}

/*
 * The subscription filters of cfg's down mappings, strdup'ed; returns how
 * many, or -ENOMEM with none kept.
 */
static int filters_of(const gw_config_t *cfg, char **filters, int *qos, int max)
{
    int k = 0;
    for (size_t i = 0; i < map_table_count(cfg->maps) && k < max; i++) {
        const map_entry_t *m = map_table_get(cfg->maps, i);
        char buf[MAP_PATH_MAX + 1];
        if (!(map_entry_direction(m) & MAP_DOWN) || map_entry_filter(m, buf, sizeof(buf)) < 0)
            continue;
        filters[k] = strdup(buf);
        if (!filters[k]) {
            while (k > 0)
                free(filters[--k]);
            return -ENOMEM;
        }
        if (qos)
            qos[k] = map_entry_qos(m);
        k++;
    }
    return k;
}

static bool has_filter(char **v, int n, const char *f)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(v[i], f))
            return true;
    return false;
}

/* Subscribes to n filters, in SUBSCRIBE packets of at most MQTT_FILTERS_MAX, as generation gen. */
static void subscribe(down_t *d, char *const *filters, const int *qos, int n, uint64_t gen)
{
    for (int i = 0; i < n; i += MQTT_FILTERS_MAX) {
        int k = n - i < MQTT_FILTERS_MAX ? n - i : MQTT_FILTERS_MAX;
        int rc = mqtt_client_subscribe(*d->mqtt, (const char *const *)filters + i, qos + i,
                                       (size_t)k, gen);
        if (rc < 0)
            gw_log_limited(GW_LOG_ERROR, MQTT, "cannot subscribe (%s)", strerror(-rc));
    }
}

static void unsubscribe(down_t *d, char *const *filters, int n)
{
    for (int i = 0; i < n; i += MQTT_FILTERS_MAX) {
        int k = n - i < MQTT_FILTERS_MAX ? n - i : MQTT_FILTERS_MAX;
        mqtt_client_unsubscribe(*d->mqtt, (const char *const *)filters + i, (size_t)k);
    }
}

void down_on_connected(down_t *d, bool session_present)
{
    if (session_present && !d->subscribe_due) {
        /* The broker kept the subscriptions: their values are served as before. */
        down_subscribed(d, d->sub_gen);
        return;
    }
    size_t n = map_table_count(d->cfg->maps);
    char *filters[n ? n : 1];
    int qos[n ? n : 1];
    int k = filters_of(d->cfg, filters, qos, (int)(n ? n : 1));
    if (k > 0) {
        gw_info(MQTT, "subscribing to %d filter%s", k, k > 1 ? "s" : "");
        subscribe(d, filters, qos, k, ++d->sub_gen);
    }
    if (k >= 0)
        d->subscribe_due = false;
    for (int i = 0; i < k; i++)
        free(filters[i]);
}

/* What a reload needs, allocated ahead (down_reload_prepare). */
struct down_next {
    struct down_map *maps; /* one per mapping of next (and one more) */
    char **was, **now;     /* the subscription filters before and after, owned */
    int *qos;              /* of now's */
    int nw, nn;
};

void down_next_free(down_next_t *n)
{
    if (!n)
        return;
    for (int i = 0; i < n->nw; i++)
        free(n->was[i]);
    for (int i = 0; i < n->nn; i++)
        free(n->now[i]);
    free(n->was);
    free(n->now);
    free(n->qos);
    free(n->maps);
    free(n);
}

int down_reload_prepare(const down_t *d, const gw_config_t *next, down_next_t **out)
{
    size_t max = map_table_count(d->cfg->maps) + map_table_count(next->maps) + 1;
    down_next_t *n = calloc(1, sizeof(*n));
    *out = NULL;
    if (!n)
        return -ENOMEM;
    n->maps = calloc(map_table_count(next->maps) + 1, sizeof(*n->maps));
    n->was = calloc(max, sizeof(char *));
    n->now = calloc(max, sizeof(char *));
    n->qos = calloc(max, sizeof(int));
    if (!n->maps || !n->was || !n->now || !n->qos ||
        (n->nw = filters_of(d->cfg, n->was, NULL, (int)max)) < 0 ||
        (n->nn = filters_of(next, n->now, n->qos, (int)max)) < 0) {
        n->nw = n->nw < 0 ? 0 : n->nw;
        n->nn = n->nn < 0 ? 0 : n->nn;
        down_next_free(n);
        return -ENOMEM;
    }
    *out = n;
    return 0;
}

void down_reload(down_t *d, down_next_t *n, const gw_config_t *next, const size_t *index,
                 bool connected)
{
    struct down_map *maps = n->maps;
    for (size_t i = 0; i < map_table_count(d->cfg->maps); i++)
        if (index[i] != SIZE_MAX)
            maps[index[i]] = d->maps[i];
    /* Held values stay with their mapping when it is still there, the same. */
    store_entry_t *e = store_lru(d->store);
    while (e) {
        store_entry_t *newer = e->newer;
        const map_entry_t *old = map_table_get(d->cfg->maps, e->map);
        size_t k;
        for (k = 0; old && k < map_table_count(next->maps); k++) {
            const map_entry_t *m = map_table_get(next->maps, k);
            if (!strcmp(map_entry_name(m), map_entry_name(old)) &&
                !strcmp(map_entry_resource(m), map_entry_resource(old)) &&
                !strcmp(map_entry_topic(m), map_entry_topic(old)) &&
                (map_entry_direction(m) & MAP_DOWN))
                break;
        }
        if (old && k < map_table_count(next->maps))
            e->map = k;
        else
            drop_entry(d, e); /* observers are told 4.04 by libcoap */
        e = newer;
    }
    /* Subscriptions: drop the filters that went (moved to the front of was), add the new. */
    int ng = 0;
    for (int i = 0; i < n->nw; i++) {
        if (has_filter(n->now, n->nn, n->was[i])) {
            free(n->was[i]);
            n->was[i] = NULL;
        } else {
            n->was[ng++] = n->was[i];
        }
    }
    n->nw = ng;
    if (connected) {
        if (ng)
            unsubscribe(d, n->was, ng);
        /* Subscribing again to a kept filter is harmless (retained values come again). */
        subscribe(d, n->now, n->qos, n->nn, ++d->sub_gen);
    } else {
        d->subscribe_due = true;
    }
    free(d->maps);
    d->maps = maps;
    n->maps = NULL;
    d->cfg = next;
    down_next_free(n);
}

void down_message(down_t *d, const mqtt_incoming_t *msg)
{
    char path[MAP_PATH_MAX + 1], identity[MAP_IDENTITY_MAX + 1];
    const map_entry_t *m = NULL;
    const uint8_t *payload = msg->payload;

    if (msg->len > (size_t)d->cfg->coap.max_payload) {
        d->st.dropped_too_large++;
        gw_log_limited(GW_LOG_WARNING, MQTT,
                       "message on %.*s dropped: %zu bytes, over coap.max_payload",
                       (int)(msg->topic_len > 200 ? 200 : msg->topic_len), msg->topic, msg->len);
        return;
    }
    d->st.received++;
    if (map_reverse(d->cfg->maps, msg->topic, msg->topic_len, &m, path, sizeof(path), identity,
                    sizeof(identity)) != MAP_OK) {
        d->st.dropped_bad_topic++;
        gw_debug(MQTT, "message on %.*s matches no down mapping; dropped", (int)msg->topic_len,
                 msg->topic);
        return;
    }
    size_t map = map_entry_index(m);
    store_entry_t *e = entry_for(d, path, strlen(path), map, msg->len, *identity ? identity : NULL,
                                 &d->st.dropped_full);
    if (!e)
        return;
    /* An empty message clears the value, as it clears a retained one. */
    if (msg->len == 0)
        store_clear(d->store, e);
    int cf =
        msg->content_type && *msg->content_type ? bridge_content_format(msg->content_type) : -1;
    uint64_t expires =
        msg->has_expiry && msg->expiry > 0 ? gw_now_ms() + (uint64_t)msg->expiry * 1000 : 0;
    if (msg->len && store_set(d->store, e, payload, msg->len, cf, expires) < 0) {
        d->st.dropped_full++;
        return;
    }
    store_touch(d->store, e);
    d->maps[map].st.down++;
    if (coap_resource_notify_observers(e->res, NULL)) {
        d->st.notifications++;
        /* Send now, so that the next message does not overtake this one. */
        coap_io_process(d->ctx, COAP_IO_NO_WAIT);
    }
}

/* Joins validated path segments with '/'. */
static size_t join(const map_segs_t *segs, char *buf, size_t size)
{
    size_t pos = 0;
    for (size_t i = 0; i < segs->n; i++) {
        if (pos + segs->len[i] + 2 > size)
            return 0;
        if (i)
            buf[pos++] = '/';
        memcpy(buf + pos, segs->s[i], segs->len[i]);
        pos += segs->len[i];
    }
    buf[pos] = '\0';
    return pos;
}

/* Adds data to resp, as one block of it when it does not fit (RFC 7959 §2.4). */
static int add_body(coap_session_t *session, const coap_pdu_t *req, coap_pdu_t *resp,
                    const uint8_t *data, size_t len)
{
    coap_block_b_t blk;
    uint8_t buf[4];
    bool asked = coap_get_block_b(session, req, COAP_OPTION_BLOCK2, &blk);
    unsigned szx = asked && blk.szx < BLOCK2_SZX_MAX ? blk.szx : BLOCK2_SZX_MAX;
    /* Leave room for the header and options in the session's datagram. */
    while (szx > 0 && ((size_t)1 << (szx + 4)) + 128 > coap_session_max_pdu_size(session))
        szx--;
    size_t size = (size_t)1 << (szx + 4);
    if (!asked && len <= size) {
        if (len)
            coap_add_data(resp, len, data);
        return 205;
    }
    unsigned num = asked ? blk.num : 0;
    size_t offset = (size_t)num * size;
    if (offset >= len && !(len == 0 && num == 0))
        return 402;
    size_t chunk = len - offset < size ? len - offset : size;
    bool more = offset + chunk < len;
    coap_opt_iterator_t it;
    if (coap_check_option(resp, COAP_OPTION_BLOCK2, &it)) {
        /*
         * A notification to an observer that registered with Block2: libcoap
         * put Block2 (block 0) on it already, and 4.3 cannot change it. The
         * observer gets the first block and can ask for the rest.
         */
        coap_add_data(resp, chunk, data + offset);
        return 205;
    }
    coap_add_option(resp, COAP_OPTION_BLOCK2,
                    coap_encode_var_safe(buf, sizeof(buf), num << 4 | (unsigned)more << 3 | szx),
                    buf);
    if (num == 0)
        coap_add_option(resp, COAP_OPTION_SIZE2,
                        coap_encode_var_safe(buf, sizeof(buf), (unsigned)len), buf);
    coap_add_data(resp, chunk, data + offset);
    return 205;
}

/* Payload bytes of resp, for coap.bytes_out. */
static size_t payload_len(const coap_pdu_t *resp)
{
    size_t len = 0;
    const uint8_t *data;
    return coap_get_data(resp, &len, &data) ? len : 0;
}

/* Writes one link; false once the listing has reached DISCOVERY_MAX bytes. */
static bool link_out(FILE *out, size_t *size, bool *first, const store_entry_t *e)
{
    int n = fprintf(out, "%s</%s>;obs", *first ? "" : ",", e->path);
    if (e->has_value && e->cf >= 0)
        n += fprintf(out, ";ct=%d", e->cf);
    *first = false;
    *size += n > 0 ? (size_t)n : 0;
    return *size < DISCOVERY_MAX;
}

/*
 * Discovery (RFC 6690): only what the asking device may use: its own up
 * resources, then the down resources held now that belong to it, then those
 * every device may read. The store is indexed by identity, so this costs what
 * it lists, and the listing stops at DISCOVERY_MAX bytes (then sent with
 * Block2 as any large body).
 */
static void discovery(down_t *d, coap_session_t *session, const coap_pdu_t *req, coap_pdu_t *resp)
{
    const char *identity = dtls_identity(session);
    char *text = NULL;
    size_t size = 0, listed = 0;
    FILE *out = open_memstream(&text, &size);
    char path[MAP_PATH_MAX + 1], topic[MAP_PATH_MAX + 1];
    map_segs_t segs;
    const map_entry_t *m;
    bool first = true, room = true;

    if (!out) {
        bridge_answer(&d->st.responses, resp, 500, NO_BLOCK1, -1, -1);
        return;
    }
    /* Up resources that have one concrete form for this device. */
    for (size_t i = 0; i < map_table_count(d->cfg->maps) && room; i++) {
        const map_entry_t *e = map_table_get(d->cfg->maps, i);
        if (!(map_entry_direction(e) & MAP_UP) || (map_entry_direction(e) & MAP_DOWN))
            continue;
        if (map_entry_fixed_resource(e, identity, path, sizeof(path)) > 0) {
            int n = fprintf(out, "%s</%s>", first ? "" : ",", path);
            listed += n > 0 ? (size_t)n : 0;
            first = false;
            room = listed < DISCOVERY_MAX;
        }
    }
    /* Down resources held now: the device's own, then the shared ones. */
    store_entry_t *lists[2] = { store_owned(d->store, identity), store_shared(d->store) };
    for (int l = 0; l < 2; l++) {
        for (store_entry_t *e = lists[l]; e && room; e = e->inext) {
            if (map_split(e->path, strlen(e->path), &segs) < 0 ||
                map_route(d->cfg->maps, &segs, MAP_DOWN, identity, &m, topic, sizeof(topic)) !=
                    MAP_OK)
                continue;
            room = link_out(out, &listed, &first, e);
        }
    }
    fclose(out);
    uint8_t buf[2];
    coap_add_option(resp, COAP_OPTION_CONTENT_FORMAT,
                    coap_encode_var_safe(buf, sizeof(buf), COAP_MEDIATYPE_APPLICATION_LINK_FORMAT),
                    buf);
    int code = add_body(session, req, resp, (const uint8_t *)text, size);
    d->st.bytes_out += payload_len(resp);
    bridge_answer(&d->st.responses, resp, code, NO_BLOCK1, -1, -1);
    free(text);
}

/*
 * Whether the values of mapping map can be trusted to be there: its
 * subscription was acknowledged, and retained values had a moment to arrive.
 * Otherwise *max_age is when to ask again.
 */
static bool values_ready(down_t *d, size_t map, uint64_t now, int *max_age)
{
    uint64_t at = d->maps[map].ready_ms;
    if (at && now >= at)
        return true;
    if (at)
        *max_age = (int)((at - now + 999) / 1000);
    else
        *max_age = d->wait(d->wait_arg);
    return false;
}

/*
 * An Observe registration on a resource that a down mapping matches (m, the
 * checks passed) but that has no coap_resource_t: its first value has not
 * arrived and it is not made ahead. libcoap 4.3 cannot observe the catch-all
 * resource that took the request, so the resource is made now and the
 * request handed back to libcoap as an asynchronous one due at once
 * (coap_register_async): libcoap takes it again on its next turn, finds the
 * new resource and registers the observer as for any other, and
 * down_on_get() answers 2.05 with an empty body. A confirmable request gets
 * an empty ACK now and that answer as a separate response (RFC 7252 §5.2.2).
 * The resource counts in coap.max_resources like a value: when every one
 * held is observed, the registration is refused with 5.03 and Max-Age.
 */
static void observe_first(down_t *d, const map_entry_t *m, coap_session_t *session, sess_t *s,
                          const coap_pdu_t *req, coap_pdu_t *resp, const char *path, size_t len)
{
    coap_bin_const_t token = coap_pdu_get_token(req);
    if (coap_find_async(session, token)) {
        /* Handed back once already, and the resource went in between. */
        if (s)
            sess_obs_remove(s, token.s, token.length);
        d->st.observe_refused++;
        bridge_answer(&d->st.responses, resp, 503, NO_BLOCK1, OBSERVE_RETRY_S, -1);
        return;
    }
    if (s && sess_obs_add(s, token.s, token.length, path) < 0) {
        bridge_answer(&d->st.responses, resp, 429, NO_BLOCK1, OBSERVE_RETRY_S, -1);
        return;
    }
    const char *owner = map_entry_uses_identity(m) ? dtls_identity(session) : NULL;
    uint64_t full = d->st.observe_refused, now = gw_now_ms();
    store_entry_t *e = NULL;
    if (d->full_ms && now < d->full_ms + FULL_RECHECK_MS && !store_find(d->store, path, len))
        d->st.observe_refused++;
    else
        e = entry_for(d, path, len, map_entry_index(m), 0, owner, &d->st.observe_refused);
    /* Due in one tick: a delay of 0 would mean "when the application says so". */
    if (e && coap_register_async(session, req, 1))
        return; /* no answer now: an empty ACK, or nothing for a non-confirmable request */
    if (s)
        sess_obs_remove(s, token.s, token.length);
    if (full != d->st.observe_refused) {
        if (!d->full_ms || now >= d->full_ms + FULL_RECHECK_MS)
            d->full_ms = now;
        gw_log_limited(GW_LOG_WARNING, COAP,
                       "Observe on %s refused (coap.max_resources reached, every resource "
                       "observed)",
                       path);
        bridge_answer(&d->st.responses, resp, 503, NO_BLOCK1, OBSERVE_RETRY_S, -1);
    } else {
        bridge_answer(&d->st.responses, resp, 500, NO_BLOCK1, -1, -1);
    }
}

void down_on_get(void *data, enum res_kind kind, coap_resource_t *resource, coap_session_t *session,
                 const coap_pdu_t *req, coap_pdu_t *resp)
{
    down_t *d = data;
    map_segs_t segs;
    const map_entry_t *m = NULL;
    char topic[MAP_PATH_MAX + 1], path[MAP_PATH_MAX + 1];
    uint8_t buf[4];
    int max_age = -1;
    (void)resource;

    coap_bin_const_t token = coap_pdu_get_token(req);
    /* A request observe_first() handed back is counted once, when it came. */
    if (kind != RES_CONCRETE || !coap_find_async(session, token))
        d->st.requests++;
    sess_t *s = sess_get(d->sessions, session);
    uint64_t now = gw_now_ms();
    if (s)
        sess_touch(s, now);
    if (kind == RES_WELL_KNOWN) {
        discovery(d, session, req, resp);
        return;
    }
    enum map_status st = bridge_uri_segments(req, &segs)
                             ? map_route(d->cfg->maps, &segs, MAP_DOWN, dtls_identity(session), &m,
                                         topic, sizeof(topic))
                             : MAP_NOT_FOUND;
    if (st != MAP_OK) {
        if (m)
            d->maps[map_entry_index(m)].st.refused++;
        bridge_answer(&d->st.responses, resp, map_status_code(st), NO_BLOCK1, -1, -1);
        return;
    }
    size_t len = join(&segs, path, sizeof(path));
    store_entry_t *e = len ? store_find(d->store, path, len) : NULL;
    if (e && e->has_value && e->expires_ms && now >= e->expires_ms)
        store_clear(d->store, e); /* expired (MQTT 5 Message Expiry Interval) */
    if (e)
        store_touch(d->store, e);
    int observe = bridge_option_uint(req, COAP_OPTION_OBSERVE, -1);
    if (kind == RES_CATCH_ALL) {
        if (observe == COAP_OBSERVE_ESTABLISH && !e &&
            values_ready(d, map_entry_index(m), now, &max_age)) {
            observe_first(d, m, session, s, req, resp, path, len);
            return;
        }
        observe = -1; /* libcoap cannot observe the catch-all */
    }
    if (observe == COAP_OBSERVE_CANCEL && s)
        sess_obs_remove(s, token.s, token.length);
    if (observe == COAP_OBSERVE_ESTABLISH && s &&
        sess_obs_add(s, token.s, token.length, path) < 0) {
        /* A class 4 answer makes libcoap drop the registration it made. */
        bridge_answer(&d->st.responses, resp, 429, NO_BLOCK1, OBSERVE_RETRY_S, -1);
        return;
    }
    if (!e || !e->has_value) {
        if (!values_ready(d, map_entry_index(m), now, &max_age)) {
            /* Not subscribed yet: the value may simply not have arrived. */
            if (observe == COAP_OBSERVE_ESTABLISH && s)
                sess_obs_remove(s, token.s, token.length);
            bridge_answer(&d->st.responses, resp, 503, NO_BLOCK1, max_age, -1);
            return;
        }
        /* Observing before the first value: registered, empty until it comes. */
        bridge_answer(&d->st.responses, resp, observe == COAP_OBSERVE_ESTABLISH ? 205 : 404,
                      NO_BLOCK1, -1, -1);
        return;
    }
    coap_add_option(resp, COAP_OPTION_ETAG, coap_encode_var_safe(buf, sizeof(buf), e->version),
                    buf);
    if (e->cf >= 0)
        coap_add_option(resp, COAP_OPTION_CONTENT_FORMAT,
                        coap_encode_var_safe(buf, sizeof(buf), (unsigned)e->cf), buf);
    if (e->expires_ms)
        coap_add_option(
            resp, COAP_OPTION_MAXAGE,
            coap_encode_var_safe(buf, sizeof(buf), (unsigned)((e->expires_ms - now + 999) / 1000)),
            buf);
    int code = add_body(session, req, resp, e->value, e->len);
    d->st.bytes_out += payload_len(resp);
    bridge_answer(&d->st.responses, resp, code, NO_BLOCK1, -1, -1);
}

void down_subscribed(down_t *d, uint64_t gen)
{
    if (gen != d->sub_gen)
        return; /* an earlier set of filters: the newer acknowledgement counts */
    uint64_t at = gw_now_ms() + RETAINED_GRACE_MS;
    for (size_t i = 0; i < map_table_count(d->cfg->maps); i++)
        if (!d->maps[i].ready_ms)
            d->maps[i].ready_ms = at;
    d->ready_at_ms = at;
}

int down_timeout_ms(const down_t *d)
{
    if (!d->ready_at_ms)
        return -1;
    uint64_t now = gw_now_ms();
    return now >= d->ready_at_ms ? 0 : (int)(d->ready_at_ms - now);
}

void down_check_ready(down_t *d)
{
    if (d->ready_at_ms && gw_now_ms() >= d->ready_at_ms) {
        d->ready_at_ms = 0;
        gw_info(MQTT, "subscriptions in place: held values are served");
    }
}

/*
 * RFC 7641 §4.5: an observer whose device has sent nothing for
 * coap.session_idle_timeout gets its next notification as a confirmable
 * message; if it is not acknowledged, libcoap removes the observer (and its
 * session can go). The notification goes to every observer of the resource,
 * which is harmless: an observer may always be told the current state again.
 */
void down_tick(down_t *d)
{
    sess_t *silent[CONFIRM_BATCH];
    coap_resource_t *non[CONFIRM_BATCH * SESS_OBSERVERS_MAX];
    size_t nnon = 0;
    uint64_t idle = (uint64_t)d->cfg->coap.session_idle_timeout * 1000;
    size_t n = sessions_silent(d->sessions, gw_now_ms(), idle, silent, CONFIRM_BATCH);

    for (size_t i = 0; i < n; i++) {
        for (unsigned k = 0; k < silent[i]->nobs; k++) {
            const char *path = silent[i]->obs[k].path;
            store_entry_t *e = store_find(d->store, path, strlen(path));
            if (!e || !e->res)
                continue;
            const map_entry_t *m = map_table_get(d->cfg->maps, e->map);
            if (m && map_entry_qos(m) == 0) {
                coap_resource_set_mode(e->res, COAP_RESOURCE_FLAGS_NOTIFY_CON);
                non[nnon++] = e->res;
            }
            if (coap_resource_notify_observers(e->res, NULL))
                d->st.confirmations++;
        }
    }
    if (!n)
        return;
    /* Sends them now, while the resources ask for confirmable notifications. */
    coap_io_process(d->ctx, COAP_IO_NO_WAIT);
    for (size_t i = 0; i < nnon; i++)
        coap_resource_set_mode(non[i], COAP_RESOURCE_FLAGS_NOTIFY_NON);
}

void down_subscription_failed(down_t *d, const char *why)
{
    d->st.subscriptions_failed++;
    gw_log_limited(GW_LOG_ERROR, MQTT, "subscription refused by the broker (%s)", why);
}

const down_stats_t *down_stats(const down_t *d)
{
    return &d->st;
}

const down_map_stats_t *down_map_stats(const down_t *d, size_t map)
{
    return &d->maps[map].st;
}

size_t down_resources(const down_t *d)
{
    return store_count(d->store);
}

size_t down_value_bytes(const down_t *d)
{
    return store_bytes(d->store);
}
