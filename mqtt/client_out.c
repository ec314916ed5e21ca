/*
 * The client's publishes and subscriptions (see client.h): the queue, the
 * window the broker's Receive Maximum and max_inflight allow, packet
 * identifiers, and what happens to unacknowledged publishes across a
 * reconnection.
 *
 * A QoS 1/2 publish is encoded once, when it is handed over, and kept as
 * bytes until it is acknowledged; its packet identifier (given when it is
 * sent) and DUP flag are written into those bytes in place.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "log.h"

#define DUP_FLAG 0x08

void out_reset_limits(mqtt_client_t *c)
{
    c->broker_receive_max = 65535;
    c->broker_max_packet = SIZE_MAX;
    c->broker_max_qos = 2;
    c->broker_retain = true;
}

/* ------------------------------------------------------------------ lists */

static void list_push(out_list_t *l, out_pub_t *p)
{
    p->next = NULL;
    p->prev = l->tail;
    if (l->tail)
        l->tail->next = p;
    else
        l->head = p;
    l->tail = p;
    l->n++;
}

static void list_remove(out_list_t *l, out_pub_t *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        l->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        l->tail = p->prev;
    p->next = p->prev = NULL;
    l->n--;
}

/* Puts the whole of from before the head of to, in order. */
static void list_prepend_all(out_list_t *to, out_list_t *from)
{
    if (!from->head)
        return;
    from->tail->next = to->head;
    if (to->head)
        to->head->prev = from->tail;
    else
        to->tail = from->tail;
    to->head = from->head;
    to->n += from->n;
    *from = (out_list_t){ 0 };
}

void out_free_all(mqtt_client_t *c)
{
    out_list_t *lists[] = { &c->queue, &c->inflight };
    for (size_t i = 0; i < 2; i++)
        while (lists[i]->head) {
            out_pub_t *p = lists[i]->head;
            list_remove(lists[i], p);
            free(p);
        }
    while (c->subs) {
        out_sub_t *s = c->subs;
        c->subs = s->next;
        free(s);
    }
}

/* ------------------------------------------------------------------ identifiers */

static uint16_t pid_take(mqtt_client_t *c)
{
    for (unsigned i = 0; i < 65535; i++) {
        uint16_t pid = (uint16_t)(c->next_pid % 65535 + 1);
        c->next_pid = pid;
        if (!bit_test(c->pid_used, pid) && !bit_test(c->pid_kept, pid)) {
            bit_set(c->pid_used, pid);
            return pid;
        }
    }
    return 0;
}

static void pid_give(mqtt_client_t *c, uint16_t pid)
{
    if (pid)
        bit_clear(c->pid_used, pid);
}

static void pid_write(out_pub_t *p)
{
    p->pkt[p->pid_offset] = (uint8_t)(p->pid >> 8);
    p->pkt[p->pid_offset + 1] = (uint8_t)p->pid;
}

/* ------------------------------------------------------------------ sending */

static size_t window(const mqtt_client_t *c)
{
    size_t w = (size_t)c->max_inflight;
    if (c->version == MQTT_V311 && w > MQTT_V311_INFLIGHT_MAX)
        w = MQTT_V311_INFLIGHT_MAX;
    return c->broker_receive_max < w ? c->broker_receive_max : w;
}

static int send_pubrel(mqtt_client_t *c, uint16_t pid, uint8_t reason)
{
    mqtt_packet_t p = { .type = MQTT_PUBREL };
    p.u.ack.id = pid;
    p.u.ack.reason = reason;
    return client_emit(c, &p);
}

/* Sends what waits, as far as the window allows. */
static void pump(mqtt_client_t *c)
{
    while (c->state == C_UP && c->queue.head && c->inflight.n < window(c)) {
        out_pub_t *p = c->queue.head;
        uint16_t pid = pid_take(c);
        if (!pid)
            return;
        p->pid = pid;
        pid_write(p);
        p->pkt[0] &= (uint8_t)~DUP_FLAG;
        if (client_emit_raw(c, p->pkt, p->len) < 0) {
            pid_give(c, pid);
            return; /* out of memory: it stays first in the queue */
        }
        list_remove(&c->queue, p);
        p->state = P_SENT;
        list_push(&c->inflight, p);
        if (!p->internal && c->h.sent)
            c->h.sent(c->data, p->id, pid);
    }
}

void mqtt_client_reserve_id(mqtt_client_t *c, uint16_t pid)
{
    if (pid)
        bit_set(c->pid_kept, pid);
}

void out_connection_lost(mqtt_client_t *c)
{
    /* Publishes stay where they are, for the next CONNACK; subscriptions in progress go. */
    while (c->subs) {
        out_sub_t *s = c->subs;
        c->subs = s->next;
        pid_give(c, s->pid);
        free(s);
    }
    c->ping_out = false;
}

void out_connected(mqtt_client_t *c, bool session_present)
{
    if (session_present) {
        /* The broker kept our session: what it did not acknowledge goes again, as it was. */
        for (out_pub_t *p = c->inflight.head; p; p = p->next) {
            if (p->state == P_RELEASED) {
                send_pubrel(c, p->pid, 0);
            } else {
                p->pkt[0] |= DUP_FLAG;
                client_emit_raw(c, p->pkt, p->len);
            }
        }
    } else {
        /*
         * No session: the broker knows none of our identifiers, nor we its
         * QoS 2 ones. What was in flight goes again as new publishes, first.
         */
        memset(c->qos2_in, 0, sizeof(c->qos2_in));
        memset(c->pid_kept, 0, sizeof(c->pid_kept));
        for (out_pub_t *p = c->inflight.head; p; p = p->next) {
            pid_give(c, p->pid);
            p->pid = 0;
            p->state = P_WAITING;
        }
        list_prepend_all(&c->queue, &c->inflight);
    }
    pump(c);
}

/* The PUBLISH for msg at qos into p (a packet on the caller's stack). */
static void build_publish(const mqtt_client_t *c, const mqtt_message_t *msg, int qos,
                          size_t payload_len, mqtt_packet_t *p)
{
    memset(p, 0, sizeof(*p));
    p->type = MQTT_PUBLISH;
    mqtt_publish_t *pb = &p->u.publish;
    pb->qos = (uint8_t)qos;
    pb->retain = msg->retain;
    pb->topic = (mqtt_bytes_t){ (const uint8_t *)msg->topic, strlen(msg->topic) };
    pb->id = qos ? 1 : 0; /* the real one is written when it is sent */
    pb->payload = (mqtt_bytes_t){ msg->payload, payload_len };
    if (c->version == MQTT_V5) {
        if (msg->utf8)
            mqtt_prop_set_value(&pb->props, MQTT_PROP_PAYLOAD_FORMAT, 1);
        if (msg->content_type)
            mqtt_prop_set_data(&pb->props, MQTT_PROP_CONTENT_TYPE, msg->content_type,
                               strlen(msg->content_type));
        if (msg->device)
            mqtt_prop_add_user(&pb->props, "device", 6, msg->device, strlen(msg->device));
    }
}

/* The QoS msg goes at, or -EINVAL when it cannot be sent as it is. */
static int check_message(const mqtt_client_t *c, const mqtt_message_t *msg)
{
    if (!msg->topic || !*msg->topic || strpbrk(msg->topic, "+#") || strlen(msg->topic) > 65535 ||
        msg->qos < 0 || msg->qos > 2 || (msg->len && !msg->payload))
        return -EINVAL;
    if (msg->retain && !c->broker_retain)
        return -EINVAL;
    if (msg->qos > c->broker_max_qos)
        return c->broker_max_qos >= 1 ? c->broker_max_qos : -EINVAL;
    return msg->qos;
}

int out_publish(mqtt_client_t *c, const mqtt_message_t *msg, uint64_t id, bool internal,
                uint16_t again)
{
    if (c->state != C_UP)
        return -ENOTCONN;
    int qos = check_message(c, msg);
    if (qos < 0)
        return qos;
    mqtt_packet_t pkt;
    build_publish(c, msg, qos, msg->len, &pkt);
    uint8_t none;
    ssize_t len = mqtt_encode(&pkt, c->version, &none, 0);
    if (len < 0)
        return -EINVAL;
    if ((size_t)len > c->broker_max_packet)
        return -EMSGSIZE;
    if (qos == 0) {
        tls_stream_t *s = mqtt_link_stream(c->link);
        if (c->out_len + (s ? tls_stream_buffered(s) : 0) > OUT_BACKLOG_MAX)
            return -EAGAIN;
        int rc = client_emit(c, &pkt);
        if (rc == 0)
            c->st.published++;
        return rc;
    }
    if (c->queue.n + c->inflight.n >= c->max_queued)
        return -EAGAIN;
    out_pub_t *p = malloc(sizeof(*p) + (size_t)len);
    if (!p)
        return -ENOMEM;
    *p = (out_pub_t){ .id = id, .qos = (uint8_t)qos, .internal = internal, .len = (size_t)len };
    mqtt_encode(&pkt, c->version, p->pkt, p->len);
    size_t i = 1;
    while (p->pkt[i] & 0x80)
        i++;
    size_t header = i + 1;
    p->pid_offset = header + 2 + ((size_t)p->pkt[header] << 8 | p->pkt[header + 1]);
    c->st.published++;
    if (again && c->session_resumed && !bit_test(c->pid_used, again)) {
        /* The broker may hold it under again: the same message, with DUP. */
        bit_clear(c->pid_kept, again);
        bit_set(c->pid_used, again);
        p->pid = again;
        pid_write(p);
        p->pkt[0] |= DUP_FLAG;
        p->state = P_SENT;
        list_push(&c->inflight, p);
        client_emit_raw(c, p->pkt, p->len); /* out of memory: sent again at the next connection */
        return 0;
    }
    list_push(&c->queue, p);
    pump(c);
    return 0;
}

int mqtt_client_publish_again(mqtt_client_t *c, const mqtt_message_t *msg, uint64_t id,
                              uint16_t pid)
{
    return out_publish(c, msg, id, false, pid);
}

void mqtt_client_set_max_inflight(mqtt_client_t *c, int n)
{
    c->max_inflight = n < 1 ? 1 : n > 65535 ? 65535 : n;
    pump(c);
}

int mqtt_client_publish(mqtt_client_t *c, const mqtt_message_t *msg, uint64_t id)
{
    return out_publish(c, msg, id, false, 0);
}

static size_t vbi_size(size_t n)
{
    return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4;
}

size_t mqtt_client_payload_room(const mqtt_client_t *c, const mqtt_message_t *msg)
{
    size_t max = c->broker_max_packet;
    if (max > (size_t)MQTT_REMAINING_MAX + 5)
        max = (size_t)MQTT_REMAINING_MAX + 5;
    int qos = check_message(c, msg);
    mqtt_packet_t pkt;
    build_publish(c, msg, qos < 0 ? 0 : qos, 0, &pkt);
    uint8_t none;
    ssize_t len = mqtt_encode(&pkt, c->version, &none, 0);
    if (len < 0 || (size_t)len > max)
        return 0;
    if (c->broker_max_packet == SIZE_MAX)
        return SIZE_MAX;
    size_t base = (size_t)len - 1 - vbi_size((size_t)len - 2); /* the body without a payload */
    size_t rem = max - 2;                                      /* the body with the largest one */
    while (rem > base && 1 + vbi_size(rem) + rem > max)
        rem--;
    return rem > base ? rem - base : 0;
}

const mqtt_client_stats_t *mqtt_client_stats(const mqtt_client_t *c)
{
    return &c->st;
}

size_t mqtt_client_unacked(const mqtt_client_t *c)
{
    return c->queue.n + c->inflight.n;
}

/* ------------------------------------------------------------------ acknowledgements */

static void done(mqtt_client_t *c, out_pub_t *p, int reason)
{
    list_remove(&c->inflight, p);
    pid_give(c, p->pid);
    uint64_t id = p->id;
    bool internal = p->internal;
    free(p);
    if (reason >= 0x80)
        c->st.refused++;
    else
        c->st.acked++;
    if (internal)
        c->offline_acked = true;
    else if (c->h.acked)
        c->h.acked(c->data, id, reason);
    pump(c);
}

static out_pub_t *find_sent(mqtt_client_t *c, uint16_t pid)
{
    for (out_pub_t *p = c->inflight.head; p; p = p->next)
        if (p->pid == pid)
            return p;
    return NULL;
}

int out_ack(mqtt_client_t *c, enum mqtt_type type, const mqtt_ack_t *ack)
{
    out_pub_t *p = find_sent(c, ack->id);
    switch (type) {
    case MQTT_PUBACK:
        if (p && p->qos == 1)
            done(c, p, ack->reason);
        else
            gw_debug(MQTT, "PUBACK for packet identifier %u, which is not in flight", ack->id);
        return 0;
    case MQTT_PUBREC:
        if (!p || p->qos != 2)
            return send_pubrel(c, ack->id, c->version == MQTT_V5 ? 0x92 : 0);
        if (ack->reason >= 0x80) {
            done(c, p, ack->reason);
            return 0;
        }
        p->state = P_RELEASED;
        return send_pubrel(c, ack->id, 0);
    default: /* PUBCOMP */
        if (p && p->state == P_RELEASED)
            done(c, p, ack->reason);
        else
            gw_debug(MQTT, "PUBCOMP for packet identifier %u, which is not released", ack->id);
        return 0;
    }
}

/* ------------------------------------------------------------------ subscriptions */

void out_suback(mqtt_client_t *c, enum mqtt_type type, const mqtt_suback_t *sa)
{
    for (out_sub_t **sp = &c->subs; *sp; sp = &(*sp)->next) {
        out_sub_t *s = *sp;
        if (s->pid != sa->id || s->unsubscribe != (type == MQTT_UNSUBACK))
            continue;
        *sp = s->next;
        pid_give(c, s->pid);
        uint64_t id = s->id;
        bool unsub = s->unsubscribe;
        free(s);
        if (!unsub && c->h.subscribed)
            c->h.subscribed(c->data, id, sa->n, sa->codes);
        return;
    }
    gw_debug(MQTT, "%s for packet identifier %u, which was not asked for", mqtt_type_name(type),
             sa->id);
}

static int send_filters(mqtt_client_t *c, bool unsubscribe, const char *const *filters,
                        const int *qos, size_t n, uint64_t id)
{
    if (c->state != C_UP)
        return -ENOTCONN;
    if (n == 0 || n > MQTT_FILTERS_MAX)
        return -EINVAL;
    mqtt_packet_t p = { .type = unsubscribe ? MQTT_UNSUBSCRIBE : MQTT_SUBSCRIBE };
    mqtt_subscribe_t *s = &p.u.subscribe;
    s->n = n;
    for (size_t i = 0; i < n; i++) {
        if (!filters[i] || !*filters[i] || strlen(filters[i]) > 65535 ||
            (!unsubscribe && (qos[i] < 0 || qos[i] > 2)))
            return -EINVAL;
        s->filter[i] = (mqtt_bytes_t){ (const uint8_t *)filters[i], strlen(filters[i]) };
        s->options[i] = unsubscribe ? 0 : (uint8_t)qos[i];
    }
    out_sub_t *sub = malloc(sizeof(*sub));
    if (!sub)
        return -ENOMEM;
    s->id = pid_take(c);
    if (!s->id) {
        free(sub);
        return -EAGAIN;
    }
    int rc = client_emit(c, &p);
    if (rc < 0) {
        pid_give(c, s->id);
        free(sub);
        return rc;
    }
    *sub = (out_sub_t){ .next = c->subs, .id = id, .pid = s->id, .unsubscribe = unsubscribe };
    c->subs = sub;
    return 0;
}

int mqtt_client_subscribe(mqtt_client_t *c, const char *const *filters, const int *qos, size_t n,
                          uint64_t id)
{
    return send_filters(c, false, filters, qos, n, id);
}

int mqtt_client_unsubscribe(mqtt_client_t *c, const char *const *filters, size_t n)
{
    return send_filters(c, true, filters, NULL, n, 0);
}
