/*
 * The MQTT listener's slot table (listener/slots.c): which connection in its
 * handshake goes when the shared bound is full, and which broker sessions an
 * identity holds.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "listener_int.h"
#include "slots.h"

static slot_t *addr(slots_t *s, uint8_t last)
{
    uint8_t ip[4] = { 127, 0, 0, last };
    return slots_get(s, SLOT_ADDR, ip, sizeof(ip));
}

Test(slots, entries_are_shared_by_key_and_kind)
{
    slots_t *s = slots_new();
    cr_assert(s);
    slot_t *a = addr(s, 2), *b = addr(s, 2), *c = addr(s, 3);
    cr_assert_eq(a, b);
    cr_assert_neq(a, c);
    slot_t *i = slots_get(s, SLOT_IDENTITY, "\x7f\0\0\x02", 4);
    cr_assert_neq(i, a, "an identity never shares an address's entry");
    slots_put(s, i);
    slots_put(s, c);
    slots_put(s, b);
    cr_assert_eq(a->refs, 1);
    slots_put(s, a);
    slots_free(s);
}

Test(slots, the_busiest_address_loses_its_oldest)
{
    slots_t *s = slots_new();
    lconn_t conns[6];
    memset(conns, 0, sizeof(conns));
    slot_t *lone = addr(s, 1), *busy = addr(s, 2);
    conns[0].addr = lone;
    slots_halfopen_add(s, lone, &conns[0]); /* the oldest of all */
    for (int k = 1; k < 4; k++) {
        conns[k].addr = busy;
        slots_halfopen_add(s, busy, &conns[k]);
    }
    cr_assert_eq(busy->halfopen, 3);
    cr_assert_eq(slots_halfopen_victim(s), &conns[1], "the busy address's oldest goes first");
    slots_halfopen_del(s, &conns[1]);
    slots_halfopen_del(s, &conns[2]);
    cr_assert_eq(busy->oldest, &conns[3]);
    /* One each now: the lists by count still find one. */
    lconn_t *v = slots_halfopen_victim(s);
    cr_assert(v == &conns[0] || v == &conns[3]);
    slots_halfopen_del(s, &conns[0]);
    slots_halfopen_del(s, &conns[3]);
    cr_assert_null(slots_halfopen_victim(s));
    slots_halfopen_del(s, &conns[3]); /* twice: nothing */
    cr_assert_eq(busy->halfopen, 0);
    slots_put(s, lone);
    slots_put(s, busy);
    slots_free(s);
}

Test(slots, sessions_of_an_identity_are_bounded)
{
    slots_t *s = slots_new();
    slot_t *id = slots_get(s, SLOT_IDENTITY, "bike-1", 6);
    uint8_t key[16] = { 0 };
    bool used;
    for (uint8_t k = 0; k < 3; k++) {
        key[0] = k;
        cr_assert_eq(slots_session_take(s, id, key, true, 3, 1000, &used), 0);
        cr_assert(used);
        slots_session_release(s, id, key, 60, true, 1000);
    }
    key[0] = 9;
    cr_assert_eq(slots_session_take(s, id, key, true, 3, 2000, &used), -EDQUOT);
    cr_assert_eq(slots_session_take(s, id, key, false, 3, 2000, &used), 0,
                 "no session asked: no bound");
    cr_assert_not(used);
    /* A known one comes back without a session: it is gone after. */
    key[0] = 1;
    cr_assert_eq(slots_session_take(s, id, key, false, 3, 2000, &used), 0);
    cr_assert(used);
    slots_session_release(s, id, key, 0, true, 2000);
    cr_assert_eq(id->nsessions, 2);
    /* Refused by the broker: a new one leaves nothing. */
    key[0] = 7;
    cr_assert_eq(slots_session_take(s, id, key, true, 3, 2000, &used), 0);
    slots_session_release(s, id, key, 60, false, 2000);
    cr_assert_eq(id->nsessions, 2);
    /* Expired ones are forgotten when room is asked for. */
    key[0] = 8;
    cr_assert_eq(slots_session_take(s, id, key, true, 2, 2000 + 61000, &used), 0);
    cr_assert_eq(id->nsessions, 1);
    slots_session_release(s, id, key, UINT32_MAX, true, 70000);
    cr_assert_eq(slots_session_take(s, id, key, true, 1, UINT64_MAX - 1, &used), 0,
                 "a session for ever stays");
    slots_session_release(s, id, key, UINT32_MAX, true, 70000);
    slots_put(s, id);
    slots_free(s);
}
