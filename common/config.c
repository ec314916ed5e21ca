#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void gw_errs_add(gw_errs_t *e, const char *file, int line, const char *setting,
                 const char *fmt, ...)
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

/* Replaces {gateway} in a template setting; any other brace is an error. */
