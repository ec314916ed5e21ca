/*
 * tandem: the command line (tandem(8)).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_file.h"
#include "dtls.h"
#include "gateway.h"
#include "log.h"
#include "pki_cmd.h"
#include "stats_cmd.h"
#include "tandem_build.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: tandem [run] [-c FILE]     run the gateway in the foreground\n"
            "       tandem check [-c FILE]     validate the configuration, print the mappings\n"
            "       tandem stats [-c FILE] [--json|--prometheus] [--watch SECONDS]\n"
            "       tandem devices [-c FILE] [--json]  the connected devices\n"
            "       tandem pki init|device|gateway|revoke|crl|psk ...\n"
            "                                  certificates, CRLs, keys (tandem pki --help)\n"
            "       tandem --version | --help | COMMAND --help\n"
            "FILE is %s unless -c says otherwise.\n",
            GW_DEFAULT_CONFIG);
}

/*
 * Loads and checks everything (for check, also as the service user; for run,
 * the folders it writes in); prints errors. NULL when anything is wrong.
 */
static gw_config_t *load(const char *path, bool check, dtls_psk_store_t **psk)
{
    gw_errs_t errs = { 0 };
    gw_config_t *cfg = gw_load(path, NULL, psk, &errs);
    if (cfg && (check ? (gw_check_service_access(cfg, &errs), errs.count != 0)
                      : gw_check_folders(cfg, &errs) < 0)) {
        dtls_psk_free(*psk);
        *psk = NULL;
        gw_config_free(cfg);
        cfg = NULL;
    }
    if (errs.count)
        fputs(errs.text ? errs.text : "tandem: configuration error\n", stderr);
    gw_errs_clear(&errs);
    return cfg;
}

int main(int argc, char **argv)
{
    const char *cmd = "run", *path = NULL;
    int first = 1;
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };

    if (argc > 1 && argv[1][0] != '-') {
        cmd = argv[1];
        first = 2;
    }
    /* Commands with options of their own; argv[0] is the command. */
    static const struct {
        const char *name;
        int (*main)(int argc, char **argv);
    } commands[] = {
        { "stats", gw_stats_cmd },
        { "devices", gw_devices_cmd },
        { "pki", gw_pki_cmd },
    };
    for (size_t i = 0; first == 2 && i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(cmd, commands[i].name))
            return commands[i].main(argc - 1, argv + 1);
    if (strcmp(cmd, "run") && strcmp(cmd, "check")) {
        fprintf(stderr, "tandem: unknown command '%s'\n", cmd);
        usage(stderr);
        return GW_EXIT_USAGE;
    }
    optind = first;
    int c;
    while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 'h':
            usage(stdout);
            return GW_EXIT_OK;
        case 'V':
            printf("tandem %s\n", TANDEM_VERSION);
            return GW_EXIT_OK;
        default:
            usage(stderr);
            return GW_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tandem: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return GW_EXIT_USAGE;
    }
    if (!path)
        path = GW_DEFAULT_CONFIG;

    dtls_psk_store_t *psk = NULL;
    bool check = !strcmp(cmd, "check");
    gw_config_t *cfg = load(path, check, &psk);
    if (!cfg)
        return GW_EXIT_CONFIG;
    int status = GW_EXIT_OK;
    if (check) {
        gw_config_print_mappings(cfg, stdout);
        if (*cfg->coap.dtls.psk_file) {
            size_t n = dtls_psk_count(psk);
            printf("psk_file: %zu identit%s\n", n, n == 1 ? "y" : "ies");
        }
        printf("%s: configuration OK\n", path);
    } else {
        gw_log_set_level(cfg->gateway.log_level);
        gw_log_set_timestamps(cfg->gateway.log_timestamps);
        status = gw_run(&cfg, &psk); /* a reload replaces both */
    }
    dtls_psk_free(psk);
    gw_config_free(cfg);
    return status;
}
