"""The MQTT device listener's shared slots and the way it closes devices: no
host or identity can take every slot (connections in their handshake per
source address, relayed connections per identity, keep-alive and packet
deadlines, broker sessions per identity), the accept loop and the broker's
name lookup never stall the gateway, a Will the gateway's own close revoked is
not published, and a DISCONNECT loses nothing sent before it.

Attackers connect from other loopback addresses (127.0.0.2...: all of 127/8 is
local) than the legitimate device (127.0.0.1), so that the per-address bound
can be seen to work."""

import os
import re
import resource
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (PROP_SESSION_EXPIRY, TANDEM, WAIT, Broker, Failure, Gateway,  # noqa: E402
                     MqttDevice, Pki, Subscriber, _SockTransport, check, device_tls_context,
                     mqtt_connect, mqtt_disconnect, mqtt_publish, run, spawn, wait_until,
                     workdir)

MAPPINGS = """
  { name = "state"; resource = "bikes/{identity}/state";
    topic = "redback/p1/bikes/{identity}/state"; direction = "both"; qos = 1; },
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; }"""

TEL = "redback/p1/bikes/%s/telemetry"
STATE = "redback/p1/bikes/%s/state"
PROP_SERVER_KEEPALIVE = 0x13
KEEPALIVE_MAX = 1200         # LISTENER_KEEPALIVE_MAX
PACKET_TIMEOUT = 30          # LISTENER_PACKET_TIMEOUT_MS / 1000
SESSION_EXPIRY_MAX = 604800  # LISTENER_SESSION_EXPIRY_MAX
SESSIONS_PER_IDENTITY = 16   # LISTENER_SESSIONS_PER_IDENTITY
PER_ADDR = 16                # LISTENER_HANDSHAKE_PER_ADDR


class Setup:
    def __init__(self, listener="", sub=True, mappings=MAPPINGS, broker_extra="", **gw):
        self.d = workdir()
        self.pki = Pki(self.d)
        self.broker = Broker(self.d, self.pki, extra=broker_extra).start()
        self.sub = Subscriber(self.broker, "#") if sub else None
        self.g = Gateway(self.d, self.broker, self.pki, mappings=mappings, mqtt_listener=listener,
                         **gw).start()
        self.bike = {n: self.pki.device(n) for n in ("bike-1", "bike-2")}

    def device(self, name="bike-1", version=5, src="127.0.0.1"):
        return device_from(self.g, self.pki, self.bike[name] if name else None, version, src)

    def connected(self, name="bike-1", version=5, src="127.0.0.1", client_id=None, **kw):
        dev = self.device(name, version, src)
        ack = dev.connect(client_id or "dev-" + secrets.token_hex(3), **kw)
        check(ack is not None and ack.reason == 0, "%s refused: %r" % (name, ack))
        dev.connack = ack
        return dev

    def listener_stats(self):
        return self.g.stats_json()["mqtt_listener"]


def device_from(g, pki, cert, version=5, src="127.0.0.1"):
    """A raw MQTT device whose TCP connection comes from address src."""
    ctx = device_tls_context(pki, cert)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(WAIT)
    try:
        raw.bind((src, 0))
        raw.connect(("127.0.0.1", g.listener_port))
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
    except Exception:
        raw.close()
        raise
    return MqttDevice(version=version, transport=_SockTransport(tls))


class Holder:
    """Idle TCP connections (no TLS) to the listener, per_addr from each of
    addrs, each reopened as soon as the gateway drops it."""

    def __init__(self, port, addrs, per_addr):
        self.port, self.want = port, [a for a in addrs for _ in range(per_addr)]
        self.socks, self.opened, self.dropped = {}, 0, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _open(self, addr):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((addr, 0))
            s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            s.close()
            return
        self.socks[s] = addr
        self.opened += 1

    def _run(self):
        for a in self.want:
            self._open(a)
        while not self.done.is_set():
            ready, _, _ = select.select(list(self.socks), [], [], 0.05)
            gone = []
            for s in ready:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    gone.append(s)
            for s in gone:
                addr = self.socks.pop(s)
                s.close()
                self.dropped += 1
                self._open(addr)
            if gone:
                time.sleep(0.005)  # pacing the attacker, not waiting for anything
            # Reopen what could not be opened (the backlog full for a moment).
            while len(self.socks) < len(self.want):
                counts = {}
                for a in self.socks.values():
                    counts[a] = counts.get(a, 0) + 1
                missing = [a for a in set(self.want)
                           if counts.get(a, 0) < self.want.count(a)]
                if not missing:
                    break
                self._open(missing[0])

    def stop(self):
        self.done.set()
        self.thread.join(WAIT)
        for s in self.socks:
            s.close()


def legit_attempts(s, n=25):
    """n connections of bike-1 from 127.0.0.1, each to its CONNACK; the number accepted."""
    ok = 0
    for i in range(n):
        try:
            dev = s.device("bike-1")
            ack = dev.connect("legit-%d" % i)
            if ack is not None and ack.reason == 0:
                ok += 1
            dev.send(mqtt_disconnect(5))
            dev.close()
        except (OSError, Failure):
            pass
    return ok


# --- 3. slots


def idle_tcp_connections_take_no_slot():
    """One host holding max_connections + 64 idle TCP connections (reopened as
    they are dropped) keeps no device out: it holds at most its per-address share."""
    s = Setup(listener="max_connections = 4;", sub=False)
    h = Holder(s.g.listener_port, ["127.0.0.2"], 4 + 64)
    try:
        wait_until(lambda: s.listener_stats()["handshaking"] >= PER_ADDR,
                   "the attacker's connections held")
        ok = legit_attempts(s)
        st = s.listener_stats()
    finally:
        h.stop()
    check(ok == 25, "the legitimate device got in %d times of 25" % ok)
    check(st["evicted"] > 0, "the attacker's extra connections were not dropped: %r" % st)


def handshake_flood_from_many_addresses():
    """Many hosts together fill the shared bound of connections in their
    handshake: a new one makes the oldest of the busiest address go, never the
    device's own."""
    s = Setup(listener="max_connections = 4;", sub=False)
    addrs = ["127.0.0.%d" % i for i in range(2, 10)]
    h = Holder(s.g.listener_port, addrs, PER_ADDR)
    try:
        wait_until(lambda: s.listener_stats()["handshaking"] >= 4 + 64,
                   "the shared bound full")
        ok = legit_attempts(s)
        st = s.listener_stats()
    finally:
        h.stop()
    check(ok == 25, "the legitimate device got in %d times of 25" % ok)
    check(st["evicted"] > 0, "nothing was dropped for the newer connections: %r" % st)
    check(st["handshaking"] <= 4 + 64 + 1, "over the shared bound: %r" % st)


def one_identity_cannot_take_every_slot():
    """One certificate opening max_connections connections (keep-alive 0,
    distinct client ids) gets max_connections_per_identity of them; every other
    device still gets in. Keep-alive 0 is told a Server Keep Alive."""
    s = Setup(listener="max_connections = 6;", sub=False)
    before = s.listener_stats()
    held, codes = [], []
    for i in range(6):
        dev = s.device("bike-1", 5, src="127.0.0.2")
        ack = dev.connect("many-%d" % i, keepalive=0)
        codes.append(ack.reason if ack else None)
        if ack is not None and ack.reason == 0:
            held.append((dev, ack))
    check(codes == [0, 0, 0, 0, 0x97, 0x97], "CONNACKs of one identity: %r" % codes)
    for dev, ack in held:
        check(ack.props.get(PROP_SERVER_KEEPALIVE) == KEEPALIVE_MAX,
              "keep-alive 0 got no Server Keep Alive: %r" % ack.props)
    d4 = s.device("bike-1", 4, src="127.0.0.2")
    ack = d4.connect("many-311", keepalive=0)
    check(ack is not None and ack.reason == 0x03, "MQTT 3.1.1 over the bound: %r" % ack)
    other = s.connected("bike-2", 5, keepalive=0)
    check(other.connack.props.get(PROP_SERVER_KEEPALIVE) == KEEPALIVE_MAX,
          "no Server Keep Alive: %r" % other.connack.props)
    check(other.ping(), "the other device's connection does not work")
    after = s.listener_stats()
    check(after["over_identity_limit"] - before["over_identity_limit"] == 3,
          "refusals not counted: %r -> %r" % (before, after))
    # One leaves: its identity may connect again.
    held[0][0].send(mqtt_disconnect(5))
    held[0][0].closed()
    wait_until(lambda: s.listener_stats()["connections"] == 4, "the connection gone")
    again = s.connected("bike-1", 5, src="127.0.0.2", keepalive=30)
    check(PROP_SERVER_KEEPALIVE not in again.connack.props,
          "a keep-alive within the bound was changed: %r" % again.connack.props)


def trickled_packet_is_closed():
    """A device (keep-alive 0) that trickles one packet byte by byte is closed
    once the packet's deadline has passed; another device is not."""
    s = Setup(sub=False)
    before = s.listener_stats()["timeouts"]
    other = s.connected("bike-2", 5, keepalive=0)
    dev = s.connected("bike-1", 5, keepalive=0)
    pkt = mqtt_publish(TEL % "bike-1", b"x" * 2000, qos=0)
    start = time.monotonic()
    closed_after = None
    for i in range(len(pkt) - 1):
        dev.send(pkt[i:i + 1])
        data = dev.t.recv(1.0)  # one byte a second: the wait paces the trickle
        if data == b"" or (data and dev.t.recv(2.0) == b""):
            closed_after = time.monotonic() - start
            break
        if time.monotonic() - start > PACKET_TIMEOUT + 15:
            break
    check(closed_after is not None,
          "a trickled packet kept its connection for %.0f s" % (time.monotonic() - start))
    check(closed_after >= PACKET_TIMEOUT - 2, "closed after only %.1f s" % closed_after)
    check(s.listener_stats()["timeouts"] > before, "the close was not counted")
    check(other.ping(), "the other device was closed too")


# --- 4. Wills


def revoked_will_not_published():
    """A device the gateway closes at a reload (its Will's mapping removed)
    leaves no Will at the broker; a device that drops its own socket does."""
    s = Setup()
    a = s.connected("bike-1", 5, client_id="will-a",
                    will={"topic": STATE % "bike-1", "payload": "will-a", "qos": 1})
    b = s.connected("bike-2", 4, client_id="will-b",
                    will={"topic": TEL % "bike-2", "payload": "will-b", "qos": 1})
    text = open(s.g.conf).read()
    cut = re.search(r'\n\s*\{ name = "state";[^\n]*\n[^\n]*\},', text)
    check(cut, "the state mapping in the configuration")
    open(s.g.conf, "w").write(text.replace(cut.group(0), ""))
    s.g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: s.g.count("reloaded:") + s.g.count("reload refused") >= 1, "the reload")
    check(s.g.count("reloaded:") == 1, "reload refused:\n" + s.g.text()[-2000:])
    seen = a.closed()
    check([p.reason for p in seen if p.name == "DISCONNECT"] == [0x98],
          "closed without DISCONNECT 0x98: %r" % seen)
    gone = re.compile(r"Client bike-1/will-a (disconnected|closed its connection)")
    wait_until(lambda: gone.search(open(s.broker.log, errors="replace").read()),
               "bike-1/will-a gone from the broker")
    s.sub.sync()
    wills = [m for m in s.sub.messages if m["payload"] == b"will-a"]
    check(not wills, "the revoked Will was published: %r" % wills)
    check(b.ping(), "a device whose Will is allowed was closed")
    b.close()  # gone without DISCONNECT
    wait_until(lambda: any(m["payload"] == b"will-b" for m in s.sub.messages),
               "the Will of the device that dropped its socket")
    m = [m for m in s.sub.messages if m["payload"] == b"will-b"][0]
    check(m["topic"] == TEL % "bike-2", "Will on %r" % m["topic"])


# --- 6. DISCONNECT after a backlog


def upstream_backlog(broker_port):
    """The most bytes queued in the kernel on a connection to the broker's port."""
    most = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if int(cols[2].rsplit(":", 1)[1], 16) == broker_port and cols[3] == "01":
                        most = max(most, int(cols[4].split(":")[0], 16))
        except OSError:
            continue
    return most


def disconnect_after_backed_up_burst():
    """With the broker paused, a QoS 0 burst and DISCONNECT 0x00: once it
    resumes, every message arrives, and no Will. The broker queues without
    bound for its subscriber: past max_queued_messages (1000 by default)
    Mosquitto drops QoS 0 messages to a client that reads slowly, which a
    loaded machine makes the test's subscriber."""
    s = Setup(broker_extra="max_queued_messages 0\n")
    dev = s.connected("bike-1", 5, client_id="burst",
                      will={"topic": TEL % "bike-1", "payload": "will-burst", "qos": 1})
    n, size = 4000, 1500
    data = b"".join(mqtt_publish(TEL % "bike-1", b"%06d" % i + b"." * (size - 6), qos=0)
                    for i in range(n)) + mqtt_disconnect(5)
    s.broker.pause()
    sent = threading.Event()

    def send():
        dev.t.sock.settimeout(120)
        dev.t.sock.sendall(data)
        sent.set()
    threading.Thread(target=send, daemon=True).start()
    try:
        wait_until(lambda: upstream_backlog(s.broker.port) > 256 * 1024,
                   "the upstream connection backed up")
    finally:
        s.broker.resume()
    wait_until(sent.is_set, "the burst sent", timeout=60)
    wait_until(lambda: len([m for m in s.sub.messages if m["topic"] == TEL % "bike-1"]) >= n,
               "%d messages at the broker" % n, timeout=60)
    gone = re.compile(r"Client bike-1/burst (disconnected|closed its connection)")
    wait_until(lambda: gone.search(open(s.broker.log, errors="replace").read()),
               "bike-1/burst gone from the broker")
    s.sub.sync()
    wills = [m for m in s.sub.messages if m["payload"] == b"will-burst"]
    check(not wills, "the Will was published after a DISCONNECT 0x00")
    got = [m["payload"][:6] for m in s.sub.messages if m["topic"] == TEL % "bike-1"]
    check(got == [b"%06d" % i for i in range(n)],
          "%d messages, %d expected, in order: %s" % (len(got), n, got == sorted(got)))


# --- 12. accept, name lookup, sessions


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def accept_out_of_files_does_not_spin():
    """Out of file descriptors, connections waiting in the backlog do not make
    the gateway spin; it accepts again once some close."""
    s = Setup(sub=False)
    pid = s.g.proc.pid
    base = len(os.listdir("/proc/%d/fd" % pid))
    limit = base + 4
    hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
    socks = []
    for _ in range(12):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.bind(("127.0.0.2", 0))
        c.connect(("127.0.0.1", s.g.listener_port))
        socks.append(c)
    wait_until(lambda: len(os.listdir("/proc/%d/fd" % pid)) >= limit,
               "the gateway at its file limit")
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    time.sleep(3)  # the window over which the CPU time is measured
    used = cpu_seconds(pid) - c0
    window = time.monotonic() - t0
    check(used < 0.3 * window / 3, "the gateway used %.2f s of CPU in %.1f s" % (used, window))
    for c in socks:
        c.close()

    def admitted():
        try:
            dev = s.device("bike-1")
            ack = dev.connect("after-emfile")
            dev.close()
            return ack is not None and ack.reason == 0
        except (OSError, Failure):
            return False
    wait_until(admitted, "a device accepted once connections closed")
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))  # for `tandem stats`
    check(s.listener_stats()["accept_paused"] >= 1, "the pause was not counted")


class SilentDns:
    """A DNS server on 127.0.0.153:53 that holds every query until released,
    then answers A with 127.0.0.1 and AAAA with nothing."""

    ADDR = "127.0.0.153"

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.ADDR, 53))
        self.sock.settimeout(0.1)
        self.queries, self.held = [], []
        self.released = threading.Event()
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _answer(self, q, peer):
        i = 12
        while q[i]:
            i += 1 + q[i]
        qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
        question = q[12:i + 5]
        a = qtype == 1
        head = q[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if a else 0, 0, 0)
        body = question + (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) +
                           socket.inet_aton("127.0.0.1") if a else b"")
        self.sock.sendto(head + body, peer)

    def _run(self):
        while not self.done.is_set():
            try:
                q, peer = self.sock.recvfrom(4096)
                self.queries.append(q)
                self.held.append((q, peer))
            except socket.timeout:
                pass
            if self.released.is_set():
                for q, peer in self.held:
                    self._answer(q, peer)
                self.held = []

    def stop(self):
        self.done.set()
        self.sock.close()


class NamespacedGateway(Gateway):
    """The gateway with its own /etc/resolv.conf (a mount namespace of its own)."""

    def __init__(self, *a, resolv, **kw):
        super().__init__(*a, **kw)
        self.resolv = resolv

    def spawn_in_namespace(self):
        wrapper = ["unshare", "-m", "sh", "-c",
                   'mount --bind "$0" /etc/resolv.conf && exec "$@"', self.resolv,
                   TANDEM, "run", "-c", self.conf]
        self.proc = spawn(wrapper, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          errors="replace", env=self.env)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()


def broker_lookup_does_not_block():
    """While the broker's name does not resolve (a DNS server that holds its
    answer), the gateway starts, answers its control socket and completes
    devices' handshakes; a device that connected meanwhile gets its CONNACK
    once the name resolves."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        # A DNS server on port 53 and a mount namespace for resolv.conf need root.
        sys.stderr.write("broker_lookup_does_not_block: not run (needs root and unshare -m)\n")
        return
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "#")
    dns = SilentDns()
    resolv = os.path.join(d, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver %s\noptions timeout:30 attempts:1\n" % SilentDns.ADDR)
    g = NamespacedGateway(d, broker, pki, mappings=MAPPINGS, mqtt_listener="",
                          uri="mqtts://broker.tandem.test:%d" % broker.port,
                          mqtt="verify_hostname = false;", resolv=resolv)
    try:
        g.spawn_in_namespace()
        wait_until(lambda: any(b"tandem" in q for q in dns.queries) or g.proc.poll() is not None,
                   "the lookup of the broker's name")
        check(g.proc.poll() is None, "tandem exited:\n" + g.text())
        wait_until(lambda: g.count(" ready (tandem"), "tandem ready while the lookup is pending")
        g.wait_listening()
        t0 = time.monotonic()
        r = g.stats("--json", timeout=5)
        check(r.returncode == 0, "tandem stats: %s" % r.stderr)
        check(time.monotonic() - t0 < 3, "the control socket answered after %.1f s" %
              (time.monotonic() - t0))
        bike = pki.device("bike-1")
        dev = device_from(g, pki, bike)  # the handshake needs the loop
        dev.send(mqtt_connect("waits", version=5))
        check(not dns.released.is_set() and dns.held, "the lookup is no longer pending")
        dns.released.set()
        ack = dev.expect("CONNACK")
        check(ack is not None and ack.reason == 0, "CONNACK after the lookup: %r" % ack)
        pub = dev.publish(TEL % "bike-1", "after-lookup", qos=1)
        check(pub is not None and pub.reason == 0, "publish: %r" % pub)
        wait_until(lambda: any(m["payload"] == b"after-lookup" for m in sub.messages),
                   "the publish at the broker")
    finally:
        dns.stop()


def sessions_per_identity_bounded():
    """One identity may leave sessions at the broker under a bounded number of
    client ids, with a bounded Session Expiry; a session it ends frees its place."""
    s = Setup(sub=False)
    ids = ["sess-%02d" % i for i in range(SESSIONS_PER_IDENTITY)]
    for i, cid in enumerate(ids):
        dev = s.connected("bike-1", 5, client_id=cid,
                          props=[(PROP_SESSION_EXPIRY, 0xFFFFFFFF if i == 0 else 3600)])
        if i == 0:
            check(dev.connack.props.get(PROP_SESSION_EXPIRY) == SESSION_EXPIRY_MAX,
                  "Session Expiry not bounded: %r" % dev.connack.props)
        dev.send(mqtt_disconnect(5))
        dev.closed()
    before = s.listener_stats()
    dev = s.device("bike-1", 5)
    ack = dev.connect("sess-extra", props=[(PROP_SESSION_EXPIRY, 3600)])
    check(ack is not None and ack.reason == 0x97, "one session too many: %r" % ack)
    # A known one may come back; one without a session is no session.
    back = s.connected("bike-1", 5, client_id=ids[3], clean=False,
                       props=[(PROP_SESSION_EXPIRY, 3600)])
    check(back.connack.session_present, "the broker did not keep the session")
    back.send(mqtt_disconnect(5))
    back.closed()
    s.connected("bike-1", 5, client_id="no-session").close()
    # Ending one (clean start, no expiry) frees its place.
    end = s.connected("bike-1", 5, client_id=ids[5], clean=True)
    end.send(mqtt_disconnect(5))
    end.closed()
    wait_until(lambda: s.listener_stats()["connections"] == 0, "the connections gone")
    s.connected("bike-1", 5, client_id="sess-extra", props=[(PROP_SESSION_EXPIRY, 3600)])
    # MQTT 3.1.1: clean session off is a session for ever; bike-2's are its own.
    for i in range(SESSIONS_PER_IDENTITY):
        dev = s.connected("bike-2", 4, client_id="old-%02d" % i, clean=False)
        dev.send(mqtt_disconnect(4))
        dev.closed()
    dev = s.device("bike-2", 4)
    ack = dev.connect("old-extra", clean=False)
    check(ack is not None and ack.reason == 0x03, "3.1.1 session too many: %r" % ack)
    after = s.listener_stats()
    check(after["sessions_refused"] - before["sessions_refused"] == 2,
          "refusals not counted: %r -> %r" % (before, after))


if __name__ == "__main__":
    run({f.__name__: f for f in [idle_tcp_connections_take_no_slot,
                                  handshake_flood_from_many_addresses,
                                  one_identity_cannot_take_every_slot,
                                  trickled_packet_is_closed, revoked_will_not_published,
                                  disconnect_after_backed_up_burst,
                                  accept_out_of_files_does_not_spin,
                                  broker_lookup_does_not_block, sessions_per_identity_bounded]})
