/*
 * The CoAP resources of the bridge, registered in one place: the catch-all
 * (libcoap's unknown resource: every request that has no resource of its
 * own), /.well-known/core, and the concrete resources the down direction
 * makes so that they can be observed. Every one of them routes GET to one
 * handler and the other methods to another.
 */
#ifndef TANDEM_RESOURCES_H
#define TANDEM_RESOURCES_H

#include <coap3/coap.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct resources resources_t;

/* Which resource a request came to. */
enum res_kind {
    RES_CATCH_ALL,  /* libcoap's unknown resource */
    RES_WELL_KNOWN, /* /.well-known/core (GET only) */
    RES_CONCRETE,   /* one made with resources_add() */
};

/* A request handler; data is what was given to resources_set_handlers(). */
typedef void res_handler_fn(void *data, enum res_kind kind, coap_resource_t *resource,
                            coap_session_t *session, const coap_pdu_t *req, coap_pdu_t *resp);

/*
 * Registers the catch-all and /.well-known/core on ctx (borrowed; it must
 * outlive this, and it owns the coap_resource_t's). Requests are refused
 * until resources_set_handlers().
 */
resources_t *resources_new(coap_context_t *ctx);
/* Frees the table (not the resources: the CoAP context frees those). */
void resources_free(resources_t *res);

/* GET goes to get with get_data, the other methods to other with other_data (borrowed). */
void resources_set_handlers(resources_t *res, res_handler_fn *get, void *get_data,
                            res_handler_fn *other, void *other_data);

/*
 * A concrete resource at path (len bytes), observable, whose notifications
 * are confirmable or not; NULL on ENOMEM. It belongs to the CoAP context.
 */
coap_resource_t *resources_add(resources_t *res, const char *path, size_t len, bool confirmable);
/* Deletes a resource made with resources_add() (its observers are told 4.04 by libcoap). */
void resources_delete(resources_t *res, coap_resource_t *r);

#endif
