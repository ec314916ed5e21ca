/*
 * Configuration schema: defaults, every kind of error with its line.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config_file.h"
#include "log.h"
#include "mapping.h"

static char dir[] = "/tmp/tandem-config-XXXXXX";
static char path[128];
static gw_errs_t errs;

static void setup(void)
{
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/t.conf", dir);
    memset(&errs, 0, sizeof(errs));
}

static void teardown(void)
{
    gw_errs_clear(&errs);
    unlink(path);
    rmdir(dir);
    strcpy(dir, "/tmp/tandem-config-XXXXXX");
}

TestSuite(config, .init = setup, .fini = teardown);

/* A valid base: PSK credentials, so that DTLS has something. */
#define BASE "coap = { dtls = { psk_file = \"psk.txt\"; }; };\n"

static void write_text(const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

static gw_config_t *load_text(const char *text)
{
    write_text(text);
    return gw_config_load(path, &errs);
}

/* Asserts that loading fails with exactly the expected "FILE:LINE: setting: ..." line. */
static void expect_error(const char *text, int line, const char *setting, const char *why)
{
    char want[512];
    gw_config_t *cfg = load_text(text);
    cr_assert_null(cfg, "accepted: %s", text);
    snprintf(want, sizeof(want), "%s:%d: %s: ", path, line, setting);
    cr_assert_not_null(errs.text);
    cr_assert(strstr(errs.text, want) != NULL, "wanted \"%s\" in \"%s\"", want, errs.text);
    cr_assert(strstr(errs.text, why) != NULL, "wanted \"%s\" in \"%s\"", why, errs.text);
}

Test(config, defaults_from_the_schema)
{
    gw_config_t *cfg = load_text(BASE);
    cr_assert_not_null(cfg, "%s", errs.text ? errs.text : "");
    cr_assert_str_eq(cfg->gateway.id, "edge-01");
    cr_assert_eq(cfg->gateway.log_level, GW_LOG_INFO);
    cr_assert_str_eq(cfg->coap.bind, "::");
    cr_assert_eq(cfg->coap.plain, false);
    cr_assert_eq(cfg->coap.port, 5683);
    cr_assert_eq(cfg->coap.dtls.port, 5684);
    cr_assert_eq(cfg->coap.max_payload, 65536);
    cr_assert_eq(cfg->coap.max_sessions, 10000);
    cr_assert_eq(cfg->coap.max_resources, 100000);
    cr_assert_eq(cfg->coap.session_idle_timeout, 300);
    cr_assert_str_eq(cfg->mqtt.uri, "mqtts://localhost:8883");
    cr_assert_str_eq(cfg->mqtt.client_id, "tandem-edge-01");
    cr_assert_str_eq(cfg->mqtt.status_topic, "tandem/edge-01/status");
    cr_assert_eq(cfg->mqtt.version, 5);
    cr_assert_eq(cfg->mqtt.verify_hostname, true);
    cr_assert_eq(cfg->mqtt.clean_start, false);
    cr_assert_eq(cfg->mqtt.max_inflight, 1000);
    cr_assert_eq(cfg->mqtt.publish_timeout, 10);
    cr_assert_eq(cfg->mqtt.offline_buffer, 10000);
    cr_assert_eq(cfg->mqtt.stats_interval, 60);
    cr_assert_eq(cfg->mqtt_listener.enabled, false);
    cr_assert_eq(cfg->mqtt_listener.require_client_cert, true);
    cr_assert_str_eq(cfg->gateway.control_socket, "/run/tandem/control.sock");
    char want[160];
    snprintf(want, sizeof(want), "%s/psk.txt", dir);
    cr_assert_str_eq(cfg->coap.dtls.psk_file, want, "relative paths are relative to the file");
    cr_assert_eq(gw_config_line(cfg, "coap.dtls.psk_file"), 1);
    cr_assert_eq(gw_config_line(cfg, "coap.port"), 0);
    gw_config_free(cfg);
}

Test(config, mappings_load_in_order)
{
    gw_config_t *cfg = load_text(BASE "mappings = (\n"
                                      "  { name = \"a\"; resource = \"x/{identity}\"; topic = "
                                      "\"t/{identity}\"; direction = \"up\"; qos = 2; retain = "
                                      "true; },\n"
                                      "  { name = \"b\"; resource = \"y\"; topic = \"u\"; "
                                      "direction = \"up\"; }\n);\n");
    cr_assert_not_null(cfg, "%s", errs.text ? errs.text : "");
    cr_assert_eq(map_table_count(cfg->maps), 2);
    cr_assert_eq(map_entry_qos(map_table_get(cfg->maps, 0)), 2);
    cr_assert(map_entry_retain(map_table_get(cfg->maps, 0)));
    cr_assert_eq(map_entry_qos(map_table_get(cfg->maps, 1)), 0);
    gw_config_free(cfg);
}

Test(config, syntax_error_line)
{
    expect_error(BASE "gateway = {\n  id = \"x\";\n  log_level = ;\n};\n", 4, "syntax",
                 "syntax error");
}

Test(config, unknown_settings)
{
    expect_error(BASE "gateway = {\n  idd = \"x\";\n};\n", 3, "gateway.idd", "unknown setting");
    gw_errs_clear(&errs);
    expect_error("coap = {\n  dtls = {\n    psk_file = \"p\";\n    pskfile = \"p\";\n  };\n};\n", 4,
                 "coap.dtls.pskfile", "unknown setting");
    gw_errs_clear(&errs);
    expect_error(BASE "\nfoo = 1;\n", 3, "foo", "unknown setting");
}

Test(config, types_and_ranges)
{
    expect_error(BASE "\nmqtt = {\n  keepalive = \"30\";\n};\n", 4, "mqtt.keepalive",
                 "must be an integer");
    gw_errs_clear(&errs);
    expect_error(BASE "mqtt = {\n  max_inflight = 0;\n};\n", 3, "mqtt.max_inflight",
                 "out of range");
    gw_errs_clear(&errs);
    expect_error(BASE "gateway = { log_level = \"loud\"; };\n", 2, "gateway.log_level",
                 "is not one of error,warning,info,debug");
    gw_errs_clear(&errs);
    expect_error("coap = {\n  plain = 1;\n  dtls = { psk_file = \"p\"; };\n};\n", 2, "coap.plain",
                 "true or false");
    gw_errs_clear(&errs);
    expect_error(BASE "mqtt = {\n  version = 4;\n};\n", 3, "mqtt.version", "must be 5 or 3");
}

Test(config, rules_between_settings)
{
    expect_error("coap = {\n  plain = false;\n  dtls = {\n    port = 5684;\n  };\n};\n", 3,
                 "coap.dtls", "no device could connect");
    gw_errs_clear(&errs);
    expect_error("coap = {\n  dtls = {\n    cert = \"c.pem\";\n  };\n};\n", 3, "coap.dtls.cert",
                 "set together");
    gw_errs_clear(&errs);
    expect_error("coap = {\n  dtls = {\n    psk_file = \"p\";\n    require_client_cert = true;\n"
                 "  };\n};\n",
                 4, "coap.dtls.require_client_cert", "needs coap.dtls.ca");
    gw_errs_clear(&errs);
    expect_error(BASE "mqtt = {\n  uri = \"http://broker\";\n};\n", 3, "mqtt.uri",
                 "is not mqtt://");
    gw_errs_clear(&errs);
    expect_error("coap = {\n  bind = \"localhost\";\n  dtls = { psk_file = \"p\"; };\n};\n", 2,
                 "coap.bind", "not an IP address");
    gw_errs_clear(&errs);
    expect_error(BASE "mqtt = {\n  status_topic = \"a/#\";\n};\n", 3, "mqtt.status_topic",
                 "not a valid topic");
    gw_errs_clear(&errs);
    expect_error(BASE "gateway = {\n  id = \"a/b\";\n};\n", 3, "gateway.id", "without '/'");
    gw_errs_clear(&errs);
    expect_error("coap = {\n  dtls = {\n    cert = \"c.pem\"; key = \"k.pem\";\n"
                 "    crl = \"crl.pem\";\n  };\n};\n",
                 4, "coap.dtls.crl", "needs coap.dtls.ca");
}

Test(config, mqtt_listener_rules)
{
    expect_error(BASE "mqtt_listener = {\n  enabled = true;\n};\n", 3, "mqtt_listener.cert",
                 "needs mqtt_listener.cert and mqtt_listener.key");
    gw_errs_clear(&errs);
    expect_error(BASE "mqtt_listener = {\n  enabled = true;\n  cert = \"c.pem\";\n};\n", 3,
                 "mqtt_listener.key", "needs mqtt_listener.cert and mqtt_listener.key");
    gw_errs_clear(&errs);
    expect_error(BASE "mqtt_listener = {\n  enabled = true;\n  cert = \"c.pem\";\n"
                      "  key = \"k.pem\";\n};\n",
                 3, "mqtt_listener.require_client_cert", "needs mqtt_listener.ca");
    gw_errs_clear(&errs);
    expect_error(BASE "mqtt_listener = {\n  enabled = true;\n  bind = \"any\";\n"
                      "  cert = \"c.pem\";\n  key = \"k.pem\";\n  ca = \"ca.pem\";\n};\n",
                 4, "mqtt_listener.bind", "not an IP address");
    gw_errs_clear(&errs);
    expect_error(BASE "mqtt_listener = {\n  enabled = true;\n  cert = \"c.pem\";\n"
                      "  key = \"k.pem\";\n  require_client_cert = false;\n"
                      "  crl = \"crl.pem\";\n};\n",
                 7, "mqtt_listener.crl", "needs mqtt_listener.ca");
    gw_errs_clear(&errs);
    gw_config_t *cfg = load_text(BASE "mqtt_listener = {\n  enabled = true;\n  cert = \"c.pem\";\n"
                                      "  key = \"k.pem\";\n  require_client_cert = false;\n"
                                      "  port = 8884;\n};\n");
    cr_assert_not_null(cfg, "%s", errs.text ? errs.text : "");
    cr_assert(cfg->mqtt_listener.enabled);
    gw_config_free(cfg);
}

/* The listener's address is the broker's: it would relay devices to itself. */
#define LISTENER(more)                                                                             \
    BASE "mqtt_listener = {\n  enabled = true;\n  cert = \"c.pem\";\n  key = \"k.pem\";\n"         \
         "  require_client_cert = false;\n" more "};\n"

Test(config, listener_is_not_the_broker)
{
    /* The defaults: port 8883 on every address, and mqtts://localhost:8883. */
    expect_error(LISTENER(""), 3, "mqtt_listener.port", "relay devices to itself");
    gw_errs_clear(&errs);
    expect_error(LISTENER("  port = 9000;\n") "mqtt = { uri = \"mqtt://127.0.0.1:9000\"; };\n", 7,
                 "mqtt_listener.port", "mqtt://127.0.0.1:9000");
    gw_errs_clear(&errs);
    expect_error(LISTENER("  bind = \"127.0.0.1\";\n  port = 1883;\n") "mqtt = { uri = "
                                                                       "\"mqtt://localhost\"; };\n",
                 8, "mqtt_listener.port", "relay devices to itself");
    gw_errs_clear(&errs);
    expect_error(LISTENER("  bind = \"192.0.2.7\";\n") "mqtt = { uri = \"mqtts://192.0.2.7\"; };\n",
                 7, "mqtt_listener.port", "relay devices to itself");
    gw_errs_clear(&errs);
    expect_error(LISTENER("") "mqtt = { uri = \"mqtts://[::1]:8883\"; };\n", 3,
                 "mqtt_listener.port", "relay devices to itself");
    gw_errs_clear(&errs);

    /* Another port, another literal address, or a name only a name server knows: accepted. */
    const char *fine[] = {
        LISTENER("  port = 8884;\n"),
        LISTENER("") "mqtt = { uri = \"mqtts://broker.example.org:8883\"; };\n",
        LISTENER("  bind = \"192.0.2.7\";\n") "mqtt = { uri = \"mqtts://localhost:8883\"; };\n",
        LISTENER("  bind = \"192.0.2.7\";\n") "mqtt = { uri = \"mqtts://192.0.2.8:8883\"; };\n",
        /* Turned off, the listener relays nothing. */
        BASE "mqtt_listener = { enabled = false; port = 8883; };\n",
    };
    for (size_t i = 0; i < sizeof(fine) / sizeof(fine[0]); i++) {
        gw_config_t *cfg = load_text(fine[i]);
        cr_assert_not_null(cfg, "refused %s: %s", fine[i], errs.text ? errs.text : "");
        gw_config_free(cfg);
    }
}

Test(config, unterminated_string_at_its_line)
{
    /* libconfig notices only at the next quote, lines later. */
    expect_error(BASE "# a comment's \"quote\n// another \" one\n/* and \"\n one */\n"
                      "gateway = {\n  id = \"edge;\n  log_level = \"info\";\n};\n"
                      "mqtt = {\n  uri = \"mqtt://a:1\";\n};\n",
                 7, "syntax", "unterminated string");
    gw_errs_clear(&errs);
    /* An escaped quote does not close it. */
    expect_error(BASE "gateway = {\n  id = \"a\\\"b;\n  log_level = \"info\";\n};\n", 3, "syntax",
                 "unterminated string");
    gw_errs_clear(&errs);
    /* Opened on the last line. */
    expect_error(BASE "gateway = { id = \"x; };\n", 2, "syntax", "unterminated string");
    gw_errs_clear(&errs);
    /* Strings closed on their line, with escapes and comments: libconfig's own message. */
    expect_error(BASE "gateway = {\n  id = \"a\\\"b\"; # \"\n  log_level = ;\n};\n", 4, "syntax",
                 "syntax error");
    cr_assert_null(strstr(errs.text, "unterminated"), "%s", errs.text);
}

Test(config, unknown_settings_suggest_the_closest)
{
    expect_error(BASE "mqtt = {\n  keepalvie = 30;\n};\n", 3, "mqtt.keepalvie",
                 "unknown setting; did you mean mqtt.keepalive?");
    gw_errs_clear(&errs);
    expect_error("coap = {\n  dtls = {\n    psk_flie = \"p\";\n  };\n};\n", 3, "coap.dtls.psk_flie",
                 "unknown setting; did you mean coap.dtls.psk_file?");
    gw_errs_clear(&errs);
    expect_error(BASE "mqtt_listner = { enabled = false; };\n", 2, "mqtt_listner",
                 "unknown setting; did you mean mqtt_listener?");
    gw_errs_clear(&errs);
    /* Only within its group: coap.port is not a guess for mqtt.prot's neighbour. */
    expect_error(BASE "mqtt = {\n  prot = 1;\n};\n", 3, "mqtt.prot", "unknown setting");
    cr_assert_null(strstr(errs.text, "did you mean"), "%s", errs.text);
    gw_errs_clear(&errs);
    /* Nothing close: no guess. */
    expect_error(BASE "gateway = {\n  colour = \"blue\";\n};\n", 3, "gateway.colour",
                 "unknown setting");
    cr_assert_null(strstr(errs.text, "did you mean"), "%s", errs.text);
    gw_errs_clear(&errs);
    /* A mapping's settings too. */
    expect_error(BASE "mappings = ({ name = \"t\"; resource = \"a\"; topc = \"a\";\n"
                      "  direction = \"up\"; });\n",
                 2, "mappings[0].topc", "unknown setting; did you mean topic?");
}

Test(config, metrics_listen)
{
    gw_config_t *cfg = load_text(BASE "metrics = {\n  listen = \"127.0.0.1:9464\";\n};\n");
    cr_assert_not_null(cfg, "%s", errs.text ? errs.text : "");
    cr_assert_str_eq(cfg->metrics.listen, "127.0.0.1:9464");
    gw_config_free(cfg);
    cfg = load_text(BASE);
    cr_assert_not_null(cfg);
    cr_assert_str_eq(cfg->metrics.listen, "", "off by default");
    gw_config_free(cfg);

    expect_error(BASE "metrics = {\n  listen = \"localhost:9464\";\n};\n", 3, "metrics.listen",
                 "host names are not resolved");
    gw_errs_clear(&errs);
    expect_error(BASE "metrics = {\n\n  listen = \"127.0.0.1\";\n};\n", 4, "metrics.listen",
                 "\"127.0.0.1\": the port is missing");
    gw_errs_clear(&errs);
    expect_error(BASE "metrics = {\n  listen = \"[::1]:99999\";\n};\n", 3, "metrics.listen",
                 "1..65535");
    gw_errs_clear(&errs);
    expect_error(BASE "metrics = {\n  listen = 9464;\n};\n", 3, "metrics.listen",
                 "must be a string");
}

/* metrics.listen values, one by one. */
static void listen_ok(const char *s, int family, const char *host, int port)
{
    gw_listen_t l;
    const char *why = NULL;
    cr_assert_eq(gw_listen_parse(s, &l, &why), 0, "\"%s\" refused: %s", s, why);
    cr_assert_eq(l.family, family, "%s", s);
    cr_assert_str_eq(l.host, host);
    cr_assert_eq(l.port, port, "%s", s);
}

static void listen_bad(const char *s, const char *why_part)
{
    gw_listen_t l;
    const char *why = NULL;
    cr_assert_eq(gw_listen_parse(s, &l, &why), -EINVAL, "\"%s\" accepted", s);
    cr_assert_not_null(why);
    cr_assert(strstr(why, why_part) != NULL, "\"%s\": wanted \"%s\" in \"%s\"", s, why_part, why);
}

Test(listen, literal_addresses_and_ports)
{
    listen_ok("127.0.0.1:9464", AF_INET, "127.0.0.1", 9464);
    listen_ok("0.0.0.0:1", AF_INET, "0.0.0.0", 1);
    listen_ok("[::1]:9464", AF_INET6, "::1", 9464);
    listen_ok("[::]:65535", AF_INET6, "::", 65535);
    listen_ok("[2001:db8::17]:80", AF_INET6, "2001:db8::17", 80);
    listen_ok("[::ffff:10.0.0.1]:9464", AF_INET6, "::ffff:10.0.0.1", 9464);

    gw_listen_t l;
    cr_assert_eq(gw_listen_parse("10.1.2.3:8080", &l, NULL), 0);
    cr_assert_eq(memcmp(l.addr, "\x0a\x01\x02\x03", 4), 0, "network order");

    listen_bad("", "the port is missing");
    listen_bad("127.0.0.1", "the port is missing");
    listen_bad("127.0.0.1:", "1..65535");
    listen_bad(":9464", "the address is missing");
    listen_bad("127.0.0.1:0", "1..65535");
    listen_bad("127.0.0.1:65536", "1..65535");
    listen_bad("127.0.0.1:123456789012345678901234567890", "1..65535");
    listen_bad("127.0.0.1:-1", "1..65535");
    listen_bad("127.0.0.1:+80", "1..65535");
    listen_bad("127.0.0.1:80 ", "1..65535");
    listen_bad("127.0.0.1:http", "1..65535");
    listen_bad("localhost:9464", "host names are not resolved");
    listen_bad("metrics.example:9464", "host names are not resolved");
    listen_bad(" 127.0.0.1:9464", "host names are not resolved");
    listen_bad("127.1:9464", "not an IP address");
    listen_bad("::1:9464", "in brackets");
    listen_bad("[::1:9464", "closing ']'");
    listen_bad("[::1]", "the port is missing");
    listen_bad("[::1]9464", "the port is missing");
    listen_bad("[]:9464", "the address is missing");
    listen_bad("[127.0.0.1]:9464", "not an IPv6 address");
    listen_bad("[fe80::1%eth0]:9464", "zone ids are not supported");
    listen_bad("[::1]:9464:1", "1..65535");
}

Test(config, control_socket)
{
    gw_config_t *cfg = load_text(BASE "gateway = {\n  control_socket = \"run/c.sock\";\n};\n");
    cr_assert_not_null(cfg, "%s", errs.text ? errs.text : "");
    char want[256];
    snprintf(want, sizeof(want), "%s/run/c.sock", dir);
    cr_assert_str_eq(cfg->gateway.control_socket, want, "relative to the file's folder");
    gw_config_free(cfg);

    cfg = load_text(BASE "gateway = {\n  control_socket = \"\";\n};\n");
    cr_assert_not_null(cfg, "%s", errs.text ? errs.text : "");
    cr_assert_str_eq(cfg->gateway.control_socket, "", "\"\" turns it off");
    gw_config_free(cfg);

    char text[512];
    snprintf(text, sizeof(text), BASE "gateway = {\n  control_socket = \"/%0120d\";\n};\n", 0);
    expect_error(text, 3, "gateway.control_socket", "the limit of a Unix socket's path");
}

Test(config, control_socket_alone)
{
    /* `tandem stats` reads only this setting: the rest need not be valid. */
    char *p = NULL;
    write_text("gateway = { control_socket = \"c.sock\"; };\nwhatever = 1;\n");
    p = gw_config_control_socket(path, &errs);
    char want[256];
    snprintf(want, sizeof(want), "%s/c.sock", dir);
    cr_assert_not_null(p, "%s", errs.text ? errs.text : "");
    cr_assert_str_eq(p, want);
    free(p);

    write_text("mqtt = { uri = \"x\"; };\n");
    p = gw_config_control_socket(path, &errs);
    cr_assert_not_null(p);
    cr_assert_str_eq(p, "/run/tandem/control.sock", "the default");
    free(p);

    write_text("gateway = {\n  control_socket = 3;\n};\n");
    cr_assert_null(gw_config_control_socket(path, &errs));
    cr_assert(strstr(errs.text, ":2: gateway.control_socket: must be a string") != NULL, "%s",
              errs.text);
    gw_errs_clear(&errs);

    write_text("gateway = { control_socket = ");
    cr_assert_null(gw_config_control_socket(path, &errs));
    cr_assert(strstr(errs.text, ": syntax: ") != NULL, "%s", errs.text);
    gw_errs_clear(&errs);

    unlink(path);
    cr_assert_null(gw_config_control_socket(path, &errs));
    cr_assert(strstr(errs.text, "cannot read the file") != NULL, "%s", errs.text);
}

Test(config, mapping_errors_have_lines)
{
    expect_error(BASE "mappings = (\n  { name = \"a\"; resource = \"r/{x}\"; topic = \"t\"; "
                      "direction = \"up\"; }\n);\n",
                 3, "mappings.a", "does not appear in the topic");
    gw_errs_clear(&errs);
    expect_error(BASE "mappings = (\n  { name = \"a\"; resource = \"r\"; topic = \"t\"; "
                      "direction = \"up\"; },\n"
                      "  { name = \"a\"; resource = \"s\"; topic = \"u\"; direction = \"up\"; }\n"
                      ");\n",
                 4, "mappings.a", "already used");
    gw_errs_clear(&errs);
    expect_error(BASE "mappings = (\n  { name = \"a\"; resource = \"r\";\n    topic = \"t\"; "
                      "direction = \"up\";\n    qos = 3; }\n);\n",
                 5, "mappings[0].qos", "0, 1 or 2");
    gw_errs_clear(&errs);
    expect_error(BASE "mappings = (\n  { name = \"a\"; resource = \"r\"; direction = \"up\"; }\n"
                      ");\n",
                 3, "mappings[0]", "topic is required");
    gw_errs_clear(&errs);
    expect_error(BASE "mappings = (\n  { name = \"a\"; resource = \"r\"; topic = \"t\";\n"
                      "    direction = \"sideways\"; }\n);\n",
                 4, "mappings[0].direction", "not one of up, down, both");
    gw_errs_clear(&errs);
    expect_error(BASE "mappings = (\n  { name = \"a\"; resource = \"r\"; topic = \"t\";\n"
                      "    direction = \"up\"; colour = \"red\"; }\n);\n",
                 4, "mappings[0].colour", "unknown setting");
}

Test(config, missing_file)
{
    cr_assert_null(gw_config_load("/nonexistent/tandem.conf", &errs));
    cr_assert(strstr(errs.text, "/nonexistent/tandem.conf: config: cannot read") != NULL, "%s",
              errs.text);
}

Test(config, broker_uris)
{
    gw_uri_t u;
    cr_assert_eq(gw_uri_parse("mqtts://broker.example:8884", &u), 0);
    cr_assert(u.tls);
    cr_assert_str_eq(u.host, "broker.example");
    cr_assert_eq(u.port, 8884);
    cr_assert_eq(gw_uri_parse("mqtt://[::1]", &u), 0);
    cr_assert_not(u.tls);
    cr_assert_str_eq(u.host, "::1");
    cr_assert_eq(u.port, 1883);
    cr_assert_eq(gw_uri_parse("mqtts://h", &u), 0);
    cr_assert_eq(u.port, 8883);
    cr_assert_lt(gw_uri_parse("mqtt://h:0", &u), 0);
    cr_assert_lt(gw_uri_parse("mqtt://h:99999", &u), 0);
    cr_assert_lt(gw_uri_parse("mqtt://:1883", &u), 0);
    cr_assert_lt(gw_uri_parse("tcp://h:1883", &u), 0);
    cr_assert_lt(gw_uri_parse("mqtt://h:1883/x", &u), 0);
}

/* The gateway's own client identifier can be no MQTT device's upstream one (IDENTITY/ID). */
Test(config, client_id_a_device_could_have)
{
    expect_error(BASE "mqtt = {\n  client_id = \"edge-01/bridge\";\n};\n", 3, "mqtt.client_id",
                 "\"edge-01/bridge\" has the form IDENTITY/ID");
    gw_errs_clear(&errs);
    /* After {gateway} is rendered. */
    expect_error(BASE "gateway = { id = \"edge-01\"; };\nmqtt = {\n  client_id = "
                      "\"{gateway}/bridge\";\n};\n",
                 4, "mqtt.client_id", "\"edge-01/bridge\" has the form IDENTITY/ID");
    gw_errs_clear(&errs);
    /* An anonymous device's: "/" and its own identifier (which may hold more '/'). */
    expect_error(BASE "mqtt = {\n  client_id = \"/bridge/x\";\n};\n", 3, "mqtt.client_id",
                 "IDENTITY/ID");
    gw_errs_clear(&errs);
    expect_error(BASE "mqtt = { client_id = \"bike-1/a/b\"; };\n", 2, "mqtt.client_id",
                 "IDENTITY/ID");
    gw_errs_clear(&errs);

    /* No identity can come before the first '/' here, or nothing can follow it. */
    const char *fine[] = { "tandem-edge-01", "$gw/bridge", "a+b/bridge", "edge-01/", "edge" };
    for (size_t i = 0; i < sizeof(fine) / sizeof(fine[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), BASE "mqtt = { client_id = \"%s\"; };\n", fine[i]);
        gw_config_t *cfg = load_text(text);
        cr_assert_not_null(cfg, "%s refused: %s", fine[i], errs.text ? errs.text : "");
        cr_assert_str_eq(cfg->mqtt.client_id, fine[i]);
        gw_config_free(cfg);
    }
}

Test(config, presence_topic)
{
    gw_config_t *cfg = load_text(BASE "gateway = {\n  id = \"edge-1\";\n};\n");
    cr_assert_not_null(cfg, "%s", errs.text ? errs.text : "");
    cr_assert_str_eq(cfg->mqtt.presence_topic, "tandem/edge-1/devices/{identity}",
                     "the default, {gateway} rendered, {identity} kept");
    gw_config_free(cfg);

    cfg = load_text(BASE "mqtt = {\n  presence_topic = \"\";\n};\n");
    cr_assert_not_null(cfg, "%s", errs.text ? errs.text : "");
    cr_assert_str_eq(cfg->mqtt.presence_topic, "", "\"\" turns it off");
    gw_config_free(cfg);

    expect_error(BASE "mqtt = {\n  presence_topic = \"d/{name}/{identity}\";\n};\n", 3,
                 "mqtt.presence_topic", "only {gateway} and {identity} may be used here");
    expect_error(BASE "mqtt = {\n  presence_topic = \"d/+/{identity}\";\n};\n", 3,
                 "mqtt.presence_topic", "is not a valid topic");
    expect_error(BASE "mqtt = {\n  presence_topic = \"d/all\";\n};\n", 3, "mqtt.presence_topic",
                 "must contain {identity}");
}
