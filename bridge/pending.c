/*
 * The pending answers' table (pending.h).
 */
#include "pending.h"

#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"

/* How long a confirmable request waits for a piggybacked answer, ms. */
#define PIGGYBACK_MS 500

struct pending_table {
    pending_slot_t *pend; /* owned, npend slots */
    size_t npend, inflight;
    size_t nstored;       /* slots waiting for bridge_commit() */
    sessions_t *sessions; /* borrowed */
};

pending_t *pending_new(size_t slots, sessions_t *sessions)
{
    pending_t *pt = calloc(1, sizeof(*pt));
    if (!pt)
        return NULL;
    pt->npend = slots;
    pt->sessions = sessions;
    pt->pend = calloc(slots ? slots : 1, sizeof(*pt->pend));
    if (!pt->pend) {
        free(pt);
        return NULL;
    }
    return pt;
}

void pending_free(pending_t *pt)
{
    if (!pt)
        return;
    for (size_t i = 0; i < pt->npend; i++)
        if (pt->pend[i].used)
            pending_release(pt, &pt->pend[i]);
    free(pt->pend);
    free(pt);
}

pending_slot_t *pending_alloc(pending_t *pt)
{
    for (size_t i = 0; i < pt->npend; i++) {
        if (!pt->pend[i].used) {
            pending_slot_t *p = &pt->pend[i];
            p->used = true;
            p->separate = false;
            p->seq = 0;
            pt->inflight++;
            return p;
        }
    }
    return NULL;
}

void pending_release(pending_t *pt, pending_slot_t *p)
{
    if (p->stored) {
        p->stored = false;
        pt->nstored--;
    }
    if (p->sess)
        p->sess->busy--;
    p->sess = NULL;
    coap_session_release(p->session);
    p->session = NULL;
    p->used = false;
    p->gen++;
    pt->inflight--;
}

void pending_fill(pending_t *pt, pending_slot_t *p, coap_session_t *session, const coap_pdu_t *req,
                  uint16_t mid, int ok_code, uint32_t block1, size_t map, uint64_t timeout_ms)
{
    coap_bin_const_t token = coap_pdu_get_token(req);
    p->session = coap_session_reference(session);
    /* A session with a publish waiting is busy: never evicted meanwhile. */
    p->sess = sess_get(pt->sessions, session);
    if (p->sess)
        p->sess->busy++;
    p->token_len = token.length < sizeof(p->token) ? token.length : sizeof(p->token);
    memcpy(p->token, token.s, p->token_len);
    p->mid = mid;
    p->con = coap_pdu_get_type(req) == COAP_MESSAGE_CON;
    p->separate = !p->con;
    p->ok_code = (uint16_t)ok_code;
    p->block1 = block1;
    p->map = map;
    p->stored = false;
    p->started_ms = gw_now_ms();
    p->piggyback_ms = p->started_ms + PIGGYBACK_MS;
    p->deadline_ms = p->started_ms + timeout_ms;
}

void pending_mark_stored(pending_t *pt, pending_slot_t *p)
{
    p->stored = true;
    pt->nstored++;
}

uint64_t pending_id(const pending_t *pt, const pending_slot_t *p)
{
    return (uint64_t)p->gen << 32 | (uint64_t)(p - pt->pend);
}

pending_slot_t *pending_by_id(pending_t *pt, uint64_t id)
{
    size_t slot = (size_t)(id & 0xffffffffu);
    if (slot >= pt->npend)
        return NULL;
    pending_slot_t *p = &pt->pend[slot];
    return p->used && p->gen == (uint32_t)(id >> 32) ? p : NULL;
}

size_t pending_index(const pending_t *pt, const pending_slot_t *p)
{
    return (size_t)(p - pt->pend);
}

pending_slot_t *pending_at(pending_t *pt, size_t i)
{
    return i < pt->npend && pt->pend[i].used ? &pt->pend[i] : NULL;
}

pending_slot_t *pending_next(pending_t *pt, pending_slot_t *p)
{
    for (size_t i = p ? (size_t)(p - pt->pend) + 1 : 0; i < pt->npend; i++)
        if (pt->pend[i].used)
            return &pt->pend[i];
    return NULL;
}

void pending_send_empty_ack(pending_slot_t *p)
{
    coap_pdu_t *ack = coap_pdu_init(COAP_MESSAGE_ACK, 0, p->mid, 4);
    p->separate = true;
    if (ack && coap_send(p->session, ack) == COAP_INVALID_MID)
        gw_debug(COAP, "cannot send an empty ACK");
}

void pending_answer(pending_t *pt, pending_slot_t *p, int code, int max_age, coap_codes_t *count)
{
    coap_session_t *session = p->session;
    coap_pdu_type_t type = !p->separate ? COAP_MESSAGE_ACK
                           : p->con     ? COAP_MESSAGE_CON
                                        : COAP_MESSAGE_NON;
    coap_mid_t mid = p->separate ? coap_new_message_id(session) : p->mid;
    coap_pdu_t *resp = coap_pdu_init(type, 0, mid, coap_session_max_pdu_size(session));

    if (resp && coap_add_token(resp, p->token_len, p->token)) {
        bridge_answer(count, resp, code, p->block1, max_age, -1);
        if (coap_send(session, resp) == COAP_INVALID_MID)
            gw_debug(COAP, "cannot send an answer");
    } else {
        coap_delete_pdu(resp);
    }
    /* Retransmissions of the request from now on get the same answer. */
    struct dedup *d = p->sess ? sess_dedup_pending(p->sess, pending_id(pt, p)) : NULL;
    if (d) {
        d->code = (uint16_t)code;
        d->max_age = (uint16_t)(max_age < 0 ? 0 : max_age);
    }
    pending_release(pt, p);
}

void pending_remap(pending_t *pt, const size_t *index, size_t nold)
{
    for (size_t i = 0; i < pt->npend; i++)
        if (pt->pend[i].used)
            pt->pend[i].map = pt->pend[i].map < nold ? index[pt->pend[i].map] : SIZE_MAX;
}

size_t pending_inflight(const pending_t *pt)
{
    return pt->inflight;
}

size_t pending_stored(const pending_t *pt)
{
    return pt->nstored;
}
