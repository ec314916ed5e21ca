/*
 * Broker links over one shared part (mqtt/link.h: mqtt_link_shared_t), as
 * the MQTT listener makes one per device: one lookup serves every link, a
 * failure reaches each in the link's words, and the shared part lives as
 * long as the last link that uses it.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "link.h"

#define WAIT_MS 5000
#define LINKS 3

static ev_loop_t *loop;
static int lfd = -1, port;
static mqtt_link_shared_t *shared;
static mqtt_link_t *links[LINKS];

static struct outcome {
    int calls, err;
    char why[512];
} seen[LINKS];

static void on_link(void *data, int err, const char *why)
{
    struct outcome *o = data;
    o->calls++;
    o->err = err;
    snprintf(o->why, sizeof(o->why), "%s", why);
}

#define TURN_UNTIL(cond)                                                                           \
    do {                                                                                           \
        uint64_t until_ = gw_now_ms() + WAIT_MS;                                                   \
        bool ok_;                                                                                  \
        while (!(ok_ = (cond)) && gw_now_ms() < until_)                                            \
            ev_turn(loop, 10);                                                                     \
        cr_assert(ok_, "waited in vain for " #cond);                                               \
    } while (0)

static void setup(void)
{
    memset(seen, 0, sizeof(seen));
    loop = ev_new();
    cr_assert(loop);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof(a);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(lfd, 0);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(lfd, 16), 0);
    getsockname(lfd, (struct sockaddr *)&a, &alen);
    port = ntohs(a.sin_port);
}

static void teardown(void)
{
    for (int i = 0; i < LINKS; i++) {
        mqtt_link_free(links[i]);
        links[i] = NULL;
    }
    mqtt_link_shared_free(shared);
    shared = NULL;
    if (lfd >= 0)
        close(lfd);
    lfd = -1;
    ev_free(loop);
}

TestSuite(link, .init = setup, .fini = teardown, .timeout = 30);

static void make(const char *uri)
{
    mqtt_link_config_t cfg = { .uri = uri, .timeout_ms = 3000 };
    char err[256];
    shared = mqtt_link_shared_new(loop, &cfg, err, sizeof(err));
    cr_assert(shared, "%s", err);
    for (int i = 0; i < LINKS; i++) {
        links[i] = mqtt_link_new_shared(shared, on_link, &seen[i]);
        cr_assert(links[i]);
    }
}

static int calls(void)
{
    int n = 0;
    for (int i = 0; i < LINKS; i++)
        n += seen[i].calls;
    return n;
}

Test(link, links_share_one_name_and_each_connects)
{
    char uri[64];
    snprintf(uri, sizeof(uri), "mqtt://localhost:%d", port);
    make(uri);
    for (int i = 0; i < LINKS; i++)
        cr_assert_eq(mqtt_link_open(links[i]), 0);
    cr_assert_eq(calls(), 0, "the outcome never comes from mqtt_link_open");
    TURN_UNTIL(calls() == LINKS);
    for (int i = 0; i < LINKS; i++) {
        cr_assert_eq(seen[i].err, 0, "%s", seen[i].why);
        cr_assert_geq(mqtt_link_fd(links[i]), 0);
        cr_assert(mqtt_link_stream(links[i]));
    }
    /* The answer is kept: a link opened later connects without a lookup. */
    mqtt_link_close(links[0]);
    seen[0].calls = 0;
    cr_assert_eq(mqtt_link_open(links[0]), 0);
    TURN_UNTIL(seen[0].calls == 1);
    cr_assert_eq(seen[0].err, 0, "%s", seen[0].why);
    cr_assert_str_eq(mqtt_link_peer(links[0]), mqtt_link_shared_peer(shared));
}

Test(link, broker_down_reaches_every_link_in_words)
{
    char uri[64];
    snprintf(uri, sizeof(uri), "mqtt://127.0.0.1:%d", port);
    close(lfd); /* nobody listens there now */
    lfd = -1;
    make(uri);
    /* The owner's reference may go first: the links keep what they share. */
    mqtt_link_shared_free(shared);
    shared = NULL;
    for (int i = 0; i < LINKS; i++)
        cr_assert_eq(mqtt_link_open(links[i]), 0);
    TURN_UNTIL(calls() == LINKS);
    for (int i = 0; i < LINKS; i++) {
        cr_assert_eq(seen[i].err, -ECONNREFUSED);
        cr_assert(strstr(seen[i].why, "connection refused by 127.0.0.1:"), "%s", seen[i].why);
    }
}

Test(link, name_not_resolved_reaches_every_link_in_words)
{
    make("mqtt://no-such-host.invalid:1883");
    for (int i = 0; i < LINKS - 1; i++)
        cr_assert_eq(mqtt_link_open(links[i]), 0);
    TURN_UNTIL(calls() == LINKS - 1);
    /* One opened just after the failed lookup hears the same words, without asking again. */
    cr_assert_eq(mqtt_link_open(links[LINKS - 1]), 0);
    TURN_UNTIL(calls() == LINKS);
    for (int i = 0; i < LINKS; i++) {
        cr_assert_eq(seen[i].err, -EHOSTUNREACH);
        cr_assert(strstr(seen[i].why, "no-such-host.invalid was not resolved"), "%s", seen[i].why);
    }
}

Test(link, credentials_that_cannot_load_refuse_the_shared_part)
{
    mqtt_link_config_t cfg = { .uri = "mqtts://127.0.0.1:8883", .ca = "/nonexistent/ca.pem" };
    char err[256];
    shared = mqtt_link_shared_new(loop, &cfg, err, sizeof(err));
    cr_assert_null(shared);
    cr_assert(strstr(err, "cannot load the broker's CA /nonexistent/ca.pem"), "%s", err);
}

Test(link, freed_while_looking_up_without_waiting)
{
    make("mqtt://no-such-host.invalid:1883");
    cr_assert_eq(mqtt_link_open(links[0]), 0);
    uint64_t t0 = gw_now_ms();
    for (int i = 0; i < LINKS; i++) {
        mqtt_link_free(links[i]);
        links[i] = NULL;
    }
    mqtt_link_shared_free(shared); /* the lookup glibc still runs is left to it */
    shared = NULL;
    cr_assert_lt(gw_now_ms() - t0, 1000);
    /* The next shared part looks up afresh, and the one left is freed once done. */
    make("mqtt://no-such-host.invalid:1883");
    cr_assert_eq(mqtt_link_open(links[0]), 0);
    TURN_UNTIL(seen[0].calls == 1);
    cr_assert_eq(seen[0].err, -EHOSTUNREACH, "%s", seen[0].why);
}
