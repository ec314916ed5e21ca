/*
 * Device presence (see presence.h): a hash table of identities, each with
 * its count of live sessions and connections and one timer for its
 * publication window.
 */
#include "presence.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "log.h"

#define BUCKETS 4096
/* "[" IPv6 "]:" port */
#define ADDR_MAX (INET6_ADDRSTRLEN + 8)
/* The longest document: the fixed text, protocol, address, time. */
#define DOC_MAX 192

struct presence_dev {
    presence_t *p;
    struct presence_dev *hnext;       /* hash chain */
    struct presence_dev *prev, *next; /* every entry, newest first */
    uint64_t hash;
    unsigned live; /* sessions and connections */
    char protocol[8];
    char address[ADDR_MAX];
    char since[24];
    uint64_t requests;
    uint64_t timer; /* the publication window, 0 when none */
    size_t pub_len; /* the last document published, 0 for none */
    char pub[DOC_MAX];
    char identity[];
};

struct presence {
    ev_loop_t *loop; /* borrowed */
    char *topic;     /* "" for none */
    presence_publish_fn *publish;
    void *arg;
    bool stopped;
    struct presence_dev *buckets[BUCKETS];
    struct presence_dev *all;
    presence_stats_t st;
};

#define FIELD(n, h, k, t)                                                                          \
    {                                                                                              \
        .name = #n, .help = h, .kind = k, .type = t, .offset = offsetof(presence_stats_t, n)       \
    }
static const stats_field_t presence_fields[] = {
    FIELD(online, "Authenticated devices connected now (CoAP DTLS sessions or MQTT connections)",
          STATS_GAUGE, STATS_U64),
    FIELD(presence_published, "Device presence documents published on mqtt.presence_topic",
          STATS_COUNTER, STATS_U64),
    FIELD(presence_suppressed,
          "Device presence changes held back by the rate limit (one document per device per "
          "second)",
          STATS_COUNTER, STATS_U64),
    FIELD(presence_failed, "Device presence documents not published (the offline buffer was full)",
          STATS_COUNTER, STATS_U64),
};
#undef FIELD

const stats_section_t presence_section = {
    .json = "devices",
    .prom = "devices",
    .fields = presence_fields,
    .nfields = sizeof(presence_fields) / sizeof(presence_fields[0]),
};

const presence_stats_t *presence_stats(const presence_t *p)
{
    return &p->st;
}

static uint64_t hash_of(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

presence_t *presence_new(ev_loop_t *loop, const char *topic, presence_publish_fn *publish,
                         void *arg)
{
    presence_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->topic = strdup(topic ? topic : "");
    if (!p->topic) {
        free(p);
        return NULL;
    }
    p->loop = loop;
    p->publish = publish;
    p->arg = arg;
    return p;
}

static void dev_free(struct presence_dev *d)
{
    presence_t *p = d->p;
    struct presence_dev **pp = &p->buckets[d->hash % BUCKETS];
    while (*pp && *pp != d)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = d->hnext;
    if (d->prev)
        d->prev->next = d->next;
    else
        p->all = d->next;
    if (d->next)
        d->next->prev = d->prev;
    if (d->timer)
        ev_del_timer(p->loop, d->timer);
    free(d);
}

void presence_free(presence_t *p)
{
    if (!p)
        return;
    while (p->all)
        dev_free(p->all);
    free(p->topic);
    free(p);
}

/* "[2001:db8::7]:53122" or "192.0.2.7:5000" (an IPv4-mapped address as IPv4). */
static void format_address(const struct sockaddr *sa, char *out, size_t len)
{
    char host[INET6_ADDRSTRLEN];
    snprintf(out, len, "unknown");
    if (!sa)
        return;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        if (inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host)))
            snprintf(out, len, "%s:%u", host, ntohs(s4->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
            if (inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], host, sizeof(host)))
                snprintf(out, len, "%s:%u", host, ntohs(s6->sin6_port));
        } else if (inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host))) {
            snprintf(out, len, "[%s]:%u", host, ntohs(s6->sin6_port));
        }
    }
}

static void format_now(char *out, size_t len)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The document of d's state now. */
static size_t document(const struct presence_dev *d, char *out, size_t len)
{
    int n = snprintf(
        out, len, "{\"online\": %s, \"protocol\": \"%s\", \"address\": \"%s\", \"since\": \"%s\"}",
        d->live ? "true" : "false", d->protocol, d->address, d->since);
    return n < 0 || (size_t)n >= len ? 0 : (size_t)n;
}

/* Publishes doc for d on its topic. */
static void publish(struct presence_dev *d, const char *doc, size_t len)
{
    presence_t *p = d->p;
    size_t idlen = strlen(d->identity), n = 0;
    size_t cap = strlen(p->topic) + 1;
    for (const char *s = p->topic; (s = strstr(s, "{identity}")); s += 10)
        cap += idlen;
    char *topic = malloc(cap);
    if (!topic) {
        p->st.presence_failed++;
        return;
    }
    for (const char *s = p->topic; *s;) {
        if (!strncmp(s, "{identity}", 10)) {
            memcpy(topic + n, d->identity, idlen);
            n += idlen;
            s += 10;
        } else {
            topic[n++] = *s++;
        }
    }
    topic[n] = '\0';
    int rc = p->publish(p->arg, topic, doc, len);
    if (rc < 0) {
        p->st.presence_failed++;
        gw_log_limited(GW_LOG_WARNING, BRIDGE, "presence of %s not published (%s)", d->identity,
                       strerror(-rc));
    } else {
        p->st.presence_published++;
    }
    free(topic);
    memcpy(d->pub, doc, len);
    d->pub_len = len;
}

/* Whether d's document now differs from the last one published; it is put in doc. */
static bool changed(const struct presence_dev *d, char *doc, size_t *len)
{
    *len = document(d, doc, DOC_MAX);
    return *len && (*len != d->pub_len || memcmp(doc, d->pub, *len));
}

/* The end of d's publication window: the latest document goes if it differs. */
static int64_t on_window(ev_loop_t *loop, uint64_t id, void *data)
{
    struct presence_dev *d = data;
    char doc[DOC_MAX];
    size_t len;
    (void)loop, (void)id;
    if (!d->p->stopped && changed(d, doc, &len)) {
        publish(d, doc, len);
        return PRESENCE_INTERVAL_MS; /* a new window */
    }
    d->timer = 0; /* removed by returning EV_NOMORE */
    if (!d->live)
        dev_free(d);
    return EV_NOMORE;
}

/* d changed: its document goes now, or at the end of its window. */
static void settle(struct presence_dev *d)
{
    presence_t *p = d->p;
    char doc[DOC_MAX];
    size_t len;
    if (!*p->topic || p->stopped) {
        if (!d->live && !d->timer)
            dev_free(d);
        return;
    }
    if (d->timer) {
        p->st.presence_suppressed++;
        return;
    }
    if (changed(d, doc, &len))
        publish(d, doc, len);
    d->timer = ev_add_timer(p->loop, PRESENCE_INTERVAL_MS, on_window, d);
    if (!d->timer && !d->live)
        dev_free(d); /* out of memory: no window, nothing to remember */
}

static struct presence_dev *find(const presence_t *p, const char *identity, uint64_t h)
{
    for (struct presence_dev *d = p->buckets[h % BUCKETS]; d; d = d->hnext)
        if (d->hash == h && !strcmp(d->identity, identity))
            return d;
    return NULL;
}

/* Device sessions and connections beginning and ending: one kind, 20 lines a second. */
static gw_log_kind_t device_events = { .per_s = 20 };

presence_dev_t *presence_begin(presence_t *p, const char *identity, const char *protocol,
                               const struct sockaddr *sa)
{
    if (!p || !identity || !*identity)
        return NULL;
    char addr[ADDR_MAX];
    format_address(sa, addr, sizeof(addr));
    gw_log_rl(&device_events, GW_LOG_INFO, GW_GRP_BRIDGE, "device \"%s\" connected (%s from %s)",
              identity, protocol, addr);
    uint64_t h = hash_of(identity);
    struct presence_dev *d = find(p, identity, h);
    if (!d) {
        size_t idlen = strlen(identity);
        d = calloc(1, sizeof(*d) + idlen + 1);
        if (!d) {
            gw_log_limited(GW_LOG_WARNING, BRIDGE, "presence of %s not kept (out of memory)",
                           identity);
            return NULL;
        }
        memcpy(d->identity, identity, idlen + 1);
        d->p = p;
        d->hash = h;
        d->hnext = p->buckets[h % BUCKETS];
        p->buckets[h % BUCKETS] = d;
        d->next = p->all;
        if (d->next)
            d->next->prev = d;
        p->all = d;
    }
    if (d->live++)
        return d;
    p->st.online++;
    snprintf(d->protocol, sizeof(d->protocol), "%s", protocol);
    format_address(sa, d->address, sizeof(d->address));
    format_now(d->since, sizeof(d->since));
    d->requests = 0;
    settle(d);
    return d;
}

void presence_request(presence_dev_t *d)
{
    if (d)
        d->requests++;
}

void presence_end(presence_t *p, presence_dev_t *d, const char *why)
{
    if (!p || !d || !d->live)
        return;
    gw_log_rl(&device_events, GW_LOG_INFO, GW_GRP_BRIDGE,
              "device \"%s\" disconnected (%s from %s: %s)", d->identity, d->protocol, d->address,
              why ? why : "session ended");
    if (--d->live)
        return;
    p->st.online--;
    settle(d);
}

void presence_stop(presence_t *p)
{
    if (!p || p->stopped)
        return;
    for (struct presence_dev *d = p->all; d; d = d->next) {
        if (d->timer) {
            ev_del_timer(p->loop, d->timer);
            d->timer = 0;
        }
        if (!*p->topic)
            continue;
        unsigned live = d->live;
        d->live = 0; /* the document of a device the gateway no longer serves */
        char doc[DOC_MAX];
        size_t len;
        if (changed(d, doc, &len))
            publish(d, doc, len);
        d->live = live;
    }
    p->stopped = true;
}

/* s with '"', '\\' and control characters escaped for JSON, appended at out. */
static size_t json_string(char *out, const char *s)
{
    size_t n = 0;
    out[n++] = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)sprintf(out + n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n++] = '"';
    return n;
}

char *presence_list(const presence_t *p, bool json, size_t *len)
{
    size_t count = 0, idw = strlen("IDENTITY"), addrw = strlen("ADDRESS"), idmax = 0;
    for (const struct presence_dev *d = p->all; d; d = d->next) {
        if (!d->live)
            continue;
        count++;
        size_t l = strlen(d->identity);
        if (l > idw)
            idw = l;
        if (l > idmax)
            idmax = l;
        if (strlen(d->address) > addrw)
            addrw = strlen(d->address);
    }
    /* Per device: its identity (escaped: 6 bytes a byte at most), the rest well within 256. */
    size_t per = (json ? 6 * idmax : idw + addrw) + 256;
    size_t cap = 256 + count * per;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    size_t n = 0;
    if (json) {
        n += (size_t)sprintf(out + n, "{\"devices\": [");
    } else {
        n += (size_t)sprintf(out + n, "%-*s  %-8s  %-*s  %-20s  %s\n", (int)idw, "IDENTITY",
                             "PROTOCOL", (int)addrw, "ADDRESS", "SINCE", "REQUESTS");
    }
    bool first = true;
    for (const struct presence_dev *d = p->all; d; d = d->next) {
        if (!d->live)
            continue;
        if (json) {
            n += (size_t)sprintf(out + n, "%s{\"identity\": ", first ? "" : ", ");
            n += json_string(out + n, d->identity);
            n +=
                (size_t)sprintf(out + n,
                                ", \"protocol\": \"%s\", \"address\": \"%s\", \"since\": \"%s\", "
                                "\"requests\": %llu}",
                                d->protocol, d->address, d->since, (unsigned long long)d->requests);
        } else {
            n += (size_t)sprintf(out + n, "%-*s  %-8s  %-*s  %-20s  %llu\n", (int)idw, d->identity,
                                 d->protocol, (int)addrw, d->address, d->since,
                                 (unsigned long long)d->requests);
        }
        first = false;
    }
    if (json)
        n += (size_t)sprintf(out + n, "]}\n");
    *len = n;
    return out;
}
