/*
 * What the CoAP request fuzz target makes the stand-in MQTT client do
 * (broker_stub.c implements mqtt/client.h without a network).
 */
#ifndef TANDEM_BROKER_STUB_H
#define TANDEM_BROKER_STUB_H

#include "client.h"

/* Every publish waiting is acknowledged (reason < 0x80) or refused (>= 0x80). */
void stub_acknowledge(mqtt_client_t *c, int reason);
/* The connection drops: what waits is never acknowledged. */
void stub_lose_connection(mqtt_client_t *c);
/* A message arrives on a subscription. */
void stub_message(mqtt_client_t *c, const char *topic, size_t tlen, const uint8_t *payload,
                  size_t len);

#endif
