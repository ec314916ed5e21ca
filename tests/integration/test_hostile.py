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
from harness import (WAIT, Broker, Gateway, Pki, ScriptedBroker, Subscriber, check,  # noqa: E402
                     coap, coap_decode, coap_option, coap_parse, coap_raw, run, wait_until,
                     workdir)

BIKE1 = ("bike-1", "secret-bike-1")


class Plain:
    """A plain CoAP device on its own UDP port, speaking hand-encoded messages."""

    def __init__(self, g):
        self.g = g
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.settimeout(WAIT)
        self.mid = 100

    def request(self, path, payload=b"", **kw):
        """Sends a confirmable request, again every second as a device would
        (the same Message ID) until answered; returns (code, options, payload)
        of its answer."""
        self.mid = (self.mid + 1) % 65536
        kw.setdefault("token", b"t%d" % self.mid)
        msg = coap_raw(path, payload, mid=self.mid, **kw)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            self.s.sendto(msg, ("127.0.0.1", self.g.plain_port))
            self.s.settimeout(1.0)
            try:
                while True:
                    data = self.s.recv(4096)
                    typ, code, mid, token = coap_decode(data)
                    if token == kw["token"] and code != "0.00":
                        opts, body = coap_parse(data)
                        return code, opts, body
            except socket.timeout:
                continue
        raise AssertionError("no answer to %s within %ss" % (path, WAIT))


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
        f.write(b"y" * 12000)
    r = coap("coap://127.0.0.1:%d/zones/a/b" % g.plain_port, file=big, block=1024)
    check(r and r.code == "4.13", "large body: %r" % r)
    code, _, _ = dev.request("zones/a/b", b"z" * 100)
    check(code == "2.04", "after the large one: %s" % code)
    check(g.count("connection to") == 0, "the broker connection dropped:\n" + g.text())
    check([m["payload"][:1] for m in sub.wait_for(2)] == [b"x", b"z"], "arrived")


DOWN = """,
  { name = "commands"; resource = "bikes/{identity}/commands";
    topic = "redback/p1/bikes/{identity}/commands"; direction = "down"; qos = 1; },
  { name = "news"; resource = "news/{item}"; topic = "redback/p1/news/{item}";
    direction = "down"; qos = 0; }"""


def down_gateway(d, broker, pki, **kw):
    from harness import DEFAULT_MAPPINGS
    kw.setdefault("mappings", DEFAULT_MAPPINGS + DOWN)
    g = Gateway(d, broker, pki, **kw).start()
    g.wait_log("held values are served")
    return g


def observe_socket(g, path, token):
    """A plain CoAP socket registered as an observer of path, from its own port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", g.plain_port))
    s.settimeout(WAIT)
    s.send(coap_raw(path, mid=1, token=token, code=0x01, observe=0))
    data = s.recv(2048)
    return s, coap_decode(data)[1], 6 in coap_parse(data)[0]


def drain(socks, payload, quiet=1.0):
    """How many of socks receive a notification carrying payload, waiting
    until quiet seconds pass without one."""
    import select
    got, waiting = 0, set(socks)
    while waiting:
        ready, _, _ = select.select(list(waiting), [], [], quiet)
        if not ready:
            break
        for s in ready:
            data = s.recv(2048)
            if coap_parse(data)[1] == payload:
                got += 1
                waiting.discard(s)
    return got


def plain_observers_are_bounded():
    """100 plain CoAP observers from distinct ports with max_sessions = 20:
    never more than 20 sessions, so at most 20 notifications per update
    (no amplification past the bound); a legitimate device is still served."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    broker.publish("redback/p1/news/n1", "v0", "-r")
    g = down_gateway(d, broker, pki, coap="plain = true; max_sessions = 20;",
                     mqtt="stats_interval = 1;")
    socks = []
    for i in range(100):
        s, code, observing = observe_socket(g, "news/n1", b"o%d" % i)
        check(code == "2.05" and observing, "observer %d: %s" % (i, code))
        socks.append(s)
    st = stats_now(g, broker)
    check(st["coap"]["sessions"] <= 20, "sessions %d > 20" % st["coap"]["sessions"])
    check(st["coap"]["observers"] <= 20, "observers %d > 20" % st["coap"]["observers"])
    check(st["coap"]["sessions_evicted"] >= 80, "evicted %r" % st["coap"])
    broker.publish("redback/p1/news/n1", "v1", "-r")
    notified = drain(socks, b"v1")
    check(0 < notified <= 20, "%d notifications for one update" % notified)
    # The most recent observers are the ones kept.
    check(drain(socks[-5:], b"v1", 0.2) == 0, "notified twice")
    dev = Plain(g)
    code, _, body = dev.request("news/n1", code=0x01)
    check(code == "2.05" and body == b"v1", "a device after the flood: %s %r" % (code, body))


def dtls_sessions_are_bounded():
    """Ten DTLS devices holding sessions (observing) with max_sessions = 5:
    at most 5 sessions; the least recently active go; a new device is served."""
    from test_down import Observer
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    psk = {"bike-%d" % i: "secret-%d" % i for i in range(12)}
    g = down_gateway(d, broker, pki, psk=psk, coap="max_sessions = 5;",
                     mqtt="stats_interval = 1;")
    observers = []
    for i in range(10):
        o = Observer(g, "bikes/bike-%d/commands" % i, ("bike-%d" % i, "secret-%d" % i),
                     seconds=30)
        o.wait(1, "registration of bike-%d" % i)
        observers.append(o)
    st = stats_now(g, broker)
    check(st["coap"]["sessions"] <= 5, "sessions %d > 5" % st["coap"]["sessions"])
    check(st["coap"]["sessions_evicted"] >= 5, "evicted %r" % st["coap"])
    check(st["coap"]["dtls_handshakes_ok"] >= 10, "handshakes %r" % st["coap"])
    r = coap("coaps://127.0.0.1:%d/bikes/bike-11/telemetry" % g.dtls_port, payload="late",
             psk=("bike-11", "secret-11"))
    check(r and r.code == "2.04", "a new device at the bound: %r" % r)
    for o in observers:
        o.stop()


def duplicate_after_eviction():
    """A device's session is evicted (max_sessions = 3, five other devices
    come), then its retransmission arrives: same answer, published once."""
    d, pki, broker, sub, g = setup(coap_cfg="plain = true; max_sessions = 3;")
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.settimeout(WAIT)
    msg = coap_raw("zones/a/b", b"once", mid=7777, token=b"A")
    a.sendto(msg, ("127.0.0.1", g.plain_port))
    check(coap_decode(a.recv(2048))[1] == "2.04", "first answer")
    for i in range(5):
        Plain(g).request("zones/other/x", b"other%d" % i)
    a.sendto(msg, ("127.0.0.1", g.plain_port))  # the retransmission
    check(coap_decode(a.recv(2048))[1] == "2.04", "answer to the retransmission")
    sub.sync()
    once = [m for m in sub.messages if m["payload"] == b"once"]
    check(len(once) == 1, "published %d times" % len(once))


def silent_observer_is_confirmed():
    """RFC 7641 §4.5: an observer whose device sent nothing for
    session_idle_timeout gets a confirmable notification; answering it with
    RST removes the observer, acknowledging it keeps the observer."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    broker.publish("redback/p1/news/n1", "v0", "-r")
    g = down_gateway(d, broker, pki, coap="plain = true; session_idle_timeout = 2;",
                     mqtt="stats_interval = 1;")
    gone, _, ok1 = observe_socket(g, "news/n1", b"G")
    kept, _, ok2 = observe_socket(g, "news/n1", b"K")
    check(ok1 and ok2, "registrations")

    def confirm(s):
        """Waits for the confirmable notification (QoS 0 resource: normally NON)."""
        while True:
            data = s.recv(2048)
            typ, code, mid, _ = coap_decode(data)
            if typ == 0 and code == "2.05":
                return mid
    mid = confirm(gone)
    gone.send(bytes([0x70, 0, mid >> 8, mid & 0xFF]))  # RST: not interested any more
    mid = confirm(kept)
    kept.send(bytes([0x60, 0, mid >> 8, mid & 0xFF]))  # ACK: still there
    wait_until(lambda: stats_now(g, broker)["coap"]["observers"] == 1, "one observer left")
    broker.publish("redback/p1/news/n1", "v1", "-r")
    check(drain([kept], b"v1", 3) == 1, "the observer that acknowledged is notified")
    check(drain([gone], b"v1", 0.5) == 0, "the observer that answered RST is notified")
    check(stats_now(g, broker)["down"]["confirmations"] >= 1, "confirmations counted")


def get_before_subscribed_is_503():
    """The broker is down at start: a GET on a down resource is 5.03 with
    Max-Age (its retained value may simply not be there yet), then, once the
    subscription is in place, the retained value."""
    from harness import DEFAULT_MAPPINGS
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki)
    g = Gateway(d, broker, pki, coap="plain = true;", mappings=DEFAULT_MAPPINGS + DOWN)
    g.start(wait_connected=False)
    dev = Plain(g)
    code, opts, _ = dev.request("news/n1", code=0x01)
    check(code == "5.03" and 14 in opts, "before the broker: %s %r" % (code, opts))
    broker.start()
    broker.publish("redback/p1/news/n1", "retained", "-r")
    g.wait_log("held values are served")
    code, _, body = dev.request("news/n1", code=0x01)
    check(code == "2.05" and body == b"retained", "after: %s %r" % (code, body))
    code, _, _ = dev.request("news/none", code=0x01)
    check(code == "4.04", "no value once subscribed: %s" % code)


def handshakes_counted_and_wrong_key_creates_nothing():
    """dtls_handshakes_ok/_failed count handshakes; a handshake with a wrong
    key makes none of that device's resources."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    g = down_gateway(d, broker, pki, mqtt="stats_interval = 1;")
    before = stats_now(g, broker)
    r = coap("coaps://127.0.0.1:%d/bikes/bike-2/commands" % g.dtls_port, method="get",
             psk=("bike-2", "not-the-key"), timeout=3)
    check(r is None, "wrong key answered %r" % r)
    wait_until(lambda: stats_now(g, broker)["coap"]["dtls_handshakes_failed"] >= 1,
               "a failed handshake counted")
    after = stats_now(g, broker)
    check(after["down"]["resources"] == before["down"]["resources"],
          "a wrong-key handshake made resources: %d -> %d" % (before["down"]["resources"],
                                                             after["down"]["resources"]))
    r = coap("coaps://127.0.0.1:%d/bikes/bike-1/telemetry" % g.dtls_port, payload="x", psk=BIKE1)
    check(r and r.code == "2.04", "good key: %r" % r)
    wait_until(lambda: stats_now(g, broker)["coap"]["dtls_handshakes_ok"] >= 1,
               "a handshake counted")
    check(stats_now(g, broker)["down"]["resources"] == before["down"]["resources"] + 1,
          "bike-1's own resource once its handshake succeeded")


def block1_empty_last_block():
    """A Block1 transfer whose last block has no payload: published once,
    whole, and no undefined behaviour on the way."""
    d, pki, broker, sub, g = setup()
    dev = Plain(g)
    code, _, _ = dev.request("zones/b/c", b"x" * 16, block1=(0, True, 0))
    check(code == "2.31", "first block: %s" % code)
    code, _, _ = dev.request("zones/b/c", b"", block1=(1, False, 0))
    check(code == "2.04", "empty last block: %s" % code)
    check(sub.wait_for(1)[0]["payload"] == b"x" * 16, "body")


def log_cannot_be_flooded():
    """300 datagrams with about 1,000 empty ETag options each, and other
    things libcoap complains of: at the default log level the log grows by a
    few kilobytes at most."""
    d, pki, broker, sub, g = setup(log_level="info")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = sum(len(line) for line in g.lines)
    head = bytes([0x40, 0x02, 0, 0])
    for i in range(300):
        etags = bytes([0x40]) + bytes([0x00]) * 999  # ETag (4), then 999 more, empty
        s.sendto(bytes([0x40, 0x02, i >> 8, i & 0xFF]) + etags, ("127.0.0.1", g.plain_port))
        s.sendto(bytes([0x70, 0x00, i >> 8, i & 0xFF]), ("127.0.0.1", g.plain_port))  # RST
        s.sendto(head + b"\xff", ("127.0.0.1", g.plain_port))  # payload marker, no payload
    # A legitimate reading still answered, after all of that was read.
    code, _, _ = Plain(g).request("zones/a/b", b"ok")
    check(code == "2.04", "after the flood: %s" % code)
    grown = sum(len(line) for line in g.lines) - start
    check(grown < 16384, "the log grew by %d bytes:\n%s" % (grown, "".join(g.lines[-20:])))




def mqtt5_publish(topic, payload, props=b"\x00"):
    import struct
    t = topic if isinstance(topic, bytes) else topic.encode()
    body = struct.pack("!H", len(t)) + t + props + payload
    from harness import _mqtt_varint
    return bytes([0x30]) + _mqtt_varint(len(body)) + body


def hostile_broker_packets():
    """A broker that sends what no broker should: a topic with a control
    character, a value over max_payload, then on later connections a topic
    or a Content Type that is not UTF-8 (a packet MQTT says closes the
    connection), a topic length past the packet, a packet that claims 256 MB,
    garbage. The gateway drops what is bad, closes the connection when it
    must, reconnects, and goes on serving: a good value is readable, a
    reading is published."""
    from harness import _mqtt_varint
    d = workdir()
    pki = Pki(d)
    scripts = {
        1: mqtt5_publish("redback/p1/news/a\x01b", b"bad") +
           mqtt5_publish("redback/p1/news/big", b"x" * 70000) +
           mqtt5_publish("redback/p1/news/ok", b"fine"),
        2: mqtt5_publish(b"redback/p1/news/\xff\xfe", b"bad"),
        3: mqtt5_publish("redback/p1/news/ct", b"bad", props=b"\x05\x03\x00\x02\xc3\x28"),
        4: bytes([0x30, 0x10, 0xff, 0xff]) + b"short" * 3,     # topic length past the packet
        5: bytes([0x30]) + _mqtt_varint(268435455) + b"\x00",    # claims 256 MB, then nothing
        6: bytes(range(256)) * 4,                                # garbage
    }

    first = {}

    def behave(broker, conn, kind, body):
        if kind >> 4 != 8:
            return False
        n = broker.connections
        broker.send(conn, 0x90, body[:2] + b"\x00" + b"\x00" * 2)  # SUBACK for two filters
        if n in scripts:
            conn.sendall(scripts[n])
            if n == 1:
                first["conn"] = conn  # closed by the test once its values are read
            else:
                conn.close()
        return True
    broker = ScriptedBroker(d, pki, behave)
    broker.session_kept = False  # the gateway subscribes at each connection: the scripts run
    g = Gateway(d, broker, pki, coap="plain = true;", mqtt="stats_interval = 0; keepalive = 5;",
                mappings=__import__("harness").DEFAULT_MAPPINGS + DOWN).start()
    g.wait_log("held values are served")
    dev = Plain(g)
    wait_until(lambda: dev.request("news/ok", code=0x01)[2] == b"fine", "the good value")
    code, _, _ = dev.request("news/big", code=0x01)
    check(code == "4.04", "a value over max_payload held: %s" % code)
    code, _, _ = dev.request("news/a\x01b", code=0x01)
    check(code == "4.00", "a control character: %s" % code)
    first["conn"].close()
    # Each connection the broker breaks is short; the gateway comes back each time.
    wait_until(lambda: broker.connections >= 7, "the gateway to come back after each break", 60)
    g.wait_log("held values are served", 2)
    check(g.proc.poll() is None, "the gateway exited")
    code, _, body = dev.request("news/ok", code=0x01)
    check(code == "2.05" and body == b"fine", "the good value kept: %s %r" % (code, body))
    # The Content Type that is not UTF-8 closed its connection: no value was taken from it.
    code, _, _ = dev.request("news/ct", code=0x01)
    check(code == "4.04", "news/ct: %s" % code)
    check(g.count("malformed") >= 3, "malformed packets not said:\n" + g.text()[-3000:])
    code, _, _ = dev.request("zones/a/b", b"reading")
    check(code == "2.04", "a reading: %s" % code)
    wait_until(lambda: (("redback/p1/zones/a/b", b"reading") in broker.published),
               "the reading at the broker")


def structured_coap_fuzz():
    """A few thousand plain CoAP datagrams built to hurt: truncated and mutated
    valid messages, bad option deltas and lengths, tokens longer than 8 bytes,
    repeated options, absurd Block1 values, every method. The gateway stays up
    with no sanitizer report and bounded memory, publishes nothing outside its
    mappings, and serves a device afterwards."""
    import random
    import re
    rnd = random.Random(int(os.environ.get("TANDEM_FUZZ_SEED", "11")))
    d, pki, broker, sub, g = setup(coap_cfg="plain = true; max_payload = 2048;")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    paths = ["zones/a/b", "bikes/bike-1/telemetry", "public/x", "zones/\x01/b", "zones/+/b",
             "zones/$a/b", "zones/" + "y" * 300 + "/b", "/".join(["z"] * 40), ""]
    valid = [coap_raw(p, b"v" * rnd.randrange(0, 64), mid=i, token=bytes([i % 256]))
             for i, p in enumerate(paths)]

    option = coap_option

    rss0 = __import__("harness").proc_rss_kib(g.proc.pid)
    for i in range(4000):
        kind = i % 8
        if kind == 0:  # a valid message cut short
            m = rnd.choice(valid)
            data = m[:rnd.randrange(0, len(m))]
        elif kind == 1:  # a valid message with bytes flipped
            data = bytearray(rnd.choice(valid))
            for _ in range(rnd.randrange(1, 4)):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
            data = bytes(data)
        elif kind == 2:  # reserved option delta/length nibbles (15)
            data = bytes([0x40, 0x02, 0, i & 0xFF]) + bytes([rnd.choice([0xF0, 0x0F, 0xFF, 0xE0])])\
                + rnd.randbytes(rnd.randrange(0, 8))
        elif kind == 3:  # token length 9..15
            tkl = rnd.randrange(9, 16)
            data = bytes([0x40 | tkl, 0x02, 0, i & 0xFF]) + rnd.randbytes(tkl + 4)
        elif kind == 4:  # the same option many times
            opts, last = b"", 0
            for _ in range(rnd.randrange(2, 200)):
                num = rnd.choice([11, 12, 14, 15, 17, 23, 27, 60])
                num = max(num, last)
                opts += option(num, rnd.randbytes(rnd.randrange(0, 6)), last)
                last = num
            data = bytes([0x40, rnd.choice([1, 2, 3, 4]), 0, i & 0xFF]) + opts
        elif kind == 5:  # absurd Block1
            num = rnd.choice([0, 1, 2**19, 2**20 - 1, rnd.randrange(0, 2**20)])
            data = coap_raw("zones/a/b", b"q" * rnd.choice([0, 16, 1024, 1100]), mid=i & 0xFFFF,
                            token=b"b", block1=(num, rnd.random() < 0.5, rnd.randrange(0, 8)))
        elif kind == 6:  # every method code, and codes that are not methods
            data = bytes([0x40 | 1, rnd.randrange(256), 0, i & 0xFF, 0x42]) + \
                option(11, b"zones", 0) + option(11, b"a", 11) + option(11, b"b", 11)
        else:  # random bytes
            data = rnd.randbytes(rnd.randrange(0, 1200))
        try:
            s.sendto(data, ("127.0.0.1", g.plain_port))
        except OSError:
            pass
        if i % 100 == 0:
            Plain(g).request("zones/a/b", b"probe")  # keeps pace, and checks it still answers
    check(g.proc.poll() is None, "the gateway exited")
    code, _, _ = Plain(g).request("bikes/bike-1/telemetry", b"anon")
    check(code == "4.01", "an anonymous reading on an identity resource: %s" % code)
    code, _, _ = Plain(g).request("zones/after/fuzz", b"ok")
    check(code == "2.04", "a device after the fuzzing: %s" % code)
    sub.sync()
    allowed = re.compile(r"^redback/p1/(zones/[^/]+/.+|public/[^/]+)$")
    bad = [m["topic"] for m in sub.messages if not allowed.match(m["topic"])]
    check(not bad, "published outside the mappings: %r" % bad[:5])
    for m in sub.messages:
        check(not re.search(r"[\x00-\x1f\x7f-\x9f+#]", m["topic"]), "topic %r" % m["topic"])
    harness = __import__("harness")
    rss1 = harness.proc_rss_kib(g.proc.pid)
    check(rss1 - rss0 < 16384 or harness.under_asan(g.proc.pid),
          "memory grew from %d to %d KiB" % (rss0, rss1))




def _crc32c(data, crc=0):
    crc = ~crc & 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return ~crc & 0xFFFFFFFF


def store_record(seq, topic, payload, qos=1):
    """A record of the offline store (mqtt/store.h): its 28-byte header, then
    the publish as an MQTT 5 PUBLISH packet (never sent: identifier 1)."""
    import struct
    t = topic if isinstance(topic, bytes) else topic.encode()
    body = struct.pack("!H", len(t)) + t + (struct.pack("!H", 1) if qos else b"") + b"\x00"
    body += payload
    n, rl = len(body), b""
    while True:
        n, byte = n >> 7, n & 0x7F
        rl += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    pkt = bytes([0x30 | qos << 1]) + rl + body
    head = b"TQS\n" + bytes([1, 0]) + b"\x00\x00" + b"\x00" * 4 + struct.pack("!QI", seq, len(pkt))
    crc = _crc32c(pkt, _crc32c(b"\x00" * 4, _crc32c(head)))
    return head + struct.pack("!I", crc) + pkt


def poisoned_store_is_cleaned():
    """A store that holds a message a broker refuses (written by an older
    version, say) and damaged records: at start they are taken out of it,
    logged and counted; the good message is delivered and the connection
    stays (MQTT 3.1.1, where the broker would drop the connection at every
    reconnection)."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "redback/#")
    g = Gateway(d, broker, pki, coap="plain = true;", mqtt="version = 3; stats_interval = 1;")
    store = os.path.join(d, "state-%d" % g.dtls_port, "offline")
    os.makedirs(store)
    records = {
        1: store_record(1, b"redback/p1/zones/a\x01b/x", b"poison"),
        2: store_record(2, "redback/p1/zones/a/b", b"good"),
        3: store_record(3, "redback/p1/zones/a/b", b"cut")[:-3],   # damaged
        4: b"\xff" * 40,                                           # not a record at all
    }
    for seq, data in records.items():
        with open(os.path.join(store, "%016x.rec" % seq), "wb") as f:
            f.write(data)
    g.start()
    msgs = sub.wait_for(1)
    check([m["payload"] for m in msgs] == [b"good"], "delivered %r" % msgs)
    check(g.count("3 records of the offline store") == 1, "not logged:\n" + g.text())
    st = stats_now(g, broker)
    check(st["mqtt"]["stored_refused"] == 3, "stored_refused %r" % st["mqtt"])
    check(st["mqtt"]["stored_records"] == 0, "records left %r" % st["mqtt"])
    check(g.count("connection to") == 0, "the broker connection dropped:\n" + g.text())
    wait_until(lambda: sorted(os.listdir(store)) == [], "the store emptied", 5)
    refused = os.path.join(d, "state-%d" % g.dtls_port, "mqtt-refused")
    check(len(os.listdir(refused)) == 3, "set aside: %r" % os.listdir(refused))



def broker_drops_connection_for_a_message_311():
    """MQTT 3.1.1, where a broker has no way to refuse a message but to drop
    the connection: Mosquitto's max_packet_size is smaller than a reading the
    gateway accepted. Without a guard that reading is sent again at every
    reconnection and everything behind it waits forever. The gateway finds it
    (one message at a time), sets it aside for the operator, counts it, and
    delivers the rest."""
    d = workdir()
    pki = Pki(d)
    # Room for the gateway's own statistics (published every second), not for the big reading.
    broker = Broker(d, pki, extra="max_packet_size 8192\n").start()
    sub = Subscriber(broker, "redback/#")
    g = Gateway(d, broker, pki, coap="plain = true;", mqtt="version = 3; stats_interval = 1;",
                log_level="info").start()
    big = os.path.join(d, "big.bin")
    with open(big, "wb") as f:
        f.write(b"y" * 12000)
    r = coap("coap://127.0.0.1:%d/zones/a/big" % g.plain_port, file=big, block=1024)
    check(r and r.code in ("2.04", "5.04"), "the big reading: %r" % r)
    dev = Plain(g)
    for i in range(3):
        code, _, _ = dev.request("zones/a/small", b"small%d" % i)
        check(code in ("2.04", "5.04"), "small reading %d: %s" % (i, code))
    # 1 + 2 + 4 + 8 s of backoff at most before the culprit is set aside.
    wait_until(lambda: g.count("it was set aside") == 1, "the message set aside", 60)
    wait_until(lambda: {m["payload"] for m in sub.messages} >= {b"small0", b"small1", b"small2"},
               "the small readings at the broker", 60)
    check(not [m for m in sub.messages if m["payload"].startswith(b"yyy")],
          "the big one reached the broker")
    refused = os.path.join(d, "state-%d" % g.dtls_port, "mqtt-refused")
    kept = os.listdir(refused)
    check(len(kept) == 1, "set aside: %r" % kept)
    check(b"y" * 12000 in open(os.path.join(refused, kept[0]), "rb").read(), "the message kept")
    wait_until(lambda: g.count("messages go at the full rate again") >= 1, "the full rate again", 30)
    st = stats_now(g, broker)
    check(st["mqtt"]["set_aside"] == 1, "mqtt.set_aside %r" % st["mqtt"])
    code, _, _ = dev.request("zones/a/after", b"after")
    check(code == "2.04", "after: %s" % code)



def broker_without_session_loses_nothing(version):
    """The connection drops with a reading in flight, and the broker comes
    back without our session (restarted without persistence, say): the MQTT
    client drops what it had in flight. The device was answered 2.04, so the
    gateway sends the reading again as a new message."""
    d = workdir()
    pki = Pki(d)
    state = {"dropped": False}

    def behave(broker, conn, kind, body):
        if kind >> 4 == 3 and publish_topic(body).startswith("redback/") and \
                not state["dropped"]:
            state["dropped"] = True
            conn.close()  # no PUBACK; the connection is gone
            return True
        return False
    broker = ScriptedBroker(d, pki, behave)
    broker.session_kept = False
    g = Gateway(d, broker, pki, coap="plain = true;", mqtt="version = %d;" % version).start()
    dev = Plain(g)
    code, _, _ = dev.request("zones/a/b", b"in-flight")
    check(code == "2.04", "the reading in flight: %s" % code)
    wait_until(lambda: ("redback/p1/zones/a/b", b"in-flight") in broker.published,
               "the reading at the broker that lost our session")
    check(g.count("had no session for us") == 1, "not said:\n" + g.text())


def broker_without_session_mqtt5():
    broker_without_session_loses_nothing(5)


def broker_without_session_mqtt311():
    broker_without_session_loses_nothing(3)


CASES = {
    "poison_topic_mqtt5": poison_topic_mqtt5,
    "poison_topic_mqtt311": poison_topic_mqtt311,
    "identity_with_control_character": identity_with_control_character,
    "broker_disconnect_reconnects": broker_disconnect_reconnects,
    "broker_refusal_is_502_and_dropped": broker_refusal_is_502_and_dropped,
    "broker_maximum_packet_size": broker_maximum_packet_size,
    "plain_observers_are_bounded": plain_observers_are_bounded,
    "dtls_sessions_are_bounded": dtls_sessions_are_bounded,
    "duplicate_after_eviction": duplicate_after_eviction,
    "silent_observer_is_confirmed": silent_observer_is_confirmed,
    "get_before_subscribed_is_503": get_before_subscribed_is_503,
    "handshakes_counted_and_wrong_key_creates_nothing":
        handshakes_counted_and_wrong_key_creates_nothing,
    "block1_empty_last_block": block1_empty_last_block,
    "log_cannot_be_flooded": log_cannot_be_flooded,
    "hostile_broker_packets": hostile_broker_packets,
    "structured_coap_fuzz": structured_coap_fuzz,
    "poisoned_store_is_cleaned": poisoned_store_is_cleaned,
    "broker_drops_connection_for_a_message_311": broker_drops_connection_for_a_message_311,
    "broker_without_session_mqtt5": broker_without_session_mqtt5,
    "broker_without_session_mqtt311": broker_without_session_mqtt311,
}

if __name__ == "__main__":
    run(CASES)
