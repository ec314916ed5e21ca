/*
 * Publishes waiting for the broker's acknowledgement, each with the request
 * it will answer: a fixed table of mqtt.max_inflight slots. A slot's id
 * (slot index and a generation) goes to the MQTT client with the publish and
 * comes back with its acknowledgement; an id whose slot was answered since
 * (timed out, say) finds nothing.
 *
 * A confirmable request's answer is piggybacked on the ACK when the
 * acknowledgement comes within PIGGYBACK_MS, otherwise the bridge sends an
 * empty ACK then (pending_send_empty_ack) and a separate response later
 * (RFC 7252 §5.2.2). Everything here runs on the loop thread.
 */
#ifndef TANDEM_PENDING_H
#define TANDEM_PENDING_H

#include <coap3/coap.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coap_util.h"
#include "session.h"

/* A publish waiting for the broker, and the request it will answer. */
typedef struct pending_slot {
    bool used;
    uint32_t gen;            /* bumped at each release; part of the request id */
    coap_session_t *session; /* a reference is held until the answer is sent */
    sess_t *sess;            /* its state, kept busy meanwhile; NULL on ENOMEM */
    uint8_t token[8];
    size_t token_len;
    uint16_t mid;     /* the request's Message ID */
    bool con;         /* confirmable request */
    bool separate;    /* the empty ACK went out: the answer is separate */
    uint16_t ok_code; /* 204, or 202 for DELETE */
    uint32_t block1;
    size_t map; /* its mapping's index; SIZE_MAX once it went at a reload */
    uint64_t started_ms, piggyback_ms, deadline_ms;
    bool stored;  /* in the offline buffer: answered at bridge_commit() */
    uint64_t seq; /* its record in the offline buffer while connected; 0: none */
} pending_slot_t;

typedef struct pending_table pending_t;

/* slots: how many publishes may wait at once. sessions is borrowed and must outlive the table. */
pending_t *pending_new(size_t slots, sessions_t *sessions);
/* Releases every slot still used (without answering) and frees the table. */
void pending_free(pending_t *pt);

/* A free slot, now used, or NULL when all are. */
pending_slot_t *pending_alloc(pending_t *pt);
/* Gives the slot back without answering (its session's reference goes). */
void pending_release(pending_t *pt, pending_slot_t *p);
/* The request p will answer; the broker has timeout_ms to acknowledge. */
void pending_fill(pending_t *pt, pending_slot_t *p, coap_session_t *session, const coap_pdu_t *req,
                  uint16_t mid, int ok_code, uint32_t block1, size_t map, uint64_t timeout_ms);
/* p waits for bridge_commit() (the offline buffer's fsync). */
void pending_mark_stored(pending_t *pt, pending_slot_t *p);

/* The request id of p, given to the MQTT client with its publish. */
uint64_t pending_id(const pending_t *pt, const pending_slot_t *p);
/* The slot waiting with request id, or NULL (answered already). */
pending_slot_t *pending_by_id(pending_t *pt, uint64_t id);
/* The index of p in the table, and the used slot at index i (or NULL). */
size_t pending_index(const pending_t *pt, const pending_slot_t *p);
pending_slot_t *pending_at(pending_t *pt, size_t i);
/* The used slot after p (NULL: the first one), or NULL. */
pending_slot_t *pending_next(pending_t *pt, pending_slot_t *p);

/* Sends the empty ACK of a request whose answer will be separate. */
void pending_send_empty_ack(pending_slot_t *p);
/*
 * Answers the request of p with code (and Max-Age max_age, -1: none),
 * piggybacked on the ACK or as a separate response, counted in count, and
 * releases p. Retransmissions of the request get the same answer from then on.
 */
void pending_answer(pending_t *pt, pending_slot_t *p, int code, int max_age, coap_codes_t *count);

/*
 * A reload: each slot's mapping index i (of nold) becomes index[i], SIZE_MAX
 * when its mapping went.
 */
void pending_remap(pending_t *pt, const size_t *index, size_t nold);

/* Slots used (publishes waiting for the broker). */
size_t pending_inflight(const pending_t *pt);
/* Slots waiting for bridge_commit(). */
size_t pending_stored(const pending_t *pt);

#endif
