/*
 * Block1 reassembly (RFC 7959 §2.3): the blocks of a request body are taken
 * in order into a per-transfer buffer, bounded by the largest body allowed
 * (coap.max_payload), and all transfers' buffers together by a pool's
 * budget: BLOCK1_TRANSFERS full-size bodies and BLOCK1_BYTES_MAX bytes, but
 * always room for one. Past the budget a new block gets 5.03 with Max-Age
 * BLOCK1_RETRY_S. A transfer with no block for BLOCK1_IDLE_MS is stale.
 *
 * Nothing here knows CoAP sessions or PDUs: the caller reads the block's
 * option into a b1_block_t and gets a verdict, so that this can be tested
 * alone. One transfer per session (the caller keeps it with the session).
 */
#ifndef TANDEM_BLOCK1_H
#define TANDEM_BLOCK1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A Block1 transfer with no block for this long is dropped, ms. */
#define BLOCK1_IDLE_MS 60000
#define BLOCK1_TRANSFERS 512
#define BLOCK1_BYTES_MAX ((size_t)64 << 20)
#define BLOCK1_RETRY_S 5

/* The pool's counters. */
typedef struct block1_stats {
    size_t bytes;     /* held by every transfer's buffer now */
    uint64_t refused; /* blocks answered 5.03: every buffer at the budget */
} block1_stats_t;

typedef struct b1_pool b1_pool_t;
typedef struct b1 b1_t;

b1_pool_t *b1_pool_new(void);
/* Its transfers must be freed first. */
void b1_pool_free(b1_pool_t *pool);
const block1_stats_t *b1_pool_stats(const b1_pool_t *pool);
/* Bytes every transfer's buffers may hold together, for bodies of max_payload. */
size_t b1_budget(size_t max_payload);

/* A transfer, not active yet; NULL on ENOMEM. pool is borrowed and must outlive it. */
b1_t *b1_new(b1_pool_t *pool);
/* Frees t and its buffer (given back to the pool). b1_free(NULL) does nothing. */
void b1_free(b1_t *t);

/* One block of a request, as it arrived. */
typedef struct b1_block {
    unsigned num;      /* block number */
    bool more;         /* the M bit */
    unsigned szx;      /* size exponent: blocks of 1 << (szx + 4) bytes */
    int size1;         /* Size1 option (announced body size), -1 when absent */
    int cf;            /* Content-Format, -1 when absent */
    const char *topic; /* where the body goes; at most MAP_PATH_MAX bytes */
    const uint8_t *data;
    size_t len;
    uint64_t now_ms;
} b1_block_t;

enum b1_verdict {
    B1_CONTINUE, /* taken; more to come (2.31 Continue) */
    B1_COMPLETE, /* taken; the body is whole: b1_body() */
    B1_REFUSED,  /* the transfer ended; answer with the refusal */
};

/* What to answer a refused block. */
typedef struct b1_refusal {
    int code;    /* 400, 408 (out of order, another resource, stale), 413, 500 or 503 */
    int size1;   /* 413: the largest body allowed; else -1 */
    int max_age; /* 503: when to try again; else -1 */
} b1_refusal_t;

/*
 * Takes one block into t, for bodies of at most max_payload bytes. On
 * B1_REFUSED t is no longer active and holds no buffer (*why says what to
 * answer); on B1_COMPLETE it is no longer active and b1_body() holds the
 * body until b1_free() or the next block 0.
 */
enum b1_verdict b1_take(b1_t *t, const b1_block_t *blk, size_t max_payload, b1_refusal_t *why);

/* A body is being put together (the session is busy meanwhile). */
bool b1_active(const b1_t *t);
/* The whole body after B1_COMPLETE, or NULL. */
const uint8_t *b1_body(const b1_t *t, size_t *len);
/* The Block1 option value to echo for blk. */
uint32_t b1_option(const b1_block_t *blk);

#endif
