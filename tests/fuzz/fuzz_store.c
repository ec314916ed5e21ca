/*
 * Fuzz target: the records of the offline store (mqtt/store.c), and the
 * records of Paho's store that the first open after an upgrade imports
 * (mqtt/store_paho.c). The first input byte chooses: even, the rest is a
 * record of the offline store (when bit 1 is set too, with its checksum
 * made right first, so that what lies behind the checksum is explored);
 * odd, the rest is a record of Paho's store under the name
 * keys[byte / 2 % 12].
 *
 * Checks: reading is the same twice (no state); a record read points only
 * into the input (or the import's own buffer), has a topic a broker accepts
 * and a QoS of 0 to 2; it is written again (mqtt_store_encode) into a record
 * that reads back the same; what the import reads is a publish the store
 * keeps.
 */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

#include "mapping.h"
#include "store.h"
#include "store_int.h"

static const char *const keys[] = { "s-1", "s5-2", "sc-3", "sc5-4", "r-5",  "r5-6",
                                    "c-7", "c5-8", "q-9",  "q5-10", "x-11", "c-" };

static bool inside(const mqtt_bytes_t *b, const uint8_t *start, size_t len)
{
    return b->len == 0 || (b->p >= start && b->p + b->len <= start + len);
}

static bool same(const mqtt_bytes_t *a, const mqtt_bytes_t *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

/* pub is written as a record (seq, sent, id) that reads back the same. */
static void check_written_again(const mqtt_publish_t *pub, uint64_t seq, bool sent, uint16_t id)
{
    ssize_t n = mqtt_store_encode(pub, seq, sent, id, NULL, 0);
    FUZZ_CHECK(n > 0);
    uint8_t *buf = malloc((size_t)n);
    FUZZ_CHECK(buf);
    FUZZ_CHECK(mqtt_store_encode(pub, seq, sent, id, buf, (size_t)n) == n);
    mqtt_store_rec_t *again = malloc(sizeof(*again));
    FUZZ_CHECK(again);
    char why[128];
    FUZZ_CHECK(mqtt_store_decode(buf, (size_t)n, again, why, sizeof(why)) == 0);
    FUZZ_CHECK(again->seq == seq && again->sent == sent && again->id == (sent ? id : 0));
    FUZZ_CHECK(again->pub.qos == pub->qos && again->pub.retain == pub->retain);
    FUZZ_CHECK(same(&again->pub.topic, &pub->topic));
    FUZZ_CHECK(same(&again->pub.payload, &pub->payload));
    FUZZ_CHECK(again->pub.props.n == pub->props.n);
    free(again);
    free(buf);
}

/* CRC-32C, as the store computes it (store.c). */
static uint32_t crc32c(uint32_t crc, const uint8_t *p, size_t len)
{
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = crc & 1 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    }
    return ~crc;
}

/* A copy of the record with the right checksum in its header (bytes 24..27). */
static uint8_t *fix_checksum(const uint8_t *rec, size_t len)
{
    static const uint8_t zero[4];
    uint8_t *copy = malloc(len);
    FUZZ_CHECK(copy);
    memcpy(copy, rec, len);
    uint32_t crc = crc32c(crc32c(crc32c(0, copy, 24), zero, 4), copy + 28, len - 28);
    for (int i = 0; i < 4; i++)
        copy[24 + i] = (uint8_t)(crc >> (24 - 8 * i));
    return copy;
}

static void store_record(const uint8_t *rec, size_t len)
{
    mqtt_store_rec_t *r = malloc(sizeof(*r));
    FUZZ_CHECK(r);
    char why[128];
    int rc = mqtt_store_decode(rec, len, r, why, sizeof(why));
    FUZZ_CHECK(rc == mqtt_store_decode(rec, len, NULL, why, sizeof(why)));
    if (rc < 0) {
        FUZZ_CHECK(rc == -1 && memchr(why, '\0', sizeof(why)) && why[0]);
        free(r);
        return;
    }
    FUZZ_CHECK(r->pub.qos <= 2);
    FUZZ_CHECK(inside(&r->pub.topic, rec, len) && inside(&r->pub.payload, rec, len));
    FUZZ_CHECK(map_topic_ok((const char *)r->pub.topic.p, r->pub.topic.len));
    FUZZ_CHECK(!r->sent || (r->pub.qos > 0 && r->id != 0 && r->pub.dup));
    FUZZ_CHECK(r->sent || (r->id == 0 && !r->pub.dup));
    check_written_again(&r->pub, r->seq, r->sent, r->id);
    free(r);
}

static void paho_record(const char *key, const uint8_t *rec, size_t len)
{
    uint8_t *buf = malloc(len + 16);
    mqtt_publish_t *pub = malloc(sizeof(*pub));
    FUZZ_CHECK(buf && pub);
    char why[128];
    int rc = store_paho_read(key, rec, len, buf, len + 16, pub, why, sizeof(why));
    FUZZ_CHECK(rc == -1 || rc == 0 || rc == 1);
    if (rc == -1)
        FUZZ_CHECK(memchr(why, '\0', sizeof(why)) && why[0]);
    if (rc == 1) {
        FUZZ_CHECK(pub->qos <= 2);
        FUZZ_CHECK(key[0] != 's' || pub->qos >= 1);
        FUZZ_CHECK(inside(&pub->topic, rec, len) || inside(&pub->topic, buf, len + 16));
        FUZZ_CHECK(inside(&pub->payload, rec, len) || inside(&pub->payload, buf, len + 16));
        FUZZ_CHECK(map_topic_ok((const char *)pub->topic.p, pub->topic.len));
        check_written_again(pub, 1, false, 0);
    }
    free(pub);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 1) {
        paho_record(keys[data[0] / 2 % (sizeof(keys) / sizeof(keys[0]))], data + 1, size - 1);
    } else if ((data[0] & 2) && size - 1 >= 28) {
        uint8_t *copy = fix_checksum(data + 1, size - 1);
        store_record(copy, size - 1);
        free(copy);
    } else {
        store_record(data + 1, size - 1);
    }
    return 0;
}
