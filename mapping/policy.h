/*
 * What an MQTT device may publish and subscribe to (doc/devices.md, MQTT devices), decided from the
 * same mappings as CoAP requests. Pure code: no I/O, no globals; the table is
 * only read.
 *
 * identity is the device's authenticated identity, or NULL when the device is
 * anonymous (mqtt_listener.require_client_cert = false and no certificate): an
 * anonymous device may use only mappings without {identity}.
 */
#ifndef TANDEM_POLICY_H
#define TANDEM_POLICY_H

#include <stddef.h>

#include "mapping.h"

/*
 * May a device with identity publish to topic (len bytes)? dir is MAP_UP for
 * a PUBLISH, a Will topic or a Response Topic: the topic must be one that an
 * up or both mapping's topic template renders with the device's identity in
 * {identity}, {gateway} as the gateway id, and every other variable a value
 * that tandem.conf(5) allows ({x*}: one or more such segments). MAP_DOWN asks the
 * same of down and both mappings (to attribute a message the broker delivers
 * to a device's subscription to its mapping).
 *
 * The first such mapping in file order is *out on MAP_OK. Otherwise:
 * MAP_FORBIDDEN when a mapping of that direction matches the topic but with
 * another identity in {identity} (*out is that mapping), MAP_UNAUTHORIZED when
 * one matches but needs an identity and the device is anonymous (*out is it),
 * MAP_BAD_VALUE when the topic is not one a broker accepts in a PUBLISH
 * (wildcards, a leading '$', bytes map_topic_ok refuses), and MAP_NOT_FOUND
 * otherwise (*out NULL).
 */
enum map_status map_policy_topic(const map_table_t *t, const char *topic, size_t len, int dir,
                                 const char *identity, const map_entry_t **out);

/*
 * May a device with identity subscribe to filter (len bytes)? Only when every
 * topic the filter can match lies within one down or both mapping's topics
 * with the device's identity: each filter level matches its template level,
 * where a literal, {identity} and {gateway} take only their one value, '+'
 * stands only for a variable other than {identity} and {gateway}, and '#' only
 * at or after a last {x*}. '#' alone never passes. A '#' in the place of
 * the {x*} also matches the topics one level up; it passes only when no
 * mapping, of either direction, gives one of those to another device (else
 * MAP_FORBIDDEN or MAP_UNAUTHORIZED naming that mapping). A "$share/GROUP/" prefix
 * (GROUP one non-empty level without wildcards) is removed first and the rest
 * checked; any other leading '$' is refused.
 *
 * Returns as map_policy_topic: MAP_OK (*out the first such mapping),
 * MAP_FORBIDDEN or MAP_UNAUTHORIZED (*out the mapping whose {identity} level
 * did not allow it), MAP_BAD_VALUE for a filter that is not well-formed
 * (a wildcard that is not a whole level, '#' not last, bytes map_mqtt_string_ok
 * refuses, a malformed $share), MAP_NOT_FOUND otherwise.
 */
enum map_status map_policy_filter(const map_table_t *t, const char *filter, size_t len,
                                  const char *identity, const map_entry_t **out);

#endif
