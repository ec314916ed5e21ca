/*
 * The control socket (see control.h): a listener and a handful of clients,
 * each registered with the loop, each with one timer that bounds first its
 * request and then the reading of its answer.
 */
#include "control.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "error.h"
#include "log.h"
#include "presence.h"

#define FIELD(n, h, k, t, f)                                                                       \
    {                                                                                              \
        .name = n, .help = h, .kind = k, .type = t, .offset = offsetof(gw_control_stats_t, f)      \
    }
static const stats_field_t control_fields[] = {
    FIELD("clients", "Control socket connections accepted", STATS_COUNTER, STATS_U64, clients),
    FIELD("connected", "Control socket connections open", STATS_GAUGE, STATS_UINT, connected),
    FIELD("answered", "Control socket requests answered", STATS_COUNTER, STATS_U64, answered),
    FIELD("dropped_garbage", "Control socket clients dropped for a request that is not one",
          STATS_COUNTER, STATS_U64, dropped_garbage),
    FIELD("dropped_stalled",
          "Control socket clients dropped for not sending a request or not reading the answer "
          "in time",
          STATS_COUNTER, STATS_U64, dropped_stalled),
    FIELD("refused_full",
          "Control socket connections refused because all slots were taken by clients being "
          "answered",
          STATS_COUNTER, STATS_U64, refused_full),
    FIELD("dropped_for_new",
          "Control socket clients dropped, the oldest without a request first, to make room for "
          "a new one",
          STATS_COUNTER, STATS_U64, dropped_for_new),
    FIELD("accept_paused",
          "Times the control socket stopped accepting for a moment: the process had no file "
          "descriptor left",
          STATS_COUNTER, STATS_U64, accept_paused),
};
#undef FIELD

const stats_section_t gw_control_section = {
    .json = "control",
    .prom = "control",
    .fields = control_fields,
    .nfields = sizeof(control_fields) / sizeof(control_fields[0]),
};

struct client {
    gw_control_t *ctl;
    struct client *next, *prev;
    int fd;
    uint64_t timer; /* the request's deadline, then the answer's; 0 when none */
    size_t got;
    char in[GW_CONTROL_REQUEST_MAX];
    char *out; /* the answer, malloc'd; NULL while reading the request */
    size_t out_len, out_done;
};

struct gw_control {
    ev_loop_t *loop;            /* borrowed */
    const stats_t *stats;       /* borrowed */
    const presence_t *presence; /* borrowed; NULL for none */
    char *path;
    int fd;
    uint64_t resume_timer; /* accepting again after running out of descriptors; 0 when none */
    dev_t dev;             /* of the socket file we made, to remove only ours */
    ino_t ino;
    struct client *clients;
    gw_control_stats_t st;
};

gw_control_req_t gw_control_parse(const char *buf, size_t len, bool eof)
{
    const char *nl = memchr(buf, '\n', len < GW_CONTROL_REQUEST_MAX ? len : GW_CONTROL_REQUEST_MAX);
    size_t n;

    if (nl)
        n = (size_t)(nl - buf);
    else if (len >= GW_CONTROL_REQUEST_MAX)
        return GW_CONTROL_TOO_LONG;
    else if (eof)
        n = len;
    else
        return GW_CONTROL_INCOMPLETE;
    if (n && buf[n - 1] == '\r')
        n--;
#define IS(s) (n == sizeof(s) - 1 && !memcmp(buf, s, n))
    if (IS("stats json"))
        return GW_CONTROL_STATS_JSON;
    if (IS("stats prometheus"))
        return GW_CONTROL_STATS_PROMETHEUS;
    if (IS("ping"))
        return GW_CONTROL_PING;
    if (IS("devices json"))
        return GW_CONTROL_DEVICES_JSON;
    if (IS("devices table"))
        return GW_CONTROL_DEVICES_TABLE;
#undef IS
    return GW_CONTROL_UNKNOWN;
}

/* Best effort, for a client about to be closed: one line it may or may not read. */
static void tell(int fd, const char *line)
{
    ssize_t n = send(fd, line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)n;
}

static void client_close(struct client *c)
{
    gw_control_t *ctl = c->ctl;
    ev_del_file(ctl->loop, c->fd);
    close(c->fd);
    if (c->timer)
        ev_del_timer(ctl->loop, c->timer);
    if (c->prev)
        c->prev->next = c->next;
    else
        ctl->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    ctl->st.connected--;
    free(c->out);
    free(c);
}

/* Writes what the socket takes; closes the client once the answer is out. */
static void flush(struct client *c)
{
    while (c->out_done < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_done, c->out_len - c->out_done,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return; /* EV_WRITABLE brings us back */
        if (n <= 0) {
            gw_debug(CONTROL, "client gone before its answer was written (%s)", strerror(errno));
            client_close(c);
            return;
        }
        c->out_done += (size_t)n;
    }
    c->ctl->st.answered++;
    client_close(c);
}

static void answer(struct client *c, gw_control_req_t req)
{
    gw_control_t *ctl = c->ctl;
    size_t len = 0;
    char *body = NULL;

    switch (req) {
    case GW_CONTROL_STATS_JSON:
        body = stats_json(ctl->stats, &len);
        if (body) {
            char *b = realloc(body, len + 1); /* one line, ended */
            if (b) {
                b[len++] = '\n';
                body = b;
            } else {
                free(body);
                body = NULL;
            }
        }
        break;
    case GW_CONTROL_STATS_PROMETHEUS:
        body = stats_prometheus(ctl->stats, &len);
        break;
    case GW_CONTROL_DEVICES_JSON:
    case GW_CONTROL_DEVICES_TABLE:
        if (!ctl->presence) {
            tell(c->fd, "error no devices are followed\n");
            client_close(c);
            return;
        }
        body = presence_list(ctl->presence, req == GW_CONTROL_DEVICES_JSON, &len);
        break;
    default:
        body = strdup("pong\n");
        len = body ? 5 : 0;
        break;
    }
    if (!body) {
        tell(c->fd, "error out of memory\n");
        gw_log_limited(GW_LOG_WARNING, CONTROL, "cannot answer a request (out of memory)");
        client_close(c);
        return;
    }
    c->out = body;
    c->out_len = len;
    c->out_done = 0;
    ev_set_mask(ctl->loop, c->fd, EV_WRITABLE);
    if (c->timer)
        ev_set_timer(ctl->loop, c->timer, GW_CONTROL_ANSWER_MS);
    flush(c);
}

static void garbage(struct client *c, const char *why)
{
    char line[96];
    snprintf(line, sizeof(line), "error %s\n", why);
    tell(c->fd, line);
    c->ctl->st.dropped_garbage++;
    gw_log_limited(GW_LOG_INFO, CONTROL, "client dropped (%s)", why);
    client_close(c);
}

static void read_request(struct client *c)
{
    bool eof = false;
    ssize_t n = recv(c->fd, c->in + c->got, sizeof(c->in) - c->got, MSG_DONTWAIT);
    if (n > 0) {
        c->got += (size_t)n;
    } else if (n == 0) {
        eof = true;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        return;
    } else {
        gw_debug(CONTROL, "client gone (%s)", strerror(errno));
        client_close(c);
        return;
    }
    if (eof && c->got == 0) {
        /* Connected and left: what a starting gateway's probe does. */
        client_close(c);
        return;
    }
    switch (gw_control_parse(c->in, c->got, eof)) {
    case GW_CONTROL_INCOMPLETE:
        return;
    case GW_CONTROL_TOO_LONG:
        garbage(c, "request too long");
        return;
    case GW_CONTROL_UNKNOWN:
        garbage(c, "unknown request (stats json, stats prometheus, devices json, devices table, "
                   "ping)");
        return;
    case GW_CONTROL_STATS_JSON:
        answer(c, GW_CONTROL_STATS_JSON);
        return;
    case GW_CONTROL_STATS_PROMETHEUS:
        answer(c, GW_CONTROL_STATS_PROMETHEUS);
        return;
    case GW_CONTROL_PING:
    case GW_CONTROL_DEVICES_JSON:
    case GW_CONTROL_DEVICES_TABLE:
        answer(c, gw_control_parse(c->in, c->got, eof));
        return;
    }
}

static void on_client(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    struct client *c = data;
    (void)loop;
    (void)fd;
    (void)mask;
    if (c->out)
        flush(c);
    else
        read_request(c);
}

static int64_t on_deadline(ev_loop_t *loop, uint64_t id, void *data)
{
    struct client *c = data;
    (void)loop;
    (void)id;
    c->timer = 0; /* removed by returning EV_NOMORE */
    c->ctl->st.dropped_stalled++;
    if (c->out) {
        gw_log_limited(GW_LOG_INFO, CONTROL, "client dropped (did not read its answer in %d ms)",
                       GW_CONTROL_ANSWER_MS);
    } else {
        tell(c->fd, "error timeout\n");
        gw_log_limited(GW_LOG_INFO, CONTROL, "client dropped (no request in %d ms)",
                       GW_CONTROL_REQUEST_MS);
    }
    client_close(c);
    return EV_NOMORE;
}

/*
 * All slots are taken: the oldest client still without its request (the
 * list is newest first) is dropped for the new one. Clients being answered
 * are kept. Whether one went.
 */
static bool drop_oldest_idle(gw_control_t *ctl)
{
    struct client *oldest = NULL;
    for (struct client *c = ctl->clients; c; c = c->next)
        if (!c->out)
            oldest = c;
    if (!oldest)
        return false;
    tell(oldest->fd, "error dropped for a new client\n");
    ctl->st.dropped_for_new++;
    gw_log_limited(GW_LOG_INFO, CONTROL, "oldest idle client dropped (%d connections open)",
                   GW_CONTROL_CLIENTS);
    client_close(oldest);
    return true;
}

static void on_accept(ev_loop_t *loop, int fd, unsigned mask, void *data);

static int64_t on_resume(ev_loop_t *loop, uint64_t id, void *data)
{
    gw_control_t *ctl = data;
    (void)id;
    ctl->resume_timer = 0; /* removed by returning EV_NOMORE */
    if (ev_set_mask(loop, ctl->fd, EV_READABLE) < 0)
        gw_log_limited(GW_LOG_WARNING, CONTROL, "cannot accept clients again (out of memory)");
    return EV_NOMORE;
}

/*
 * accept() found no file descriptor left: the connection stays in the
 * backlog and the socket readable, so it is no longer watched for
 * GW_CONTROL_PAUSE_MS instead of being tried again at every turn.
 */
static void pause_accepting(gw_control_t *ctl, int err)
{
    ctl->st.accept_paused++;
    gw_log_limited(GW_LOG_WARNING, CONTROL, "cannot accept a client (%s); again in %d ms",
                   strerror(err), GW_CONTROL_PAUSE_MS);
    if (ctl->resume_timer)
        return;
    ctl->resume_timer = ev_add_timer(ctl->loop, GW_CONTROL_PAUSE_MS, on_resume, ctl);
    if (ctl->resume_timer)
        ev_set_mask(ctl->loop, ctl->fd, 0);
}

static void on_accept(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    gw_control_t *ctl = data;
    (void)mask;
    /* A few per turn, so that a crowd at the door does not hold up the loop. */
    for (int i = 0; i < GW_CONTROL_CLIENTS; i++) {
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            int err = errno;
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM)
                pause_accepting(ctl, err);
            else if (err != EAGAIN && err != EWOULDBLOCK && err != EINTR && err != ECONNABORTED)
                gw_log_limited(GW_LOG_WARNING, CONTROL, "cannot accept a client (%s)",
                               strerror(err));
            return;
        }
        if (ctl->st.connected >= GW_CONTROL_CLIENTS && !drop_oldest_idle(ctl)) {
            tell(cfd, "error busy\n");
            close(cfd);
            ctl->st.refused_full++;
            gw_log_limited(GW_LOG_INFO, CONTROL, "client refused (%d connections open)",
                           GW_CONTROL_CLIENTS);
            continue;
        }
        struct client *c = calloc(1, sizeof(*c));
        if (c) {
            c->ctl = ctl;
            c->fd = cfd;
            c->timer = ev_add_timer(loop, GW_CONTROL_REQUEST_MS, on_deadline, c);
        }
        if (!c || !c->timer || ev_add_file(loop, cfd, EV_READABLE, on_client, c) < 0) {
            if (c && c->timer)
                ev_del_timer(loop, c->timer);
            free(c);
            tell(cfd, "error out of memory\n");
            close(cfd);
            gw_log_limited(GW_LOG_WARNING, CONTROL, "cannot take a client (out of memory)");
            continue;
        }
        c->next = ctl->clients;
        if (c->next)
            c->next->prev = c;
        ctl->clients = c;
        ctl->st.connected++;
        ctl->st.clients++;
    }
}

/*
 * Whether a gateway answers at sa: a non-blocking connect is accepted into
 * the listener's backlog, or finds it full (EAGAIN), when one listens; a
 * socket file nobody listens on refuses (ECONNREFUSED). 1 when one answers, 0
 * when nobody does, a negative errno-style code when that cannot be told.
 */
static int someone_listens(const struct sockaddr_un *sa)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0 ? 1 : -errno;
    close(fd);
    if (rc == -EAGAIN || rc == -EINPROGRESS)
        return 1;
    if (rc == -ECONNREFUSED || rc == -ENOENT)
        return 0;
    return rc;
}

/* Binds and listens at sa, replacing a stale socket file; the fd, or a negative code. */
static int listen_at(const struct sockaddr_un *sa)
{
    const char *path = sa->sun_path;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        gw_err(CONTROL, "cannot make a socket (%s)", strerror(errno));
        return -errno;
    }
    for (int attempt = 0;; attempt++) {
        if (bind(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0)
            break;
        int err = errno;
        struct stat st;
        if (err != EADDRINUSE || attempt > 0) {
            gw_err(CONTROL, "cannot make the control socket %s (%s)", path, strerror(err));
            close(fd);
            return -err;
        }
        if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
            gw_err(CONTROL, "%s exists and is not a socket: not replaced", path);
            close(fd);
            return -EEXIST;
        }
        int rc = someone_listens(sa);
        if (rc != 0) {
            if (rc > 0)
                gw_err(CONTROL,
                       "a running gateway answers on %s: stop it first, or give this one "
                       "another gateway.control_socket",
                       path);
            else
                gw_err(CONTROL, "cannot tell whether a gateway answers on %s (%s)", path,
                       strerror(-rc));
            close(fd);
            return rc > 0 ? -EADDRINUSE : rc;
        }
        /* Left by a gateway that was killed: nobody listens. */
        if (unlink(path) < 0 && errno != ENOENT) {
            gw_err(CONTROL, "cannot remove the stale socket %s (%s)", path, strerror(errno));
            close(fd);
            return -errno;
        }
        gw_info(CONTROL, "replaced the stale socket %s", path);
    }
    if (chmod(path, 0660) < 0 || listen(fd, GW_CONTROL_CLIENTS) < 0) {
        int err = errno;
        gw_err(CONTROL, "cannot listen on %s (%s)", path, strerror(err));
        unlink(path);
        close(fd);
        return -err;
    }
    return fd;
}

gw_control_t *gw_control_new(ev_loop_t *loop, const char *path, const stats_t *stats)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct stat st;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        gw_err(CONTROL, "%s is too long for a Unix socket's path", path);
        return NULL;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    gw_control_t *ctl = calloc(1, sizeof(*ctl));
    if (!ctl || !(ctl->path = strdup(path))) {
        gw_err(CONTROL, "out of memory");
        free(ctl);
        return NULL;
    }
    ctl->loop = loop;
    ctl->stats = stats;
    ctl->fd = listen_at(&sa);
    if (ctl->fd < 0) {
        free(ctl->path);
        free(ctl);
        return NULL;
    }
    if (stat(path, &st) == 0) {
        ctl->dev = st.st_dev;
        ctl->ino = st.st_ino;
    }
    int rc = ev_add_file(loop, ctl->fd, EV_READABLE, on_accept, ctl);
    if (rc < 0) {
        gw_err(CONTROL, "cannot serve %s (%s)", path, gw_strerror(rc));
        gw_control_free(ctl);
        return NULL;
    }
    gw_info(CONTROL, "listening on %s", path);
    return ctl;
}

void gw_control_set_presence(gw_control_t *ctl, const presence_t *p)
{
    if (ctl)
        ctl->presence = p;
}

const gw_control_stats_t *gw_control_stats(const gw_control_t *ctl)
{
    return &ctl->st;
}

void gw_control_free(gw_control_t *ctl)
{
    struct stat st;
    if (!ctl)
        return;
    while (ctl->clients)
        client_close(ctl->clients);
    if (ctl->resume_timer)
        ev_del_timer(ctl->loop, ctl->resume_timer);
    ev_del_file(ctl->loop, ctl->fd);
    close(ctl->fd);
    /* Only our own: a gateway started since with the same path keeps its socket. */
    if (stat(ctl->path, &st) == 0 && st.st_dev == ctl->dev && st.st_ino == ctl->ino)
        unlink(ctl->path);
    free(ctl->path);
    free(ctl);
}
