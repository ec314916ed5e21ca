#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

void gw_errs_add(gw_errs_t *e, const char *file, int line, const char *setting, const char *fmt,
                 ...)
{
    char msg[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    e->count++;
    for (;;) {
        size_t room = e->cap - e->len;
        n = line > 0 ? snprintf(e->text ? e->text + e->len : NULL, e->text ? room : 0,
                                "%s:%d: %s: %s\n", file, line, setting, msg)
                     : snprintf(e->text ? e->text + e->len : NULL, e->text ? room : 0,
                                "%s: %s: %s\n", file, setting, msg);
        if (n < 0)
            return;
        if (e->text && (size_t)n < room) {
            e->len += (size_t)n;
            return;
        }
        size_t cap = e->cap * 2 + (size_t)n + 64;
        char *t = realloc(e->text, cap);
        if (!t)
            return;
        e->text = t;
        e->cap = cap;
    }
}

void gw_errs_clear(gw_errs_t *e)
{
    free(e->text);
    memset(e, 0, sizeof(*e));
}

int gw_uri_parse(const char *uri, gw_uri_t *out)
{
    const char *p;
    memset(out, 0, sizeof(*out));
    if (!strncmp(uri, "mqtts://", 8)) {
        out->tls = true;
        out->port = 8883;
        p = uri + 8;
    } else if (!strncmp(uri, "mqtt://", 7)) {
        out->port = 1883;
        p = uri + 7;
    } else {
        return -EINVAL;
    }
    const char *host_end;
    if (*p == '[') {
        host_end = strchr(p, ']');
        if (!host_end)
            return -EINVAL;
        p++;
    } else {
        host_end = p + strcspn(p, ":/");
    }
    size_t hlen = (size_t)(host_end - p);
    if (hlen == 0 || hlen >= sizeof(out->host))
        return -EINVAL;
    memcpy(out->host, p, hlen);
    out->host[hlen] = '\0';
    const char *rest = host_end + (*host_end == ']' ? 1 : 0);
    if (*rest == ':') {
        char *end;
        long port = strtol(rest + 1, &end, 10);
        if (end == rest + 1 || port < 1 || port > 65535 || (*end && strcmp(end, "/")))
            return -EINVAL;
        out->port = (int)port;
    } else if (*rest && strcmp(rest, "/")) {
        return -EINVAL;
    }
    return 0;
}

int gw_listen_parse(const char *s, gw_listen_t *out, const char **why)
{
    const char *host = s, *host_end, *colon;
    const char *dummy;

    if (!why)
        why = &dummy;
    memset(out, 0, sizeof(*out));
    if (*s == '[') {
        host = s + 1;
        host_end = strchr(host, ']');
        if (!host_end) {
            *why = "an IPv6 address needs its closing ']'";
            return -EINVAL;
        }
        colon = host_end + 1;
        out->family = AF_INET6;
    } else {
        host_end = colon = strrchr(s, ':');
        if (colon && memchr(s, ':', (size_t)(colon - s))) {
            *why = "an IPv6 address is written in brackets: [ADDRESS]:PORT";
            return -EINVAL;
        }
        out->family = AF_INET;
    }
    if (!colon || *colon != ':') {
        *why = "the port is missing (HOST:PORT)";
        return -EINVAL;
    }
    size_t hlen = (size_t)(host_end - host);
    if (hlen == 0 || hlen >= sizeof(out->host)) {
        *why = hlen ? "the address is too long" : "the address is missing";
        return -EINVAL;
    }
    memcpy(out->host, host, hlen);
    out->host[hlen] = '\0';
    if (inet_pton(out->family, out->host, out->addr) != 1) {
        *why = out->family == AF_INET6
                   ? "not an IPv6 address (zone ids are not supported)"
                   : "not an IP address (host names are not resolved: use IPv4:PORT or "
                     "[IPv6]:PORT)";
        return -EINVAL;
    }
    const char *p = colon + 1;
    long port = 0;
    if (!*p)
        port = -1;
    for (; *p && port >= 0; p++)
        port = *p >= '0' && *p <= '9' && port <= 65535 ? port * 10 + (*p - '0') : -1;
    if (port < 1 || port > 65535) {
        *why = "the port must be a number 1..65535";
        return -EINVAL;
    }
    out->port = (int)port;
    return 0;
}
