/*
 * The MQTT side of one device connection (doc/devices.md, MQTT devices): the device's CONNECT
 * becomes the upstream CONNECT, and then every packet either way is framed,
 * decoded (mqtt_decode checks it), held to the policy where it names a topic
 * or a filter, and relayed: as it came when nothing in it changes, encoded
 * again when something does (a resolved Topic Alias, a merged SUBACK, the
 * CONNACK's limits).
 */
#include <errno.h>
#include <gnutls/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "listener_int.h"
#include "log.h"
#include "packet.h"
#include "policy.h"

/* A Topic Alias the device set: its topic, or a mark that it is too long to be allowed. */
struct alias {
    char *topic; /* owned; NULL when unset */
    size_t len;
    bool too_long; /* longer than any mapping renders: every use is refused */
};

/* A SUBSCRIBE relayed (in part) to the broker, awaiting its SUBACK. */
struct subpend {
    bool used;
    uint16_t id;
    size_t n;                       /* filters the device asked for */
    uint8_t code[MQTT_FILTERS_MAX]; /* the refused ones' reason codes */
    bool refused[MQTT_FILTERS_MAX]; /* refused by the gateway */
    char *filter[MQTT_FILTERS_MAX]; /* the relayed ones, owned, in order */
    size_t nfwd;
};

/* Packet identifiers of refused QoS 2 publishes whose PUBREL is awaited; the oldest goes when full. */
struct idset {
    uint16_t id[LISTENER_DENIED_QOS2_MAX];
    size_t n, next;
};

struct relay {
    int version;
    uint16_t keepalive_asked, keepalive; /* the device's, and the one it is held to */
    bool expiry_capped;                  /* MQTT 5: its Session Expiry was over the bound */
    uint32_t expiry;                     /* MQTT 5: the Session Expiry passed upstream */
    char assigned[24]; /* the random client identifier given to the device; "" when none */
    char *will_topic, *will_response; /* owned copies, NULL when none */
    struct alias alias[LISTENER_ALIAS_MAX + 1];
    struct subpend pend[LISTENER_SUBS_PENDING_MAX];
    char *filter[LISTENER_FILTERS_MAX]; /* granted subscriptions, owned */
    size_t nfilters;
    struct idset denied_qos2; /* 3.1.1: the device's refused QoS 2 publishes */
    struct idset denied_down; /* the broker's QoS 2 publishes not relayed (acknowledged here) */
    size_t up_skip;           /* bytes of a broker packet not relayed still to be discarded */
};

static const char *identity_of(const lconn_t *c)
{
    return c->anonymous ? NULL : c->identity;
}

static char *copy_bytes(const uint8_t *p, size_t len)
{
    char *s = malloc(len + 1);
    if (s) {
        memcpy(s, p, len);
        s[len] = '\0';
    }
    return s;
}

void relay_free(relay_t *r)
{
    if (!r)
        return;
    free(r->will_topic);
    free(r->will_response);
    for (size_t i = 0; i <= LISTENER_ALIAS_MAX; i++)
        free(r->alias[i].topic);
    for (size_t i = 0; i < LISTENER_SUBS_PENDING_MAX; i++)
        for (size_t k = 0; k < r->pend[i].nfwd; k++)
            free(r->pend[i].filter[k]);
    for (size_t i = 0; i < r->nfilters; i++)
        free(r->filter[i]);
    free(r);
}

/* Encodes p for the connection's version and queues it to one side. */
static int send_packet(lconn_t *c, bool to_dev, const mqtt_packet_t *p, int version)
{
    uint8_t small[512];
    ssize_t n = mqtt_encode(p, version, small, sizeof(small));
    if (n < 0)
        return (int)n;
    if ((size_t)n <= sizeof(small))
        return to_dev ? lconn_send_dev(c, small, (size_t)n) : lconn_send_up(c, small, (size_t)n);
    uint8_t *big = malloc((size_t)n);
    if (!big)
        return -ENOMEM;
    ssize_t m = mqtt_encode(p, version, big, (size_t)n);
    int rc = m == n
                 ? (to_dev ? lconn_send_dev(c, big, (size_t)n) : lconn_send_up(c, big, (size_t)n))
                 : -EINVAL;
    free(big);
    return rc;
}

static void send_connack(lconn_t *c, int version, uint8_t reason)
{
    mqtt_packet_t p = { .type = MQTT_CONNACK };
    p.u.connack.reason = reason;
    send_packet(c, true, &p, version);
}

/*
 * Whether the broker still publishes the device's Will when the gateway
 * closes the device with reason. MQTT 5 and 3.1.1 (section 3.1.2.5 of both)
 * publish the Will when the server closes the connection without a
 * DISCONNECT 0x00 from the client, and name a protocol error as such a case:
 * so a malformed packet, a protocol error, or a keep-alive (or packet) that
 * ran out are the device's failures, and its Will goes out. When the gateway
 * itself ends the connection (a reload, the policy, one of its limits) the
 * device broke no rule of the protocol: the broker gets a DISCONNECT 0x00 and
 * discards the Will, so a Will the policy no longer allows is never
 * published.
 */
static bool will_stays(uint8_t reason)
{
    switch (reason) {
    case MQTT_RC_MALFORMED:
    case MQTT_RC_PROTOCOL_ERROR:
    case MQTT_RC_KEEPALIVE_TIMEOUT:
    case 0x93: /* Receive Maximum exceeded */
    case MQTT_RC_TOPIC_ALIAS_INVALID:
    case MQTT_RC_PACKET_TOO_LARGE:
    case 0x99: /* Payload format invalid */
        return true;
    default:
        return false;
    }
}

/*
 * MQTT 5: a DISCONNECT with reason before the connection closes; 3.1.1 has
 * none, and before its CONNACK a device gets no other packet (MQTT-3.2.0-1).
 * What the device sent before still goes upstream; then, unless will_stays,
 * a DISCONNECT 0x00 (the same two bytes in 3.1.1 and 5).
 */
void relay_disconnect(lconn_t *c, uint8_t reason)
{
    static const uint8_t normal[] = { 0xE0, 0x00 };
    if (c->r && c->r->version == MQTT_V5 && c->state == LC_RELAY) {
        mqtt_packet_t p = { .type = MQTT_DISCONNECT };
        p.u.reason.reason = reason;
        send_packet(c, true, &p, MQTT_V5);
    }
    if (c->state == LC_CLOSING)
        return;
    if (!will_stays(reason) && c->r && c->up && lconn_send_up(c, normal, sizeof(normal)) < 0)
        return; /* closed */
    lconn_close(c, true, true);
}

/* A malformed packet, one over the size, a protocol error: that connection only goes. */
static int device_broke(lconn_t *c, int err, const char *what)
{
    listener_stats_mut(c->l)->malformed++;
    gw_log_limited(GW_LOG_INFO, MQTT, "device %s: %s (%s); connection closed",
                   c->anonymous ? "(anonymous)" : c->identity, what,
                   err == -EMSGSIZE ? "too large"
                   : err == -EPROTO ? "protocol error"
                   : err == -E2BIG  ? "over a bound"
                                    : "malformed");
    relay_disconnect(c, err == -EMSGSIZE ? MQTT_RC_PACKET_TOO_LARGE
                        : err == -EPROTO ? MQTT_RC_PROTOCOL_ERROR
                        : err == -E2BIG  ? MQTT_RC_QUOTA_EXCEEDED
                                         : MQTT_RC_MALFORMED);
    return -1;
}

static void consume(lbuf_t *b, size_t n)
{
    if (n >= b->len) {
        free(b->p);
        b->p = NULL;
        b->len = b->cap = 0;
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

/* Is topic allowed as a publish (or Will, or Response Topic)? *e the mapping to count. */
static bool topic_allowed(const lconn_t *c, const uint8_t *topic, size_t len, const map_entry_t **e)
{
    const map_table_t *t = listener_cfg(c->l)->maps;
    *e = NULL;
    return map_policy_topic(t, (const char *)topic, len, MAP_UP, identity_of(c), e) == MAP_OK;
}

/*
 * The `device` User Property of a device's PUBLISH or Will is its
 * authenticated identity: every one it sent goes, and the identity is added
 * (an anonymous device's carry none). Whether props changed; -E2BIG when the
 * identity does not fit (not reached: a decoded list leaves room for it).
 */
static int set_device_property(const lconn_t *c, mqtt_props_t *props)
{
    size_t removed = mqtt_prop_remove_user(props, "device", 6);
    if (c->anonymous)
        return removed > 0;
    if (mqtt_prop_add_user(props, "device", 6, c->identity, strlen(c->identity)) < 0)
        return -E2BIG;
    return 1;
}

/*
 * A device's PUBLISH or Will is retained as its mapping e says, as a CoAP
 * device's would be; a retain flag cleared is counted. Whether *retain changed.
 */
static bool apply_retain(lconn_t *c, const map_entry_t *e, bool *retain)
{
    bool want = e && map_entry_retain(e);
    if (*retain == want)
        return false;
    if (*retain)
        listener_stats_mut(c->l)->retain_cleared++;
    *retain = want;
    return true;
}

/* ------------------------------------------------------------------ CONNECT */

/* A random client identifier for a device that sent an empty one. */
static void random_id(char *buf, size_t len)
{
    uint8_t rnd[8] = { 0 };
    gnutls_rnd(GNUTLS_RND_NONCE, rnd, sizeof(rnd));
    snprintf(buf, len, "tandem-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
             rnd[4], rnd[5], rnd[6], rnd[7]);
}

static int refuse_connect(lconn_t *c, int version, uint8_t v5, uint8_t v311, const char *why)
{
    listener_stats_mut(c->l)->rejected++;
    gw_log_limited(GW_LOG_INFO, MQTT, "device %s: CONNECT refused (%s)",
                   c->anonymous ? "(anonymous)" : c->identity, why);
    send_connack(c, version, version == MQTT_V5 ? v5 : v311);
    lconn_close(c, true, false);
    return -1;
}

static int on_connect(lconn_t *c, mqtt_connect_t *cn)
{
    int v = cn->version;
    const map_entry_t *e;
    relay_t *r = calloc(1, sizeof(*r));
    if (!r) {
        lconn_close(c, false, false);
        return -1;
    }
    r->version = v;
    c->r = r;

    const map_entry_t *will_e = NULL;
    if (cn->will) {
        const mqtt_prop_t *rt = mqtt_prop_find(&cn->will_props, MQTT_PROP_RESPONSE_TOPIC);
        bool ok = topic_allowed(c, cn->will_topic.p, cn->will_topic.len, &e);
        will_e = e;
        if (ok && rt)
            ok = topic_allowed(c, rt->data.p, rt->data.len, &e);
        if (!ok) {
            listener_stats_mut(c->l)->denied_publish++;
            listener_count(c->l, e, LISTENER_REFUSED);
            return refuse_connect(c, v, MQTT_RC_NOT_AUTHORIZED, MQTT_RC311_NOT_AUTHORIZED,
                                  "Will topic not allowed");
        }
        r->will_topic = copy_bytes(cn->will_topic.p, cn->will_topic.len);
        r->will_response = rt ? copy_bytes(rt->data.p, rt->data.len) : NULL;
        if (!r->will_topic || (rt && !r->will_response)) {
            lconn_close(c, false, false);
            return -1;
        }
    }
    if (v == MQTT_V5 && mqtt_prop_find(&cn->props, MQTT_PROP_AUTH_METHOD))
        return refuse_connect(c, v, 0x8C, MQTT_RC311_NOT_AUTHORIZED,
                              "enhanced authentication is not supported");
    if (v == MQTT_V311 && cn->client_id.len == 0 && !cn->clean_start)
        return refuse_connect(c, v, 0x85, 0x02, "empty client identifier without clean session");
    if (cn->client_id.len > 65535 - MAP_IDENTITY_MAX - 1)
        return refuse_connect(c, v, 0x85, 0x02, "client identifier too long");
    if (!listener_room(c->l))
        return refuse_connect(c, v, MQTT_RC_SERVER_BUSY, MQTT_RC311_SERVER_UNAVAILABLE,
                              "mqtt_listener.max_connections reached");
    const mqtt_prop_t *sei =
        v == MQTT_V5 ? mqtt_prop_find(&cn->props, MQTT_PROP_SESSION_EXPIRY) : NULL;
    r->expiry = sei ? sei->value : 0;
    r->expiry_capped = r->expiry > LISTENER_SESSION_EXPIRY_MAX;
    if (r->expiry_capped)
        r->expiry = LISTENER_SESSION_EXPIRY_MAX;

    /* The upstream CONNECT: the identity's, with the device's own settings. */
    size_t idlen = c->anonymous ? 0 : strlen(c->identity);
    char *cid = malloc(idlen + 1 + (cn->client_id.len ? cn->client_id.len : sizeof(r->assigned)));
    if (!cid) {
        lconn_close(c, false, false);
        return -1;
    }
    memcpy(cid, c->identity, idlen);
    cid[idlen] = '/';
    size_t cidlen = idlen + 1;
    if (cn->client_id.len) {
        memcpy(cid + cidlen, cn->client_id.p, cn->client_id.len);
        cidlen += cn->client_id.len;
    } else {
        random_id(r->assigned, sizeof(r->assigned));
        memcpy(cid + cidlen, r->assigned, strlen(r->assigned));
        cidlen += strlen(r->assigned);
    }
    /* Bounds per identity: its connections, and the sessions it leaves at the broker. */
    bool persistent = v == MQTT_V5 ? r->expiry > 0 : !cn->clean_start;
    int adm = lconn_admit(c, cid, cidlen, persistent,
                          v == MQTT_V5 ? r->expiry
                          : persistent ? UINT32_MAX
                                       : 0);
    if (adm < 0) {
        free(cid);
        if (adm == -ENOMEM) {
            lconn_close(c, false, false);
            return -1;
        }
        return refuse_connect(c, v, MQTT_RC_QUOTA_EXCEEDED, MQTT_RC311_SERVER_UNAVAILABLE,
                              adm == -EUSERS ? "too many connections of its identity"
                                             : "too many broker sessions of its identity");
    }
    mqtt_packet_t up = { .type = MQTT_CONNECT };
    up.u.connect = *cn;
    mqtt_connect_t *u = &up.u.connect;
    u->client_id = (mqtt_bytes_t){ (const uint8_t *)cid, cidlen };
    u->has_username = !c->anonymous;
    u->username = (mqtt_bytes_t){ (const uint8_t *)c->identity, idlen };
    u->has_password = false;
    u->password = (mqtt_bytes_t){ NULL, 0 };
    int rc = 0;
    if (u->will) {
        apply_retain(c, will_e, &u->will_retain);
        if (v == MQTT_V5 && set_device_property(c, &u->will_props) < 0)
            rc = -E2BIG;
    }
    if (v == MQTT_V5) {
        mqtt_prop_remove(&u->props, MQTT_PROP_TOPIC_ALIAS_MAXIMUM);
        const mqtt_prop_t *mps = mqtt_prop_find(&u->props, MQTT_PROP_MAXIMUM_PACKET_SIZE);
        uint32_t max = (uint32_t)listener_max_packet(c->l);
        if (rc == 0 && (!mps || mps->value > max))
            rc = mqtt_prop_set_value(&u->props, MQTT_PROP_MAXIMUM_PACKET_SIZE, max);
        if (rc == 0 && r->expiry_capped)
            rc = mqtt_prop_set_value(&u->props, MQTT_PROP_SESSION_EXPIRY, r->expiry);
    }
    r->keepalive_asked = cn->keepalive;
    r->keepalive = lconn_keepalive(c, cn->keepalive);
    lconn_relayed(c);
    if (rc == 0 && (rc = lconn_open_upstream(c)) < 0) {
        char why[96];
        snprintf(why, sizeof(why), "cannot start a connection (%s)", strerror(-rc));
        free(cid);
        relay_upstream_failed(c, why);
        return -1;
    }
    /* Queued until the upstream handshake is done. */
    if (rc == 0)
        rc = send_packet(c, false, &up, v);
    free(cid);
    if (rc < 0) {
        if (c->state != LC_CLOSING) /* else the device has its CONNACK already */
            lconn_close(c, false, false);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ device packets */

static void idset_add(struct idset *s, uint16_t id)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->id[i] == id)
            return;
    if (s->n < LISTENER_DENIED_QOS2_MAX) {
        s->id[s->n++] = id;
        return;
    }
    /*
     * Full: the oldest goes (its PUBREL, if it ever comes, is relayed: the
     * other side answers it, as a PUBREL for an identifier it does not know).
     */
    s->id[s->next] = id;
    s->next = (s->next + 1) % LISTENER_DENIED_QOS2_MAX;
}

static bool idset_take(struct idset *s, uint16_t id)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->id[i] == id) {
            s->id[i] = s->id[--s->n];
            s->next = 0;
            return true;
        }
    return false;
}

static void send_ack(lconn_t *c, enum mqtt_type type, uint16_t id, uint8_t reason)
{
    mqtt_packet_t p = { .type = type, .flags = type == MQTT_PUBREL ? 2 : 0 };
    p.u.ack.id = id;
    p.u.ack.reason = reason;
    send_packet(c, true, &p, c->r->version);
}

static int on_publish(lconn_t *c, mqtt_packet_t *pk, const uint8_t *raw, size_t rawlen)
{
    relay_t *r = c->r;
    mqtt_publish_t *pb = &pk->u.publish;
    bool rewrite = false, refused = false;
    const map_entry_t *e = NULL;

    if (r->version == MQTT_V5) {
        const mqtt_prop_t *ta = mqtt_prop_find(&pb->props, MQTT_PROP_TOPIC_ALIAS);
        if (ta) {
            if (ta->value == 0 || ta->value > LISTENER_ALIAS_MAX) {
                listener_stats_mut(c->l)->malformed++;
                gw_log_limited(GW_LOG_INFO, MQTT, "device %s: Topic Alias %u out of range",
                               c->anonymous ? "(anonymous)" : c->identity, (unsigned)ta->value);
                relay_disconnect(c, MQTT_RC_TOPIC_ALIAS_INVALID);
                return -1;
            }
            struct alias *a = &r->alias[ta->value];
            if (pb->topic.len) {
                free(a->topic);
                a->topic = NULL;
                a->len = 0;
                a->too_long = pb->topic.len > MAP_PATH_MAX;
                if (!a->too_long) {
                    a->topic = copy_bytes(pb->topic.p, pb->topic.len);
                    if (!a->topic) {
                        lconn_close(c, false, false);
                        return -1;
                    }
                    a->len = pb->topic.len;
                }
            } else if (a->too_long) {
                refused = true;
            } else if (!a->topic) {
                listener_stats_mut(c->l)->malformed++;
                gw_log_limited(GW_LOG_INFO, MQTT, "device %s: unknown Topic Alias %u",
                               c->anonymous ? "(anonymous)" : c->identity, (unsigned)ta->value);
                relay_disconnect(c, MQTT_RC_TOPIC_ALIAS_INVALID);
                return -1;
            } else {
                pb->topic = (mqtt_bytes_t){ (const uint8_t *)a->topic, a->len };
            }
            mqtt_prop_remove(&pb->props, MQTT_PROP_TOPIC_ALIAS);
            rewrite = true;
        }
    }
    if (!refused && pb->topic.len == 0)
        return device_broke(c, -EPROTO, "PUBLISH without a topic");
    if (!refused)
        refused = !topic_allowed(c, pb->topic.p, pb->topic.len, &e);
    if (!refused && r->version == MQTT_V5) {
        const mqtt_prop_t *rt = mqtt_prop_find(&pb->props, MQTT_PROP_RESPONSE_TOPIC);
        const map_entry_t *re = NULL;
        if (rt && !topic_allowed(c, rt->data.p, rt->data.len, &re)) {
            refused = true;
            e = re ? re : e;
        }
    }
    if (refused) {
        listener_stats_mut(c->l)->denied_publish++;
        listener_count(c->l, e, LISTENER_REFUSED);
        gw_log_limited(GW_LOG_INFO, MQTT, "device %s: PUBLISH to %.*s refused (not authorized)",
                       c->anonymous ? "(anonymous)" : c->identity,
                       (int)(pb->topic.len > 200 ? 200 : pb->topic.len),
                       pb->topic.p ? (const char *)pb->topic.p : "");
        uint8_t reason = r->version == MQTT_V5 ? MQTT_RC_NOT_AUTHORIZED : 0;
        if (pb->qos == 1) {
            send_ack(c, MQTT_PUBACK, pb->id, reason);
        } else if (pb->qos == 2) {
            send_ack(c, MQTT_PUBREC, pb->id, reason);
            if (r->version == MQTT_V311)
                idset_add(&r->denied_qos2, pb->id);
        }
        return 0;
    }
    if (apply_retain(c, e, &pb->retain))
        rewrite = true;
    if (r->version == MQTT_V5) {
        int changed = set_device_property(c, &pb->props);
        if (changed < 0)
            return device_broke(c, -E2BIG, "PUBLISH with too many properties");
        rewrite = rewrite || changed;
    }
    listener_count(c->l, e, LISTENER_UP);
    if (!rewrite)
        return lconn_send_up(c, raw, rawlen) < 0 ? -1 : 0;
    return send_packet(c, false, pk, r->version) < 0 ? -1 : 0;
}

static bool is_shared(const uint8_t *f, size_t len)
{
    return len >= 7 && memcmp(f, "$share/", 7) == 0;
}

static bool granted(const relay_t *r, const uint8_t *f, size_t len)
{
    for (size_t i = 0; i < r->nfilters; i++)
        if (strlen(r->filter[i]) == len && !memcmp(r->filter[i], f, len))
            return true;
    return false;
}

/* Filters that are granted or awaiting their SUBACK. */
static size_t filters_held(const relay_t *r)
{
    size_t n = r->nfilters;
    for (size_t i = 0; i < LISTENER_SUBS_PENDING_MAX; i++)
        n += r->pend[i].nfwd;
    return n;
}

static int on_subscribe(lconn_t *c, mqtt_packet_t *pk, const uint8_t *raw, size_t rawlen)
{
    relay_t *r = c->r;
    mqtt_subscribe_t *sb = &pk->u.subscribe;
    struct subpend *sp = NULL;
    for (size_t i = 0; i < LISTENER_SUBS_PENDING_MAX; i++)
        if (r->pend[i].used && r->pend[i].id == sb->id)
            return device_broke(c, -EPROTO,
                                "SUBSCRIBE with the packet identifier of one unanswered");
    for (size_t i = 0; i < LISTENER_SUBS_PENDING_MAX && !sp; i++)
        if (!r->pend[i].used)
            sp = &r->pend[i];
    if (!sp) {
        listener_stats_mut(c->l)->denied_subscribe += sb->n;
        gw_log_limited(GW_LOG_INFO, MQTT, "device %s: more than %d SUBSCRIBEs unanswered",
                       c->anonymous ? "(anonymous)" : c->identity, LISTENER_SUBS_PENDING_MAX);
        relay_disconnect(c, MQTT_RC_QUOTA_EXCEEDED);
        return -1;
    }
    memset(sp, 0, sizeof(*sp));
    sp->id = sb->id;
    sp->n = sb->n;
    size_t held = filters_held(r), nfwd = 0;
    mqtt_packet_t fwd = *pk;
    mqtt_subscribe_t *fs = &fwd.u.subscribe;
    for (size_t i = 0; i < sb->n; i++) {
        const map_entry_t *e = NULL;
        /* Devices have no use for shared subscriptions (the CONNACK says they are not available). */
        bool shared = is_shared(sb->filter[i].p, sb->filter[i].len);
        enum map_status st =
            shared ? MAP_FORBIDDEN
                   : map_policy_filter(listener_cfg(c->l)->maps, (const char *)sb->filter[i].p,
                                       sb->filter[i].len, identity_of(c), &e);
        bool quota = st == MAP_OK && held >= LISTENER_FILTERS_MAX &&
                     !granted(r, sb->filter[i].p, sb->filter[i].len);
        if (st != MAP_OK || quota) {
            sp->refused[i] = true;
            sp->code[i] = r->version != MQTT_V5 ? MQTT_RC311_SUB_FAILURE
                          : shared              ? MQTT_RC_SHARED_NOT_SUPPORTED
                          : quota               ? MQTT_RC_QUOTA_EXCEEDED
                                                : MQTT_RC_NOT_AUTHORIZED;
            listener_stats_mut(c->l)->denied_subscribe++;
            if (!quota)
                listener_count(c->l, e, LISTENER_REFUSED);
            gw_log_limited(GW_LOG_INFO, MQTT, "device %s: SUBSCRIBE to %.*s refused (%s)",
                           c->anonymous ? "(anonymous)" : c->identity,
                           (int)(sb->filter[i].len > 200 ? 200 : sb->filter[i].len),
                           (const char *)sb->filter[i].p,
                           shared  ? "shared subscriptions are not supported"
                           : quota ? "too many subscriptions"
                                   : "not authorized");
            continue;
        }
        sp->filter[nfwd] = copy_bytes(sb->filter[i].p, sb->filter[i].len);
        if (!sp->filter[nfwd]) {
            for (size_t k = 0; k < nfwd; k++)
                free(sp->filter[k]);
            sp->nfwd = 0;
            lconn_close(c, false, false);
            return -1;
        }
        fs->filter[nfwd] = sb->filter[i];
        fs->options[nfwd] = sb->options[i];
        nfwd++;
        held++;
    }
    sp->nfwd = nfwd;
    if (nfwd == 0) {
        /* All refused: the gateway answers. */
        mqtt_packet_t ack = { .type = MQTT_SUBACK };
        ack.u.suback.id = sb->id;
        ack.u.suback.n = sb->n;
        memcpy(ack.u.suback.codes, sp->code, sizeof(sp->code));
        return send_packet(c, true, &ack, r->version) < 0 ? -1 : 0;
    }
    sp->used = true;
    if (nfwd == sb->n)
        return lconn_send_up(c, raw, rawlen) < 0 ? -1 : 0;
    fs->n = nfwd;
    return send_packet(c, false, &fwd, r->version) < 0 ? -1 : 0;
}

static void on_unsubscribe(relay_t *r, const mqtt_subscribe_t *us)
{
    for (size_t k = 0; k < us->n; k++)
        for (size_t i = 0; i < r->nfilters; i++)
            if (strlen(r->filter[i]) == us->filter[k].len &&
                !memcmp(r->filter[i], us->filter[k].p, us->filter[k].len)) {
                free(r->filter[i]);
                r->filter[i] = r->filter[--r->nfilters];
                break;
            }
}

/* Whether the side that output goes to has room; else the input waits. */
static bool room(const lconn_t *c)
{
    return (!c->up || tls_stream_buffered(c->up) <= LISTENER_HIGH_WATER) &&
           tls_stream_buffered(c->dev) <= LISTENER_HIGH_WATER;
}

/*
 * The device's DISCONNECT goes upstream after everything it sent before, and
 * the connection ends once all of it has gone (within LISTENER_CLOSE_DRAIN_MS).
 * A new MQTT 5 Session Expiry in it is held to the same bound as the CONNECT's.
 */
static int on_disconnect(lconn_t *c, mqtt_packet_t *pk, const uint8_t *raw, size_t len)
{
    relay_t *r = c->r;
    const mqtt_prop_t *sei = r->version == MQTT_V5
                                 ? mqtt_prop_find(&pk->u.reason.props, MQTT_PROP_SESSION_EXPIRY)
                                 : NULL;
    uint32_t v = sei && sei->value > LISTENER_SESSION_EXPIRY_MAX ? LISTENER_SESSION_EXPIRY_MAX
                 : sei                                           ? sei->value
                                                                 : 0;
    if (sei && r->expiry > 0)
        lconn_session_expiry(c, v);
    if (sei && v != sei->value) {
        mqtt_prop_set_value(&pk->u.reason.props, MQTT_PROP_SESSION_EXPIRY, v);
        send_packet(c, false, pk, MQTT_V5);
    } else {
        lconn_send_up(c, raw, len);
    }
    if (c->state != LC_CLOSING) /* else a failed send closed it */
        lconn_close(c, true, true);
    return -1;
}

static int device_packet(lconn_t *c, const uint8_t *raw, size_t len)
{
    mqtt_packet_t pk;
    presence_request(c->presence);
    int version = c->r ? c->r->version : MQTT_V5;
    int rc = mqtt_decode(raw, len, version, &pk);
    if (rc < 0)
        return device_broke(c, rc, "bad packet");
    if (!c->r) {
        if (pk.type != MQTT_CONNECT)
            return device_broke(c, -EPROTO, "first packet not a CONNECT");
        return on_connect(c, &pk.u.connect);
    }
    switch (pk.type) {
    case MQTT_PUBLISH:
        return on_publish(c, &pk, raw, len);
    case MQTT_SUBSCRIBE:
        return on_subscribe(c, &pk, raw, len);
    case MQTT_UNSUBSCRIBE:
        on_unsubscribe(c->r, &pk.u.subscribe);
        return lconn_send_up(c, raw, len) < 0 ? -1 : 0;
    case MQTT_PUBREL:
        if (idset_take(&c->r->denied_qos2, pk.u.ack.id)) {
            send_ack(c, MQTT_PUBCOMP, pk.u.ack.id, 0);
            return 0;
        }
        return lconn_send_up(c, raw, len) < 0 ? -1 : 0;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBCOMP:
    case MQTT_PINGREQ:
        return lconn_send_up(c, raw, len) < 0 ? -1 : 0;
    case MQTT_DISCONNECT:
        return on_disconnect(c, &pk, raw, len);
    case MQTT_AUTH:
        return device_broke(c, -EPROTO, "AUTH (enhanced authentication is not supported)");
    default:
        return device_broke(c, -EPROTO, mqtt_type_name(pk.type));
    }
}

int relay_device_input(lconn_t *c)
{
    while (c->din.len) {
        if (c->state != LC_CONNECT && c->state != LC_RELAY)
            return 0; /* the rest waits for the upstream CONNACK */
        if (!room(c))
            return 0;
        size_t plen;
        int rc = mqtt_frame(c->din.p, c->din.len, listener_max_packet(c->l), &plen);
        if (rc < 0)
            return device_broke(c, rc, "bad packet");
        if (rc == 0)
            return 0;
        listener_stats_mut(c->l)->bytes_in += plen;
        c->last_rx_ms = gw_now_ms();
        /* A closed connection keeps its buffers until it is freed. */
        if (device_packet(c, c->din.p, plen) < 0)
            return -1;
        consume(&c->din, plen);
    }
    return 0;
}

/* ------------------------------------------------------------------ broker packets */

static int upstream_broke(lconn_t *c, const char *what)
{
    listener_stats_mut(c->l)->upstream_failures++;
    gw_log_limited(GW_LOG_WARNING, MQTT, "broker connection of device %s: %s; closed",
                   c->anonymous ? "(anonymous)" : c->identity, what);
    lconn_close(c, true, false);
    return -1;
}

static int on_connack(lconn_t *c, mqtt_packet_t *pk)
{
    relay_t *r = c->r;
    mqtt_connack_t *ca = &pk->u.connack;
    if (c->state != LC_UPSTREAM)
        return upstream_broke(c, "a second CONNACK");
    if (r->version == MQTT_V5) {
        mqtt_props_t *pp = &ca->props;
        uint32_t max = (uint32_t)listener_max_packet(c->l);
        const mqtt_prop_t *mps = mqtt_prop_find(pp, MQTT_PROP_MAXIMUM_PACKET_SIZE);
        const mqtt_prop_t *ska = mqtt_prop_find(pp, MQTT_PROP_SERVER_KEEPALIVE);
        bool lower = !mps || mps->value > max; /* the broker's bound, when lower, stays */
        /* The keep-alive: the gateway's bound, or the broker's when lower (0 is none: ours). */
        uint16_t k = r->keepalive;
        if (ska && ska->value && ska->value < k)
            k = (uint16_t)ska->value;
        c->keepalive_ms = (uint64_t)k * 1500;
        const mqtt_prop_t *se = mqtt_prop_find(pp, MQTT_PROP_SESSION_EXPIRY);
        if (se && se->value < r->expiry)
            lconn_session_expiry(c, se->value);
        mqtt_prop_remove(pp, MQTT_PROP_ASSIGNED_CLIENT_ID);
        mqtt_prop_remove(pp, MQTT_PROP_TOPIC_ALIAS_MAXIMUM);
        int rc = 0;
        if (ca->reason < 0x80) {
            if (lower)
                rc = mqtt_prop_set_value(pp, MQTT_PROP_MAXIMUM_PACKET_SIZE, max);
            if (rc == 0)
                rc = mqtt_prop_set_value(pp, MQTT_PROP_TOPIC_ALIAS_MAXIMUM, LISTENER_ALIAS_MAX);
            if (rc == 0)
                rc = mqtt_prop_set_value(pp, MQTT_PROP_SHARED_SUB_AVAILABLE, 0);
            if (rc == 0 && *r->assigned)
                rc = mqtt_prop_set_data(pp, MQTT_PROP_ASSIGNED_CLIENT_ID, r->assigned,
                                        strlen(r->assigned));
            if (rc == 0 && (k != r->keepalive_asked || ska))
                rc = mqtt_prop_set_value(pp, MQTT_PROP_SERVER_KEEPALIVE, k);
            if (rc == 0 && r->expiry_capped && !se)
                rc = mqtt_prop_set_value(pp, MQTT_PROP_SESSION_EXPIRY, r->expiry);
        }
        if (rc < 0)
            return upstream_broke(c, "CONNACK with too many properties");
    }
    if (send_packet(c, true, pk, r->version) < 0)
        return upstream_broke(c, "cannot relay the CONNACK");
    if (ca->reason != 0) {
        listener_stats_mut(c->l)->rejected++;
        gw_log_limited(GW_LOG_INFO, MQTT, "device %s: the broker refused its CONNECT (0x%02x)",
                       c->anonymous ? "(anonymous)" : c->identity, ca->reason);
        lconn_close(c, true, false);
        return -1;
    }
    c->state = LC_RELAY;
    c->established = true;
    c->deadline_ms = 0;
    return 0;
}

static void grant(relay_t *r, char *f)
{
    for (size_t i = 0; i < r->nfilters; i++)
        if (!strcmp(r->filter[i], f)) {
            free(f);
            return;
        }
    if (r->nfilters < LISTENER_FILTERS_MAX)
        r->filter[r->nfilters++] = f;
    else
        free(f); /* not reached: SUBSCRIBE keeps room for every relayed filter */
}

static int on_suback(lconn_t *c, mqtt_packet_t *pk, const uint8_t *raw, size_t len)
{
    relay_t *r = c->r;
    mqtt_suback_t *sa = &pk->u.suback;
    struct subpend *sp = NULL;
    for (size_t i = 0; i < LISTENER_SUBS_PENDING_MAX && !sp; i++)
        if (r->pend[i].used && r->pend[i].id == sa->id)
            sp = &r->pend[i];
    if (!sp)
        return lconn_send_dev(c, raw, len) < 0 ? -1 : 0;
    if (sa->n != sp->nfwd)
        return upstream_broke(c, "SUBACK with another number of filters");
    mqtt_packet_t out = *pk;
    size_t j = 0;
    for (size_t i = 0; i < sp->n; i++) {
        if (sp->refused[i]) {
            out.u.suback.codes[i] = sp->code[i];
            continue;
        }
        uint8_t code = sa->codes[j];
        out.u.suback.codes[i] = code;
        if (code < 0x80)
            grant(r, sp->filter[j]);
        else
            free(sp->filter[j]);
        sp->filter[j++] = NULL;
    }
    out.u.suback.n = sp->n;
    sp->used = false;
    sp->nfwd = 0;
    return send_packet(c, true, &out, r->version) < 0 ? -1 : 0;
}

/* An acknowledgement to the broker (to_dev false) or to the device. <0 when c was closed. */
static int send_ack_to(lconn_t *c, bool to_dev, enum mqtt_type type, uint16_t id, uint8_t reason)
{
    mqtt_packet_t p = { .type = type, .flags = type == MQTT_PUBREL ? 2 : 0 };
    p.u.ack.id = id;
    p.u.ack.reason = reason;
    send_packet(c, to_dev, &p, c->r->version);
    return c->state == LC_CLOSING ? -1 : 0;
}

/*
 * A PUBLISH from the broker that the device does not get is acknowledged here,
 * so that the broker does not send it again: QoS 1 PUBACK; QoS 2 PUBREC, and
 * the broker's PUBREL for it is answered with PUBCOMP (not relayed).
 */
static int ack_upstream(lconn_t *c, uint8_t qos, uint16_t id)
{
    if (qos == 1)
        return send_ack_to(c, false, MQTT_PUBACK, id, 0);
    if (qos == 2) {
        idset_add(&c->r->denied_down, id);
        return send_ack_to(c, false, MQTT_PUBREC, id, 0);
    }
    return 0;
}

/*
 * A packet from the broker the gateway does not relay as it is: over the size
 * bound, or more than the codec holds (h from its first bytes). Counted; a
 * PUBLISH is acknowledged upstream and dropped; a PUBACK, PUBREC, PUBREL or
 * PUBCOMP goes on without its properties; anything else is dropped. Never a
 * reason to close, but before the CONNACK, which the device needs whole.
 */
static int broker_not_relayed(lconn_t *c, const mqtt_head_t *h, const char *why)
{
    if (c->state == LC_UPSTREAM)
        return upstream_broke(c, why);
    listener_stats_mut(c->l)->broker_dropped++;
    gw_log_limited(GW_LOG_INFO, MQTT, "device %s: %s from the broker not relayed (%s)",
                   c->anonymous ? "(anonymous)" : c->identity, mqtt_type_name(h->type), why);
    switch (h->type) {
    case MQTT_PUBLISH:
        return ack_upstream(c, h->qos, h->id);
    case MQTT_PUBREL:
        if (idset_take(&c->r->denied_down, h->id))
            return send_ack_to(c, false, MQTT_PUBCOMP, h->id, 0);
        /* fall through */
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBCOMP:
        return send_ack_to(c, true, h->type, h->id, h->reason);
    default:
        return 0;
    }
}

/* A PUBLISH from the broker: relayed only when the current mappings allow it to the device. */
static int on_delivery(lconn_t *c, mqtt_publish_t *pb, const uint8_t *raw, size_t len)
{
    const map_entry_t *e = NULL;
    if (c->r->version == MQTT_V5 && mqtt_prop_find(&pb->props, MQTT_PROP_TOPIC_ALIAS))
        return upstream_broke(c, "a Topic Alias the gateway did not allow");
    if (map_policy_topic(listener_cfg(c->l)->maps, (const char *)pb->topic.p, pb->topic.len,
                         MAP_DOWN, identity_of(c), &e) != MAP_OK) {
        listener_stats_mut(c->l)->denied_deliver++;
        listener_count(c->l, e, LISTENER_REFUSED);
        gw_log_limited(GW_LOG_INFO, MQTT,
                       "device %s: delivery on %.*s refused (the mappings do not allow it)",
                       c->anonymous ? "(anonymous)" : c->identity,
                       (int)(pb->topic.len > 200 ? 200 : pb->topic.len), (const char *)pb->topic.p);
        return ack_upstream(c, pb->qos, pb->id);
    }
    listener_count(c->l, e, LISTENER_DOWN);
    return lconn_send_dev(c, raw, len) < 0 ? -1 : 0;
}

static int upstream_packet(lconn_t *c, const uint8_t *raw, size_t len)
{
    mqtt_packet_t pk;
    int rc = mqtt_decode(raw, len, c->r->version, &pk);
    if (rc == -E2BIG) {
        mqtt_head_t h;
        if (mqtt_head(raw, len, c->r->version, &h) == 1)
            return broker_not_relayed(c, &h, "more properties than the gateway holds");
    }
    if (rc < 0) {
        listener_stats_mut(c->l)->malformed++;
        return upstream_broke(c, "malformed packet from the broker");
    }
    if (c->state == LC_UPSTREAM && pk.type != MQTT_CONNACK)
        return upstream_broke(c, "a packet before the CONNACK");
    switch (pk.type) {
    case MQTT_CONNACK:
        return on_connack(c, &pk);
    case MQTT_SUBACK:
        return on_suback(c, &pk, raw, len);
    case MQTT_PUBLISH:
        return on_delivery(c, &pk.u.publish, raw, len);
    case MQTT_PUBREL:
        if (idset_take(&c->r->denied_down, pk.u.ack.id))
            return send_ack_to(c, false, MQTT_PUBCOMP, pk.u.ack.id, 0);
        return lconn_send_dev(c, raw, len) < 0 ? -1 : 0;
    case MQTT_DISCONNECT:
        lconn_send_dev(c, raw, len);
        lconn_close(c, true, false);
        return -1;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBCOMP:
    case MQTT_UNSUBACK:
    case MQTT_PINGRESP:
        return lconn_send_dev(c, raw, len) < 0 ? -1 : 0;
    default:
        return upstream_broke(c, mqtt_type_name(pk.type));
    }
}

/*
 * A packet from the broker over listener_max_packet(): answered from its first
 * bytes (mqtt_head), and the rest discarded as it arrives, never held whole.
 * 0 when done or more bytes are needed, <0 when c was closed.
 */
static int skip_oversize(lconn_t *c)
{
    mqtt_head_t h;
    int rc = mqtt_head(c->uin.p, c->uin.len, c->r->version, &h);
    if (rc < 0)
        return upstream_broke(c, "malformed packet");
    if (rc == 0)
        return 0; /* its topic and identifier are not all in: at most 65,544 bytes */
    if (broker_not_relayed(c, &h, "over the size bound") < 0)
        return -1;
    size_t n = h.total < c->uin.len ? h.total : c->uin.len;
    consume(&c->uin, n);
    c->r->up_skip = h.total - n;
    return 0;
}

int relay_upstream_input(lconn_t *c)
{
    while (c->uin.len) {
        if (c->r->up_skip) {
            size_t n = c->r->up_skip < c->uin.len ? c->r->up_skip : c->uin.len;
            consume(&c->uin, n);
            c->r->up_skip -= n;
            continue;
        }
        if (tls_stream_buffered(c->dev) > LISTENER_HIGH_WATER)
            return 0;
        size_t plen;
        int rc = mqtt_frame(c->uin.p, c->uin.len, listener_max_packet(c->l), &plen);
        if (rc == -EMSGSIZE) {
            size_t before = c->uin.len;
            if (skip_oversize(c) < 0)
                return -1;
            if (c->uin.len == before)
                return 0; /* more bytes needed */
            continue;
        }
        if (rc < 0)
            return upstream_broke(c, "malformed packet");
        if (rc == 0)
            return 0;
        if (upstream_packet(c, c->uin.p, plen) < 0)
            return -1;
        consume(&c->uin, plen);
    }
    return 0;
}

void relay_upstream_failed(lconn_t *c, const char *why)
{
    if (c->state == LC_CLOSING)
        return;
    listener_stats_mut(c->l)->upstream_failures++;
    gw_log_limited(GW_LOG_WARNING, MQTT, "device %s: the broker cannot be reached (%s)",
                   c->anonymous ? "(anonymous)" : c->identity, why);
    send_connack(c, c->r->version,
                 c->r->version == MQTT_V5 ? MQTT_RC_SERVER_UNAVAILABLE
                                          : MQTT_RC311_SERVER_UNAVAILABLE);
    lconn_close(c, true, false);
}

bool relay_allowed(const lconn_t *c, const map_table_t *t)
{
    const relay_t *r = c->r;
    const map_entry_t *e;
    const char *id = identity_of(c);
    if (!r)
        return true;
    if (r->will_topic &&
        map_policy_topic(t, r->will_topic, strlen(r->will_topic), MAP_UP, id, &e) != MAP_OK)
        return false;
    if (r->will_response &&
        map_policy_topic(t, r->will_response, strlen(r->will_response), MAP_UP, id, &e) != MAP_OK)
        return false;
    for (size_t i = 0; i < r->nfilters; i++)
        if (map_policy_filter(t, r->filter[i], strlen(r->filter[i]), id, &e) != MAP_OK)
            return false;
    for (size_t i = 0; i < LISTENER_SUBS_PENDING_MAX; i++)
        for (size_t k = 0; k < r->pend[i].nfwd; k++)
            if (r->pend[i].filter[k] &&
                map_policy_filter(t, r->pend[i].filter[k], strlen(r->pend[i].filter[k]), id, &e) !=
                    MAP_OK)
                return false;
    return true;
}
