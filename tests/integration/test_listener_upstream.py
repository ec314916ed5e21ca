"""The MQTT listener's upstream connections are broker links (mqtt/link.c),
made as the gateway's own connection is: when one cannot be made, the device
gets CONNACK 0x88 (MQTT 3.1.1: 0x03) and the log says why in words an operator
can act on, different for a broker whose certificate mqtt.ca does not trust, a
broker that is down, and a name that does not resolve."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Broker, Gateway, MqttDevice, Pki, check, free_port, run,  # noqa: E402
                     wait_until, workdir)

MAPPINGS = """
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; }"""

SAID = "device bike-1: the broker cannot be reached ("


def refused_with(g, words):
    """An MQTT 5 and an MQTT 3.1.1 device are refused as the broker cannot be
    reached; the log lines that say so, each of which gives words."""
    for version, code in ((5, 0x88), (4, 0x03)):
        dev = MqttDevice(g, g.pki.device("bike-1"), version=version)
        ack = dev.connect("up-%d" % version)
        check(ack is not None and ack.reason == code,
              "MQTT %d: CONNACK %r, not 0x%02x" % (version, ack, code))
        dev.closed()
    wait_until(lambda: g.count(SAID) >= 2, "the two refusals in the log")
    lines = [line for line in g.lines if SAID in line]
    for line in lines:
        check(SAID + words in line, "the log does not say '%s':\n%s" % (words, line))
    failures = g.stats_json()["mqtt_listener"]["upstream_failures"]
    check(failures == 2, "upstream_failures %r, not 2" % failures)
    return "".join(lines)


def device_wrong_ca_in_words():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    other = os.path.join(d, "other-ca.pem")
    check(os.path.exists(other), "no foreign CA at " + other)
    g = Gateway(d, broker, pki, mappings=MAPPINGS, mqtt_listener="",
                mqtt='ca = "%s";' % other).start(wait_connected=False)
    said = refused_with(g, "the broker's certificate is not trusted by mqtt.ca %s" % other)
    check("refused by" not in said and "TLS handshake with" not in said, said)


def device_broker_down_in_words():
    d = workdir()
    pki = Pki(d)
    port = free_port()  # nobody listens there
    g = Gateway(d, None, pki, mappings=MAPPINGS, mqtt_listener="",
                uri="mqtts://127.0.0.1:%d" % port).start(wait_connected=False)
    said = refused_with(g, "connection refused by 127.0.0.1:%d (is the broker running" % port)
    check("certificate" not in said, said)


def device_name_not_resolved_in_words():
    d = workdir()
    pki = Pki(d)
    g = Gateway(d, None, pki, mappings=MAPPINGS, mqtt_listener="",
                uri="mqtts://no-such-broker.invalid:8883").start(wait_connected=False)
    refused_with(g, "the broker's host name no-such-broker.invalid was not resolved")


if __name__ == "__main__":
    run({f.__name__: f for f in [device_wrong_ca_in_words, device_broker_down_in_words,
                                  device_name_not_resolved_in_words]})
