/*
 * Device presence (presence.h): documents per identity, the rate limit that
 * keeps the last state, anonymous devices, the stop, and a fleet's listing.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "ev.h"
#include "presence.h"

static ev_loop_t *loop;
static presence_t *p;
static unsigned published;
static char last_topic[256], last_doc[256];

static int record(void *arg, const char *topic, const char *json, size_t len)
{
    (void)arg;
    published++;
    snprintf(last_topic, sizeof(last_topic), "%s", topic);
    snprintf(last_doc, sizeof(last_doc), "%.*s", (int)len, json);
    return 0;
}

static void setup(void)
{
    loop = ev_new();
    cr_assert_not_null(loop);
    published = 0;
    p = presence_new(loop, "tandem/gw/devices/{identity}", record, NULL);
    cr_assert_not_null(p);
}

static void teardown(void)
{
    presence_free(p);
    ev_free(loop);
}

static struct sockaddr_in from(uint16_t port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sa;
}

/* Turns the loop for ms. */
static void run_for(uint64_t ms)
{
    uint64_t end = gw_now_ms() + ms;
    while (gw_now_ms() < end)
        ev_turn(loop, (int)(end - gw_now_ms()));
}

TestSuite(presence, .init = setup, .fini = teardown);

Test(presence, online_then_offline)
{
    struct sockaddr_in sa = from(5000);
    presence_dev_t *d = presence_begin(p, "bike-1", "coap", (struct sockaddr *)&sa);
    cr_assert_not_null(d);
    cr_assert_eq(published, 1);
    cr_assert_str_eq(last_topic, "tandem/gw/devices/bike-1");
    cr_assert(strstr(last_doc, "{\"online\": true, \"protocol\": \"coap\", \"address\": "
                               "\"127.0.0.1:5000\", \"since\": \"") == last_doc,
              "%s", last_doc);
    /* A second session of the same identity changes nothing. */
    presence_dev_t *d2 = presence_begin(p, "bike-1", "mqtt", (struct sockaddr *)&sa);
    cr_assert_eq(d2, d);
    presence_end(p, d, NULL);
    cr_assert_eq(presence_stats(p)->online, 1);
    presence_end(p, d2, NULL);
    cr_assert_eq(presence_stats(p)->online, 0);
    run_for(PRESENCE_INTERVAL_MS + 200);
    cr_assert_eq(published, 2);
    cr_assert(strstr(last_doc, "{\"online\": false, \"protocol\": \"coap\"") == last_doc, "%s",
              last_doc);
}

Test(presence, flapping_is_bounded_and_ends_offline)
{
    struct sockaddr_in sa = from(5001);
    for (int i = 0; i < 100; i++)
        presence_end(p, presence_begin(p, "bike-1", "mqtt", (struct sockaddr *)&sa), NULL);
    cr_assert_eq(published, 1, "only the first document at once");
    cr_assert_eq(presence_stats(p)->presence_suppressed, 199);
    run_for(3 * PRESENCE_INTERVAL_MS);
    cr_assert_eq(published, 2, "the latest state at the window's end, then nothing");
    cr_assert(strstr(last_doc, "\"online\": false") != NULL, "%s", last_doc);
    size_t len;
    char *list = presence_list(p, true, &len);
    cr_assert_str_eq(list, "{\"devices\": []}\n");
    free(list);
}

Test(presence, anonymous_devices_have_none)
{
    struct sockaddr_in sa = from(5002);
    cr_assert_null(presence_begin(p, NULL, "coap", (struct sockaddr *)&sa));
    cr_assert_null(presence_begin(p, "", "mqtt", (struct sockaddr *)&sa));
    presence_end(p, NULL, NULL);
    presence_request(NULL);
    cr_assert_eq(published, 0);
    cr_assert_eq(presence_stats(p)->online, 0);
}

Test(presence, stop_publishes_every_device_offline)
{
    struct sockaddr_in6 sa6 = { .sin6_family = AF_INET6, .sin6_port = htons(53122) };
    inet_pton(AF_INET6, "2001:db8::7", &sa6.sin6_addr);
    presence_begin(p, "bike-1", "coap", (struct sockaddr *)&sa6);
    cr_assert(strstr(last_doc, "\"address\": \"[2001:db8::7]:53122\"") != NULL, "%s", last_doc);
    presence_dev_t *d = presence_begin(p, "bike-2", "mqtt", (struct sockaddr *)&sa6);
    presence_end(p, d, NULL);
    presence_begin(p, "bike-2", "mqtt", (struct sockaddr *)&sa6); /* within its window */
    cr_assert_eq(published, 2);
    presence_stop(p);
    cr_assert_eq(published, 4, "both offline at once, whatever the rate");
    cr_assert(strstr(last_doc, "\"online\": false") != NULL, "%s", last_doc);
    run_for(PRESENCE_INTERVAL_MS + 200);
    cr_assert_eq(published, 4, "nothing after the stop");
}

Test(presence, off_publishes_nothing_but_lists)
{
    presence_free(p);
    p = presence_new(loop, "", record, NULL);
    struct sockaddr_in sa = from(5003);
    presence_dev_t *d = presence_begin(p, "bike-1", "coap", (struct sockaddr *)&sa);
    presence_request(d);
    size_t len;
    char *list = presence_list(p, false, &len);
    cr_assert(strstr(list, "bike-1") && strstr(list, "127.0.0.1:5003"), "%s", list);
    free(list);
    presence_end(p, d, NULL);
    presence_stop(p);
    cr_assert_eq(published, 0);
}

Test(presence, a_fleet_of_10000_is_listed)
{
    char id[32];
    for (int i = 0; i < 10000; i++) {
        struct sockaddr_in sa = from((uint16_t)(10000 + i));
        snprintf(id, sizeof(id), "bike-%05d", i);
        presence_request(presence_begin(p, id, i % 2 ? "mqtt" : "coap", (struct sockaddr *)&sa));
    }
    cr_assert_eq(presence_stats(p)->online, 10000);
    size_t len;
    char *list = presence_list(p, true, &len);
    cr_assert_not_null(list);
    cr_assert_eq(strlen(list), len);
    size_t n = 0;
    for (const char *s = list; (s = strstr(s, "\"identity\": ")); s++)
        n++;
    cr_assert_eq(n, 10000);
    cr_assert(strstr(list, "{\"identity\": \"bike-00007\", \"protocol\": \"mqtt\", \"address\": "
                           "\"127.0.0.1:10007\""),
              "bike-00007");
    cr_assert_lt(len, 2u << 20, "%zu bytes", len);
    free(list);
    list = presence_list(p, false, &len);
    n = 0;
    for (const char *s = list; *s; s++)
        n += *s == '\n';
    cr_assert_eq(n, 10001, "a header and one line each");
    free(list);
}
