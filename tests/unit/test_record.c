/*
 * Reading the MQTT client's store records: what Paho writes is read back,
 * anything damaged or that a broker would refuse is not.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "record.h"

/* A command record as Paho 1.3 writes one for a PUBLISH (host ints). */
static size_t command(uint8_t *buf, const char *topic, const char *payload, int qos, bool v5)
{
    size_t n = 0;
    int v;
#define PUT_INT(x) (v = (x), memcpy(buf + n, &v, sizeof(int)), n += sizeof(int))
    PUT_INT(3); /* PUBLISH */
    PUT_INT(7); /* token */
    memcpy(buf + n, topic, strlen(topic) + 1);
    n += strlen(topic) + 1;
    PUT_INT((int)strlen(payload));
    memcpy(buf + n, payload, strlen(payload));
    n += strlen(payload);
    PUT_INT(qos);
    PUT_INT(0);
    if (v5) {
        /* properties: content type "text/plain", user property device=bike-1 */
        static const uint8_t props[] = { 30,  0x03, 0,   10,   't', 'e', 'x', 't', '/', 'p', 'l',
                                         'a', 'i',  'n', 0x26, 0,   6,   'd', 'e', 'v', 'i', 'c',
                                         'e', 0,    6,   'b',  'i', 'k', 'e', '-', '1' };
        memcpy(buf + n, props, sizeof(props));
        n += sizeof(props);
    }
#undef PUT_INT
    return n;
}

/* A sent PUBLISH packet record ("s-"/"s5-"). */
static size_t packet(uint8_t *buf, const char *topic, const char *payload, bool v5)
{
    size_t t = strlen(topic), p = strlen(payload), rem = 2 + t + 2 + (v5 ? 1 : 0) + p, n = 0;
    buf[n++] = 0x32;         /* PUBLISH, QoS 1 */
    buf[n++] = (uint8_t)rem; /* tests keep it under 128 */
    buf[n++] = 0;
    buf[n++] = (uint8_t)t;
    memcpy(buf + n, topic, t);
    n += t;
    buf[n++] = 0;
    buf[n++] = 9; /* packet id */
    if (v5)
        buf[n++] = 0; /* no properties */
    memcpy(buf + n, payload, p);
    return n + p;
}

Test(record, what_paho_writes_is_read)
{
    uint8_t buf[512];
    record_pub_t pub;
    char why[128];
    size_t n = command(buf, "redback/p1/zones/a/b", "hello", 1, false);
    cr_assert_eq(record_read("c-1", buf, n, &pub, why, sizeof(why)), RECORD_PUBLISH, "%s", why);
    cr_assert_eq(pub.topic_len, 20);
    cr_assert_eq(memcmp(pub.payload, "hello", 5), 0);
    cr_assert_eq(pub.qos, 1);
    n = command(buf, "redback/p1/zones/a/b", "hello", 2, true);
    cr_assert_eq(record_read("c5-12", buf, n, &pub, why, sizeof(why)), RECORD_PUBLISH, "%s", why);
    cr_assert_eq(pub.props_len, 30);
    n = packet(buf, "redback/x", "v", false);
    cr_assert_eq(record_read("s-9", buf, n, &pub, why, sizeof(why)), RECORD_PUBLISH, "%s", why);
    cr_assert_eq(pub.len, 1);
    n = packet(buf, "redback/x", "v", true);
    cr_assert_eq(record_read("s5-9", buf, n, &pub, why, sizeof(why)), RECORD_PUBLISH, "%s", why);
    cr_assert_eq(record_read("r5-9", buf, n, NULL, why, sizeof(why)), RECORD_RECEIVED, "%s", why);
    static const uint8_t pubrel[] = { 0x62, 0x02, 0x00, 0x09 };
    cr_assert_eq(record_read("sc-9", pubrel, sizeof(pubrel), NULL, why, sizeof(why)), RECORD_OTHER,
                 "%s", why);
}

Test(record, a_topic_a_broker_refuses_is_not_read)
{
    uint8_t buf[512];
    char why[128];
    size_t n = command(buf,
                       "redback/p1/zones/a\x01"
                       "b",
                       "poison", 1, false);
    cr_assert_eq(record_read("c-1", buf, n, NULL, why, sizeof(why)), -1);
    cr_assert(strstr(why, "topic"), "%s", why);
    n = command(buf, "redback/+/x", "poison", 1, false);
    cr_assert_eq(record_read("c-1", buf, n, NULL, why, sizeof(why)), -1);
    n = packet(buf, "redback/\xef\xbf\xbf", "v", false); /* U+FFFF */
    cr_assert_eq(record_read("s-1", buf, n, NULL, why, sizeof(why)), -1);
    /* A property value with a control character. */
    n = command(buf, "redback/ok", "v", 1, true);
    buf[n - 1] = 0x07;
    cr_assert_eq(record_read("c5-1", buf, n, NULL, why, sizeof(why)), -1);
}

Test(record, damaged_records_are_not_read)
{
    uint8_t buf[512];
    char why[128];
    size_t n = command(buf, "redback/p1/zones/a/b", "hello", 1, false);
    /* Every truncation is refused, never read past. */
    for (size_t k = 0; k < n; k++)
        cr_assert_eq(record_read("c-1", buf, k, NULL, why, sizeof(why)), -1, "length %zu", k);
    n = packet(buf, "redback/x", "v", false);
    for (size_t k = 0; k < n; k++) {
        int rc = record_read("s-1", buf, k, NULL, why, sizeof(why));
        cr_assert_eq(rc, -1, "length %zu read as %d", k, rc);
    }
    /* A remaining length whose every byte says "more". */
    static const uint8_t endless[] = { 0x32, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00 };
    cr_assert_eq(record_read("s-1", endless, sizeof(endless), NULL, why, sizeof(why)), -1);
    /* A payload length larger than the record, and a negative one. */
    n = command(buf, "t", "abc", 1, false);
    int big = 1 << 30;
    memcpy(buf + 2 * sizeof(int) + 2, &big, sizeof(int));
    cr_assert_eq(record_read("c-1", buf, n, NULL, why, sizeof(why)), -1);
    int neg = -5;
    memcpy(buf + 2 * sizeof(int) + 2, &neg, sizeof(int));
    cr_assert_eq(record_read("c-1", buf, n, NULL, why, sizeof(why)), -1);
    /* Unknown record names. */
    cr_assert_eq(record_read("x-1", buf, n, NULL, why, sizeof(why)), -1);
    cr_assert_eq(record_read("c-", buf, n, NULL, why, sizeof(why)), -1);
    cr_assert_eq(record_read("c-1a", buf, n, NULL, why, sizeof(why)), -1);
}
