"""The MQTT device listener, briefly: raw MQTT 5 packets over TLS for what the
clients cannot send (Topic Aliases rebound to another device's topic, malformed
packets), and a handshake that never starts. tests/integration/test_listener.py
has the full cases."""

import json
import os
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Broker, Gateway, Pki, Subscriber, check, free_port, run,  # noqa: E402
                     wait_until, workdir)


def varint(n):
    out = b""
    while True:
        b, n = n % 128, n // 128
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def s(text):
    b = text.encode()
    return len(b).to_bytes(2, "big") + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect5(client_id):
    body = s("MQTT") + bytes([5, 0x02]) + (30).to_bytes(2, "big") + b"\x00" + s(client_id)
    return packet(0x10, body)


def publish5(topic, payload, qos=0, pid=1, alias=None):
    props = b"" if alias is None else b"\x23" + alias.to_bytes(2, "big")
    body = s(topic) + (pid.to_bytes(2, "big") if qos else b"") + varint(len(props)) + props
    return packet(0x30 | (qos << 1), body + payload)


def read_packet(sock):
    """(first byte, body), or None when the connection closed."""
    head = sock.recv(1)
    if not head:
        return None
    n, mult = 0, 1
    while True:
        b = sock.recv(1)[0]
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return head[0], body


def device(port, pki, name):
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.load_cert_chain(os.path.join(pki.dir, name + ".pem"), os.path.join(pki.dir, name + ".key"))
    raw = socket.create_connection(("127.0.0.1", port), 5)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    sock.settimeout(5)
    return sock


def puback(sock, pid):
    """The reason code of the PUBACK for pid (0 when left out)."""
    p = read_packet(sock)
    check(p and p[0] == 0x40 and p[1][:2] == pid.to_bytes(2, "big"), "PUBACK %d: %r" % (pid, p))
    return p[1][2] if len(p[1]) > 2 else 0


def stats_of(g):
    return json.loads(g.stats("--json").stdout)["mqtt_listener"]


def closed(sock):
    try:
        while True:
            p = read_packet(sock)
            if p is None:
                return True
            if p[0] >> 4 == 14:  # DISCONNECT, then the end
                continue
    except (ConnectionError, ssl.SSLError):
        return True
    except socket.timeout:
        return False


def setup(d):
    pki = Pki(d)
    pki.leaf("bike-1", "bike-1")
    broker = Broker(d, pki).start()
    g = Gateway(d, broker, pki)
    port = free_port()
    cert, key = pki.server
    with open(g.conf, "a") as f:
        f.write('mqtt_listener = { enabled = true; bind = "127.0.0.1"; port = %d; '
                'cert = "%s"; key = "%s"; ca = "%s"; };\n' % (port, cert, key, pki.ca))
    g.start()
    return pki, broker, g, port


def alias_and_malformed():
    d = workdir()
    pki, broker, g, port = setup(d)
    sub = Subscriber(broker, "redback/p1/bikes/+/telemetry")
    a = device(port, pki, "bike-1")
    a.sendall(connect5("a"))
    p = read_packet(a)
    check(p and p[0] == 0x20 and p[1][1] == 0, "CONNACK: %r" % (p,))
    own, other = "redback/p1/bikes/bike-1/telemetry", "redback/p1/bikes/bike-2/telemetry"
    a.sendall(publish5(own, b"one", qos=1, pid=1, alias=1))
    check(puback(a, 1) == 0, "own topic acknowledged")
    a.sendall(publish5("", b"two", qos=1, pid=2, alias=1))
    check(puback(a, 2) == 0, "alias to the own topic acknowledged")
    a.sendall(publish5(other, b"evil", qos=1, pid=3, alias=1))
    check(puback(a, 3) == 0x87, "another device's topic refused")
    a.sendall(publish5("", b"evil2", qos=1, pid=4, alias=1))
    check(puback(a, 4) == 0x87, "the alias rebound to it refused too")
    a.sendall(publish5("", b"x", qos=1, pid=5, alias=17))
    p = read_packet(a)
    check(p and p[0] == 0xE0 and p[1][0] == 0x94, "alias over the bound: DISCONNECT 0x94: %r"
          % (p,))
    check(closed(a), "closed after the bad alias")
    wait_until(lambda: len(sub.messages) >= 2, "the two own publishes")
    time.sleep(0.5)
    got = [(m["topic"], m["payload"]) for m in sub.messages]
    check(got == [(own, b"one"), (own, b"two")], "only the own topic, in full: %r" % got)

    # A malformed packet closes only its own connection.
    b = device(port, pki, "bike-1")
    b.sendall(connect5("b"))
    check(read_packet(b)[0] == 0x20, "second device connected")
    c = device(port, pki, "bike-1")
    c.sendall(connect5("c"))
    check(read_packet(c)[0] == 0x20, "third device connected")
    c.sendall(b"\x30\x05\x00\x09abc")  # a topic length past the packet's end
    check(closed(c), "malformed packet closes its connection")
    b.sendall(publish5(own, b"three", qos=1, pid=9))
    check(puback(b, 9) == 0, "the other connection goes on")
    b.sendall(packet(0xE0, b""))
    stats = stats_of(g)
    check(stats["denied_publish"] == 2 and stats["malformed"] == 2, "stats: %r" % stats)


def stalled_handshake():
    d = workdir()
    pki, broker, g, port = setup(d)
    raw = socket.create_connection(("127.0.0.1", port), 5)
    raw.settimeout(15)
    start = time.time()
    check(raw.recv(1) == b"", "closed")
    took = time.time() - start
    check(9 <= took <= 12, "dropped after the 10 s bound: %.1f s" % took)
    wait_until(lambda: stats_of(g)["timeouts"] == 1, "the timeout counted")


if __name__ == "__main__":
    run({"alias_and_malformed": alias_and_malformed, "stalled_handshake": stalled_handshake})
