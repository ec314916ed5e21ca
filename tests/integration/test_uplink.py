"""The uplink to the broker, held to what a gateway at the edge needs: a
broker killed again and again loses no reading answered 2.04 and leaves no
memory behind; QoS 2 readings arrive exactly once across broker restarts; a
broker's Receive Maximum is never overrun; a broker whose certificate is for
another name is refused, and the log says why; a store left by the previous
version (Paho MQTT C's records) is published.

Devices are plain CoAP over UDP from this script (confirmable, one request
outstanding each, the answer matched by token), so that hundreds of readings
cost no process each. The subscriber is MQTT over plain TCP from this script
too, with a persistent session and the receiver's side of QoS 2 (a packet id
seen is not delivered again before its PUBREL), so that what it counts is what
the broker delivered. Between the gateway and Mosquitto runs a TCP relay of
this script's own: it can refuse the gateway until the subscriber is back
after a broker restart (Mosquitto acknowledges a publish before it saves the
copy it queues for an absent subscriber, so a kill -9 of the broker could
otherwise lose what the gateway did deliver), and on plain mqtt:// it reads
the packets both ways: it counts the publishes in flight, holds the broker's
acknowledgements, and can add a Receive Maximum to the CONNACK."""

import os
import queue
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (WAIT, Broker, Gateway, Pki, _mqtt_varint, _parse_props,  # noqa: E402
                     check, coap_decode, coap_raw, free_port, mqtt_ack,
                     mqtt_connect, mqtt_props, mqtt_subscribe, run, under_asan, wait_until,
                     workdir)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "paho-store")

MAPPINGS = """
  { name = "q1"; resource = "up1/{name}"; topic = "uplink/q1/{name}"; direction = "up"; qos = 1; },
  { name = "q2"; resource = "up2/{name}"; topic = "uplink/q2/{name}"; direction = "up"; qos = 2; }
"""


def private_kib(pid):
    """The process's private dirty memory, KiB (what it wrote and owns)."""
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1])
    raise AssertionError("no Private_Dirty in smaps_rollup")


class Device:
    """A CoAP device on plain UDP: confirmable POSTs, one at a time. The answer
    is the piggybacked one or a separate one (matched by token; a confirmable
    one is acknowledged); the request is sent again (same Message ID) every 2 s
    until an answer or an empty ACK comes. answers: payload -> code (None: no
    answer within the bound)."""

    _next = [0]
    _lock = threading.Lock()

    def __init__(self, g, path):
        self.path = path
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.connect(("127.0.0.1", g.plain_port))
        self.answers = {}
        with Device._lock:
            Device._next[0] += 1
            self.id = Device._next[0]
        self.mid = random.randrange(0x10000)

    def post(self, payload, timeout=30.0):
        self.mid = (self.mid + 1) & 0xFFFF
        mid, token = self.mid, struct.pack("!HH", self.id, self.mid)
        msg = coap_raw(self.path, payload, mid=mid, token=token)
        deadline = time.monotonic() + timeout
        resend_at, acked = 0.0, False
        code = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            if not acked and now >= resend_at:
                self.s.send(msg)
                resend_at = now + 2.0
            self.s.settimeout(max(0.01, min(deadline, resend_at if not acked else deadline) - now))
            try:
                data = self.s.recv(2048)
            except socket.timeout:
                continue
            except ConnectionRefusedError:
                continue
            typ, rcode, rmid, rtok = coap_decode(data)
            if typ == 0:  # a confirmable (separate) response: acknowledge it
                self.s.send(struct.pack("!BBH", 0x60, 0, rmid))
            if typ == 2 and rmid == mid and rcode == "0.00":
                acked = True  # the answer follows separately
                continue
            if rtok == token and rcode != "0.00":
                code = rcode
                break
        self.answers[payload] = code
        return code

    def acked(self):
        return {p for p, c in self.answers.items() if c == "2.04"}


class Load:
    """Devices each posting readings b"<name>-<seq>" to <prefix>/<name>, one
    after another (pace seconds apart), until stopped (or count readings
    each)."""

    def __init__(self, g, n, prefix="up1", count=None, tag="d", pace=0.0):
        self.pace = pace
        self.devices = [Device(g, "%s/%s%d" % (prefix, tag, i)) for i in range(n)]
        self.stop_ev = threading.Event()
        self.count = count
        self.threads = [threading.Thread(target=self._run, args=(d, "%s%d" % (tag, i)),
                                         daemon=True) for i, d in enumerate(self.devices)]
        for t in self.threads:
            t.start()

    def _run(self, dev, name):
        seq = 0
        while not self.stop_ev.is_set() and (self.count is None or seq < self.count):
            dev.post(b"%s-%d" % (name.encode(), seq))
            seq += 1
            if self.pace:
                self.stop_ev.wait(self.pace)  # a reading every so often, not a flood

    def stop(self):
        self.stop_ev.set()
        self.join()

    def join(self):
        for t in self.threads:
            t.join(40)
            check(not t.is_alive(), "a device did not finish its last request")

    def answers(self):
        out = {}
        for d in self.devices:
            out.update(d.answers)
        return out

    def acked(self):
        return {p for d in self.devices for p in d.acked()}

    def answered(self):
        return sum(1 for d in self.devices for c in list(d.answers.values()) if c == "2.04")


def _read_packet(buf):
    """(kind, body, rest) of the first whole MQTT packet in buf, or None."""
    if len(buf) < 2:
        return None
    n, mult, i = 0, 1, 1
    while True:
        if i >= len(buf) or i > 4:
            return None
        n += (buf[i] & 0x7F) * mult
        mult *= 128
        i += 1
        if not buf[i - 1] & 0x80:
            break
    if len(buf) < i + n:
        return None
    return buf[0], buf[i:i + n], buf[i + n:]


def _packet(kind, body):
    return bytes([kind]) + _mqtt_varint(len(body)) + body


class Collector:
    """A subscriber over plain TCP with a persistent session (MQTT 3.1.1, clean
    session 0), the filter at QoS 2, the receiver's side of QoS 2 kept across
    its connections. received: payloads in the order delivered."""

    def __init__(self, broker, filt, client_id="collector"):
        self.broker, self.filt, self.client_id = broker, filt, client_id
        self.received = []
        self.waiting_rel = set()
        self.lock = threading.Lock()
        self.sock = None
        self.reconnect()

    def reconnect(self):
        """Connects (again) and subscribes; returns once the SUBACK came."""
        if self.sock:
            self.sock.close()
        s = socket.create_connection(("127.0.0.1", self.broker.plain_port), WAIT)
        s.settimeout(WAIT)
        s.sendall(mqtt_connect(self.client_id, version=4, clean=False, keepalive=600))
        s.sendall(mqtt_subscribe([self.filt], version=4, pid=1, qos=2))
        self.suback = threading.Event()
        self.sock = s
        threading.Thread(target=self._read, args=(s,), daemon=True).start()
        check(self.suback.wait(WAIT), "no SUBACK for the collector")

    def _read(self, s):
        buf = b""
        s.settimeout(None)
        while True:
            try:
                data = s.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while True:
                p = _read_packet(buf)
                if not p:
                    break
                kind, body, buf = p
                t = kind >> 4
                try:
                    if t == 3:
                        qos = (kind >> 1) & 3
                        tl = struct.unpack("!H", body[:2])[0]
                        i = 2 + tl
                        pid = struct.unpack("!H", body[i:i + 2])[0] if qos else 0
                        payload = body[i + 2:] if qos else body[i:]
                        with self.lock:
                            if qos < 2 or pid not in self.waiting_rel:
                                self.received.append(payload)
                            if qos == 2:
                                self.waiting_rel.add(pid)
                        if qos:
                            s.sendall(mqtt_ack(4 if qos == 1 else 5, pid, 4))
                    elif t == 6:
                        pid = struct.unpack("!H", body[:2])[0]
                        with self.lock:
                            self.waiting_rel.discard(pid)
                        s.sendall(mqtt_ack(7, pid, 4))
                    elif t == 9:
                        self.suback.set()
                except OSError:
                    return

    def payloads(self):
        with self.lock:
            return list(self.received)

    def wait_for(self, want, what, timeout=60):
        """Waits until every payload in want has arrived."""
        try:
            wait_until(lambda: set(want) <= set(self.payloads()), what, timeout=timeout)
        except AssertionError:
            missing = sorted(set(want) - set(self.payloads()))
            raise AssertionError("%s: %d of %d missing, e.g. %r" %
                                 (what, len(missing), len(want), missing[:10]))


class Relay:
    """A TCP relay from self.port to the broker's port. While not open it
    takes connections and closes them at once (a broker that is down, to the
    gateway). With parse, it reads MQTT packets both ways: publishes in flight
    from the gateway (QoS 1 until PUBACK, QoS 2 until PUBCOMP or a failed
    PUBREC) are counted per connection (max_outstanding); receive_maximum adds
    that property to an MQTT 5 CONNACK (or sets it to that value); the broker's
    packets of the types in hold are kept back (and lost with the connection).
    With delay (seconds), what the broker sends reaches the gateway that long
    after the relay read it, and is lost if the connection ends meanwhile."""

    def __init__(self, upstream_port, parse=False, receive_maximum=None, delay=0.0):
        self.upstream_port, self.parse, self.receive_maximum = upstream_port, parse, \
            receive_maximum
        self.delay = delay
        self.port = free_port()
        self.open = True
        self.hold = set()  # packet types kept back
        self.held = []  # (packet name, packet id) of what was held back
        self.dup_ids = set()  # packet ids of publishes sent again (DUP)
        self.rel_ids = set()  # packet ids of PUBRELs
        self.lock = threading.Lock()
        self.max_outstanding = 0
        self.publishes = 0
        self.dups = 0
        self.pubrels = 0
        self.connack_props = []  # the CONNACK properties Mosquitto sent, per connection
        self.conns = []
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", self.port))
        self.ls.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _reset(s):
        """Ends the connection now with a reset, as a killed broker's system
        does when data it never read is waiting. The shutdown of the reading
        side wakes the other thread's recv on it (a close alone would wait for
        that recv to return); the last close sends the reset."""
        for f in (lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0)),
                  lambda: s.shutdown(socket.SHUT_RD), s.close):
            try:
                f()
            except OSError:
                pass

    def _accept(self):
        while True:
            try:
                down, _ = self.ls.accept()
            except OSError:
                return
            if not self.open:
                self._reset(down)
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), WAIT)
            except OSError:
                self._reset(down)
                continue
            conn = {"down": down, "up": up, "outstanding": set(), "later": queue.Queue()}
            with self.lock:
                self.conns.append(conn)
            if self.delay:
                threading.Thread(target=self._later, args=(conn,), daemon=True).start()
            threading.Thread(target=self._pump, args=(conn, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(conn, False), daemon=True).start()

    def close_all(self):
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            self._reset(c["down"])
            self._reset(c["up"])

    def _from_gateway(self, conn, kind, body):
        t = kind >> 4
        if t == 3 and (kind >> 1) & 3:
            tl = struct.unpack("!H", body[:2])[0]
            pid = struct.unpack("!H", body[2 + tl:4 + tl])[0]
            with self.lock:
                self.publishes += 1
                if kind & 0x08:
                    self.dups += 1
                    self.dup_ids.add(pid)
                conn["outstanding"].add(pid)
                self.max_outstanding = max(self.max_outstanding, len(conn["outstanding"]))
        elif t == 6:
            with self.lock:
                self.pubrels += 1
                self.rel_ids.add(struct.unpack("!H", body[:2])[0])
        return _packet(kind, body)

    def _from_broker(self, conn, kind, body):
        t = kind >> 4
        if t == 2 and self.receive_maximum and len(body) > 2:
            props, _ = _parse_props(body, 2)
            self.connack_props.append(dict(props))
            if props.get(0x21) != self.receive_maximum:
                props[0x21] = self.receive_maximum
                body = body[:2] + mqtt_props(sorted(props.items()))
        elif t in (4, 5, 7) and len(body) >= 2:
            pid = struct.unpack("!H", body[:2])[0]
            failed = t == 5 and len(body) > 2 and body[2] >= 0x80
            if t != 5 or failed:
                with self.lock:  # before the gateway can see it
                    conn["outstanding"].discard(pid)
        if t in self.hold:
            with self.lock:
                self.held.append(({4: "PUBACK", 5: "PUBREC", 7: "PUBCOMP"}.get(t, str(t)),
                                  struct.unpack("!H", body[:2])[0] if len(body) >= 2 else 0))
            return b""
        return _packet(kind, body)

    def _pump(self, conn, from_gateway):
        src, dst = (conn["down"], conn["up"]) if from_gateway else (conn["up"], conn["down"])
        buf = b""
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._reset(dst)
                self._reset(src)
                conn["later"].put((0, None))
                return
            if not self.parse:
                out = data
            else:
                buf += data
                out = b""
                while True:
                    p = _read_packet(buf)
                    if not p:
                        break
                    kind, body, buf = p
                    out += (self._from_gateway if from_gateway else self._from_broker)(
                        conn, kind, body)
            if out and not from_gateway and self.delay:
                conn["later"].put((time.monotonic() + self.delay, out))
                continue
            try:
                if out:
                    dst.sendall(out)
            except OSError:
                self._reset(src)
                return

    def _later(self, conn):
        """Sends what the broker sent once its delay has passed."""
        while True:
            due, out = conn["later"].get()
            if out is None:
                return
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                conn["down"].sendall(out)
            except OSError:
                return


def connected_lines(g):
    return g.count("mqtt: connected to")


# --- 1. A broker killed and restarted 20 times under load

FLAPS = 20
# Seconds between a device's readings (its answer comes first): about 1,000
# readings a second from the 8 devices, what the subscriber keeps up with.
PACE = float(os.environ.get("UPLINK_PACE", "0.005"))


def broker_flapping(version, memory_bound):
    """8 devices post QoS 1 readings while the broker is killed (SIGKILL) and
    restarted 20 times. Every reading answered 2.04 arrives; with memory_bound,
    the gateway's private memory after the run (load stopped, everything
    delivered) is within 8 MiB of what it was after a warm-up (load and one
    restart, then the same quiet point)."""
    d = workdir()
    pki = Pki(d)
    # No persistence: the relay lets the gateway in only while the subscriber
    # is connected, and with no bound on what Mosquitto has in flight to it
    # everything is on its way to the subscriber before the gateway's PUBACK.
    # Mosquitto writes a PUBACK before it forwards the message to the
    # subscriber (in the same turn of its loop, or the next): the relay hands
    # the broker's packets on 20 ms late, so a PUBACK that the gateway sees was
    # written well before the kill, and one written just before it is lost
    # with the connection (the gateway sends that reading again).
    broker = Broker(d, pki, plain=True, extra="max_inflight_messages 0\n").start()
    relay = Relay(broker.port, delay=0.02)
    sub = Collector(broker, "uplink/#")
    g = Gateway(d, broker, pki, coap="plain = true;", mappings=MAPPINGS, log_level="info",
                uri="mqtts://127.0.0.1:%d" % relay.port, mqtt="version = %d;" % version).start()

    def flap():
        n = connected_lines(g)
        relay.open = False  # the gateway comes back only once the subscriber has
        broker.kill()
        relay.close_all()
        broker.start()
        sub.reconnect()
        relay.open = True
        wait_until(lambda: connected_lines(g) > n or g.proc.poll() is not None,
                   "the gateway's reconnection", timeout=60)
        check(g.proc.poll() is None, "the gateway died:\n" + g.text()[-3000:])

    def quiet(load):
        load.stop()
        acked = load.acked()
        sub.wait_for(acked, "every reading answered 2.04")
        return acked

    # Warm-up: load, one restart, load again.
    load = Load(g, 8, tag="w", pace=PACE)
    wait_until(lambda: load.answered() >= 80, "the warm-up readings", timeout=60)
    flap()
    n = load.answered()
    wait_until(lambda: load.answered() >= n + 80, "readings after the warm-up restart", timeout=60)
    quiet(load)
    warm = load.answers()
    before = private_kib(g.proc.pid)
    rss_before = int(open("/proc/%d/status" % g.proc.pid).read().split("VmRSS:")[1].split()[0])

    load = Load(g, 8, pace=PACE)
    start = time.monotonic()
    for i in range(FLAPS):
        n = load.answered()
        # Readings flow on this connection, then the broker dies at some point
        # of what follows.
        wait_until(lambda: load.answered() >= n + 8, "readings after restart %d" % i, timeout=60)
        time.sleep(random.uniform(0.0, 0.4))  # where in the traffic the kill lands
        flap()
    took = time.monotonic() - start
    acked = quiet(load)
    after = private_kib(g.proc.pid)
    rss_after = int(open("/proc/%d/status" % g.proc.pid).read().split("VmRSS:")[1].split()[0])
    answers = load.answers()
    codes = list(answers.values())
    got = sub.payloads()
    print("MQTT %d: %d restarts in %.1f s; readings %d, 2.04 %d, 5.03 %d, 5.04 %d, none %d; "
          "arrived %d (duplicates %d); gateway private memory %.1f MiB -> %.1f MiB "
          "(RSS %.1f -> %.1f MiB); reconnections %d, MQTT clients made again %d" %
          (version, FLAPS, took, len(codes), codes.count("2.04"), codes.count("5.03"),
           codes.count("5.04"), codes.count(None), len(set(got)), len(got) - len(set(got)),
           before / 1024, after / 1024, rss_before / 1024, rss_after / 1024,
           connected_lines(g), g.count("created again")), flush=True)
    check(len(acked) >= FLAPS * 8, "too few readings answered 2.04 to judge: %d" % len(acked))
    check(acked <= set(got), "lost: %r" % sorted(acked - set(got))[:10])
    stray = set(got) - set(answers) - set(warm)
    check(not stray, "arrived but never sent: %r" % sorted(stray)[:10])
    if memory_bound and under_asan(g.proc.pid):
        print("memory bound not checked: AddressSanitizer's quarantine holds freed memory")
    elif memory_bound:
        check(after - before <= 8 * 1024,
              "the gateway's private memory grew from %.1f MiB to %.1f MiB over %d broker "
              "restarts" % (before / 1024, after / 1024, FLAPS))


def broker_flapping_loses_nothing_mqtt5():
    broker_flapping(5, memory_bound=False)


def broker_flapping_loses_nothing_mqtt311():
    broker_flapping(3, memory_bound=False)


def broker_flapping_loses_nothing_and_memory_returns_mqtt5():
    broker_flapping(5, memory_bound=True)


def broker_flapping_loses_nothing_and_memory_returns_mqtt311():
    broker_flapping(3, memory_bound=True)


# --- 2. QoS 2 exactly once across broker restarts

def qos2_exactly_once(version, window=True):
    """4 devices post QoS 2 readings. Three times, the relay holds back the
    broker's PUBCOMPs until one is held, then its PUBRECs too until one is held
    (the gateway has a PUBREL waiting for its PUBCOMP and a publish waiting for
    its PUBREC),
    then the broker restarts (SIGTERM: it saves its sessions, so what it
    received stays received). The gateway sends again what it had in flight:
    the publishes with the same packet ids (DUP), the PUBRELs. Each reading
    answered 2.04 arrives exactly once, and no reading arrives twice."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, persistent="at_exit", plain=True).start()
    relay = Relay(broker.plain_port, parse=True)
    # Mosquitto takes at most max_inflight_messages (20) QoS 2 publishes in
    # flight from a client; over that it answers PUBREC "quota exceeded" and
    # drops the message, which an MQTT 3.1.1 PUBREC cannot say (MQTT 5 gets it
    # as the CONNACK's Receive Maximum). The backlog after a restart would
    # overrun it: with 3.1.1 the gateway is held to that window.
    window = " max_inflight = 20;" if version == 3 and window else ""
    sub = Collector(broker, "uplink/#")
    g = Gateway(d, broker, pki, coap="plain = true;", mappings=MAPPINGS, log_level="info",
                uri="mqtt://127.0.0.1:%d" % relay.port,
                mqtt="version = %d; publish_timeout = 20;%s" % (version, window)).start()
    load = Load(g, 4, prefix="up2", pace=0.02)

    def held(name):
        return {pid for n, pid in list(relay.held) if n == name}

    for i in range(3):
        n = load.answered()
        wait_until(lambda: load.answered() >= n + 10, "readings before restart %d" % i,
                   timeout=60)
        relay.held.clear()
        relay.hold = {7}  # a PUBCOMP first: a PUBREL waits for it
        wait_until(lambda: held("PUBCOMP"), "a PUBCOMP held back", timeout=30)
        relay.hold = {5, 7}  # then a PUBREC: a publish waits for it
        wait_until(lambda: held("PUBREC"), "a PUBREC held back", timeout=30)
        t0 = time.monotonic()
        relay.dup_ids.clear()
        relay.rel_ids.clear()
        c = connected_lines(g)
        broker.stop()
        relay.close_all()
        relay.hold = set()
        broker.start()
        sub.reconnect()
        wait_until(lambda: connected_lines(g) > c, "the gateway's reconnection", timeout=60)
        # The session resumed: the PUBREL whose PUBCOMP was lost is sent
        # again, the publish whose PUBREC was lost too, with its packet id.
        wait_until(lambda: held("PUBCOMP") & relay.rel_ids, "the PUBREL sent again",
                   timeout=30)
        wait_until(lambda: held("PUBREC") & relay.dup_ids, "the publish sent again (DUP)",
                   timeout=30)
        print("restart %d: connected again after %.1f s" % (i, time.monotonic() - t0), flush=True)
    n = load.answered()
    wait_until(lambda: load.answered() >= n + 10, "readings after the restarts", timeout=60)
    load.stop()
    acked = load.acked()
    print("at most %d publishes in flight on a connection" % relay.max_outstanding, flush=True)
    sub.wait_for(acked, "every QoS 2 reading answered 2.04")
    sub_got = sub.payloads()
    # What came after the last reading: a probe through the same path, so that
    # a late duplicate would be seen.
    last = Device(g, "up2/probe")
    check(last.post(b"probe") == "2.04", "the probe reading was not answered 2.04")
    sub.wait_for([b"probe"], "the probe")
    got = sub.payloads()
    codes = list(load.answers().values())
    dup = sorted({p for p in got if got.count(p) > 1})
    print("MQTT %d: readings %d, 2.04 %d, other %d; arrived %d, more than once %d; "
          "publishes sent again (DUP) %d, PUBRELs %d" %
          (version, len(codes), codes.count("2.04"), len(codes) - codes.count("2.04"),
           len(set(got)), len(dup), relay.dups, relay.pubrels), flush=True)
    check(len(acked) >= 30, "too few readings answered 2.04: %d" % len(acked))
    check(acked <= set(sub_got), "lost: %r" % sorted(acked - set(sub_got))[:10])
    check(not dup, "arrived more than once: %r" % dup[:10])


def qos2_exactly_once_across_broker_restart_mqtt5():
    qos2_exactly_once(5)


def qos2_exactly_once_across_broker_restart_mqtt311():
    qos2_exactly_once(3)


def qos2_exactly_once_across_broker_restart_mqtt311_any_window():
    """The same with the default max_inflight (1000): the gateway's uplink
    keeps within what the broker takes without being told."""
    qos2_exactly_once(3, window=False)


def qos2_backlog_within_broker_window_mqtt311():
    """MQTT 3.1.1 has no Receive Maximum, yet Mosquitto takes at most 20 QoS 2
    publishes in flight from a client and drops the others while answering
    PUBREC (logged "rc151", quota exceeded; a 3.1.1 PUBREC cannot carry it).
    200 QoS 2 readings answered 2.04 from the offline buffer, then the broker
    comes up: every one of them arrives, exactly once."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, plain=True, extra="log_type all\n")
    relay = Relay(broker.plain_port)
    relay.open = False  # until the subscriber is there
    g = Gateway(d, broker, pki, coap="plain = true;", mappings=MAPPINGS, log_level="info",
                uri="mqtt://127.0.0.1:%d" % relay.port, mqtt="version = 3;")
    g.start(wait_connected=False)
    g.wait_log("cannot connect to")
    dev = Device(g, "up2/backlog")
    payloads = [b"backlog-%d" % i for i in range(200)]
    for p in payloads:
        check(dev.post(p) == "2.04", "%r was not answered 2.04 while offline" % p)
    broker.start()
    sub = Collector(broker, "uplink/#")
    relay.open = True
    g.wait_log("mqtt: connected to")
    try:
        sub.wait_for(payloads, "the QoS 2 backlog", timeout=30)
    finally:
        refused = open(broker.log).read().count("rc151")
        print("Mosquitto answered %d PUBRECs \"quota exceeded\"" % refused, flush=True)
    got = sub.payloads()
    check(sorted(got) == sorted(payloads), "arrived: %r" % got)


def qos2_exactly_once_across_gateway_kill():
    """The gateway is killed (SIGKILL) while the broker holds QoS 2 readings
    it took (PUBREC sent, held back by the relay) and awaits their PUBREL.
    The broker keeps the session; the gateway, started again, resumes it and
    sends those readings again with DUP under the packet identifiers the
    broker holds, and gives its new publishes other identifiers: a new reading
    under a held identifier would be taken as a duplicate and lost. Every
    reading answered 2.04 arrives exactly once."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, plain=True).start()
    relay = Relay(broker.plain_port, parse=True)
    sub = Collector(broker, "uplink/#")
    g = Gateway(d, broker, pki, coap="plain = true;", mappings=MAPPINGS, log_level="info",
                uri="mqtt://127.0.0.1:%d" % relay.port).start()
    dev = Device(g, "up2/kill")
    # A few readings first, so the gateway's packet identifiers do not start
    # where a new gateway's would.
    payloads = [b"live-%d" % i for i in range(5)]
    for p in payloads:
        check(dev.post(p) == "2.04", "%r was not answered 2.04" % p)
    c = connected_lines(g)
    relay.open = False
    relay.close_all()
    g.wait_log("cannot connect to")
    buffered = [b"buffered-%d" % i for i in range(40)]
    for p in buffered:
        check(dev.post(p) == "2.04", "%r was not answered 2.04 while offline" % p)
    payloads += buffered
    relay.hold = {5}  # the broker's PUBRECs: it holds each identifier until a PUBREL
    relay.open = True
    wait_until(lambda: connected_lines(g) > c, "the gateway's reconnection", timeout=60)
    wait_until(lambda: len(relay.held) >= 15, "PUBRECs held back", timeout=30)
    held = sorted({pid for n, pid in list(relay.held)})
    g.proc.kill()
    g.proc.wait(WAIT)
    relay.close_all()
    relay.hold = set()
    relay.dup_ids.clear()
    g.restart()
    g.wait_log("mqtt: connected to")
    sub.wait_for(payloads, "every reading answered 2.04", timeout=60)
    check(Device(g, "up2/probe").post(b"probe") == "2.04", "the probe was not answered 2.04")
    sub.wait_for([b"probe"], "the probe")
    got = sub.payloads()
    dup = sorted({p for p in got if got.count(p) > 1})
    print("identifiers the broker held at the kill: %d; sent again with DUP after the restart: "
          "%d; readings %d, arrived %d, more than once %d" %
          (len(held), len(relay.dup_ids & set(held)), len(payloads), len(set(got)), len(dup)),
          flush=True)
    check(set(held) <= relay.dup_ids, "not sent again under their identifiers: %r" %
          sorted(set(held) - relay.dup_ids)[:10])
    check(not dup, "arrived more than once: %r" % dup[:10])


# --- 3. Receive Maximum 2

def never_overrun(version):
    """16 devices post 12 readings each, QoS 1 and 2 at once, through a relay
    that counts the gateway's publishes in flight. MQTT 5: the CONNACK carries
    Receive Maximum 2 (Mosquitto's max_inflight_messages, which 2.0.11 sends as
    its Receive Maximum but does not enforce; the relay makes sure of it);
    MQTT 3.1.1 has no such property, so the bound is the gateway's own
    max_inflight = 2 (devices over it get 5.03). Never more than 2 in flight;
    every reading answered 2.04 arrives."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, plain=True, extra="max_inflight_messages 2\n").start()
    relay = Relay(broker.plain_port, parse=True, receive_maximum=2 if version == 5 else None)
    sub = Collector(broker, "uplink/#")
    extra = "" if version == 5 else " max_inflight = 2;"
    g = Gateway(d, broker, pki, coap="plain = true;", mappings=MAPPINGS, log_level="info",
                uri="mqtt://127.0.0.1:%d" % relay.port,
                mqtt="version = %d; publish_timeout = 30;%s" % (version, extra)).start()
    q1 = Load(g, 8, prefix="up1", count=12, tag="a")
    q2 = Load(g, 8, prefix="up2", count=12, tag="b")
    q1.join()
    q2.join()
    acked = q1.acked() | q2.acked()
    sub.wait_for(acked, "every reading answered 2.04")
    codes = list(q1.answers().values()) + list(q2.answers().values())
    if version == 5:
        sent = relay.connack_props[0].get(0x21) if relay.connack_props else None
        print("Mosquitto's CONNACK Receive Maximum: %r" % sent)
    print("MQTT %d: readings %d, 2.04 %d, 5.03 %d, other %d; publishes %d; at most %d in flight" %
          (version, len(codes), codes.count("2.04"), codes.count("5.03"),
           len(codes) - codes.count("2.04") - codes.count("5.03"), relay.publishes,
           relay.max_outstanding), flush=True)
    check(relay.max_outstanding <= 2, "%d publishes in flight, more than 2" % relay.max_outstanding)
    check(relay.max_outstanding >= 1 and relay.publishes >= len(acked),
          "the relay saw no publishes")
    if version == 5:
        # The broker's window holds publishes back; the gateway's own bound
        # (max_inflight, 1000) is what turns devices away, and 16 are far below it.
        check(codes.count("2.04") == len(codes) == 192, "answers: %r" % sorted(set(codes)))
    else:
        # Over max_inflight a device is told to come back later (5.03).
        check(set(codes) <= {"2.04", "5.03"} and len(acked) >= 2, "answers: %r" %
              {c: codes.count(c) for c in set(codes)})


def receive_maximum_2_never_overrun_mqtt5():
    never_overrun(5)


def max_inflight_2_never_overrun_mqtt311():
    never_overrun(3)


# --- 4. Hostname verification, and a log that says why

def connect_reason(g):
    """What the gateway's log gives as the reason it could not connect: the
    text in parentheses of its "cannot connect to" line (the whole line, URI
    and retry delay removed, when it has none)."""
    g.wait_log("cannot connect to")
    line = next(l for l in g.lines if "cannot connect to" in l)
    m = re.search(r"cannot connect to \S+ \((.*)\)", line)
    text = m.group(1) if m else line.split("cannot connect to", 1)[1]
    return re.sub(r"mqtts?://\S+|retrying in \d+ ?s", "", text).strip()


def hostname_verification():
    """mqtts:// to a broker whose certificate is valid for another name: no
    connection, nothing published, mqtt.connected false; a reading answered
    2.04 from the offline buffer meanwhile. The same state_dir with
    verify_hostname = false: connected, and the buffered reading arrives."""
    d = workdir()
    pki = Pki(d)
    other = pki.leaf("elsewhere", "elsewhere.example", san="DNS:elsewhere.example", server=True)
    broker = Broker(d, pki, server=other, plain=True).start()
    sub = Collector(broker, "uplink/#")
    state = os.path.join(d, "state")
    g = Gateway(d, broker, pki, coap="plain = true;", mappings=MAPPINGS,
                gateway='state_dir = "%s";' % state).start(wait_connected=False)
    reason = connect_reason(g)
    print("log for a certificate of another name: %s" % reason, flush=True)
    check(Device(g, "up1/held").post(b"held-1") == "2.04", "the reading was not buffered")
    check(g.count("mqtt: connected") == 0, "connected to a broker of another name")
    check(g.stats_json()["mqtt"]["connected"] is False, "mqtt.connected is not false")
    # Nothing reached the broker: a message published after the reading
    # arrives alone.
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.plain_port), "-q", "1",
                    "-t", "uplink/marker", "-m", "marker"], check=True, timeout=WAIT)
    wait_until(lambda: b"marker" in sub.payloads(), "the marker")
    check(sub.payloads() == [b"marker"], "published: %r" % sub.payloads())
    check(g.stop() == 0, "the gateway did not stop cleanly")
    g2 = Gateway(d, broker, pki, coap="plain = true;", mappings=MAPPINGS,
                 mqtt="verify_hostname = false;", gateway='state_dir = "%s";' % state).start()
    sub.wait_for([b"held-1"], "the buffered reading after verify_hostname = false")
    check(g2.stats_json()["mqtt"]["connected"] is True, "mqtt.connected is not true")


def connect_failures_say_why():
    """The log's reason for a failed connection tells an operator what to
    fix: a broker that is down, a broker whose certificate mqtt.ca does not
    trust, and one whose certificate is for another name read differently,
    and the last two name the certificate."""
    d = workdir()
    pki = Pki(d)
    good = Broker(d, pki).start()
    other = pki.leaf("elsewhere", "elsewhere.example", san="DNS:elsewhere.example", server=True)
    named = Broker(d, pki, server=other).start()
    down = Broker(d, pki)  # never started: nothing listens on its port
    reasons = {}
    for what, broker, mqtt in (("down", down, ""),
                               ("untrusted", good, 'ca = "%s";' % os.path.join(d, "other-ca.pem")),
                               ("other name", named, "")):
        g = Gateway(d, broker, pki, mqtt=mqtt)
        g.start(wait_connected=False)
        reasons[what] = connect_reason(g)
        check(g.stop() == 0, "the gateway did not stop cleanly")
        print("broker %s: %s" % (what, reasons[what]), flush=True)
    # The lines differ in their words, not only in the brokers' addresses.
    words = {w: re.sub(r"[0-9.:]+|/\S+", "", r) for w, r in reasons.items()}
    check(len(set(words.values())) == 3, "the three failures read alike: %r" % reasons)
    check(re.search(r"connection refused", reasons["down"], re.I),
          "a broker that is down does not read so: %r" % reasons["down"])
    check(re.search(r"certificate", reasons["untrusted"], re.I) and
          "mqtt.ca" in reasons["untrusted"],
          "an untrusted certificate does not say so, naming mqtt.ca: %r" % reasons["untrusted"])
    check(re.search(r"host ?name", reasons["other name"], re.I),
          "a certificate for another name does not say so: %r" % reasons["other name"])


# --- 5. A store left by the previous version

def paho_records(store):
    """The Paho store records in a state_dir/mqtt folder (file names)."""
    if not os.path.isdir(store):
        return []
    return sorted(f for f in os.listdir(store) if f.endswith(".msg"))


def make_paho_store(out, version, n=5):
    """Runs this gateway with the broker down, posts n QoS 1 readings
    b"stored-<version>-<i>" and one QoS 2 reading, each answered 2.04 from the
    offline buffer, kills the gateway (SIGKILL) and copies its state_dir/mqtt
    to out. Returns the payloads, or None when this gateway does not write
    Paho's records."""
    d = workdir()
    pki = Pki(d)
    down = Broker(d, pki)  # never started
    g = Gateway(d, down, pki, coap="plain = true;", mappings=MAPPINGS,
                mqtt="version = %d;" % version).start(wait_connected=False)
    g.wait_log("cannot connect to")
    payloads = [b"stored-%d-%d" % (version, i) for i in range(n)]
    dev = Device(g, "up1/keeper")
    for p in payloads:
        check(dev.post(p) == "2.04", "%r was not answered 2.04 while offline" % p)
    last = b"stored-%d-qos2" % version
    check(Device(g, "up2/keeper").post(last) == "2.04", "the QoS 2 reading while offline")
    payloads.append(last)
    g.proc.kill()
    g.proc.wait(WAIT)
    store = os.path.join(d, "state-%d" % g.dtls_port, "mqtt")
    if not paho_records(store):
        return None
    shutil.copytree(store, out)
    return payloads


def fixture_name(version):
    return "mqtt5" if version == 5 else "mqtt311"


def fixture_payloads(version):
    with open(os.path.join(FIXTURES, fixture_name(version), "payloads.txt"), "rb") as f:
        return [l.strip() for l in f if l.strip()]


def import_store(store, payloads, version):
    """Starts a gateway whose state_dir/mqtt is a copy of store, with the
    broker up: every payload arrives, once, and the store is emptied."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, plain=True).start()
    sub = Collector(broker, "uplink/#")
    state = os.path.join(d, "state")
    shutil.copytree(store, os.path.join(state, "mqtt"),
                    ignore=shutil.ignore_patterns("payloads.txt", "README*"))
    g = Gateway(d, broker, pki, coap="plain = true;", mappings=MAPPINGS,
                mqtt="version = %d;" % version, gateway='state_dir = "%s";' % state).start()
    sub.wait_for(payloads, "the readings of the previous version's store")
    # Something published after them arrives after them: nothing else pending.
    check(Device(g, "up1/after").post(b"after") == "2.04", "a reading after the import")
    sub.wait_for([b"after"], "the reading after the import")
    got = sub.payloads()
    check(sorted(got) == sorted(payloads + [b"after"]), "arrived: %r" % got)
    wait_until(lambda: not paho_records(os.path.join(state, "mqtt")),
               "the imported records removed")


def previous_store_imported(version):
    """The checked-in store (made by the gateway that used Paho, see the
    fixture's README), and one this gateway writes now when it still writes
    Paho's records: each is published when a gateway starts on it."""
    import_store(os.path.join(FIXTURES, fixture_name(version)), fixture_payloads(version),
                 version)
    fresh = os.path.join(workdir(), "store")
    payloads = make_paho_store(fresh, version)
    if payloads is None:
        print("this gateway writes no Paho records: the checked-in store only", flush=True)
        return
    import_store(fresh, payloads, version)


def previous_store_imported_mqtt5():
    previous_store_imported(5)


def previous_store_imported_mqtt311():
    previous_store_imported(3)


def make_fixtures():
    """Writes tests/integration/fixtures/paho-store/mqtt{5,311}/ with this
    gateway (one that still uses Paho): `python3 test_uplink.py make_fixtures`
    with TANDEM set."""
    for version in (5, 3):
        out = os.path.join(FIXTURES, fixture_name(version))
        shutil.rmtree(out, ignore_errors=True)
        payloads = make_paho_store(out, version)
        check(payloads is not None, "this gateway writes no Paho records")
        with open(os.path.join(out, "payloads.txt"), "wb") as f:
            f.write(b"".join(p + b"\n" for p in payloads))
        print("%s: %s" % (out, paho_records(out)))


if __name__ == "__main__":
    run({f.__name__: f for f in [
        broker_flapping_loses_nothing_mqtt5, broker_flapping_loses_nothing_mqtt311,
        broker_flapping_loses_nothing_and_memory_returns_mqtt5,
        broker_flapping_loses_nothing_and_memory_returns_mqtt311,
        qos2_exactly_once_across_broker_restart_mqtt5,
        qos2_exactly_once_across_broker_restart_mqtt311,
        qos2_exactly_once_across_broker_restart_mqtt311_any_window,
        qos2_backlog_within_broker_window_mqtt311, qos2_exactly_once_across_gateway_kill,
        receive_maximum_2_never_overrun_mqtt5, max_inflight_2_never_overrun_mqtt311,
        hostname_verification, connect_failures_say_why,
        previous_store_imported_mqtt5, previous_store_imported_mqtt311, make_fixtures]})
