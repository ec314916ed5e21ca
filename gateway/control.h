/*
 * The control socket: a Unix stream socket (mode 0660) served by the loop,
 * where `tandem stats` asks for the statistics. One request line, one answer,
 * then the gateway closes the connection:
 *
 *   "stats json\n"        the JSON object of doc/operating.md, Metrics, one line
 *   "stats prometheus\n"  the Prometheus text format
 *   "devices json\n"      the connected devices (presence.h), one line of JSON
 *   "devices table\n"     the same as a table with a header
 *   "ping\n"              "pong\n"
 *   anything else         "error REASON\n"
 *
 * Bounds: GW_CONTROL_CLIENTS connections at once (when all are taken, the
 * oldest client that has not sent its request is told "error dropped for a
 * new client" and closed; when every one is being answered, the new one is
 * told "error busy"), a request of at most GW_CONTROL_REQUEST_MAX bytes within
 * GW_CONTROL_REQUEST_MS, an answer read by the client within
 * GW_CONTROL_ANSWER_MS. A client that breaks one of them is dropped and
 * counted (the stats section "control"). When accept() finds no file
 * descriptor left, the socket is not watched for GW_CONTROL_PAUSE_MS.
 */
#ifndef TANDEM_CONTROL_H
#define TANDEM_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ev.h"
#include "stats.h"

#define GW_CONTROL_CLIENTS 16
#define GW_CONTROL_REQUEST_MAX 256
#define GW_CONTROL_REQUEST_MS 2000
#define GW_CONTROL_ANSWER_MS 5000
#define GW_CONTROL_PAUSE_MS 250

typedef struct gw_control gw_control_t;

/*
 * Listens at path and answers from stats. A socket file left there by a
 * gateway that no longer runs is replaced; one that a running gateway answers
 * on is not, and neither is anything that is not a socket: NULL then, with
 * the reason logged (the caller exits with status 3). loop and stats are
 * borrowed and must outlive the control socket.
 */
gw_control_t *gw_control_new(ev_loop_t *loop, const char *path, const stats_t *stats);
/*
 * The devices listed by "devices ..." (borrowed; NULL: none listed). The
 * answer holds every connected device, however many: 10,000 make about 1.5 MB.
 */
struct presence;
void gw_control_set_presence(gw_control_t *ctl, const struct presence *p);
/* Closes every client and the socket, and removes the socket file if it is still ours. */
void gw_control_free(gw_control_t *ctl);

typedef struct gw_control_stats {
    uint64_t clients;         /* connections accepted */
    uint64_t answered;        /* answers written whole */
    uint64_t dropped_garbage; /* no request line within the bound, or not a request */
    uint64_t dropped_stalled; /* no request within the time, or the answer not read */
    uint64_t refused_full;    /* closed at once: GW_CONTROL_CLIENTS were being answered */
    uint64_t dropped_for_new; /* the oldest idle client, when all slots were taken */
    uint64_t accept_paused;   /* accept() failed for want of file descriptors */
    unsigned connected;       /* open now */
} gw_control_stats_t;

/* The counters, for the caller to add to the registry with gw_control_section. */
const gw_control_stats_t *gw_control_stats(const gw_control_t *ctl);
/* The statistics section "control", for a gw_control_stats_t. */
extern const stats_section_t gw_control_section;

/* What a request line asks for. */
typedef enum {
    GW_CONTROL_INCOMPLETE, /* no end of line yet: read on */
    GW_CONTROL_STATS_JSON,
    GW_CONTROL_STATS_PROMETHEUS,
    GW_CONTROL_PING,
    GW_CONTROL_DEVICES_JSON,
    GW_CONTROL_DEVICES_TABLE,
    GW_CONTROL_TOO_LONG, /* no end of line within GW_CONTROL_REQUEST_MAX bytes */
    GW_CONTROL_UNKNOWN,  /* a line, but not a request */
} gw_control_req_t;

/*
 * Parses the len bytes received so far (they need not be NUL-terminated).
 * A line ends in "\n" or "\r\n"; with eof, the end of the data ends it too.
 * Bytes after the first line are ignored.
 */
gw_control_req_t gw_control_parse(const char *buf, size_t len, bool eof);

#endif
