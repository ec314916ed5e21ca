/*
 * /metrics with libmicrohttpd in external-event mode: MHD_USE_EPOLL without
 * an internal thread, so everything runs in the loop's thread and reads the
 * statistics without locks. We bind the listening socket ourselves, to report
 * why it cannot be bound, and hand it over (MHD_OPTION_LISTEN_SOCKET).
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "config.h"
#include "error.h"
#include "log.h"

/* When libmicrohttpd has no deadline: look again now and then all the same. */
#define IDLE_MS 60000

#define FIELD(n, h, f)                                                                             \
    {                                                                                              \
        .name = n, .help = h, .kind = STATS_COUNTER, .type = STATS_U64,                            \
        .offset = offsetof(gw_metrics_stats_t, f)                                                  \
    }
static const stats_field_t metrics_fields[] = {
    FIELD("requests", "HTTP requests to the metrics endpoint", requests),
    FIELD("not_found", "Metrics endpoint requests for another path than /metrics (404)", not_found),
    FIELD("not_allowed", "Metrics endpoint requests with another method than GET (405)",
          not_allowed),
    FIELD("refused_per_address",
          "Metrics endpoint connections refused because their address had as many open as allowed",
          refused_per_address),
    FIELD("dropped_for_new",
          "Metrics endpoint connections closed, the oldest first, to make room for a new one",
          dropped_for_new),
    FIELD("dropped_deadline",
          "Metrics endpoint connections closed for a request not in and answered in time",
          dropped_deadline),
};
#undef FIELD

const stats_section_t gw_metrics_section = {
    .json = "metrics",
    .prom = "metrics",
    .fields = metrics_fields,
    .nfields = sizeof(metrics_fields) / sizeof(metrics_fields[0]),
};

/*
 * One client connection, from libmicrohttpd's notice that it started to the
 * one that it closed (its socket context).
 */
struct mconn {
    struct mconn *prev, *next; /* oldest first */
    struct MHD_Connection *conn;
    int fd;
    struct sockaddr_storage addr;
    uint64_t deadline_ms; /* for the request in progress and its answer */
    bool ended;           /* shut down here; libmicrohttpd closes it at its next look */
};

struct gw_metrics {
    ev_loop_t *loop;      /* borrowed */
    const stats_t *stats; /* borrowed */
    struct MHD_Daemon *d;
    int epfd;       /* libmicrohttpd's, registered with the loop */
    uint64_t timer; /* the next deadline: libmicrohttpd's or a connection's */
    struct mconn *head, *tail;
    unsigned open; /* connections not ended */
    gw_metrics_stats_t st;
};

static const char content_type[] = "text/plain; version=0.0.4; charset=utf-8";

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, char *body, size_t len,
                             const char *allow)
{
    if (!body)
        return MHD_NO; /* out of memory: the connection is closed */
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    enum MHD_Result ok =
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                                status == MHD_HTTP_OK ? content_type : "text/plain; charset=utf-8");
    if (ok == MHD_YES && allow)
        ok = MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    if (ok == MHD_YES)
        ok = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    gw_metrics_t *m = cls;
    (void)version;
    (void)upload_data;

    /*
     * libmicrohttpd calls once when the headers are in, then for each piece
     * of a body, then once more with none. Other methods are refused at once
     * (their body is not read: the connection closes after the answer);
     * GET and HEAD are answered on the last call, which keeps the connection
     * open for the next scrape. A body sent with a GET is skipped.
     */
    bool get = !strcmp(method, MHD_HTTP_METHOD_GET) || !strcmp(method, MHD_HTTP_METHOD_HEAD);
    if (!*con_cls) {
        *con_cls = m;
        m->st.requests++;
        if (get)
            return MHD_YES;
    } else if (*upload_data_size) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (!get) {
        m->st.not_allowed++;
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, strdup("method not allowed\n"), 19,
                     "GET, HEAD");
    }
    if (strcmp(url, "/metrics")) {
        m->st.not_found++;
        return reply(conn, MHD_HTTP_NOT_FOUND, strdup("not found: try /metrics\n"), 24, NULL);
    }
    size_t len = 0;
    char *body = stats_prometheus(m->stats, &len);
    if (!body) {
        gw_log_limited(GW_LOG_WARNING, METRICS, "cannot answer a scrape (out of memory)");
        return MHD_NO;
    }
    return reply(conn, MHD_HTTP_OK, body, len, NULL);
}

/* ------------------------------------------------------------------ connections */

static bool same_host(const struct sockaddr *a, const struct sockaddr_storage *b)
{
    if (a->sa_family != b->ss_family)
        return false;
    if (a->sa_family == AF_INET)
        return !memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                       &((const struct sockaddr_in *)b)->sin_addr, sizeof(struct in_addr));
    if (a->sa_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                       &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr));
    return false;
}

/*
 * Ends a connection from outside libmicrohttpd, which has no call for it:
 * its socket is shut down, so that libmicrohttpd sees the end at its next
 * look (the epoll descriptor wakes the loop) and closes it.
 */
static void end_conn(gw_metrics_t *m, struct mconn *c)
{
    if (c->ended)
        return;
    c->ended = true;
    m->open--;
    shutdown(c->fd, SHUT_RDWR);
}

/*
 * Before libmicrohttpd takes a connection: at most GW_METRICS_PER_ADDRESS
 * from one address; when all GW_METRICS_CONNECTIONS are taken, the oldest
 * one goes (a scrape is answered at once: what stays is what is slow).
 */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    gw_metrics_t *m = cls;
    unsigned same = 0;
    (void)addrlen;
    for (struct mconn *c = m->head; c; c = c->next)
        if (!c->ended && same_host(addr, &c->addr))
            same++;
    if (same >= GW_METRICS_PER_ADDRESS) {
        m->st.refused_per_address++;
        gw_log_limited(GW_LOG_INFO, METRICS, "connection refused (%d open from its address)",
                       GW_METRICS_PER_ADDRESS);
        return MHD_NO;
    }
    if (m->open >= GW_METRICS_CONNECTIONS) {
        for (struct mconn *c = m->head; c; c = c->next) {
            if (!c->ended) {
                m->st.dropped_for_new++;
                gw_log_limited(GW_LOG_INFO, METRICS, "oldest connection closed for a new one");
                end_conn(m, c);
                break;
            }
        }
    }
    return MHD_YES;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    gw_metrics_t *m = cls;
    struct mconn *c = *socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        if (!c)
            return;
        if (!c->ended)
            m->open--;
        if (c->prev)
            c->prev->next = c->next;
        else
            m->head = c->next;
        if (c->next)
            c->next->prev = c->prev;
        else
            m->tail = c->prev;
        free(c);
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *fd =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *addr =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    c = calloc(1, sizeof(*c));
    if (!c || !fd || !addr || !addr->client_addr) {
        /* Without a record it could not be held to its deadline: not served. */
        free(c);
        gw_log_limited(GW_LOG_WARNING, METRICS, "cannot take a connection (out of memory)");
        if (fd)
            shutdown(fd->connect_fd, SHUT_RDWR);
        return;
    }
    c->conn = conn;
    c->fd = fd->connect_fd;
    memcpy(&c->addr, addr->client_addr,
           addr->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                    : sizeof(struct sockaddr_in));
    c->deadline_ms = gw_now_ms() + GW_METRICS_REQUEST_MS;
    c->prev = m->tail;
    if (m->tail)
        m->tail->next = c;
    else
        m->head = c;
    m->tail = c;
    m->open++;
    *socket_context = c;
}

/* A request and its answer are done: the next one on the connection has its own time. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)con_cls, (void)toe;
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct mconn *c = info ? info->socket_context : NULL;
    if (c)
        c->deadline_ms = gw_now_ms() + GW_METRICS_REQUEST_MS;
}

/* Ends the connections past their deadline; the time until the next one, ms. */
static uint64_t enforce_deadlines(gw_metrics_t *m)
{
    uint64_t now = gw_now_ms(), next = IDLE_MS;
    for (struct mconn *c = m->head; c; c = c->next) {
        if (c->ended)
            continue;
        if (c->deadline_ms <= now) {
            m->st.dropped_deadline++;
            gw_log_limited(GW_LOG_INFO, METRICS, "connection closed (no request answered in %d ms)",
                           GW_METRICS_REQUEST_MS);
            end_conn(m, c);
        } else if (c->deadline_ms - now < next) {
            next = c->deadline_ms - now;
        }
    }
    return next;
}

/* libmicrohttpd's messages are about what clients do: limited, below Tandem's own. */
static void on_log(void *cls, const char *fmt, va_list ap)
{
    char line[256];
    (void)cls;
    vsnprintf(line, sizeof(line), fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    gw_log_limited(GW_LOG_DEBUG, METRICS, "%s", line);
}

/*
 * Runs libmicrohttpd, ends the connections past their deadline (their end is
 * seen by libmicrohttpd at once, through its epoll descriptor), and returns
 * the milliseconds until either wants to run again.
 */
static uint64_t run(gw_metrics_t *m)
{
    MHD_run(m->d);
    uint64_t next = enforce_deadlines(m);
    MHD_UNSIGNED_LONG_LONG t;
    if (MHD_get_timeout(m->d, &t) == MHD_YES && t < next)
        next = (uint64_t)t;
    return next;
}

static void on_ready(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    gw_metrics_t *m = data;
    (void)fd;
    (void)mask;
    ev_set_timer(loop, m->timer, run(m));
}

static int64_t on_timer(ev_loop_t *loop, uint64_t id, void *data)
{
    gw_metrics_t *m = data;
    (void)loop;
    (void)id;
    return (int64_t)run(m);
}

/* A listening socket at l; the fd, or -1 with the reason logged. */
static int listen_at(const gw_listen_t *l, const char *text)
{
    struct sockaddr_storage ss = { 0 };
    socklen_t len;
    if (l->family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)l->port);
        memcpy(&sin->sin_addr, l->addr, 4);
        len = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)l->port);
        memcpy(&sin6->sin6_addr, l->addr, 16);
        len = sizeof(*sin6);
    }
    int one = 1;
    int fd = socket(l->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, GW_METRICS_CONNECTIONS) < 0) {
        gw_err(METRICS, "cannot listen on %s (%s)", text, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

gw_metrics_t *gw_metrics_new(ev_loop_t *loop, const char *listen, const stats_t *stats)
{
    gw_listen_t l;
    const char *why;
    if (gw_listen_parse(listen, &l, &why) < 0) {
        gw_err(METRICS, "metrics.listen \"%s\": %s", listen, why);
        return NULL;
    }
    gw_metrics_t *m = calloc(1, sizeof(*m));
    if (!m) {
        gw_err(METRICS, "out of memory");
        return NULL;
    }
    m->loop = loop;
    m->stats = stats;
    m->epfd = -1;
    int fd = listen_at(&l, listen);
    if (fd < 0) {
        free(m);
        return NULL;
    }
    m->d = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_ERROR_LOG | (l.family == AF_INET6 ? MHD_USE_IPv6 : 0), 0, on_accept,
        m, on_request, m, MHD_OPTION_EXTERNAL_LOGGER, on_log, NULL, MHD_OPTION_LISTEN_SOCKET, fd,
        /* Room for the connections ended here that libmicrohttpd has not closed yet. */
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(2 * GW_METRICS_CONNECTIONS),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)GW_METRICS_TIMEOUT_S, MHD_OPTION_NOTIFY_CONNECTION,
        on_connection, m, MHD_OPTION_NOTIFY_COMPLETED, on_completed, m, MHD_OPTION_END);
    if (!m->d) {
        gw_err(METRICS, "cannot start the HTTP server on %s", listen);
        close(fd);
        free(m);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(m->d, MHD_DAEMON_INFO_EPOLL_FD);
    m->epfd = info ? info->epoll_fd : -1;
    int rc = m->epfd >= 0 ? ev_add_file(loop, m->epfd, EV_READABLE, on_ready, m) : -EINVAL;
    if (rc == 0 && !(m->timer = ev_add_timer(loop, IDLE_MS, on_timer, m)))
        rc = -ENOMEM;
    if (rc < 0) {
        gw_err(METRICS, "cannot serve %s (%s)", listen, gw_strerror(rc));
        gw_metrics_free(m);
        return NULL;
    }
    gw_info(METRICS, "serving Prometheus metrics at http://%s/metrics", listen);
    return m;
}

const gw_metrics_stats_t *gw_metrics_stats(const gw_metrics_t *m)
{
    return &m->st;
}

void gw_metrics_free(gw_metrics_t *m)
{
    if (!m)
        return;
    if (m->timer)
        ev_del_timer(m->loop, m->timer);
    if (m->epfd >= 0)
        ev_del_file(m->loop, m->epfd);
    /* Closes the connections, its epoll descriptor and the listening socket. */
    MHD_stop_daemon(m->d);
    while (m->head) { /* none left when libmicrohttpd told of every close */
        struct mconn *c = m->head;
        m->head = c->next;
        free(c);
    }
    free(m);
}
