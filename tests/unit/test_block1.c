/*
 * Block1 reassembly (RFC 7959 §2.3): blocks taken in order, refusals with
 * the code the device is answered, the pool's budget across transfers.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "block1.h"

#define MAX 1024 /* coap.max_payload of these tests */

static b1_pool_t *pool;

static void setup(void)
{
    pool = b1_pool_new();
    cr_assert_not_null(pool);
}

static void teardown(void)
{
    cr_assert_eq(b1_pool_stats(pool)->bytes, 0, "every buffer given back");
    b1_pool_free(pool);
}

TestSuite(block1, .init = setup, .fini = teardown);

/* A recognisable body: blocks are slices of it. */
static uint8_t src[512];

static void fill(void)
{
    for (size_t i = 0; i < sizeof(src); i++)
        src[i] = (uint8_t)(i * 7 + 1);
}

/* Block num of blocks of 16 << szx bytes, len bytes of src from num's offset. */
static b1_block_t block(unsigned num, bool more, unsigned szx, size_t len, uint64_t now)
{
    fill();
    return (b1_block_t){ .num = num,
                         .more = more,
                         .szx = szx,
                         .size1 = -1,
                         .cf = 0,
                         .topic = "sensors/a",
                         .data = src + ((size_t)num << (szx + 4)),
                         .len = len,
                         .now_ms = now };
}

static enum b1_verdict take(b1_t *t, b1_block_t b, size_t max, b1_refusal_t *why)
{
    return b1_take(t, &b, max, why);
}

Test(block1, in_order_blocks_complete_with_the_body)
{
    b1_t *t = b1_new(pool);
    b1_refusal_t why;
    cr_assert_not_null(t);
    cr_assert_not(b1_active(t));
    cr_assert_eq(take(t, block(0, true, 0, 16, 1000), MAX, &why), B1_CONTINUE);
    cr_assert(b1_active(t));
    cr_assert_gt(b1_pool_stats(pool)->bytes, 0, "the buffer is counted in the pool");
    cr_assert_eq(take(t, block(1, true, 0, 16, 1001), MAX, &why), B1_CONTINUE);
    cr_assert_eq(take(t, block(2, false, 0, 5, 1002), MAX, &why), B1_COMPLETE);
    cr_assert_not(b1_active(t), "a complete body ends the transfer");
    size_t len;
    const uint8_t *body = b1_body(t, &len);
    cr_assert_eq(len, 37);
    cr_assert_not_null(body);
    cr_assert_arr_eq(body, src, 37);
    b1_free(t);
}

Test(block1, larger_blocks_and_a_new_block0_restarts)
{
    b1_t *t = b1_new(pool);
    b1_refusal_t why;
    /* szx 2: 64-byte blocks. A transfer abandoned half way... */
    cr_assert_eq(take(t, block(0, true, 2, 64, 0), MAX, &why), B1_CONTINUE);
    cr_assert_eq(take(t, block(1, true, 2, 64, 0), MAX, &why), B1_CONTINUE);
    /* ...is replaced by a new block 0: the body holds only the new one. */
    cr_assert_eq(take(t, block(0, true, 2, 64, 0), MAX, &why), B1_CONTINUE);
    cr_assert_eq(take(t, block(1, false, 2, 10, 0), MAX, &why), B1_COMPLETE);
    size_t len;
    const uint8_t *body = b1_body(t, &len);
    cr_assert_eq(len, 74);
    cr_assert_arr_eq(body, src, 74);
    b1_free(t);
}

/* Asserts a refusal with code and no Size1/Max-Age, and that t holds nothing. */
static void refused(b1_t *t, enum b1_verdict v, const b1_refusal_t *why, int code)
{
    cr_assert_eq(v, B1_REFUSED);
    cr_assert_eq(why->code, code, "code %d, expected %d", why->code, code);
    if (code != 413)
        cr_assert_eq(why->size1, -1);
    if (code != 503)
        cr_assert_eq(why->max_age, -1);
    cr_assert_not(b1_active(t), "a refused transfer has ended");
    cr_assert_eq(b1_pool_stats(pool)->bytes, 0, "its buffer is given back");
}

Test(block1, a_gap_is_request_entity_incomplete)
{
    b1_t *t = b1_new(pool);
    b1_refusal_t why;
    cr_assert_eq(take(t, block(0, true, 0, 16, 0), MAX, &why), B1_CONTINUE);
    /* Block 1 missing: RFC 7959 §2.9.2, 4.08 Request Entity Incomplete. */
    refused(t, take(t, block(2, true, 0, 16, 0), MAX, &why), &why, 408);
    /* The transfer is over: the missing block arriving late is refused too. */
    refused(t, take(t, block(1, true, 0, 16, 0), MAX, &why), &why, 408);
    b1_free(t);
}

Test(block1, no_block0_is_request_entity_incomplete)
{
    b1_t *t = b1_new(pool);
    b1_refusal_t why;
    refused(t, take(t, block(1, false, 0, 4, 0), MAX, &why), &why, 408);
    b1_free(t);
}

Test(block1, a_repeated_block_is_out_of_order)
{
    b1_t *t = b1_new(pool);
    b1_refusal_t why;
    cr_assert_eq(take(t, block(0, true, 0, 16, 0), MAX, &why), B1_CONTINUE);
    cr_assert_eq(take(t, block(1, true, 0, 16, 0), MAX, &why), B1_CONTINUE);
    refused(t, take(t, block(1, true, 0, 16, 0), MAX, &why), &why, 408);
    b1_free(t);
}

Test(block1, another_szx_mid_transfer)
{
    b1_t *t = b1_new(pool);
    b1_refusal_t why;
    cr_assert_eq(take(t, block(0, true, 1, 32, 0), MAX, &why), B1_CONTINUE);
    b1_block_t b = block(1, true, 0, 16, 0); /* same num, smaller blocks */
    refused(t, take(t, b, MAX, &why), &why, 408);
    b1_free(t);
}

Test(block1, another_content_format_mid_transfer)
{
    b1_t *t = b1_new(pool);
    b1_refusal_t why;
    cr_assert_eq(take(t, block(0, true, 0, 16, 0), MAX, &why), B1_CONTINUE);
    b1_block_t b = block(1, false, 0, 3, 0);
    b.cf = 50; /* application/json after text/plain */
    refused(t, take(t, b, MAX, &why), &why, 408);
    /* Absent after present is a change too. */
    cr_assert_eq(take(t, block(0, true, 0, 16, 0), MAX, &why), B1_CONTINUE);
    b.cf = -1;
    refused(t, take(t, b, MAX, &why), &why, 408);
    b1_free(t);
}

Test(block1, another_topic_mid_transfer)
{
    b1_t *t = b1_new(pool);
    b1_refusal_t why;
    cr_assert_eq(take(t, block(0, true, 0, 16, 0), MAX, &why), B1_CONTINUE);
    b1_block_t b = block(1, false, 0, 3, 0);
    b.topic = "sensors/b";
    refused(t, take(t, b, MAX, &why), &why, 408);
    b1_free(t);
}

Test(block1, a_short_block_before_the_last_is_bad_request)
{
    b1_t *t = b1_new(pool);
    b1_refusal_t why;
    cr_assert_eq(take(t, block(0, true, 0, 16, 0), MAX, &why), B1_CONTINUE);
    refused(t, take(t, block(1, true, 0, 15, 0), MAX, &why), &why, 400);
    /* A last block longer than the block size is refused as well. */
    cr_assert_eq(take(t, block(0, true, 0, 16, 0), MAX, &why), B1_CONTINUE);
    refused(t, take(t, block(1, false, 0, 17, 0), MAX, &why), &why, 400);
    b1_free(t);
}

Test(block1, a_body_over_max_payload_is_413_with_size1)
{
    b1_t *t = b1_new(pool);
    b1_refusal_t why;
    cr_assert_eq(take(t, block(0, true, 0, 16, 0), 40, &why), B1_CONTINUE);
    cr_assert_eq(take(t, block(1, true, 0, 16, 0), 40, &why), B1_CONTINUE);
    /* 48 bytes > 40. */
    enum b1_verdict v = take(t, block(2, false, 0, 16, 0), 40, &why);
    cr_assert_eq(v, B1_REFUSED);
    cr_assert_eq(why.code, 413);
    cr_assert_eq(why.size1, 40, "Size1 tells the largest body allowed");
    cr_assert_not(b1_active(t));
    cr_assert_eq(b1_pool_stats(pool)->bytes, 0);
    /* Exactly max_payload is fine. */
    cr_assert_eq(take(t, block(0, true, 0, 16, 0), 40, &why), B1_CONTINUE);
    cr_assert_eq(take(t, block(1, true, 0, 16, 0), 40, &why), B1_CONTINUE);
    cr_assert_eq(take(t, block(2, false, 0, 8, 0), 40, &why), B1_COMPLETE);
    size_t len;
    b1_body(t, &len);
    cr_assert_eq(len, 40);
    b1_free(t);
}

Test(block1, size1_over_max_payload_is_refused_at_block0)
{
    b1_t *t = b1_new(pool);
    b1_refusal_t why;
    b1_block_t b = block(0, true, 0, 16, 0);
    b.size1 = MAX + 1;
    enum b1_verdict v = take(t, b, MAX, &why);
    cr_assert_eq(v, B1_REFUSED);
    cr_assert_eq(why.code, 413);
    cr_assert_eq(why.size1, MAX);
    cr_assert_eq(why.max_age, -1);
    cr_assert_not(b1_active(t));
    cr_assert_eq(b1_pool_stats(pool)->bytes, 0, "nothing allocated for it");
    /* Size1 equal to the bound is accepted. */
    b.size1 = MAX;
    cr_assert_eq(take(t, b, MAX, &why), B1_CONTINUE);
    b1_free(t);
}

Test(block1, an_empty_last_block)
{
    b1_t *t = b1_new(pool);
    b1_refusal_t why;
    /* The body is a whole number of blocks; the device ends with an empty one. */
    cr_assert_eq(take(t, block(0, true, 0, 16, 0), MAX, &why), B1_CONTINUE);
    cr_assert_eq(take(t, block(1, true, 0, 16, 0), MAX, &why), B1_CONTINUE);
    b1_block_t b = block(2, false, 0, 0, 0);
    b.data = NULL;
    cr_assert_eq(take(t, b, MAX, &why), B1_COMPLETE);
    size_t len;
    const uint8_t *body = b1_body(t, &len);
    cr_assert_eq(len, 32);
    cr_assert_arr_eq(body, src, 32);
    /* An empty body in one empty block. */
    b = block(0, false, 0, 0, 0);
    b.data = NULL;
    cr_assert_eq(take(t, b, MAX, &why), B1_COMPLETE);
    b1_body(t, &len);
    cr_assert_eq(len, 0);
    b1_free(t);
}

Test(block1, an_idle_transfer_is_stale)
{
    b1_t *t = b1_new(pool);
    b1_refusal_t why;
    uint64_t now = 5000;
    cr_assert_eq(take(t, block(0, true, 0, 16, now), MAX, &why), B1_CONTINUE);
    now += BLOCK1_IDLE_MS; /* exactly the limit: still taken */
    cr_assert_eq(take(t, block(1, true, 0, 16, now), MAX, &why), B1_CONTINUE);
    now += BLOCK1_IDLE_MS + 1; /* idle is counted from the last block */
    refused(t, take(t, block(2, false, 0, 1, now), MAX, &why), &why, 408);
    b1_free(t);
}

Test(block1, the_budget_is_pure)
{
    cr_assert_eq(b1_budget(1024), BLOCK1_TRANSFERS * (size_t)1024);
    cr_assert_eq(b1_budget((size_t)1 << 20), BLOCK1_BYTES_MAX, "bounded by BLOCK1_BYTES_MAX");
    cr_assert_eq(b1_budget((size_t)128 << 20), (size_t)128 << 20, "always room for one body");
    cr_assert_eq(b1_budget(1024), b1_budget(1024));
}

Test(block1, transfers_past_the_budget_get_503_with_max_age)
{
    /* Each transfer's first block takes a 1024-byte buffer: MAX bytes. */
    b1_t *t[BLOCK1_TRANSFERS + 1];
    b1_refusal_t why;
    for (size_t i = 0; i < BLOCK1_TRANSFERS; i++) {
        t[i] = b1_new(pool);
        cr_assert_not_null(t[i]);
        cr_assert_eq(take(t[i], block(0, true, 0, 16, 0), MAX, &why), B1_CONTINUE,
                     "transfer %zu within the budget", i);
    }
    cr_assert_eq(b1_pool_stats(pool)->bytes, b1_budget(MAX));
    cr_assert_eq(b1_pool_stats(pool)->refused, 0);
    b1_t *extra = t[BLOCK1_TRANSFERS] = b1_new(pool);
    enum b1_verdict v = take(extra, block(0, true, 0, 16, 0), MAX, &why);
    cr_assert_eq(v, B1_REFUSED);
    cr_assert_eq(why.code, 503);
    cr_assert_eq(why.max_age, BLOCK1_RETRY_S);
    cr_assert_eq(why.size1, -1);
    cr_assert_not(b1_active(extra));
    cr_assert_eq(b1_pool_stats(pool)->refused, 1, "counted");
    cr_assert_eq(b1_pool_stats(pool)->bytes, b1_budget(MAX), "the others keep theirs");
    /* One transfer ends: its room is given back, and the retry is taken. */
    b1_free(t[0]);
    cr_assert_eq(b1_pool_stats(pool)->bytes, b1_budget(MAX) - MAX);
    cr_assert_eq(take(extra, block(0, true, 0, 16, 0), MAX, &why), B1_CONTINUE);
    cr_assert_eq(b1_pool_stats(pool)->refused, 1);
    for (size_t i = 1; i <= BLOCK1_TRANSFERS; i++)
        b1_free(t[i]);
}

Test(block1, a_refusal_gives_the_room_back)
{
    b1_t *a = b1_new(pool), *b = b1_new(pool);
    b1_refusal_t why;
    cr_assert_eq(take(a, block(0, true, 0, 16, 0), MAX, &why), B1_CONTINUE);
    cr_assert_eq(take(b, block(0, true, 0, 16, 0), MAX, &why), B1_CONTINUE);
    size_t both = b1_pool_stats(pool)->bytes;
    cr_assert_eq(both, 2 * (size_t)MAX);
    cr_assert_eq(take(a, block(5, true, 0, 16, 0), MAX, &why), B1_REFUSED);
    cr_assert_eq(b1_pool_stats(pool)->bytes, (size_t)MAX);
    b1_free(a);
    b1_free(b);
    b1_free(NULL);
}

Test(block1, the_option_to_echo)
{
    b1_block_t b = block(5, true, 2, 64, 0);
    cr_assert_eq(b1_option(&b), 5u << 4 | 1u << 3 | 2u);
    b = block(0, false, 6, 0, 0);
    cr_assert_eq(b1_option(&b), 6u);
}
