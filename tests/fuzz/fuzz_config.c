/*
 * Fuzz target: the configuration loader, gw_config_load(): libconfig's parser
 * (as Debian builds it: it runs here, but without the fuzzer's coverage or
 * ASan's instrumentation inside it), the schema, the mappings and the rules
 * between settings. The input is the file, written as tandem.conf into a
 * fresh folder so that relative paths in it lead nowhere else.
 *
 * Checks: the file loads exactly when no error was reported, and then what
 * gw_config_load() promises holds (ranges, the gateway id, topics, the
 * broker URI, the mapping table); on failure the errors are text lines. A
 * configuration that loads is then taken as a reload of a running one
 * (gw_config_keep_fixed()): the settings that take a restart keep their
 * running values.
 */
#include "fuzz.h"

#include <limits.h>
#include <string.h>

#include "config_file.h"
#include "log.h"
#include "mapping.h"

/*
 * libconfig 1.5 (Debian 12) leaks a string token that its parser drops while
 * recovering from a syntax error, e.g. `a = 1, "x")` or `"" {`: libconfig's
 * issue #142, fixed in 1.7.3. Such a string is allocated by the scanner,
 * libconfig_yylex(), or its strbuf_append(); Tandem's own leaks are still
 * reported. LeakSanitizer asks for this function (in libFuzzer and in the
 * gcc replay build alike).
 */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:strbuf_append\nleak:libconfig_yylex\n";
}

/*
 * Inputs that would make the loader read outside its folder in a way that
 * can block or never end (an @include of a FIFO, a password_file of
 * /dev/zero) are skipped: that is the machine's files, not Tandem's parsing.
 */
static bool reads_devices(const uint8_t *data, size_t size)
{
    static const char *const bad[] = { "@include", "/dev", "/proc", "/sys" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (memmem(data, size, bad[i], strlen(bad[i])))
            return true;
    return false;
}

/*
 * A topic from the configuration (tandem.conf(5)): no wildcard, never '$' first,
 * UTF-8, {gateway} rendered (braces left can only be the id's own).
 */
static void check_topic(const char *t, const char *id)
{
    size_t len = strlen(t);
    if (!len)
        return; /* "" turns the feature off */
    FUZZ_CHECK(len <= MAP_PATH_MAX && t[0] != '$' && map_utf8_ok(t, len));
    FUZZ_CHECK(!strchr(t, '+') && !strchr(t, '#'));
    FUZZ_CHECK(strchr(id, '{') || strchr(id, '}') || (!strchr(t, '{') && !strchr(t, '}')));
}

static void check_config(const gw_config_t *cfg)
{
    FUZZ_CHECK(cfg->gateway.id && map_value_ok(cfg->gateway.id, strlen(cfg->gateway.id)) &&
               strlen(cfg->gateway.id) <= 64);
    FUZZ_CHECK(cfg->gateway.log_level >= GW_LOG_ERROR && cfg->gateway.log_level <= GW_LOG_DEBUG);
    FUZZ_CHECK(cfg->coap.port >= 1 && cfg->coap.port <= 65535);
    FUZZ_CHECK(cfg->coap.dtls.port >= 1 && cfg->coap.dtls.port <= 65535);
    FUZZ_CHECK(cfg->coap.max_sessions >= 1 && cfg->coap.max_payload >= 1 &&
               cfg->coap.max_resources >= 1);
    FUZZ_CHECK(cfg->mqtt.version == 3 || cfg->mqtt.version == 5);
    FUZZ_CHECK(cfg->mqtt.keepalive >= 0 && cfg->mqtt.keepalive <= 65535);
    FUZZ_CHECK(cfg->mqtt.max_inflight >= 1 && cfg->mqtt.publish_timeout >= 1 &&
               cfg->mqtt.offline_buffer >= 0);
    FUZZ_CHECK(cfg->coap.plain || *cfg->coap.dtls.psk_file || *cfg->coap.dtls.cert);
    FUZZ_CHECK(!*cfg->coap.dtls.cert == !*cfg->coap.dtls.key &&
               !*cfg->mqtt.cert == !*cfg->mqtt.key);
    FUZZ_CHECK(!cfg->mqtt_listener.enabled ||
               (*cfg->mqtt_listener.cert && *cfg->mqtt_listener.key &&
                (!cfg->mqtt_listener.require_client_cert || *cfg->mqtt_listener.ca)));
    gw_listen_t listen;
    FUZZ_CHECK(!*cfg->metrics.listen || gw_listen_parse(cfg->metrics.listen, &listen, NULL) == 0);
    FUZZ_CHECK(strlen(cfg->gateway.control_socket) < 108);

    gw_uri_t uri;
    FUZZ_CHECK(gw_uri_parse(cfg->mqtt.uri, &uri) == 0);
    FUZZ_CHECK(uri.host[0] && uri.port >= 1 && uri.port <= 65535);
    FUZZ_CHECK(*cfg->mqtt.client_id && strlen(cfg->mqtt.client_id) <= 256);
    /* {gateway} was rendered (the id itself may hold braces: "a{gateway}b" is a valid id). */
    FUZZ_CHECK(strchr(cfg->gateway.id, '{') || !strstr(cfg->mqtt.client_id, "{gateway}"));
    check_topic(cfg->mqtt.status_topic, cfg->gateway.id);
    check_topic(cfg->mqtt.stats_topic, cfg->gateway.id);

    FUZZ_CHECK(cfg->maps);
    size_t n = map_table_count(cfg->maps);
    for (size_t i = 0; i < n; i++) {
        const map_entry_t *e = map_table_get(cfg->maps, i);
        FUZZ_CHECK(e && map_entry_index(e) == i && *map_entry_name(e));
        for (size_t k = 0; k < i; k++)
            FUZZ_CHECK(strcmp(map_entry_name(e), map_entry_name(map_table_get(cfg->maps, k))));
        FUZZ_CHECK(map_entry_qos(e) >= 0 && map_entry_qos(e) <= 2);
        FUZZ_CHECK(map_entry_direction(e) >= MAP_UP && map_entry_direction(e) <= MAP_BOTH);
    }
    FUZZ_CHECK(gw_config_line(cfg, "gateway.id") >= 0 && gw_config_line(cfg, "nonsense") == 0);

    /* What `tandem check` prints. */
    FILE *out = fopen("/dev/null", "w");
    FUZZ_CHECK(out);
    gw_config_print_mappings(cfg, out);
    fclose(out);
}

/* The running configuration that each input reloads: loaded once, freed at exit. */
static gw_config_t *running;

static void running_free(void)
{
    gw_config_free(running);
    running = NULL;
}

static const gw_config_t *running_config(void)
{
    static const char text[] = "gateway = { id = \"edge-01\"; };\n"
                               "coap = { dtls = { psk_file = \"psk.txt\"; }; };\n"
                               "mqtt = { password_file = \"running.conf\"; username = \"u\"; };\n";
    char path[PATH_MAX];
    gw_errs_t errs = { 0 };

    if (running)
        return running;
    FUZZ_CHECK(fuzz_file_new((const uint8_t *)text, sizeof(text) - 1, "running.conf", path,
                             sizeof(path)) == 0);
    running = gw_config_load(path, &errs);
    fuzz_file_remove(path);
    FUZZ_CHECK(running && running->mqtt.password);
    gw_errs_clear(&errs);
    atexit(running_free);
    /* gw_config_keep_fixed() warns of each setting that takes a restart. */
    gw_log_set_level(GW_LOG_ERROR);
    return running;
}

static bool same(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

/* A reload keeps the running value of every setting that takes a restart. */
static void check_reload(gw_config_t *next)
{
    const gw_config_t *cur = running_config();
    gw_config_keep_fixed(next, cur);
    FUZZ_CHECK(same(next->gateway.id, cur->gateway.id) &&
               same(next->gateway.control_socket, cur->gateway.control_socket));
    FUZZ_CHECK(same(next->gateway.state_dir, cur->gateway.state_dir) &&
               same(next->coap.bind, cur->coap.bind));
    FUZZ_CHECK(next->coap.plain == cur->coap.plain && next->coap.port == cur->coap.port);
    FUZZ_CHECK(next->coap.dtls.port == cur->coap.dtls.port && same(next->mqtt.uri, cur->mqtt.uri));
    FUZZ_CHECK(same(next->mqtt.client_id, cur->mqtt.client_id) &&
               next->mqtt.version == cur->mqtt.version);
    FUZZ_CHECK(same(next->mqtt.username, cur->mqtt.username) &&
               same(next->mqtt.password, cur->mqtt.password));
    FUZZ_CHECK(same(next->mqtt.ca, cur->mqtt.ca) && same(next->mqtt.cert, cur->mqtt.cert));
    FUZZ_CHECK(same(next->mqtt.key, cur->mqtt.key) && next->mqtt.keepalive == cur->mqtt.keepalive);
    FUZZ_CHECK(next->mqtt.verify_hostname == cur->mqtt.verify_hostname);
    FUZZ_CHECK(next->mqtt.clean_start == cur->mqtt.clean_start &&
               next->mqtt.max_inflight == cur->mqtt.max_inflight);
    FUZZ_CHECK(next->mqtt.offline_buffer == cur->mqtt.offline_buffer);
    FUZZ_CHECK(same(next->mqtt.status_topic, cur->mqtt.status_topic));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[PATH_MAX];
    gw_errs_t errs = { 0 };

    if (reads_devices(data, size))
        return 0;
    if (fuzz_file_new(data, size, "tandem.conf", path, sizeof(path)) < 0) {
        perror("fuzz_config: temporary file");
        abort(); /* the machine, not Tandem: stop rather than report nothing */
    }
    gw_config_t *cfg = gw_config_load(path, &errs);
    if (cfg) {
        FUZZ_CHECK(errs.count == 0 && !errs.text);
        check_config(cfg);
        check_reload(cfg);
    } else {
        FUZZ_CHECK(errs.count > 0 && errs.text);
        FUZZ_CHECK(errs.len == strlen(errs.text) && errs.text[errs.len - 1] == '\n');
    }
    gw_config_free(cfg);
    gw_errs_clear(&errs);
    fuzz_file_remove(path);
    return 0;
}
