/*
 * The mapping engine's internals, shared by mapping.c (templates, routing)
 * and policy.c (what MQTT devices may publish and subscribe to). Not for use
 * outside mapping/.
 */
#ifndef TANDEM_MAPPING_INT_H
#define TANDEM_MAPPING_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "mapping.h"

/*
 * One segment of a template. {gateway} is parsed into a SEG_LIT holding the
 * gateway id. A literal is never empty and holds no '/', '+' or '#'; a
 * SEG_MULTI ({x*}) is only ever the last segment.
 */
enum seg_kind { SEG_LIT, SEG_VAR, SEG_MULTI, SEG_IDENTITY };

struct seg {
    enum seg_kind kind;
    char *text; /* SEG_LIT: the literal; SEG_VAR/SEG_MULTI: the name; owned */
    size_t len;
    int ref; /* VAR/MULTI: index of the same variable in the other template */
};

struct tmpl {
    size_t n;
    struct seg seg[MAP_SEGMENTS_MAX];
    int identity_at; /* index of the {identity} segment, or -1 */
};

struct map_entry {
    char *name, *resource, *topic; /* owned copies of the spec */
    int direction, qos;
    bool retain;
    size_t index;
    struct tmpl res, top;
};

struct map_table {
    char *gateway;   /* owned */
    map_entry_t **v; /* owned, with their entries */
    size_t n, cap;
};

#endif
