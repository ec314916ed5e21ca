/*
 * `tandem stats [-c FILE] [--json|--prometheus] [--watch SECONDS]`: one
 * request on the control socket, the answer printed as it came (--json,
 * --prometheus) or as a short summary built from the JSON object, so that
 * the summary needs nothing of its own from the gateway.
 */
#include "stats_cmd.h"

#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "gateway.h"

/* Bounds on one answer: its size, and the time it may take. */
#define ANSWER_MAX (64u << 20)
#define ANSWER_TIMEOUT_S 5

enum format { HUMAN, JSON, PROMETHEUS };

static volatile sig_atomic_t interrupted;
/* The command, for its messages. */
static const char *who = "tandem stats";

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: tandem stats [-c FILE] [--json|--prometheus] [--watch SECONDS]\n"
            "Asks the running gateway for its statistics through gateway.control_socket.\n"
            "  -c, --config FILE   the gateway's configuration (default %s)\n"
            "      --json          the JSON object, as on mqtt.stats_topic\n"
            "      --prometheus    the Prometheus text format, as at /metrics\n"
            "  -w, --watch SECONDS again every SECONDS until interrupted\n"
            "Without a format, a short summary.\n",
            GW_DEFAULT_CONFIG);
}

/*
 * The answer to request from the gateway at path: malloc'd and NUL-terminated
 * in *out. 0; or -1 with the reason printed, or -EINTR when interrupted.
 */
static int ask(const char *path, const char *request, char **out)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct timeval tv = { .tv_sec = ANSWER_TIMEOUT_S };
    char *buf = NULL;
    size_t len = 0, cap = 0;

    *out = NULL;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "%s: cannot make a socket (%s)\n", who, strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int err = errno;
        close(fd);
        if (err == EINTR && interrupted)
            return -EINTR;
        if (err == EACCES || err == EPERM) {
            /*
             * The socket (mode 0660) and its folder are the service group's:
             * say which group lets one in; the folder's, when it hides the socket.
             */
            struct stat st;
            char dir[sizeof(sa.sun_path)];
            snprintf(dir, sizeof(dir), "%s", path);
            char *slash = strrchr(dir, '/');
            if (slash && slash != dir)
                *slash = '\0';
            const struct group *gr =
                stat(path, &st) == 0 || (slash && stat(dir, &st) == 0) ? getgrgid(st.st_gid) : NULL;
            if (gr && st.st_gid != 0)
                fprintf(stderr,
                        "%s: cannot connect to %s (%s): join the group %s (usermod -aG "
                        "%s $USER, then log in again) or run it as root\n",
                        who, path, strerror(err), gr->gr_name, gr->gr_name);
            else
                fprintf(stderr, "%s: cannot connect to %s (%s): run it as root\n", who, path,
                        strerror(err));
            return -1;
        }
        fprintf(stderr, "%s: no gateway answers on %s (%s)\n", who, path, strerror(err));
        return -1;
    }
    /*
     * A gateway that refuses the connection (all its slots taken) answers
     * and closes at once, maybe before the request is sent: its answer is
     * read all the same.
     */
    size_t rlen = strlen(request);
    int send_err = send(fd, request, rlen, MSG_NOSIGNAL) == (ssize_t)rlen ? 0 : errno;
    if (send_err && send_err != EPIPE && send_err != ECONNRESET) {
        close(fd);
        if (send_err == EINTR && interrupted)
            return -EINTR;
        fprintf(stderr, "%s: cannot ask the gateway on %s (%s)\n", who, path, strerror(send_err));
        return -1;
    }
    for (;;) {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 65536;
            char *b = cap <= ANSWER_MAX + 1 ? realloc(buf, cap) : NULL;
            if (!b) {
                fprintf(stderr, "%s: the answer from %s is too large\n", who, path);
                break;
            }
            buf = b;
        }
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n > 0) {
            len += (size_t)n;
            continue;
        }
        /*
         * The end. A gateway that closes before it read all we sent (it
         * refused the request) resets the connection after its answer.
         */
        if (n == 0 || (errno == ECONNRESET && len)) {
            close(fd);
            buf[len] = '\0';
            if (!strncmp(buf, "error ", 6)) {
                fprintf(stderr, "%s: the gateway on %s answered: %.*s\n", who, path,
                        (int)strcspn(buf, "\n"), buf);
                free(buf);
                return -1;
            }
            if (!len) {
                if (send_err)
                    fprintf(stderr, "%s: cannot ask the gateway on %s (%s)\n", who, path,
                            strerror(send_err));
                else
                    fprintf(stderr, "%s: the gateway on %s closed without answering\n", who, path);
                free(buf);
                return -1;
            }
            *out = buf;
            return 0;
        }
        if (errno == EINTR && interrupted) {
            close(fd);
            free(buf);
            return -EINTR;
        }
        if (errno == EINTR)
            continue;
        fprintf(stderr, "%s: no answer from %s (%s)\n", who, path,
                errno == EAGAIN ? "timed out" : strerror(errno));
        break;
    }
    close(fd);
    free(buf);
    return -1;
}

/* The member at a dotted path ("coap.responses"), or NULL. */
static json_object *at(json_object *o, const char *path)
{
    char key[64];
    while (o && *path) {
        size_t n = strcspn(path, ".");
        if (n >= sizeof(key))
            return NULL;
        memcpy(key, path, n);
        key[n] = '\0';
        if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &o))
            return NULL;
        path += n + (path[n] == '.');
    }
    return o;
}

static bool is_num(json_object *o)
{
    return o && (json_object_is_type(o, json_type_int) || json_object_is_type(o, json_type_double));
}

/*
 * Prints head and "N label, N label" for each number present under obj, then
 * ends the line; nothing when none is. fields: path, label, path, label, ...,
 * NULL. Whether it printed.
 */
static bool numbers(FILE *out, const char *head, json_object *obj, const char *const *fields)
{
    bool first = true;
    for (size_t i = 0; fields[i]; i += 2) {
        json_object *v = at(obj, fields[i]);
        if (!is_num(v))
            continue;
        fprintf(out, "%s%" PRId64 " %s", first ? head : ", ", json_object_get_int64(v),
                fields[i + 1]);
        first = false;
    }
    if (!first)
        fputc('\n', out);
    return !first;
}

static void print_uptime(FILE *out, int64_t s)
{
    if (s >= 86400)
        fprintf(out, "%" PRId64 "d ", s / 86400);
    fprintf(out, "%02d:%02d:%02d", (int)(s % 86400 / 3600), (int)(s % 3600 / 60), (int)(s % 60));
}

/* Members of an object of objects, each as "  NAME  N label, ..." under head. */
static void instances(FILE *out, const char *head, json_object *obj, const char *const *fields)
{
    if (!obj || !json_object_is_type(obj, json_type_object) || !json_object_object_length(obj))
        return;
    fprintf(out, "%s\n", head);
    json_object_object_foreach(obj, name, inst)
    {
        char lead[80];
        snprintf(lead, sizeof(lead), "  %-20s ", name);
        numbers(out, lead, inst, fields);
    }
}

/* The summary: what an operator looks at first. 0, or -1 when text is not the object. */
static int summary(FILE *out, const char *text)
{
    json_object *s = json_tokener_parse(text), *v;
    if (!s || !json_object_is_type(s, json_type_object)) {
        json_object_put(s);
        return -1;
    }
    fprintf(out, "gateway %s", (v = at(s, "gateway")) ? json_object_get_string(v) : "?");
    if ((v = at(s, "version")))
        fprintf(out, " (tandem %s)", json_object_get_string(v));
    if (is_num(v = at(s, "uptime_s"))) {
        fputs(", up ", out);
        print_uptime(out, json_object_get_int64(v));
    }
    fputc('\n', out);

    json_object *coap = at(s, "coap");
    numbers(out, "coap:         ", coap,
            (const char *const[]){ "sessions", "sessions", "requests", "requests", "observers",
                                   "observers", "notifications", "notifications", "bytes_in",
                                   "bytes in", "bytes_out", "bytes out", NULL });
    numbers(out, "dtls:         ", coap,
            (const char *const[]){ "dtls_handshakes_ok", "handshakes", "dtls_handshakes_failed",
                                   "failed", NULL });
    json_object *resp = at(coap, "responses");
    if (resp && json_object_is_type(resp, json_type_object) && json_object_object_length(resp)) {
        const char *sep = "answers:      ";
        json_object_object_foreach(resp, code, n)
        {
            fprintf(out, "%s%s: %" PRId64, sep, code, json_object_get_int64(n));
            sep = ", ";
        }
        fputc('\n', out);
    }

    json_object *mqtt = at(s, "mqtt");
    if (mqtt) {
        fputs("broker:       ", out);
        v = at(mqtt, "connected");
        fputs(!v ? "?" : json_object_get_boolean(v) ? "connected" : "NOT CONNECTED", out);
        if (!numbers(out, ", ", mqtt,
                     (const char *const[]){ "published", "published", "acked", "acknowledged",
                                            "received", "received", "reconnects", "reconnects",
                                            NULL }))
            fputc('\n', out);
        numbers(out, "ack latency:  ", mqtt,
                (const char *const[]){ "ack_latency_ms.p50", "ms p50", "ack_latency_ms.p99",
                                       "ms p99", NULL });
        numbers(out, "buffer:       ", mqtt,
                (const char *const[]){ "offline_buffered", "in the offline buffer", NULL });
    }
    numbers(out, "mqtt devices: ", at(s, "mqtt_listener"),
            (const char *const[]){ "connections", "connections", "rejected", "rejected",
                                   "denied_publish", "publishes denied", "denied_subscribe",
                                   "subscriptions denied", NULL });
    instances(out, "mappings:", at(s, "mappings"),
              (const char *const[]){ "up", "up", "down", "down", "refused", "refused", NULL });
    instances(out, "certificates:", at(s, "certificates"),
              (const char *const[]){ "days_left", "days left", NULL });
    numbers(
        out, "config:       ", at(s, "config"),
        (const char *const[]){ "reloads", "reloads", "reload_failures", "failed reloads", NULL });
    json_object_put(s);
    return 0;
}

/* Sleeps seconds, or less when interrupted. */
static void pause_for(unsigned seconds)
{
    struct timespec ts = { .tv_sec = seconds };
    while (!interrupted && nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* The control socket to ask, in *path (to free): the one conf names, or without -c the default
 * file's, or without that file the default socket all the same. Returns GW_EXIT_OK, or the exit
 * status after saying on stderr why there is nothing to ask. */
static int control_socket(const char *conf, char **path)
{
    if (!conf && access(GW_DEFAULT_CONFIG, F_OK) == 0)
        conf = GW_DEFAULT_CONFIG;
    gw_errs_t errs = { 0 };
    *path = gw_config_control_socket(conf, &errs);
    if (!*path) {
        if (errs.text)
            fputs(errs.text, stderr);
        else
            fprintf(stderr, "%s: cannot read the configuration\n", who);
        gw_errs_clear(&errs);
        return GW_EXIT_CONFIG;
    }
    if (!**path) {
        fprintf(stderr, "%s: %s sets no gateway.control_socket: there is nothing to ask\n", who,
                conf);
        free(*path);
        *path = NULL;
        return GW_EXIT_RUNTIME;
    }
    return GW_EXIT_OK;
}

int gw_stats_cmd(int argc, char **argv)
{
    const char *conf = NULL;
    enum format fmt = HUMAN;
    long watch = 0;
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' }, { "json", no_argument, NULL, 'j' },
        { "prometheus", no_argument, NULL, 'p' },   { "watch", required_argument, NULL, 'w' },
        { "help", no_argument, NULL, 'h' },         { NULL, 0, NULL, 0 },
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:w:h", opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'c':
            conf = optarg;
            break;
        case 'j':
        case 'p':
            if (fmt != HUMAN && fmt != (c == 'j' ? JSON : PROMETHEUS)) {
                fprintf(stderr, "tandem stats: --json and --prometheus exclude each other\n");
                return GW_EXIT_USAGE;
            }
            fmt = c == 'j' ? JSON : PROMETHEUS;
            break;
        case 'w':
            errno = 0;
            watch = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end || watch < 1 || watch > 86400) {
                fprintf(stderr, "tandem stats: --watch takes whole seconds, 1..86400\n");
                return GW_EXIT_USAGE;
            }
            break;
        case 'h':
            usage(stdout);
            return GW_EXIT_OK;
        default:
            usage(stderr);
            return GW_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tandem stats: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return GW_EXIT_USAGE;
    }

    char *path;
    int status = control_socket(conf, &path);
    if (status != GW_EXIT_OK)
        return status;

    /* SIGINT (and SIGTERM) end --watch between two answers, with status 0. */
    struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: waits end early */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    const char *request = fmt == PROMETHEUS ? "stats prometheus\n" : "stats json\n";
    for (unsigned round = 0; !interrupted; round++) {
        char *answer;
        int rc = ask(path, request, &answer);
        if (rc == -EINTR)
            break;
        if (rc < 0) {
            status = GW_EXIT_RUNTIME;
            break;
        }
        if (round && fmt != JSON)
            putchar('\n');
        if (fmt == HUMAN) {
            if (summary(stdout, answer) < 0) {
                fprintf(stderr, "tandem stats: the answer from %s is not a statistics object\n",
                        path);
                status = GW_EXIT_RUNTIME;
            }
        } else {
            size_t len = strlen(answer);
            fwrite(answer, 1, len, stdout);
            if (len && answer[len - 1] != '\n')
                putchar('\n');
        }
        free(answer);
        if (fflush(stdout) == EOF || ferror(stdout)) {
            status = GW_EXIT_RUNTIME;
            break;
        }
        if (status != GW_EXIT_OK || !watch)
            break;
        pause_for((unsigned)watch);
    }
    free(path);
    return status;
}

static void devices_usage(FILE *out)
{
    fprintf(out,
            "Usage: tandem devices [-c FILE] [--json]\n"
            "Lists the devices connected to the running gateway (identity, protocol, address,\n"
            "since, requests) through gateway.control_socket.\n"
            "  -c, --config FILE   the gateway's configuration (default %s)\n"
            "      --json          one line of JSON: {\"devices\": [...]}\n",
            GW_DEFAULT_CONFIG);
}

int gw_devices_cmd(int argc, char **argv)
{
    const char *conf = NULL;
    bool json = false;
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    who = "tandem devices";
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            conf = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'h':
            devices_usage(stdout);
            return GW_EXIT_OK;
        default:
            devices_usage(stderr);
            return GW_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tandem devices: unexpected argument '%s'\n", argv[optind]);
        devices_usage(stderr);
        return GW_EXIT_USAGE;
    }
    char *path;
    int status = control_socket(conf, &path);
    if (status != GW_EXIT_OK)
        return status;
    char *answer;
    if (ask(path, json ? "devices json\n" : "devices table\n", &answer) < 0) {
        free(path);
        return GW_EXIT_RUNTIME;
    }
    if (!strncmp(answer, "error ", 6)) {
        fprintf(stderr, "tandem devices: the gateway on %s answers: %s", path, answer + 6);
        status = GW_EXIT_RUNTIME;
    } else {
        fputs(answer, stdout);
        if (fflush(stdout) == EOF || ferror(stdout))
            status = GW_EXIT_RUNTIME;
    }
    free(answer);
    free(path);
    return status;
}
