/*
 * CoAP -> MQTT (doc/devices.md, CoAP to MQTT and what a device gets back): the
 * handler of POST, PUT and DELETE, from the request to the publish.
 *
 * A request for a QoS 1/2 mapping waits for the broker's acknowledgement.
 * The handler leaves libcoap nothing to send (an empty NON response, which
 * libcoap drops), and the bridge answers by itself (pending.h): piggybacked
 * on the ACK when the acknowledgement comes within PIGGYBACK_MS, otherwise
 * with an empty ACK then and a separate response later (RFC 7252 §5.2.2).
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "bridge_int.h"
#include "clock.h"
#include "dtls.h"
#include "log.h"
#include "mapping.h"

/* Max-Age of a 5.03 to a new session refused at coap.max_sessions, s. */
#define SESSIONS_FULL_RETRY_S 5

/* Frees the Block1 transfer of s (the session is no longer busy with it). */
static void b1_release(sess_t *s)
{
    b1_t *t = s->up;
    if (!t)
        return;
    if (b1_active(t))
        s->busy--;
    b1_free(t);
    s->up = NULL;
}

void up_free_transfer(void *up)
{
    b1_free(up);
}

/* The Block1 transfer of s, made on first use; NULL on ENOMEM. */
static b1_t *b1_of(bridge_t *b, sess_t *s)
{
    if (!s->up)
        s->up = b1_new(b->b1);
    return s->up;
}

/* The bridge's state of a session. */
static sess_t *session_state(bridge_t *b, coap_session_t *session)
{
    return sess_get(b->sessions, session);
}

/*
 * The answer to a publish the MQTT client did not take (upstream_publish's
 * negative code): 5.03 with Max-Age while the broker or the buffer cannot
 * take it, 4.13 with Size1 when the broker's limit is smaller than the body,
 * 5.00 for a message the broker would refuse (never handed over).
 */
static int publish_refused(bridge_t *b, int rc, const mqtt_message_t *msg, int *max_age, int *size1)
{
    if (rc == -EMSGSIZE) {
        size_t room = upstream_connected(b) ? mqtt_client_payload_room(b->mqtt, msg) : SIZE_MAX;
        *size1 = room < (size_t)INT_MAX ? (int)room : INT_MAX;
        return 413;
    }
    if (rc == -EINVAL) {
        b->up.st.unpublishable++;
        gw_log_limited(GW_LOG_ERROR, MQTT,
                       "a message for %s was not published (the broker "
                       "would refuse it)",
                       msg->topic);
        return 500;
    }
    *max_age = bridge_retry_after_s(b);
    return 503;
}

enum body_state { BODY_READY, BODY_CONTINUE, BODY_ERROR };

/*
 * Block1 (RFC 7959 §2.3, block1.h): blocks are taken in order into the
 * session's transfer. Sets *code (and *size1 or *max_age) on error, *block1
 * to the option to echo. After BODY_READY from blocks, *data is the
 * transfer's buffer until b1_release().
 */
static enum body_state take_body(bridge_t *b, sess_t *s, const coap_session_t *session,
                                 const coap_pdu_t *req, const char *topic, const uint8_t **data,
                                 size_t *len, uint32_t *block1, int *code, int *size1, int *max_age)
{
    coap_block_b_t blk;
    size_t max = (size_t)b->cfg->coap.max_payload;

    *block1 = NO_BLOCK1;
    if (!coap_get_block_b(session, req, COAP_OPTION_BLOCK1, &blk)) {
        if (*len > max) {
            *code = 413;
            *size1 = (int)max;
            return BODY_ERROR;
        }
        return BODY_READY;
    }
    b1_t *t = b1_of(b, s);
    if (!t) {
        *code = 500;
        return BODY_ERROR;
    }
    b1_block_t in = {
        .num = blk.num,
        .more = blk.m,
        .szx = blk.szx,
        .size1 = blk.num == 0 ? bridge_option_uint(req, COAP_OPTION_SIZE1, -1) : -1,
        .cf = bridge_option_uint(req, COAP_OPTION_CONTENT_FORMAT, -1),
        .topic = topic,
        .data = *data,
        .len = *len,
        .now_ms = gw_now_ms(),
    };
    b1_refusal_t why;
    bool was = b1_active(t);
    enum b1_verdict v = b1_take(t, &in, max, &why);
    /* A body being put together: the session is busy. */
    if (b1_active(t) && !was)
        s->busy++;
    else if (!b1_active(t) && was)
        s->busy--;
    switch (v) {
    case B1_REFUSED:
        *code = why.code;
        if (why.size1 >= 0)
            *size1 = why.size1;
        if (why.max_age >= 0)
            *max_age = why.max_age;
        b1_release(s);
        return BODY_ERROR;
    case B1_CONTINUE:
        *block1 = b1_option(&in);
        return BODY_CONTINUE;
    case B1_COMPLETE:
        break;
    }
    *block1 = b1_option(&in);
    *data = b1_body(t, len);
    return BODY_READY;
}

static void handle_request(bridge_t *b, coap_session_t *session, const coap_pdu_t *req,
                           coap_pdu_t *resp)
{
    sess_t *s;
    map_segs_t segs;
    const map_entry_t *e = NULL;
    char topic[MAP_PATH_MAX + 1];
    const uint8_t *data = NULL;
    size_t len = 0;
    uint32_t block1 = NO_BLOCK1;
    int code = 0, size1 = -1, max_age = -1;
    coap_pdu_code_t method = coap_pdu_get_code(req);
    uint16_t mid = (uint16_t)coap_pdu_get_mid(req);

    b->up.st.requests++;
    s = session_state(b, session);
    if (!s) {
        bridge_answer(&b->up.st.responses, resp, 500, NO_BLOCK1, -1, -1);
        return;
    }
    uint64_t now = gw_now_ms();
    sess_touch(s, now);
    const char *identity = dtls_identity(session);
    coap_get_data(req, &len, &data);
    b->up.st.bytes_in += len;

    const struct dedup *d = sess_dedup_find(s, identity, mid, now);
    if (d) {
        b->up.st.duplicates++;
        if (d->code == CODE_PENDING) {
            /*
             * The device retransmits while the broker has not answered:
             * libcoap sends the empty ACK (the response is left empty), and
             * the answer will be separate.
             */
            pending_slot_t *p = pending_by_id(b->pend, d->pending);
            if (p)
                p->separate = true;
            return;
        }
        bridge_answer(&b->up.st.responses, resp, d->code, d->block1,
                      d->code == 503 ? d->max_age : -1, -1);
        return;
    }

    if (s->refused) {
        /* Over coap.max_sessions with every session busy: this one goes after this turn. */
        code = 503;
        max_age = SESSIONS_FULL_RETRY_S;
        goto refuse;
    }
    /* GET has its own handler (down.c); other methods no mapping allows. */
    int dir = method == COAP_REQUEST_CODE_POST || method == COAP_REQUEST_CODE_PUT ||
                      method == COAP_REQUEST_CODE_DELETE
                  ? MAP_UP
                  : 0;
    enum map_status ms =
        bridge_uri_segments(req, &segs)
            ? map_route(b->cfg->maps, &segs, dir, identity, &e, topic, sizeof(topic))
            : MAP_NOT_FOUND;
    if (ms != MAP_OK) {
        code = map_status_code(ms);
        goto refuse;
    }
    if (method == COAP_REQUEST_CODE_DELETE && !map_entry_retain(e)) {
        code = 405;
        goto refuse;
    }
    if (b->draining) {
        code = 503;
        max_age = 5;
        goto refuse;
    }
    if (method == COAP_REQUEST_CODE_DELETE) {
        len = 0;
    } else {
        switch (
            take_body(b, s, session, req, topic, &data, &len, &block1, &code, &size1, &max_age)) {
        case BODY_ERROR:
            goto refuse;
        case BODY_CONTINUE:
            bridge_answer(&b->up.st.responses, resp, 231, block1, -1, -1);
            sess_dedup_add(s, identity, mid, 231, block1, -1);
            return;
        case BODY_READY:
            break;
        }
    }
    bool text = false;
    int cf = bridge_option_uint(req, COAP_OPTION_CONTENT_FORMAT, -1);
    const char *ctype = cf >= 0 ? bridge_content_type(cf, &text) : NULL;
    mqtt_message_t msg = {
        .topic = topic,
        .payload = len ? data : (const uint8_t *)"",
        .len = len,
        .qos = map_entry_qos(e),
        .retain = map_entry_retain(e) || method == COAP_REQUEST_CODE_DELETE,
        .content_type = ctype,
        .utf8 = text && map_utf8_ok((const char *)data, len),
        .device = identity,
    };
    int ok_code = method == COAP_REQUEST_CODE_DELETE ? 202 : 204;
    size_t mi = map_entry_index(e);
    bool connected = upstream_connected(b);

    if (connected && msg.qos == 0) {
        int rc = upstream_publish(b, &msg, NULL);
        if (rc < 0) {
            code = publish_refused(b, rc, &msg, &max_age, &size1);
            goto refuse;
        }
        b->up.st.published++;
        up_count(&b->up, mi, true);
        bridge_answer(&b->up.st.responses, resp, ok_code, block1, -1, -1);
        sess_dedup_add(s, identity, mid, ok_code, block1, -1);
        return;
    }

    /*
     * Disconnected: into the offline buffer. The record is written now and
     * fsync'ed with the others of this turn at bridge_commit(), which
     * answers; without a slot to wait in, it is fsync'ed at once.
     */
    pending_slot_t *p = pending_alloc(b->pend);
    if (!p && connected) {
        code = 503;
        max_age = 1;
        goto refuse;
    }
    if (p)
        pending_fill(b->pend, p, session, req, mid, ok_code, block1, mi,
                     (uint64_t)b->cfg->mqtt.publish_timeout * 1000);
    int rc = upstream_publish(b, &msg, p);
    if (rc < 0) {
        if (p)
            pending_release(b->pend, p);
        code = publish_refused(b, rc, &msg, &max_age, &size1);
        goto refuse;
    }
    if (!connected) {
        b->up.st.offline_buffered++;
        if (!p) {
            up_count(&b->up, mi, true);
            bridge_answer(&b->up.st.responses, resp, ok_code, block1, -1, -1);
            sess_dedup_add(s, identity, mid, ok_code, block1, -1);
            return;
        }
        pending_mark_stored(b->pend, p);
    } else {
        b->up.st.published++;
    }
    sess_dedup_add(s, identity, mid, CODE_PENDING, block1, -1)->pending = pending_id(b->pend, p);
    /*
     * Nothing for libcoap to send: an empty NON response is dropped;
     * bridge_commit() or the broker's acknowledgement answers.
     */
    coap_pdu_set_type(resp, COAP_MESSAGE_NON);
    return;

refuse:
    if (e)
        up_count(&b->up, map_entry_index(e), false);
    if (code == 401 || code == 403 || code == 404 || code == 405) {
        coap_string_t *path = coap_get_uri_path(req);
        gw_log_limited(GW_LOG_INFO, BRIDGE,
                       "request refused with %d.%02d (%s%s%s, path \"%.*s\": %s)", code / 100,
                       code % 100, identity ? "identity \"" : "anonymous", identity ? identity : "",
                       identity ? "\"" : "", path ? (int)path->length : 0,
                       path ? (const char *)path->s : "",
                       code == 401   ? "an identity is needed"
                       : code == 403 ? "not this identity's"
                       : code == 404 ? "no mapping"
                                     : "method not allowed");
        coap_delete_string(path);
    } else {
        gw_debug(COAP, "request refused with %d.%02d", code / 100, code % 100);
    }
    bridge_answer(&b->up.st.responses, resp, code, block1, max_age, size1);
    sess_dedup_add(s, identity, mid, code, block1, max_age);
}

void bridge_on_request(void *data, enum res_kind kind, coap_resource_t *resource,
                       coap_session_t *session, const coap_pdu_t *req, coap_pdu_t *resp)
{
    bridge_t *b = data;
    (void)kind;
    (void)resource;
    handle_request(b, session, req, resp);
    /* A body put together from blocks has been handed over: its buffer goes. */
    sess_t *s = session_state(b, session);
    b1_t *t = s ? s->up : NULL;
    if (t && !b1_active(t))
        b1_release(s);
}

void up_count(struct up *u, size_t map, bool ok)
{
    if (map == SIZE_MAX) /* its mapping went at a reload */
        return;
    if (ok)
        u->maps[map].up++;
    else
        u->maps[map].refused++;
}

void up_remap(struct up *u, struct up_map_stats *maps, const size_t *index, size_t nold)
{
    for (size_t i = 0; i < nold; i++)
        if (index[i] != SIZE_MAX)
            maps[index[i]] = u->maps[i];
    free(u->maps);
    u->maps = maps;
}
