/*
 * CoAP helpers the up and the down direction share: answering with a code
 * and its options (and counting it), CoAP Content-Formats and MQTT 5 Content
 * Types, and reading options. No state.
 */
#ifndef TANDEM_COAP_UTIL_H
#define TANDEM_COAP_UTIL_H

#include <coap3/coap.h>
#include <stdbool.h>
#include <stdint.h>

#include "mapping.h"

/* No Block1 option (the value to pass to bridge_answer). */
#ifndef NO_BLOCK1
#define NO_BLOCK1 UINT32_MAX
#endif

/* Answers given, by code: class * 32 + detail. */
typedef struct coap_codes {
    uint64_t n[256];
} coap_codes_t;

/* Sets the response code and its options (-1 / NO_BLOCK1: none), counted in count. */
void bridge_answer(coap_codes_t *count, coap_pdu_t *resp, int code, uint32_t block1, int max_age,
                   int size1);

/* MQTT 5 Content Type of a CoAP Content-Format, or NULL; *text for UTF-8 types. */
const char *bridge_content_type(int cf, bool *text);
/* The CoAP Content-Format of an MQTT 5 Content Type, or -1. */
int bridge_content_format(const char *type);

/* The request's Uri-Path options as segments; false when there are too many. */
bool bridge_uri_segments(const coap_pdu_t *req, map_segs_t *segs);
/* An option's value as an unsigned integer, or dflt when it is absent. */
int bridge_option_uint(const coap_pdu_t *pdu, coap_option_num_t num, int dflt);

#endif
