/*
 * Configuration schema: defaults, every kind of error with its line.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static gw_config_t *load_text(const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
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
    expect_error("coap = {\n  dtls = {\n    psk_file = \"p\";\n    pskfile = \"p\";\n  };\n};\n",
                 4, "coap.dtls.pskfile", "unknown setting");
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
                 "coap.bind",
                 "not an IP address");
    gw_errs_clear(&errs);
    expect_error(BASE "mqtt = {\n  status_topic = \"a/#\";\n};\n", 3, "mqtt.status_topic",
                 "not a valid topic");
    gw_errs_clear(&errs);
    expect_error(BASE "gateway = {\n  id = \"a/b\";\n};\n", 3, "gateway.id", "without '/'");
}

Test(config, features_not_there_yet_are_refused)
{
    expect_error(BASE "mqtt_listener = {\n  enabled = true;\n};\n", 3, "mqtt_listener.enabled",
                 "not supported yet");
    gw_errs_clear(&errs);
    expect_error(BASE "metrics = {\n  listen = \"127.0.0.1:9464\";\n};\n", 3, "metrics.listen",
                 "not supported yet");
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
