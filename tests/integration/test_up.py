"""CoAP -> MQTT through the real gateway: DTLS with PSK and X.509, refusals,
duplicates, block-wise bodies, broker outages, plain CoAP off by default."""

import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Broker, Gateway, Pki, Subscriber, check, coap, coap_decode,  # noqa: E402
                     coap_parse, coap_raw, run, wait_until, workdir)

BIKE1 = ("bike-1", "secret-bike-1")


def setup(**gw):
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "redback/#")
    g = Gateway(d, broker, pki, **gw).start()
    return d, pki, broker, sub, g


def url(g, path, plain=False):
    return "%s://127.0.0.1:%d/%s" % ("coap" if plain else "coaps",
                                     g.plain_port if plain else g.dtls_port, path)


def post_psk_arrives(client):
    d, pki, broker, sub, g = setup()
    body = bytes(range(256)) + os.urandom(200)  # every byte value, NUL included
    f = os.path.join(d, "body.bin")
    with open(f, "wb") as fh:
        fh.write(body)
    r = coap(url(g, "bikes/bike-1/telemetry"), file=f, cf=42, psk=BIKE1, client=client)
    check(r and r.code == "2.04", "POST answered %r" % r)
    check(r.type == "ACK", "a quick PUBACK is piggybacked: %r" % r)
    m = sub.wait_for(1)[0]
    check(m["topic"] == "redback/p1/bikes/bike-1/telemetry", "topic %s" % m["topic"])
    check(m["payload"] == body, "payload differs (%d bytes vs %d)" % (len(m["payload"]), len(body)))
    check(m["qos"] == 1 and not m["retain"], "qos %d retain %s" % (m["qos"], m["retain"]))
    check(m["content_type"] == "application/octet-stream", "content type %r" % m["content_type"])
    check("device:bike-1" in m["props"], "user property %r" % m["props"])

    # QoS 0 and retain as mapped: a new subscriber gets the retained value.
    r = coap(url(g, "bikes/bike-1/status"), payload='{"riding":true}', cf=50, psk=BIKE1,
             client=client)
    check(r and r.code == "2.04", "status answered %r" % r)
    late = Subscriber(broker, "redback/p1/bikes/bike-1/status")
    m = late.wait_for(1)[0]
    check(m["retain"] and m["qos"] == 0, "retained qos0, got %r" % m)
    check(m["payload"] == b'{"riding":true}', "payload %r" % m["payload"])
    check(m["content_type"] == "application/json" and m["pfi"] == "1", "json props %r" % m)

    # QoS 2 mapping: PUT is a publish too.
    r = coap(url(g, "bikes/bike-1/workout"), method="put", payload="w1", psk=BIKE1, client=client)
    check(r and r.code == "2.04", "PUT answered %r" % r)
    check(any(x["topic"].endswith("/workout") and x["qos"] == 2 for x in sub.wait_for(3)),
          "QoS 2 publish missing")

    # DELETE on a retained mapping clears the value.
    r = coap(url(g, "bikes/bike-1/status"), method="delete", psk=BIKE1, client=client)
    check(r and r.code == "2.02", "DELETE answered %r" % r)
    msgs = sub.wait_for(4)
    check(msgs[-1]["topic"].endswith("/status") and msgs[-1]["payload"] == b"",
          "no empty retained publish: %r" % msgs[-1])
    check(g.stop() == 0, "gateway exit status")


def post_psk_gnutls():
    post_psk_arrives("coap-client-gnutls")


def post_psk_openssl():
    post_psk_arrives("coap-client-openssl")


def wrong_psk_gets_nothing():
    d, pki, broker, sub, g = setup()
    for creds in (("bike-1", "not-the-key"), ("nobody", "secret-bike-1")):
        r = coap(url(g, "bikes/%s/telemetry" % creds[0]), payload="x", psk=creds, timeout=3)
        check(r is None, "answered %r with %r" % (creds, r))
    sub.sync()
    check(sub.messages == [], "published: %r" % sub.messages)
    check(g.proc.poll() is None, "gateway died")


def refusals():
    d, pki, broker, sub, g = setup(coap="max_payload = 2000;")
    cases = [
        ("bikes/bike-2/telemetry", "post", "4.03"),   # another device's identity
        ("nowhere/at/all", "post", "4.04"),
        ("bikes/bike-1", "post", "4.04"),
        ("bikes/bike-1/telemetry", "get", "4.05"),    # up-only mapping
        ("bikes/bike-1/telemetry", "delete", "4.05"),  # not retained: nothing to clear
        ("zones/%2B/x", "post", "4.00"),
        ("zones/%23/x", "post", "4.00"),
        ("zones/a/%24SYS", "post", "4.00"),
        ("zones/%24x/y", "post", "4.00"),
        ("zones/a%2Fb/c", "post", "4.00"),             # '/' inside one Uri-Path option
    ]
    for path, method, want in cases:
        r = coap(url(g, path), method=method, payload="x", psk=BIKE1)
        check(r and r.code == want, "%s %s: wanted %s, got %r" % (method, path, want, r))
    big = os.path.join(d, "big.bin")
    with open(big, "wb") as fh:
        fh.write(os.urandom(3000))
    r = coap(url(g, "bikes/bike-1/telemetry"), file=big, block=256, psk=BIKE1)
    check(r and r.code == "4.13", "too large: %r" % r)
    check("Size1:2000" in r.options, "no Size1 in %r" % r.options)
    sub.sync()
    check(sub.messages == [], "refused requests published: %r" % sub.messages)

    # A body that fits, in 64-byte blocks, is published once and whole.
    ok = os.path.join(d, "ok.bin")
    body = os.urandom(1900)
    with open(ok, "wb") as fh:
        fh.write(body)
    r = coap(url(g, "bikes/bike-1/telemetry"), file=ok, block=64, psk=BIKE1)
    check(r and r.code == "2.04", "block-wise POST: %r" % r)
    msgs = sub.wait_for(1)
    sub.sync()
    check(len(sub.messages) == 1 and msgs[0]["payload"] == body, "block-wise body differs")
    g.wait_log("refused with 4.13")


def x509():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "redback/#")
    cert, key = pki.server
    # Gateway certificate only: devices authenticate the gateway, and are anonymous.
    g = Gateway(d, broker, pki, dtls='cert = "%s"; key = "%s";' % (cert, key)).start()
    r = coap(url(g, "public/hello"), payload="anon", ca=pki.ca)
    check(r and r.code == "2.04", "anonymous X.509 POST: %r" % r)
    r = coap(url(g, "bikes/bike-7/telemetry"), payload="x", ca=pki.ca)
    check(r and r.code == "4.01", "identity needed: %r" % r)
    check(sub.wait_for(1)[0]["payload"] == b"anon", "anonymous message missing")
    g.stop()

    # With a CA: a device certificate is required, and its CN is the identity.
    dev = pki.leaf("bike7", "bike-7")
    foreign = pki.leaf("foreign", "bike-7", ca="other-ca")
    g2 = Gateway(d, broker, pki, dtls='cert = "%s"; key = "%s"; ca = "%s"; '
                 'require_client_cert = true;' % (cert, key, pki.ca)).start()
    r = coap(url(g2, "bikes/bike-7/telemetry"), payload="signed", cert=dev, ca=pki.ca)
    check(r and r.code == "2.04", "device certificate POST: %r" % r)
    m = sub.wait_for(2)[-1]
    check(m["topic"] == "redback/p1/bikes/bike-7/telemetry" and m["payload"] == b"signed",
          "got %r" % m)
    check("device:bike-7" in m["props"], "identity property %r" % m["props"])
    r = coap(url(g2, "bikes/bike-7/telemetry"), payload="forged", cert=foreign, ca=pki.ca,
             timeout=3)
    check(r is None, "foreign CA answered %r" % r)
    r = coap(url(g2, "public/x"), payload="nocert", ca=pki.ca, timeout=3)
    check(r is None, "no certificate answered %r" % r)
    r = coap(url(g2, "bikes/bike-7/telemetry"), payload="ossl", cert=dev, ca=pki.ca,
             client="coap-client-openssl")
    check(r and r.code == "2.04", "OpenSSL device certificate POST: %r" % r)
    sub.sync()
    check([m["payload"] for m in sub.messages] == [b"anon", b"signed", b"ossl"],
          "published: %r" % [m["payload"] for m in sub.messages])


def block1_buffers_are_bounded():
    """Bodies being put together from blocks hold at most 512 full-size bodies
    across all sessions: with max_payload = 1024, the 513th device that starts
    a transfer gets 5.03 with Max-Age (counted), and room comes back as soon as
    a transfer ends."""
    d, pki, broker, sub, g = setup(coap="plain = true; max_payload = 1024;",
                                   mqtt="stats_interval = 1;")
    stats = Subscriber(broker, "tandem/it/stats")
    devices = []

    def post(s, mid, num, more, payload):
        s.send(coap_raw("public/blocks", payload, mid=mid, token=b"\x0b",
                        block1=(num, more, 2)))  # 64-byte blocks
        while True:
            data = s.recv(2048)
            typ, code, got_mid, _ = coap_decode(data)
            if typ == 0:  # a separate CON response: acknowledge it
                s.send(bytes([0x60, 0, got_mid >> 8, got_mid & 0xFF]))
            if code != "0.00":
                return code, coap_parse(data)[0]

    try:
        for i in range(513):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            devices.append(s)
            s.connect(("127.0.0.1", g.plain_port))
            s.settimeout(5)
            code, opts = post(s, 1, 0, True, bytes([i % 251]) * 64)
            if i < 512:
                check(code == "2.31", "device %d, first block: %s" % (i, code))
            else:
                check(code == "5.03" and 14 in opts, "device 513: %s %r" % (code, opts))
        code, _ = post(devices[0], 2, 1, False, b"end")
        check(code == "2.04", "the last block of device 0: %s" % code)
        code, _ = post(devices[512], 2, 0, True, b"\x01" * 64)
        check(code == "2.31", "device 513 once device 0 is done: %s" % code)
    finally:
        for s in devices:
            s.close()
    m = sub.wait_for(1)[0]
    check(m["payload"] == b"\x00" * 64 + b"end", "published %r" % m["payload"])

    def counted():
        for m in reversed(stats.messages):
            coap_stats = json.loads(m["payload"])["coap"]
            return coap_stats["block1_refused"] == 1 and coap_stats["block1_bytes"] > 0
        return False
    wait_until(counted, "block1_refused = 1 in the statistics")


def duplicate_con_published_once():
    d, pki, broker, sub, g = setup(coap="plain = true;")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", g.plain_port))
    s.settimeout(5)
    dgram = coap_raw("public/dup", b"once", mid=0x1234, token=b"\x01\x02")
    s.send(dgram)
    s.send(dgram)  # a retransmission: same Message ID

    codes = []
    end = time.monotonic() + 10
    while "2.04" not in codes and time.monotonic() < end:
        typ, code, mid, token = coap_decode(s.recv(2048))
        codes.append(code)
        if typ == 0:  # a separate CON response: acknowledge it
            s.send(bytes([0x60, 0, mid >> 8, mid & 0xFF]))
    check("2.04" in codes, "no 2.04 among %r" % codes)
    # After the answer, the same datagram again gets the same answer, not a publish.
    s.send(dgram)
    typ, code, mid, token = coap_decode(s.recv(2048))
    check(code == "2.04" and mid == 0x1234, "repeat answered %s mid %x" % (code, mid))
    sub.sync()
    check(len(sub.messages) == 1 and sub.messages[0]["payload"] == b"once",
          "published %d times" % len(sub.messages))


def broker_outage():
    """Without an offline buffer: 5.03 with Max-Age while the broker is away."""
    d, pki, broker, sub, g = setup(mqtt="offline_buffer = 0;")
    r = coap(url(g, "bikes/bike-1/telemetry"), payload="before", psk=BIKE1)
    check(r and r.code == "2.04", "before: %r" % r)
    sub.stop()
    broker.stop()
    g.wait_log("mqtt: connection to")
    r = coap(url(g, "bikes/bike-1/telemetry"), payload="during", psk=BIKE1)
    check(r and r.code == "5.03", "during: %r" % r)
    check("Max-Age:" in r.options, "no Max-Age in %r" % r.options)
    check(g.proc.poll() is None, "gateway died with the broker")
    broker.start()
    sub = Subscriber(broker, "redback/#")
    g.wait_log("mqtt: connected to", 2)
    r = coap(url(g, "bikes/bike-1/telemetry"), payload="after", psk=BIKE1)
    check(r and r.code == "2.04", "after: %r" % r)
    check(sub.wait_for(1)[0]["payload"] == b"after", "recovered publish missing")


def slow_broker_separate_response_then_timeout():
    d, pki, broker, sub, g = setup(mqtt="publish_timeout = 2;")
    # The broker freezes: the answer cannot be piggybacked, an empty ACK goes first.
    broker.pause()
    result = {}
    t = threading.Thread(target=lambda: result.update(
        r=coap(url(g, "bikes/bike-1/telemetry"), payload="slow", psk=BIKE1, timeout=10)))
    t.start()
    try:
        g.wait_log("empty ACK now")
    finally:
        broker.resume()
    t.join(30)
    r = result.get("r")
    check(r and r.code == "2.04" and r.type == "CON", "separate 2.04 expected: %r" % r)
    check(sub.wait_for(1)[0]["payload"] == b"slow", "slow publish missing")

    # Frozen for longer than publish_timeout: 5.04.
    broker.pause()
    try:
        r = coap(url(g, "bikes/bike-1/telemetry"), payload="late", psk=BIKE1, timeout=10)
    finally:
        broker.resume()
    check(r and r.code == "5.04", "wanted 5.04: %r" % r)
    g.wait_log("no acknowledgement within 2s")
    # The gateway goes on: the next request is answered normally.
    r = coap(url(g, "bikes/bike-1/telemetry"), payload="next", psk=BIKE1)
    check(r and r.code == "2.04", "after the timeout: %r" % r)


def plain_off_by_default():
    d, pki, broker, sub, g = setup()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    dgram = coap_raw("public/x", b"x", mid=7, token=b"\x07")
    for port in (g.plain_port, 5683, g.dtls_port):
        s.sendto(dgram, ("127.0.0.1", port))
    try:
        data = s.recv(2048)
        check(False, "plain CoAP answered: %r" % data)
    except (socket.timeout, ConnectionRefusedError):
        pass
    r = coap(url(g, "public/x", plain=True), payload="x", timeout=2)
    check(r is None, "coap:// answered %r" % r)
    sub.sync()
    check(sub.messages == [], "plain CoAP published %r" % sub.messages)
    # Turned on, it answers; {identity} mappings need DTLS.
    g.stop()
    g2 = Gateway(g.dir, broker, pki, coap="plain = true;").start()
    r = coap(url(g2, "public/x", plain=True), payload="x")
    check(r and r.code == "2.04", "plain on: %r" % r)
    r = coap(url(g2, "bikes/bike-1/telemetry", plain=True), payload="x")
    check(r and r.code == "4.01", "plain identity: %r" % r)


def garbage_does_not_crash():
    """Random datagrams, and CoAP messages with random codes, options and paths,
    on both ports: the gateway answers or ignores them and stays up."""
    import random
    rnd = random.Random(7)
    d, pki, broker, sub, g = setup(coap="plain = true; max_payload = 300;")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    for i in range(3000):
        if i % 3 == 0:
            data = rnd.randbytes(rnd.randrange(0, 1400))
        else:
            tkl = rnd.randrange(0, 9)
            head = bytes([0x40 | rnd.choice([0, 0x10]) | tkl, rnd.choice([1, 2, 3, 4, 5, 7, 0x45]),
                          rnd.randrange(256), rnd.randrange(256)]) + rnd.randbytes(tkl)
            opts, last = b"", 0
            for _ in range(rnd.randrange(0, 8)):
                num = rnd.choice([11, 11, 11, 12, 23, 27, 28, 60, rnd.randrange(0, 300)])
                if num < last:
                    num = last
                val = rnd.choice([b"bikes", b"bike-1", b"zones", b"+", b"#", b"$x", b"\xff",
                                  b"telemetry", b"public", rnd.randbytes(rnd.randrange(0, 20))])
                delta, last = num - last, num
                dd = delta if delta < 13 else 13
                ll = len(val) if len(val) < 13 else 13
                opts += bytes([(dd << 4) | ll])
                if dd == 13:
                    if delta - 13 > 255:
                        break
                    opts += bytes([delta - 13])
                if ll == 13:
                    opts += bytes([len(val) - 13])
                opts += val
            data = head + opts + (b"\xff" + rnd.randbytes(rnd.randrange(1, 400))
                                  if rnd.random() < 0.5 else b"")
        port = g.dtls_port if i % 10 == 0 else g.plain_port
        try:
            s.sendto(data, ("127.0.0.1", port))
        except OSError:
            pass
        if i % 50 == 0:  # keep up with the gateway rather than overflow its socket
            r = coap(url(g, "public/alive", plain=True), payload="ping", timeout=5)
            check(r is not None, "no answer after %d datagrams" % i)
    check(g.proc.poll() is None, "gateway died")
    r = coap(url(g, "bikes/bike-1/telemetry"), payload="still here", psk=BIKE1)
    check(r and r.code == "2.04", "after the garbage: %r" % r)


def sigterm_stops_cleanly():
    d, pki, broker, sub, g = setup()
    status = Subscriber(broker, "tandem/it/status")
    check(status.wait_for(1)[-1]["payload"] == b"online", "status not online")
    check(g.stop() == 0, "exit status")
    wait_until(lambda: status.messages[-1]["payload"] == b"offline", "offline status")
    check("stopped" in g.text(), "no stop in the log")


if __name__ == "__main__":
    run({f.__name__: f for f in [post_psk_gnutls, post_psk_openssl, wrong_psk_gets_nothing,
                                  refusals, x509, duplicate_con_published_once,
                                  block1_buffers_are_bounded, broker_outage,
                                  slow_broker_separate_response_then_timeout,
                                  plain_off_by_default, garbage_does_not_crash,
                                  sigterm_stops_cleanly]})
