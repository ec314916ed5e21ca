"""The upstream MQTT connection: TLS verification, mutual TLS, plain TCP,
MQTT 3.1.1, the Last Will, max_inflight."""

import os
import random
import signal
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Broker, Gateway, Pki, Subscriber, check, coap, coap_raw,  # noqa: E402
                     wait_until, workdir)

BIKE1 = ("bike-1", "secret-bike-1")


def url(g, path):
    return "coaps://127.0.0.1:%d/%s" % (g.dtls_port, path)


def post_arrives(g, sub, payload):
    n = len(sub.messages)
    r = coap(url(g, "bikes/bike-1/telemetry"), payload=payload, psk=BIKE1)
    check(r and r.code == "2.04", "POST answered %r" % r)
    m = sub.wait_for(n + 1)[-1]
    check(m["payload"] == payload.encode(), "arrived %r" % m["payload"])
    return m


def mutual_tls():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, require_certificate=True).start()
    sub = Subscriber(broker, "redback/#")
    cert, key = pki.leaf("gw-client", "tandem-it")
    g = Gateway(d, broker, pki, mqtt='cert = "%s"; key = "%s";' % (cert, key)).start()
    post_arrives(g, sub, "mutual")
    g.stop()
    # Without a client certificate the broker refuses the gateway: devices get 5.03
    # (with no offline buffer to keep their messages in).
    g2 = Gateway(d, broker, pki, mqtt="offline_buffer = 0;").start(wait_connected=False)
    g2.wait_log("cannot connect to")
    r = coap(url(g2, "bikes/bike-1/telemetry"), payload="x", psk=BIKE1)
    check(r and r.code == "5.03", "unconnected gateway answered %r" % r)


def broker_certificate_verified():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    # A CA that did not sign the broker's certificate: no connection.
    g = Gateway(d, broker, pki, mqtt='ca = "%s";' % os.path.join(d, "other-ca.pem"))
    g.start(wait_connected=False)
    g.wait_log("cannot connect to")
    check(g.count("mqtt: connected") == 0, "connected to an unverified broker")
    g.stop()
    # A certificate for another name: refused with verify_hostname, accepted without.
    other = pki.leaf("elsewhere", "elsewhere.example", san="DNS:elsewhere.example", server=True)
    broker2 = Broker(d, pki, server=other).start()
    g2 = Gateway(d, broker2, pki).start(wait_connected=False)
    g2.wait_log("cannot connect to")
    check(g2.count("mqtt: connected") == 0, "hostname not verified")
    g2.stop()
    g3 = Gateway(d, broker2, pki, mqtt="verify_hostname = false;").start()
    check(g3.count("mqtt: connected") == 1, "verify_hostname = false did not connect")


def plain_tcp_and_mqtt311():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, plain=True).start()
    sub = Subscriber(broker, "redback/#")
    g = Gateway(d, broker, pki, uri="mqtt://127.0.0.1:%d" % broker.plain_port,
                mqtt="version = 3;").start()
    m = post_arrives(g, sub, "three-one-one")
    check(m["content_type"] == "" and m["props"] == "", "MQTT 3.1.1 has no properties: %r" % m)
    check(m["qos"] == 1, "qos %d" % m["qos"])


def last_will_on_crash():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    status = Subscriber(broker, "tandem/it/status")
    g = Gateway(d, broker, pki).start()
    wait_until(lambda: status.messages and status.messages[-1]["payload"] == b"online",
               "online status")
    g.proc.send_signal(signal.SIGKILL)
    g.proc.wait(10)
    wait_until(lambda: status.messages[-1]["payload"] == b"offline", "the Last Will")
    # Retained: a later subscriber learns the gateway is offline.
    late = Subscriber(broker, "tandem/it/status")
    m = late.wait_for(1)[0]
    check(m["payload"] == b"offline" and m["retain"], "retained offline: %r" % m)


def max_inflight_is_a_bound():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "redback/#")
    g = Gateway(d, broker, pki, mqtt="max_inflight = 1; publish_timeout = 20;").start()
    broker.pause()
    result = {}
    t = threading.Thread(target=lambda: result.update(
        r=coap(url(g, "bikes/bike-1/telemetry"), payload="first", psk=BIKE1, timeout=20)))
    try:
        t.start()
        g.wait_log("empty ACK now")
        r = coap(url(g, "bikes/bike-2/telemetry"), payload="second",
                 psk=("bike-2", "secret-bike-2"))
        check(r and r.code == "5.03" and "Max-Age:" in r.options, "over the bound: %r" % r)
    finally:
        broker.resume()
    t.join(30)
    check(result.get("r") and result["r"].code == "2.04", "first: %r" % result.get("r"))
    sub.sync()
    check([m["payload"] for m in sub.messages] == [b"first"], "published %r" % sub.messages)


def restored_unsubscribe_311():
    """An earlier Tandem (on Paho 1.3.12) left an UNSUBSCRIBE from
    `$tandem/kick` in its store (state_dir/mqtt), in the 3.1.1 layout Paho
    could not read back. The first start after the upgrade takes the store
    over without crashing: the UNSUBSCRIBE is no device's message, so
    nothing is published from it, its record goes, and readings go on."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "redback/#")
    state = os.path.join(d, "state")
    os.makedirs(os.path.join(state, "mqtt"))
    record = os.path.join(state, "mqtt", "c-1.msg")
    with open(record, "wb") as f:  # type UNSUBSCRIBE, token 1, 1 topic
        f.write(struct.pack("=iii", 10, 1, 1) + b"$tandem/kick\0")
    g = Gateway(d, broker, pki, mqtt="version = 3;", gateway='state_dir = "%s";' % state).start()
    wait_until(lambda: not os.path.exists(record), "the UNSUBSCRIBE's record removed")
    post_arrives(g, sub, "after-restore")
    check(g.proc.poll() is None, "the gateway died")
    check([m["payload"] for m in sub.messages] == [b"after-restore"],
          "published: %r" % sub.messages)
    check(not os.listdir(os.path.join(state, "offline")), "left in the offline buffer")


def broker_killed_under_load(version):
    """QoS 1 readings keep coming (plain CoAP, NON) while the broker is killed
    and restarted, again and again, often while a publish is being written or
    the offline buffer drains (AddressSanitizer builds check every buffer the
    client and the store hold across those losses). The gateway reconnects
    each time, its offline buffer drains to empty, a reading after the last
    restart arrives, and the broker only ever sees the configured protocol
    version."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, persistent=True).start()  # keeps the session: the client resends
    g = Gateway(d, broker, pki, coap="plain = true;",
                mqtt="version = %d; publish_timeout = 5;" % version, log_level="info").start()
    stop = threading.Event()

    def load():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        mid = 0
        while not stop.is_set():
            mid = (mid + 1) & 0xFFFF
            s.sendto(coap_raw("public/n%d" % (mid % 7), payload=b"x" * 40, mid=mid,
                              confirmable=False, token=struct.pack("!H", mid)),
                     ("127.0.0.1", g.plain_port))
            try:
                while True:
                    s.recv(2048)
            except BlockingIOError:
                pass
            time.sleep(0.0025)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        for _ in range(10):
            n = g.count("mqtt: connected to")
            time.sleep(random.uniform(0.05, 0.8))  # mostly while the backlog drains
            broker.kill()
            time.sleep(random.uniform(0.0, 0.3))
            broker.start()
            wait_until(lambda: g.count("mqtt: connected to") > n or g.proc.poll() is not None,
                       "a reconnection", timeout=60)
            check(g.proc.poll() is None, "the gateway died:\n" + g.text()[-3000:])
    finally:
        stop.set()
        t.join(5)
    store = os.path.join(d, "state-%d" % g.dtls_port, "offline")
    start = time.monotonic()
    wait_until(lambda: not [f for f in os.listdir(store) if f.endswith(".rec")],
               "the offline buffer drained", timeout=120)
    print("drained in %.1fs" % (time.monotonic() - start), flush=True)
    sub = Subscriber(broker, "redback/p1/public/after")
    # Under a sanitizer on a loaded machine the first answer after ten broker
    # restarts can take longer than coap-client's default 5 s: wait up to 20 s.
    r = coap("coap://127.0.0.1:%d/public/after" % g.plain_port, payload="after", timeout=20)
    check(r and r.code == "2.04",
          "POST after the restarts answered %r; the gateway's log ends:\n%s" % (r, g.text()[-4000:]))
    sub.wait_for(1)
    log = open(broker.log).read()
    want = "(p5," if version == 5 else "(p2,"
    check("(p1," not in log and want in log, "protocol versions seen by the broker")


def broker_killed_under_load_311():
    broker_killed_under_load(3)


def broker_killed_under_load_5():
    broker_killed_under_load(5)


if __name__ == "__main__":
    from harness import run
    run({f.__name__: f for f in [mutual_tls, broker_certificate_verified, plain_tcp_and_mqtt311,
                                  last_will_on_crash, max_inflight_is_a_bound,
                                  restored_unsubscribe_311, broker_killed_under_load_311,
                                  broker_killed_under_load_5]})
