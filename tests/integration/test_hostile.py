"""Hostile devices, floods and brokers: no single device, and no unauthenticated
sender, can stop other devices' readings, grow memory or logs without bound, or
make a 2.04 a broken promise. Each case here was once a way to break the
gateway."""

import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Broker, Gateway, Pki, ScriptedBroker, Subscriber, check, coap, coap_decode,  # noqa: E402
                     coap_parse, coap_raw, run, wait_until, workdir, WAIT)

BIKE1 = ("bike-1", "secret-bike-1")


class Plain:
    """A plain CoAP device on its own UDP port, speaking hand-encoded messages."""

    def __init__(self, g):
        self.g = g
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.settimeout(WAIT)
        self.mid = 100

    def request(self, path, payload=b"", **kw):
        """Sends a confirmable request; returns (code, options, payload) of its answer."""
        self.mid = (self.mid + 1) % 65536
        kw.setdefault("token", b"t%d" % self.mid)
        self.s.sendto(coap_raw(path, payload, mid=self.mid, **kw), ("127.0.0.1", self.g.plain_port))
        while True:
            data = self.s.recv(4096)
            typ, code, mid, token = coap_decode(data)
            if token == kw["token"] and code != "0.00":
                opts, body = coap_parse(data)
                return code, opts, body


def setup(mqtt="", coap_cfg="plain = true;", broker_extra="", **gw):
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, extra=broker_extra).start()
    sub = Subscriber(broker, "redback/#")
    g = Gateway(d, broker, pki, coap=coap_cfg, mqtt=mqtt, **gw).start()
    return d, pki, broker, sub, g


def poison_topic_is_refused(version):
    d, pki, broker, sub, g = setup(mqtt="version = %d;" % version)
    dev = Plain(g)
    for path in ["zones/a\x01b/x", "zones/ok/\x7f", "zones/ok/a\u0085b", "zones/\ufdd0/x",
                 "zones/ok/\U0001fffe", "zones/ok/tab\there"]:
        code, _, _ = dev.request(path, b"poison")
        check(code == "4.00", "%r answered %s, not 4.00" % (path, code))
    # The broker never saw any of them: the connection stays, readings go on.
    for i in range(3):
        code, _, _ = dev.request("zones/ok/x", b"good%d" % i)
        check(code == "2.04", "a good reading after the poison got %s" % code)
    msgs = sub.wait_for(3)
    check([m["payload"] for m in msgs] == [b"good0", b"good1", b"good2"],
          "arrived: %r" % [(m["topic"], m["payload"]) for m in msgs])
    check(g.count("connection to") == 0, "the broker connection dropped:\n" + g.text())
    check("malformed" not in open(broker.log).read(), "the broker saw a malformed packet")


def poison_topic_mqtt5():
    poison_topic_is_refused(5)


def poison_topic_mqtt311():
    poison_topic_is_refused(3)


def identity_with_control_character():
    """A PSK identity that MQTT would refuse is refused by `tandem check`, with
    its line in the PSK file."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki)
    g = Gateway(d, broker, pki, psk={"bike-1": "k1", "bad\x01bike": "k2"})
    out = subprocess.run([os.environ.get("TANDEM", "tandem"), "check", "-c", g.conf],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         errors="replace", timeout=WAIT)
    check(out.returncode == 1, "tandem check exited %d:\n%s" % (out.returncode, out.stdout))
    check("psk.txt:3: coap.dtls.psk_file: identity must be" in out.stdout, out.stdout)
    check("control characters" in out.stdout, out.stdout)


def publish_topic(body):
    import struct
    return body[2:2 + struct.unpack("!H", body[:2])[0]].decode("utf-8", "replace")


def broker_disconnect_reconnects():
    """The broker closes the gateway's MQTT 5 connection with a DISCONNECT
    packet (reason 0x8B, server shutting down) instead of acknowledging a
    reading. The gateway notices, reconnects, sends the reading again, and the
    device gets its 2.04; later readings go through."""
    d = workdir()
    pki = Pki(d)
    state = {"disconnects": 0}

    def behave(broker, conn, kind, body):
        if kind >> 4 == 3 and publish_topic(body).startswith("redback/") and \
                state["disconnects"] == 0:
            state["disconnects"] += 1
            broker.send(conn, 0xE0, b"\x8b\x00")
            conn.close()
            return True
        return False
    broker = ScriptedBroker(d, pki, behave)
    g = Gateway(d, broker, pki, coap="plain = true;").start()
    dev = Plain(g)
    code, _, _ = dev.request("zones/a/b", b"first")
    check(code == "2.04", "the reading the broker dropped us for: %s" % code)
    g.wait_log("the broker disconnected")
    code, _, _ = dev.request("zones/a/b", b"second")
    check(code == "2.04", "after the broker's DISCONNECT: %s" % code)
    # While the gateway is away the second one is kept in the offline buffer.
    wait_until(lambda: len([t for t, p in broker.published if t.startswith("redback/")]) >= 2,
               "both readings at the broker")
    got = [p for t, p in broker.published if t.startswith("redback/")]
    check(got == [b"first", b"second"], "the broker got %r" % got)
    check(broker.connections == 2, "connections: %d" % broker.connections)


def broker_refusal_is_502_and_dropped():
    """MQTT 5: a PUBACK with a reason >= 0x80 (the broker's ACL refuses the
    topic) is answered 5.02, counted, and never retried; the next reading on
    an allowed topic goes through."""
    d = workdir()
    acl = os.path.join(d, "acl")
    with open(acl, "w") as f:
        f.write("topic readwrite #\ntopic deny redback/p1/public/secret\n")
    d2, pki, broker, sub, g = setup(broker_extra="acl_file %s\n" % acl,
                                    mqtt="stats_interval = 1;")
    dev = Plain(g)
    code, _, _ = dev.request("public/secret", b"no")
    check(code == "5.02", "refused publish answered %s" % code)
    code, _, _ = dev.request("public/open", b"yes")
    check(code == "2.04", "allowed publish answered %s" % code)
    msgs = sub.wait_for(1)
    check([m["payload"] for m in msgs] == [b"yes"], "arrived %r" % msgs)
    # Nothing is left in the store to be sent again.
    st = stats_now(g, broker)
    check(st["mqtt"]["refused"] == 1, "mqtt.refused %r" % st["mqtt"])
    check(st["mqtt"]["stored_records"] == 0, "records left %r" % st["mqtt"])
    check(st["coap"]["responses"].get("5.02") == 1, "responses %r" % st["coap"]["responses"])


def stats_now(g, broker):
    """The statistics object the gateway publishes (stats_interval = 1), now."""
    import json
    s = Subscriber(broker, "tandem/it/stats")
    wait_until(lambda: s.messages, "a statistics message")
    return json.loads(s.messages[-1]["payload"])


def broker_maximum_packet_size():
    """MQTT 5: a body larger than the broker's Maximum Packet Size is answered
    4.13 with Size1 and never sent (the broker would drop the connection)."""
    d, pki, broker, sub, g = setup(broker_extra="max_packet_size 2048\n",
                                   mqtt="stats_interval = 1;")
    dev = Plain(g)
    code, opts, _ = dev.request("zones/a/b", b"x" * 1000)
    check(code == "2.04", "small body: %s" % code)
    big = os.path.join(d, "big.bin")
    with open(big, "wb") as f:
        f.write(b"y" * 5000)
    r = coap("coap://127.0.0.1:%d/zones/a/b" % g.plain_port, file=big, block=1024)
    check(r and r.code == "4.13", "large body: %r" % r)
    code, _, _ = dev.request("zones/a/b", b"z" * 100)
    check(code == "2.04", "after the large one: %s" % code)
    check(g.count("connection to") == 0, "the broker connection dropped:\n" + g.text())
    check([m["payload"][:1] for m in sub.wait_for(2)] == [b"x", b"z"], "arrived")


CASES = {
    "poison_topic_mqtt5": poison_topic_mqtt5,
    "poison_topic_mqtt311": poison_topic_mqtt311,
    "identity_with_control_character": identity_with_control_character,
    "broker_disconnect_reconnects": broker_disconnect_reconnects,
    "broker_refusal_is_502_and_dropped": broker_refusal_is_502_and_dropped,
    "broker_maximum_packet_size": broker_maximum_packet_size,
}

if __name__ == "__main__":
    run(CASES)
