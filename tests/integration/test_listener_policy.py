"""The MQTT listener's policy both ways (doc/devices.md, MQTT devices): what the broker
delivers to a device is held to the current mappings (a subscription a reload
revoked, a session the broker kept), the `device` user property is the authenticated
identity, the mapping's retain applies, no legal message from the broker closes a
device's connection, and shared subscriptions are refused. Devices are raw MQTT
packets over Python's ssl (MqttDevice), the broker a real Mosquitto."""

import os
import re
import secrets
import signal
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (PROP_SESSION_EXPIRY, WAIT, MqttDevice, Subscriber,  # noqa: E402
                     _mqtt_packet, check, run, wait_until)
from test_listener import CMD, MAPPINGS, STATE, TEL, Setup, acked  # noqa: E402

PROP_USER, PROP_SHARED_SUB_AVAILABLE = 0x26, 0x2A
SHARED_NOT_SUPPORTED = 0x9E


def listener_stat(s, name):
    return s.stats()["mqtt_listener"].get(name, 0)


def persistent(s, name, version, client_id):
    """A device whose session the broker keeps (MQTT 5: Session Expiry; 3.1.1:
    clean session off)."""
    props = [(PROP_SESSION_EXPIRY, 3600)] if version == 5 else ()
    return s.device(name, version, client_id=client_id, clean=False, props=props)


def wait_payload(dev, payload):
    """Reads (and acknowledges) what the device gets until payload has come."""
    while not any(p.payload == payload for p in dev.received):
        dev.wait_message(len(dev.received) + 1)


def revoke_mapping(s, name):
    text = open(s.g.conf).read()
    cut = re.search(r'\n\s*\{ name = "%s";[^\n]*\n[^\n]*\},' % name, text)
    check(cut, "%s mapping in the configuration" % name)
    open(s.g.conf, "w").write(text.replace(cut.group(0), ""))
    before = s.g.count("reloaded:")
    s.g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: s.g.count("reloaded:") + s.g.count("reload refused") > before, "the reload")
    check(s.g.count("reloaded:") == before + 1, "reload refused:\n" + s.g.text()[-2000:])


# --- the cases


def revoked_subscription_delivers_nothing():
    """A persistent session subscribed to its commands; the commands mapping is
    removed and reloaded; the device reconnects without SUBSCRIBE: neither the
    commands the broker queued meanwhile nor live ones reach it (QoS 0, 1, 2;
    MQTT 5 and 3.1.1), and they are acknowledged upstream so that the broker
    does not deliver them again. A SUBSCRIBE reusing the packet identifier of one
    still awaiting its SUBACK is a protocol error."""
    s = Setup(sub=False)
    devs = {5: ("bike-1", "cmd5-" + secrets.token_hex(3)), 4: ("bike-2", "cmd4-" +
                                                             secrets.token_hex(3))}
    conn = {}
    for v, (name, cid) in devs.items():
        conn[v] = persistent(s, name, v, cid)
        codes = conn[v].subscribe([CMD % name, STATE % name], qos=2)
        check(codes == [2, 2], "%s subscriptions: %r" % (name, codes))
    for v, (name, _) in devs.items():
        s.broker.publish(CMD % name, "before-%d" % v, "-q", "1")
        got = conn[v].wait_message(1)
        check([p.payload for p in got] == [b"before-%d" % v], "%s before: %r" % (name, got))

    revoke_mapping(s, "commands")
    seen = conn[5].closed()
    check([p.reason for p in seen if p.name == "DISCONNECT"] == [0x98],
          "MQTT 5 device closed without DISCONNECT 0x98: %r" % seen)
    conn[4].closed()

    # Queued by the broker for the sessions it keeps.
    for v, (name, _) in devs.items():
        for q in (1, 2):
            s.broker.publish(CMD % name, "queued-q%d-%d" % (q, v), "-q", str(q))
    denied_before = listener_stat(s, "denied_deliver")
    for v, (name, cid) in devs.items():
        conn[v] = persistent(s, name, v, cid)
        check(conn[v].connack.session_present, "%s: the broker did not keep the session" % name)
    for v, (name, _) in devs.items():
        for q in (0, 1, 2):
            s.broker.publish(CMD % name, "live-q%d-%d" % (q, v), "-q", str(q))
        s.broker.publish(STATE % name, "state-%d" % v, "-q", "1")
    for v, (name, _) in devs.items():
        dev = conn[v]
        wait_payload(dev, b"state-%d" % v)
        got = [(p.topic, p.payload) for p in dev.received]
        check(got == [(STATE % name, b"state-%d" % v)],
              "%s (MQTT %s) received what the mappings no longer allow: %r" %
              (name, "5" if v == 5 else "3.1.1", got))
        check(dev.ping(), "%s: connection closed" % name)
    # 2 queued and 3 live commands per device, refused by the gateway.
    wait_until(lambda: listener_stat(s, "denied_deliver") >= denied_before + 10,
               "denied_deliver counts every refused delivery (%d)" %
               (listener_stat(s, "denied_deliver") - denied_before))

    # Acknowledged upstream: the broker has nothing left to deliver again.
    counted = listener_stat(s, "denied_deliver")
    for v, (name, cid) in devs.items():
        conn[v].close()
        dev = persistent(s, name, v, cid)
        s.broker.publish(STATE % name, "again-%d" % v, "-q", "1")
        got = dev.wait_message(1)
        check([p.payload for p in got] == [b"again-%d" % v], "%s after reconnecting: %r" %
              (name, [(p.topic, p.payload) for p in got]))
        dev.close()
    check(listener_stat(s, "denied_deliver") == counted,
          "the broker delivered refused commands again (%d more refusals): not acknowledged" %
          (listener_stat(s, "denied_deliver") - counted))

    # Two SUBSCRIBEs with one packet identifier, the second before the first's SUBACK.
    for v, (name, _) in devs.items():
        dev = s.device(name, v)
        sub = _mqtt_packet(0x82, struct.pack("!H", 7) + (b"\x00" if v == 5 else b"") +
                           struct.pack("!H", len(STATE % name)) + (STATE % name).encode() +
                           b"\x01")
        dev.send(sub + sub)
        seen = dev.closed()
        subacks = [p for p in seen if p.name == "SUBACK"]
        check(len(subacks) <= 1, "%s: both SUBSCRIBEs answered: %r" % (name, seen))
        if v == 5:
            check([p.reason for p in seen if p.name == "DISCONNECT"] == [0x82],
                  "duplicate SUBSCRIBE id without DISCONNECT 0x82: %r" % seen)


def device_property_is_the_identity():
    """An MQTT 5 device's `device` user properties are replaced by its identity
    on PUBLISH and Will; an anonymous device's are removed; other user
    properties pass; a PUBLISH with as many properties as the gateway reads still
    gets its `device` property."""
    s = Setup(listener="require_client_cert = false;")
    dev = s.device("bike-1", 5)
    forged = [(PROP_USER, ("device", "bike-9")), (PROP_USER, ("other", "keep")),
              (PROP_USER, ("device", "bike-1"))]
    acked(dev.publish(TEL % "bike-1", "forged", props=forged), 0, "publish with device=bike-9")
    full = [(PROP_USER, ("k%d" % i, "v")) for i in range(31)] + [(PROP_USER, ("device", "x"))]
    acked(dev.publish(TEL % "bike-1", "full", props=full), 0, "publish with 32 properties")
    plain = [(PROP_USER, ("k%d" % i, "v")) for i in range(32)]
    acked(dev.publish(TEL % "bike-1", "plain-32", props=plain), 0, "32 other properties")
    anon = s.device(None, 5, client_id="anon-" + secrets.token_hex(3))
    acked(anon.publish("redback/p1/public/x", "anon", props=forged), 0, "anonymous publish")
    will = s.device("bike-1", 5, will=dict(topic=TEL % "bike-1", payload="will", qos=1,
                                           props=[(PROP_USER, ("device", "bike-9"))]))
    will.close()  # gone without DISCONNECT: the broker publishes the Will
    want = {b"forged", b"full", b"plain-32", b"anon", b"will"}
    wait_until(lambda: want <= {m["payload"] for m in s.sub.messages}, "the five messages")
    by = {m["payload"]: m["props"] for m in s.sub.messages if m["payload"] in want}
    for name in (b"forged", b"full", b"plain-32", b"will"):
        props = by[name]
        check("bike-9" not in props and props.count("device:") == 1 and
              "device:bike-1" in props, "%s: user properties %r" % (name.decode(), props))
    check("other:keep" in by[b"forged"], "another user property was lost: %r" % by[b"forged"])
    check("k31:v" in by[b"plain-32"], "a property was lost: %r" % by[b"plain-32"])
    check("device" not in by[b"anon"], "anonymous device: %r" % by[b"anon"])


RETAIN_MAPPINGS = MAPPINGS + """,
  { name = "status"; resource = "bikes/{identity}/status";
    topic = "redback/p1/bikes/{identity}/status"; direction = "up"; qos = 1; retain = true; }"""
STATUS = "redback/p1/bikes/%s/status"


def retain_follows_the_mapping():
    """A device's retain flag on a mapping with retain = false is cleared (PUBLISH
    and Will, MQTT 5 and 3.1.1) and counted; on a mapping with retain = true its
    publishes are retained, as a CoAP device's."""
    s = Setup(mappings=RETAIN_MAPPINGS)
    d5 = s.device("bike-1", 5)
    d4 = s.device("bike-2", 4)
    acked(d5.publish(TEL % "bike-1", "tel-5", retain=True), 0, "retained telemetry (5)")
    acked(d4.publish(TEL % "bike-2", "tel-4", retain=True), 0, "retained telemetry (3.1.1)")
    acked(d5.publish(STATUS % "bike-1", "status-5", retain=False), 0, "status")
    w = s.device("bike-1", 4, will=dict(topic=TEL % "bike-1", payload="will-4", qos=1,
                                        retain=True))
    w.close()
    want = {b"tel-5", b"tel-4", b"status-5", b"will-4"}
    wait_until(lambda: want <= {m["payload"] for m in s.sub.messages}, "the four messages")
    late = Subscriber(s.broker, "redback/p1/bikes/#")
    retained = sorted((m["topic"], m["payload"]) for m in late.messages if m["retain"])
    check(retained == [(STATUS % "bike-1", b"status-5")],
          "retained at the broker: %r (only the status mapping retains)" % retained)
    check(listener_stat(s, "retain_cleared") == 3,
          "retain_cleared %r" % listener_stat(s, "retain_cleared"))


def broker_messages_never_close_a_device():
    """A QoS 1 command with 33 user properties (MQTT 5) and commands of 140 KiB
    (over the listener's bound of coap.max_payload + 64 KiB: MQTT 3.1.1 cannot
    tell the broker) are dropped, acknowledged upstream and counted; the device
    stays connected and the next command arrives; the broker does not send the
    dropped ones again."""
    s = Setup(sub=False)
    cid5, cid4 = "p5-" + secrets.token_hex(3), "p4-" + secrets.token_hex(3)
    d5 = persistent(s, "bike-1", 5, cid5)
    d4 = persistent(s, "bike-2", 4, cid4)
    check(d5.subscribe([CMD % "bike-1"], qos=2) == [2], "bike-1 subscription")
    check(d4.subscribe([CMD % "bike-2"], qos=2) == [2], "bike-2 subscription")

    users = []
    for i in range(33):
        users += ["-D", "publish", "user-property", "k%d" % i, "v"]
    subprocess.run(["mosquitto_pub", "-V", "5", *s.broker.client_args(), "-t", CMD % "bike-1",
                    "-m", "poison-props", "-q", "1", *users], check=True, timeout=WAIT)
    s.broker.publish(CMD % "bike-1", "after-props", "-q", "1")
    got = d5.wait_message(1)
    check([p.payload for p in got] == [b"after-props"], "MQTT 5 device got %r" %
          [p.payload[:20] for p in got])

    big = os.path.join(s.d, "big.bin")
    with open(big, "wb") as f:
        f.write(b"B" * (140 * 1024))
    for q in ("1", "2"):
        subprocess.run(["mosquitto_pub", *s.broker.client_args(), "-t", CMD % "bike-2", "-f", big,
                        "-q", q], check=True, timeout=WAIT)
        s.broker.publish(CMD % "bike-2", "after-big-q" + q, "-q", "1")
    got = d4.wait_message(2)
    check([p.payload for p in got] == [b"after-big-q1", b"after-big-q2"],
          "MQTT 3.1.1 device got %r" % [p.payload[:20] for p in got])
    check(d4.ping() and d5.ping(), "a device's connection was closed")
    check(listener_stat(s, "broker_dropped") == 3,
          "broker_dropped %r" % listener_stat(s, "broker_dropped"))

    # Acknowledged upstream: at the next connection of the same sessions, nothing again.
    for dev, name, v, cid in ((d5, "bike-1", 5, cid5), (d4, "bike-2", 4, cid4)):
        dev.close()
        again = persistent(s, name, v, cid)
        s.broker.publish(CMD % name, "next", "-q", "1")
        got = again.wait_message(1)
        check([p.payload for p in got] == [b"next"], "%s after reconnecting: %r" %
              (name, [p.payload[:20] for p in got]))
    check(listener_stat(s, "broker_dropped") == 3, "the broker sent a dropped message again")


def shared_subscriptions_refused():
    """$share filters get 0x9E (3.1.1: 0x80) and count as denied subscriptions; the
    MQTT 5 CONNACK says Shared Subscription Available = 0."""
    s = Setup(sub=False)
    d5 = s.device("bike-1", 5)
    check(d5.connack.props.get(PROP_SHARED_SUB_AVAILABLE) == 0,
          "CONNACK properties %r" % d5.connack.props)
    before = listener_stat(s, "denied_subscribe")
    codes = d5.subscribe(["$share/g/" + CMD % "bike-1", CMD % "bike-1", "$share/g/#"])
    check(codes == [SHARED_NOT_SUPPORTED, 1, SHARED_NOT_SUPPORTED], "MQTT 5 SUBACK %r" % codes)
    d4 = s.device("bike-2", 4)
    codes = d4.subscribe(["$share/g/" + CMD % "bike-2"])
    check(codes == [0x80], "MQTT 3.1.1 SUBACK %r" % codes)
    check(listener_stat(s, "denied_subscribe") == before + 3,
          "denied_subscribe %r" % listener_stat(s, "denied_subscribe"))
    s.broker.publish(CMD % "bike-1", "once", "-q", "1")
    check([p.payload for p in d5.wait_message(1)] == [b"once"], "received %r" % d5.received)
    check(d5.ping(), "connection closed")


CASES = [revoked_subscription_delivers_nothing, device_property_is_the_identity,
         retain_follows_the_mapping, broker_messages_never_close_a_device,
         shared_subscriptions_refused]

if __name__ == "__main__":
    run({f.__name__: f for f in CASES})
