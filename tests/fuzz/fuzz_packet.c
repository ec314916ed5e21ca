/*
 * Fuzz target: the MQTT packet codec (listener/packet.c), which reads every
 * byte a device or the broker sends to the MQTT listener.
 *
 * Input: a byte stream, framed with mqtt_frame() packet after packet. Each
 * packet is decoded as MQTT 3.1.1 and as MQTT 5; what decodes is encoded
 * again and checked (check_roundtrip()):
 *   - the encoding succeeds, fits the length it announced, and frames as one
 *     packet of that length;
 *   - it decodes, in the same version, to the same packet (decode(encode(x))
 *     == x);
 *   - encoding that again gives the same bytes (the encoding is canonical).
 * Framing is checked too: no prefix of a packet frames, and a max_len of
 * one byte less than the packet is refused with -EMSGSIZE.
 */
#include "fuzz.h"

#include <errno.h>
#include <string.h>

#include "packet.h"
#include "packet_eq.h"

static void check_roundtrip(const mqtt_packet_t *p, int version, uint8_t *a, uint8_t *b, size_t cap)
{
    static mqtt_packet_t q;
    int v = p->type == MQTT_CONNECT ? p->u.connect.version : version;

    ssize_t n = mqtt_encode(p, version, a, cap);
    FUZZ_CHECK(n > 0 && (size_t)n <= cap);
    size_t flen = 0;
    FUZZ_CHECK(mqtt_frame(a, (size_t)n, (size_t)n, &flen) == 1 && flen == (size_t)n);
    FUZZ_CHECK(mqtt_decode(a, (size_t)n, v, &q) == 0);
    FUZZ_CHECK(pk_eq(p, &q));
    ssize_t m = mqtt_encode(&q, version, b, cap);
    FUZZ_CHECK(m == n && memcmp(a, b, (size_t)n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static mqtt_packet_t p;
    /* Re-encoding may grow a packet by a byte (AUTH's Property Length). */
    size_t cap = size + 16;
    uint8_t *a = malloc(cap), *b = malloc(cap);
    size_t off = 0;

    FUZZ_CHECK(a && b);
    while (off < size) {
        size_t plen = 0;
        int rc = mqtt_frame(data + off, size - off, size, &plen);
        FUZZ_CHECK(rc == 1 || rc == 0 || rc == -EBADMSG || rc == -EMSGSIZE);
        if (rc != 1)
            break;
        FUZZ_CHECK(plen >= 2 && plen <= size - off);
        size_t dummy;
        FUZZ_CHECK(mqtt_frame(data + off, plen - 1, size, &dummy) == 0);
        FUZZ_CHECK(mqtt_frame(data + off, plen, plen - 1, &dummy) == -EMSGSIZE);

        for (int version = MQTT_V311; version <= MQTT_V5; version++) {
            rc = mqtt_decode(data + off, plen, version, &p);
            FUZZ_CHECK(rc == 0 || rc == -EBADMSG || rc == -EPROTO || rc == -E2BIG);
            if (rc == 0)
                check_roundtrip(&p, version, a, b, cap);
        }
        off += plen;
    }
    free(a);
    free(b);
    return 0;
}
