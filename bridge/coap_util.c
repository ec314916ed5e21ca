/*
 * CoAP helpers the up and the down direction share (coap_util.h).
 */
#include "coap_util.h"

#include <ctype.h>

/* Sets the response code and its options. */
void bridge_answer(coap_codes_t *count, coap_pdu_t *resp, int code, uint32_t block1, int max_age,
                   int size1)
{
    uint8_t buf[4];
    coap_pdu_set_code(resp, (coap_pdu_code_t)COAP_RESPONSE_CODE(code));
    if (max_age >= 0)
        coap_add_option(resp, COAP_OPTION_MAXAGE,
                        coap_encode_var_safe(buf, sizeof(buf), (unsigned)max_age), buf);
    if (block1 != NO_BLOCK1)
        coap_add_option(resp, COAP_OPTION_BLOCK1, coap_encode_var_safe(buf, sizeof(buf), block1),
                        buf);
    if (size1 >= 0)
        coap_add_option(resp, COAP_OPTION_SIZE1,
                        coap_encode_var_safe(buf, sizeof(buf), (unsigned)size1), buf);
    count->n[(code / 100) * 32 + code % 100]++;
}

/* CoAP Content-Formats and their media types (RFC 7252 §12.3 registry). */
static const struct {
    int cf;
    const char *type;
    bool text;
} content_formats[] = {
    { 0, "text/plain;charset=utf-8", true },
    { 16, "application/cose; cose-type=\"cose-encrypt0\"", false },
    { 17, "application/cose; cose-type=\"cose-mac0\"", false },
    { 18, "application/cose; cose-type=\"cose-sign1\"", false },
    { 40, "application/link-format", true },
    { 41, "application/xml", true },
    { 42, "application/octet-stream", false },
    { 47, "application/exi", false },
    { 50, "application/json", true },
    { 51, "application/json-patch+json", true },
    { 52, "application/merge-patch+json", true },
    { 60, "application/cbor", false },
    { 61, "application/cwt", false },
    { 62, "application/multipart-core", false },
    { 63, "application/cbor-seq", false },
    { 110, "application/senml+json", true },
    { 111, "application/sensml+json", true },
    { 112, "application/senml+cbor", false },
    { 113, "application/sensml+cbor", false },
    { 256, "application/coap-group+json", true },
    { 320, "application/senml+xml", true },
    { 11542, "application/vnd.oma.lwm2m+tlv", false },
    { 11543, "application/vnd.oma.lwm2m+json", true },
};
#define NFORMATS (sizeof(content_formats) / sizeof(content_formats[0]))

/* MQTT 5 Content Type for a CoAP Content-Format. */
const char *bridge_content_type(int cf, bool *text)
{
    for (size_t i = 0; i < NFORMATS; i++) {
        if (content_formats[i].cf == cf) {
            *text = content_formats[i].text;
            return content_formats[i].type;
        }
    }
    *text = false;
    return NULL;
}

/* Compares media types ignoring case and spaces ("text/plain; charset=utf-8"). */
static bool same_type(const char *a, const char *b)
{
    for (;;) {
        while (*a == ' ')
            a++;
        while (*b == ' ')
            b++;
        if (!*a || !*b)
            return !*a && !*b;
        if (tolower((unsigned char)*a++) != tolower((unsigned char)*b++))
            return false;
    }
}

int bridge_content_format(const char *type)
{
    for (size_t i = 0; i < NFORMATS; i++)
        if (same_type(content_formats[i].type, type))
            return content_formats[i].cf;
    if (same_type(type, "text/plain"))
        return 0;
    return -1;
}

/* Collects the Uri-Path options as segments; false when there are too many. */
bool bridge_uri_segments(const coap_pdu_t *req, map_segs_t *segs)
{
    coap_opt_iterator_t it;
    coap_opt_filter_t filter;
    coap_opt_t *opt;

    coap_option_filter_clear(&filter);
    coap_option_filter_set(&filter, COAP_OPTION_URI_PATH);
    coap_option_iterator_init(req, &it, &filter);
    segs->n = 0;
    while ((opt = coap_option_next(&it))) {
        if (segs->n == MAP_SEGMENTS_MAX)
            return false;
        segs->s[segs->n] = (const char *)coap_opt_value(opt);
        segs->len[segs->n] = coap_opt_length(opt);
        segs->n++;
    }
    return true;
}

int bridge_option_uint(const coap_pdu_t *pdu, coap_option_num_t num, int dflt)
{
    coap_opt_iterator_t it;
    coap_opt_t *opt = coap_check_option(pdu, num, &it);
    if (!opt)
        return dflt;
    return (int)coap_decode_var_bytes(coap_opt_value(opt), coap_opt_length(opt));
}
