/*
 * PSK file parser: what the fuzz target found, kept found.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "dtls.h"

static char dir[] = "/tmp/tandem-psk-XXXXXX";
static char path[128];
static gw_errs_t errs;

static void setup(void)
{
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/psk.txt", dir);
    memset(&errs, 0, sizeof(errs));
}

static void teardown(void)
{
    gw_errs_clear(&errs);
    unlink(path);
    rmdir(dir);
    strcpy(dir, "/tmp/tandem-psk-XXXXXX");
}

TestSuite(psk, .init = setup, .fini = teardown);

static dtls_psk_store_t *load_text(const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return dtls_psk_load(path, "coap.dtls.psk_file", &errs);
}

/*
 * A file without any key (empty, or only comments) is an empty store. It used
 * to hand qsort() the store's NULL array, which is undefined behaviour
 * (UBSan: "null pointer passed as argument 1"); found by tests/fuzz/fuzz_psk.
 */
Test(psk, empty_file_is_an_empty_store)
{
    static const char *const texts[] = { "", "\n", "# no devices yet\n\n" };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        dtls_psk_store_t *st = load_text(texts[i]);
        cr_assert_not_null(st, "\"%s\": %s", texts[i], errs.text ? errs.text : "");
        cr_assert_eq(dtls_psk_count(st), 0);
        cr_assert_null(dtls_psk_identity(st, 0));
        dtls_psk_free(st);
    }
}

Test(psk, identities_sorted_and_checked)
{
    dtls_psk_store_t *st = load_text("# fleet\nbike-2:00ff\nbike-10:AB\r\nurn:bike:1:0011\n");
    cr_assert_not_null(st, "%s", errs.text ? errs.text : "");
    cr_assert_eq(dtls_psk_count(st), 3);
    cr_assert_str_eq(dtls_psk_identity(st, 0), "bike-10");
    cr_assert_str_eq(dtls_psk_identity(st, 1), "bike-2");
    cr_assert_str_eq(dtls_psk_identity(st, 2), "urn:bike:1");
    dtls_psk_free(st);

    cr_assert_null(load_text("bike-1:00\n+:00\nbike-1:11\nbike-3:0\n"));
    cr_assert_eq(errs.count, 3, "%s", errs.text);
    cr_assert(strstr(errs.text, ":2: coap.dtls.psk_file: identity must be") != NULL);
    cr_assert(strstr(errs.text, ":3: coap.dtls.psk_file: identity \"bike-1\" appears twice"));
    cr_assert(strstr(errs.text, ":4: coap.dtls.psk_file: key must be") != NULL);
}
