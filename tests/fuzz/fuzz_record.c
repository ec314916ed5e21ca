/*
 * Fuzz target: the reader of the MQTT client's store records, record_read().
 * The first input byte picks the record's name (its kind), the rest is the
 * record.
 *
 * Checks: a record read as a publish points only into the input, has a topic
 * a broker accepts and a QoS of 1 or 2 for a sent packet (0 to 2 for a
 * queued command); reading is the same twice (no state).
 */
#include "fuzz.h"

#include <string.h>

#include "mapping.h"
#include "record.h"

static const char *const keys[] = { "s-1", "s5-2", "sc-3", "sc5-4", "r-5",  "r5-6",
                                    "c-7", "c5-8", "q-9",  "q5-10", "x-11", "c-" };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *key = keys[data[0] % (sizeof(keys) / sizeof(keys[0]))];
    const uint8_t *rec = data + 1;
    size_t len = size - 1;
    record_pub_t pub;
    char why[128];
    int kind = record_read(key, rec, len, &pub, why, sizeof(why));
    FUZZ_CHECK(kind == record_read(key, rec, len, NULL, why, sizeof(why)));
    if (kind < 0) {
        FUZZ_CHECK(memchr(why, '\0', sizeof(why)) && why[0]);
        return 0;
    }
    FUZZ_CHECK(kind == RECORD_PUBLISH || kind == RECORD_RECEIVED || kind == RECORD_OTHER);
    if (kind != RECORD_PUBLISH)
        return 0;
    const uint8_t *end = rec + len;
    FUZZ_CHECK((const uint8_t *)pub.topic >= rec &&
               (const uint8_t *)pub.topic + pub.topic_len <= end);
    FUZZ_CHECK(map_topic_ok(pub.topic, pub.topic_len));
    FUZZ_CHECK(pub.payload >= rec && pub.payload + pub.len <= end);
    FUZZ_CHECK(pub.qos >= 0 && pub.qos <= 2);
    FUZZ_CHECK(key[0] != 's' || pub.qos >= 1);
    if (pub.props)
        FUZZ_CHECK(pub.props >= rec && pub.props + pub.props_len <= end);
    return 0;
}
