/*
 * Block1 reassembly (block1.h).
 */
#include "block1.h"

#include <stdlib.h>
#include <string.h>

#include "mapping.h"

struct b1_pool {
    block1_stats_t st;
};

/* One transfer (a session's up state). */
struct b1 {
    b1_pool_t *pool; /* borrowed */
    bool active;
    char topic[MAP_PATH_MAX + 1];
    char *body; /* owned */
    size_t len, cap;
    unsigned next, szx;
    int cf;
    uint64_t at_ms;
};

b1_pool_t *b1_pool_new(void)
{
    return calloc(1, sizeof(b1_pool_t));
}

void b1_pool_free(b1_pool_t *pool)
{
    free(pool);
}

const block1_stats_t *b1_pool_stats(const b1_pool_t *pool)
{
    return &pool->st;
}

size_t b1_budget(size_t max_payload)
{
    size_t max = max_payload, all = BLOCK1_TRANSFERS * max;
    if (all > BLOCK1_BYTES_MAX)
        all = BLOCK1_BYTES_MAX > max ? BLOCK1_BYTES_MAX : max;
    return all;
}

b1_t *b1_new(b1_pool_t *pool)
{
    b1_t *t = calloc(1, sizeof(*t));
    if (t)
        t->pool = pool;
    return t;
}

void b1_free(b1_t *t)
{
    if (!t)
        return;
    t->pool->st.bytes -= t->cap;
    free(t->body);
    free(t);
}

/* Ends the transfer and gives its buffer back. */
static enum b1_verdict refuse(b1_t *t, b1_refusal_t *why, int code)
{
    t->pool->st.bytes -= t->cap;
    free(t->body);
    t->body = NULL;
    t->len = t->cap = 0;
    t->active = false;
    why->code = code;
    return B1_REFUSED;
}

enum b1_verdict b1_take(b1_t *t, const b1_block_t *blk, size_t max, b1_refusal_t *why)
{
    size_t size = (size_t)1 << (blk->szx + 4), len = blk->len;
    uint64_t now = blk->now_ms;

    why->size1 = -1;
    why->max_age = -1;
    if (blk->num == 0) {
        size_t tlen = strlen(blk->topic);
        if (blk->size1 > (int)max) {
            why->size1 = (int)max;
            return refuse(t, why, 413);
        }
        if (tlen > MAP_PATH_MAX)
            return refuse(t, why, 500);
        t->active = true;
        t->len = 0;
        t->next = 0;
        t->szx = blk->szx;
        t->cf = blk->cf;
        t->at_ms = now;
        memcpy(t->topic, blk->topic, tlen + 1);
    }
    if (!t->active || blk->num != t->next || blk->szx != t->szx || t->cf != blk->cf ||
        strcmp(t->topic, blk->topic) || now - t->at_ms > BLOCK1_IDLE_MS) {
        /* Out of order, another resource, or a stale transfer. */
        return refuse(t, why, 408);
    }
    if ((blk->more && len != size) || len > size)
        return refuse(t, why, 400);
    if (t->len + len > max) {
        why->size1 = (int)max;
        return refuse(t, why, 413);
    }
    if (t->len + len > t->cap) {
        size_t cap = t->cap ? t->cap : 1024;
        while (cap < t->len + len)
            cap *= 2;
        if (cap > max)
            cap = max;
        if (t->pool->st.bytes - t->cap + cap > b1_budget(max)) {
            t->pool->st.refused++;
            why->max_age = BLOCK1_RETRY_S;
            return refuse(t, why, 503);
        }
        char *body = realloc(t->body, cap);
        if (!body)
            return refuse(t, why, 500);
        t->pool->st.bytes += cap - t->cap;
        t->body = body;
        t->cap = cap;
    }
    if (len) /* a last block may be empty */
        memcpy(t->body + t->len, blk->data, len);
    t->len += len;
    t->next++;
    t->at_ms = now;
    if (blk->more)
        return B1_CONTINUE;
    t->active = false;
    return B1_COMPLETE;
}

bool b1_active(const b1_t *t)
{
    return t->active;
}

const uint8_t *b1_body(const b1_t *t, size_t *len)
{
    *len = t->len;
    return (const uint8_t *)t->body;
}

uint32_t b1_option(const b1_block_t *blk)
{
    return blk->num << 4 | (unsigned)blk->more << 3 | blk->szx;
}
