/*
 * The bridge's CoAP resources (resources.h).
 */
#include "resources.h"

#include <stdlib.h>

struct resources {
    coap_context_t *ctx;        /* borrowed */
    coap_resource_t *unknown;   /* libcoap's; the catch-all resource */
    coap_resource_t *wellknown; /* libcoap's; our /.well-known/core */
    res_handler_fn *get, *other;
    void *get_data, *other_data; /* borrowed */
};

static enum res_kind kind_of(const resources_t *res, const coap_resource_t *r)
{
    return r == res->unknown ? RES_CATCH_ALL : r == res->wellknown ? RES_WELL_KNOWN : RES_CONCRETE;
}

static void on_get(coap_resource_t *r, coap_session_t *session, const coap_pdu_t *req,
                   const coap_string_t *query, coap_pdu_t *resp)
{
    resources_t *res = coap_resource_get_userdata(r);
    (void)query;
    if (res->get)
        res->get(res->get_data, kind_of(res, r), r, session, req, resp);
}

static void on_other(coap_resource_t *r, coap_session_t *session, const coap_pdu_t *req,
                     const coap_string_t *query, coap_pdu_t *resp)
{
    resources_t *res = coap_resource_get_userdata(r);
    (void)query;
    if (res->other)
        res->other(res->other_data, kind_of(res, r), r, session, req, resp);
}

/* Every method's handler on r (the catch-all or a concrete resource), and res as its data. */
static void set_handlers(resources_t *res, coap_resource_t *r)
{
    coap_register_request_handler(r, COAP_REQUEST_GET, on_get);
    coap_register_request_handler(r, COAP_REQUEST_POST, on_other);
    coap_register_request_handler(r, COAP_REQUEST_PUT, on_other);
    coap_register_request_handler(r, COAP_REQUEST_DELETE, on_other);
    coap_register_request_handler(r, COAP_REQUEST_FETCH, on_other);
    coap_register_request_handler(r, COAP_REQUEST_PATCH, on_other);
    coap_register_request_handler(r, COAP_REQUEST_IPATCH, on_other);
    coap_resource_set_userdata(r, res);
}

resources_t *resources_new(coap_context_t *ctx)
{
    resources_t *res = calloc(1, sizeof(*res));
    if (!res)
        return NULL;
    res->ctx = ctx;
    coap_resource_t *r = coap_resource_unknown_init(on_other);
    if (!r)
        goto fail;
    set_handlers(res, r);
    coap_add_resource(ctx, r);
    res->unknown = r;
    coap_resource_t *wk = coap_resource_init(coap_make_str_const(".well-known/core"), 0);
    if (!wk)
        goto fail;
    coap_register_request_handler(wk, COAP_REQUEST_GET, on_get);
    coap_resource_set_userdata(wk, res);
    coap_add_resource(ctx, wk);
    res->wellknown = wk;
    return res;
fail:
    resources_free(res);
    return NULL;
}

void resources_free(resources_t *res)
{
    /* The resources belong to the CoAP context, which frees them. */
    free(res);
}

void resources_set_handlers(resources_t *res, res_handler_fn *get, void *get_data,
                            res_handler_fn *other, void *other_data)
{
    res->get = get;
    res->get_data = get_data;
    res->other = other;
    res->other_data = other_data;
}

coap_resource_t *resources_add(resources_t *res, const char *path, size_t len, bool confirmable)
{
    coap_str_const_t *uri = coap_new_str_const((const uint8_t *)path, len);
    coap_resource_t *r =
        uri ? coap_resource_init(uri, COAP_RESOURCE_FLAGS_RELEASE_URI |
                                          (confirmable ? COAP_RESOURCE_FLAGS_NOTIFY_CON
                                                       : COAP_RESOURCE_FLAGS_NOTIFY_NON))
            : NULL;
    if (!r) {
        coap_delete_str_const(uri);
        return NULL;
    }
    set_handlers(res, r);
    coap_resource_set_get_observable(r, 1);
    coap_add_resource(res->ctx, r);
    return r;
}

void resources_delete(resources_t *res, coap_resource_t *r)
{
    coap_delete_resource(res->ctx, r);
}
