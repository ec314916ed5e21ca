/*
 * Fuzz target: the cookie gate's datagram classifier, dtls_dgram_classify().
 *
 * Checks: what libcoap 4.3.1 takes for a new session's ClientHello (at least
 * 14 bytes, content type 22, handshake type 1 at offset 13) is never "not a
 * hello"; a hello's cookie lies within the datagram; the answer is the same
 * twice.
 */
#include "fuzz.h"

#include "gate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dtls_dgram_t a, b;
    dtls_dgram_kind_t kind = dtls_dgram_classify(data, size, &a);
    FUZZ_CHECK(kind == dtls_dgram_classify(data, size, &b));
    FUZZ_CHECK(kind == a.kind);
    if (size >= 14 && data[0] == 22 && data[13] == 1)
        FUZZ_CHECK(kind != DTLS_DGRAM_OTHER);
    if (kind == DTLS_DGRAM_HELLO)
        FUZZ_CHECK(a.cookie_off <= size && a.cookie_len <= size - a.cookie_off);
    return 0;
}
