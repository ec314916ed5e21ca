/*
 * The control socket: the request parser, and one socket served by a real
 * loop in this process (answers, garbage, the socket file's life).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "clock.h"
#include "control.h"
#include "ev.h"
#include "log.h"
#include "stats.h"

static gw_control_req_t parse(const char *s, bool eof)
{
    return gw_control_parse(s, strlen(s), eof);
}

Test(control_parse, requests)
{
    cr_assert_eq(parse("stats json\n", false), GW_CONTROL_STATS_JSON);
    cr_assert_eq(parse("stats json\r\n", false), GW_CONTROL_STATS_JSON);
    cr_assert_eq(parse("stats prometheus\n", false), GW_CONTROL_STATS_PROMETHEUS);
    cr_assert_eq(parse("ping\n", false), GW_CONTROL_PING);
    /* What follows the first line is not looked at. */
    cr_assert_eq(parse("ping\nstats json\n", false), GW_CONTROL_PING);
    cr_assert_eq(parse("ping\ngarbage", false), GW_CONTROL_PING);
    /* The end of the data ends a line that has no newline. */
    cr_assert_eq(parse("stats json", true), GW_CONTROL_STATS_JSON);
    cr_assert_eq(parse("ping", true), GW_CONTROL_PING);
}

Test(control_parse, incomplete)
{
    cr_assert_eq(parse("", false), GW_CONTROL_INCOMPLETE);
    cr_assert_eq(parse("stats", false), GW_CONTROL_INCOMPLETE);
    cr_assert_eq(parse("stats json", false), GW_CONTROL_INCOMPLETE);
    cr_assert_eq(parse("stats json\r", false), GW_CONTROL_INCOMPLETE);
}

Test(control_parse, not_requests)
{
    cr_assert_eq(parse("\n", false), GW_CONTROL_UNKNOWN);
    cr_assert_eq(parse("", true), GW_CONTROL_UNKNOWN);
    cr_assert_eq(parse("stats\n", false), GW_CONTROL_UNKNOWN);
    cr_assert_eq(parse("stats json \n", false), GW_CONTROL_UNKNOWN);
    cr_assert_eq(parse(" stats json\n", false), GW_CONTROL_UNKNOWN);
    cr_assert_eq(parse("STATS JSON\n", false), GW_CONTROL_UNKNOWN);
    cr_assert_eq(parse("stats jsonx\n", false), GW_CONTROL_UNKNOWN);
    cr_assert_eq(parse("stats js", true), GW_CONTROL_UNKNOWN);
    cr_assert_eq(parse("ping\r\r\n", false), GW_CONTROL_UNKNOWN);
    cr_assert_eq(gw_control_parse("ping\0\n", 6, false), GW_CONTROL_UNKNOWN);
    cr_assert_eq(gw_control_parse("pi\0ng\n", 6, false), GW_CONTROL_UNKNOWN);
}

Test(control_parse, bounded)
{
    char buf[4 * GW_CONTROL_REQUEST_MAX];
    memset(buf, 'x', sizeof(buf));
    cr_assert_eq(gw_control_parse(buf, GW_CONTROL_REQUEST_MAX - 1, false), GW_CONTROL_INCOMPLETE);
    cr_assert_eq(gw_control_parse(buf, GW_CONTROL_REQUEST_MAX, false), GW_CONTROL_TOO_LONG);
    cr_assert_eq(gw_control_parse(buf, sizeof(buf), false), GW_CONTROL_TOO_LONG);
    cr_assert_eq(gw_control_parse(buf, sizeof(buf), true), GW_CONTROL_TOO_LONG);
    /* A newline past the bound does not count. */
    buf[GW_CONTROL_REQUEST_MAX] = '\n';
    cr_assert_eq(gw_control_parse(buf, sizeof(buf), false), GW_CONTROL_TOO_LONG);
    /* The longest line that fits: its newline is the last byte within the bound. */
    buf[GW_CONTROL_REQUEST_MAX - 1] = '\n';
    cr_assert_eq(gw_control_parse(buf, GW_CONTROL_REQUEST_MAX, false), GW_CONTROL_UNKNOWN);
}

/* ---- one socket, one loop ---- */

static char dir[] = "/tmp/tandem-control-XXXXXX";
static char path[96];
static ev_loop_t *loop;
static stats_t *stats;

static void setup(void)
{
    gw_log_set_level(GW_LOG_ERROR);
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/c.sock", dir);
    loop = ev_new();
    stats = stats_new();
    cr_assert(loop && stats);
}

static void teardown(void)
{
    stats_free(stats);
    ev_free(loop);
    unlink(path);
    rmdir(dir);
    strcpy(dir, "/tmp/tandem-control-XXXXXX");
}

static int client(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "%s", strerror(errno));
    return fd;
}

/* Turns the loop until fd has been closed by the gateway; what it sent, malloc'd. */
static char *answer_of(int fd, uint64_t within_ms)
{
    size_t len = 0, cap = 1 << 16;
    char *buf = malloc(cap);
    uint64_t end = gw_now_ms() + within_ms;
    cr_assert_not_null(buf);
    while (gw_now_ms() < end) {
        ev_turn(loop, 50);
        for (;;) {
            ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
            if (n > 0) {
                len += (size_t)n;
                continue;
            }
            if (n == 0 || errno == ECONNRESET) {
                buf[len] = '\0';
                close(fd);
                return buf;
            }
            break;
        }
    }
    cr_assert_fail("no end of the answer within %llu ms", (unsigned long long)within_ms);
    return NULL;
}

static char *ask(const char *request)
{
    int fd = client();
    cr_assert_eq(send(fd, request, strlen(request), 0), (ssize_t)strlen(request));
    return answer_of(fd, 1000);
}

Test(control, answers, .init = setup, .fini = teardown)
{
    gw_control_t *ctl = gw_control_new(loop, path, stats);
    cr_assert_not_null(ctl);
    cr_assert_eq(stats_add(stats, &gw_control_section, gw_control_stats(ctl)), 0);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0660, "mode %o", st.st_mode & 07777);

    char *a = ask("ping\n");
    cr_assert_str_eq(a, "pong\n");
    free(a);
    a = ask("stats json\n");
    cr_assert(a[0] == '{' && strchr(a, '\n') == a + strlen(a) - 1, "%s", a);
    cr_assert(strstr(a, "\"control\":{\"clients\":2,\"connected\":1,\"answered\":1,") != NULL, "%s",
              a);
    free(a);
    a = ask("stats prometheus\n");
    cr_assert(strstr(a, "\ntandem_control_answered_total 2\n") != NULL, "%s", a);
    cr_assert(strstr(a, "# TYPE tandem_control_connected gauge\n") != NULL, "%s", a);
    free(a);
    a = ask("stats yaml\n");
    cr_assert(!strncmp(a, "error unknown request", 21), "%s", a);
    free(a);

    /* Whatever arrives in pieces is read on. */
    int fd = client();
    cr_assert_eq(send(fd, "pi", 2, 0), 2);
    ev_turn(loop, 50);
    ev_turn(loop, 0);
    cr_assert_eq(send(fd, "ng\n", 3, 0), 3);
    a = answer_of(fd, 1000);
    cr_assert_str_eq(a, "pong\n");
    free(a);

    stats_remove(stats, &gw_control_section, gw_control_stats(ctl));
    gw_control_free(ctl);
    cr_assert_eq(access(path, F_OK), -1, "the socket file is left");
}

Test(control, garbage_and_stalls_are_dropped, .init = setup, .fini = teardown)
{
    gw_control_t *ctl = gw_control_new(loop, path, stats);
    cr_assert_not_null(ctl);
    cr_assert_eq(stats_add(stats, &gw_control_section, gw_control_stats(ctl)), 0);
    char big[4096];
    memset(big, 'x', sizeof(big));
    int fd = client();
    cr_assert_gt(send(fd, big, sizeof(big), 0), 0);
    char *a = answer_of(fd, 1000);
    cr_assert(!strcmp(a, "error request too long\n") || !*a, "%s", a);
    free(a);

    uint64_t t0 = gw_now_ms();
    fd = client();
    cr_assert_eq(send(fd, "stats", 5, 0), 5);
    a = answer_of(fd, GW_CONTROL_REQUEST_MS + 1000);
    cr_assert_str_eq(a, "error timeout\n");
    cr_assert_geq(gw_now_ms() - t0, GW_CONTROL_REQUEST_MS - 100);
    free(a);

    /* A connection that sends nothing and leaves is no garbage: a probe. */
    close(client());
    ev_turn(loop, 50); /* accepted */
    ev_turn(loop, 50); /* gone */

    int idle[GW_CONTROL_CLIENTS];
    for (int i = 0; i < GW_CONTROL_CLIENTS; i++)
        idle[i] = client();
    /* All slots taken: the oldest idle client goes for the new one, which is served. */
    fd = client();
    a = answer_of(idle[0], 1000);
    cr_assert_str_eq(a, "error dropped for a new client\n");
    free(a);
    cr_assert_eq(send(fd, "ping\n", 5, 0), 5);
    a = answer_of(fd, 1000);
    cr_assert_str_eq(a, "pong\n");
    free(a);
    for (int i = 1; i < GW_CONTROL_CLIENTS; i++)
        close(idle[i]);
    ev_turn(loop, 50);
    ev_turn(loop, 50);

    a = ask("stats json\n");
    cr_assert(strstr(a, "\"control\":{\"clients\":21,\"connected\":1,\"answered\":1,"
                        "\"dropped_garbage\":1,\"dropped_stalled\":1,\"refused_full\":0,"
                        "\"dropped_for_new\":1,\"accept_paused\":0}") != NULL,
              "%s", a);
    free(a);
    stats_remove(stats, &gw_control_section, gw_control_stats(ctl));
    gw_control_free(ctl);
}

/* The lowest file descriptor number not in use. */
static int lowest_free_fd(void)
{
    int fd = dup(0);
    cr_assert_geq(fd, 0);
    close(fd);
    return fd;
}

Test(control, out_of_descriptors_pauses, .init = setup, .fini = teardown)
{
    gw_control_t *ctl = gw_control_new(loop, path, stats);
    cr_assert_not_null(ctl);
    const gw_control_stats_t *st = gw_control_stats(ctl);
    int fd = client(); /* waits in the backlog */
    struct rlimit was, low;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &was), 0);
    low = was;
    low.rlim_cur = (rlim_t)lowest_free_fd();
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);

    /* accept() fails with EMFILE and the socket stays readable: no turn after turn of it. */
    int turns = 0;
    uint64_t end = gw_now_ms() + 600;
    while (gw_now_ms() < end) {
        ev_turn(loop, 50);
        turns++;
    }
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &was), 0);
    cr_assert_geq(st->accept_paused, 1);
    cr_assert_leq(st->accept_paused, 600 / GW_CONTROL_PAUSE_MS + 1, "%llu pauses",
                  (unsigned long long)st->accept_paused);
    cr_assert_leq(turns, 40, "%d turns in 600 ms: the loop spins", turns);
    cr_assert_eq(st->connected, 0);

    /* Descriptors again: the client waiting in the backlog is served. */
    cr_assert_eq(send(fd, "ping\n", 5, 0), 5);
    char *a = answer_of(fd, GW_CONTROL_PAUSE_MS + 1000);
    cr_assert_str_eq(a, "pong\n");
    free(a);
    gw_control_free(ctl);
}

Test(control, socket_file, .init = setup, .fini = teardown)
{
    /* A stale socket (nobody listens) is replaced. */
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_eq(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(s);
    gw_control_t *ctl = gw_control_new(loop, path, stats);
    cr_assert_not_null(ctl, "a stale socket was not replaced");

    /* One that answers is not. */
    cr_assert_null(gw_control_new(loop, path, stats));
    char *a = ask("ping\n");
    cr_assert_str_eq(a, "pong\n", "the running socket was disturbed");
    free(a);
    gw_control_free(ctl);

    /* Nor is anything that is not a socket. */
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("data\n", f);
    fclose(f);
    cr_assert_null(gw_control_new(loop, path, stats));
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert(S_ISREG(st.st_mode) && st.st_size == 5);
    unlink(path);

    /* A folder that does not exist: an error, not a crash. */
    char deep[200];
    snprintf(deep, sizeof(deep), "%s/none/c.sock", dir);
    cr_assert_null(gw_control_new(loop, deep, stats));
}
