"""What the gateway process itself must hold to whatever its peers do: a
reload that cannot be taken whole keeps the running state whole; slow or
idle clients of /metrics and of the control socket cannot keep the operator
from reading the statistics; running out of file descriptors does not make
the loop spin."""

import http.client
import json
import os
import resource
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (WAIT, Broker, Gateway, MqttDevice, Pki, Subscriber, check,  # noqa: E402
                     coap, run, wait_until, workdir)

MAPPINGS = """
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; },
  { name = "commands"; resource = "bikes/{identity}/commands";
    topic = "redback/p1/bikes/{identity}/commands"; direction = "down"; qos = 1; }"""

TEL = "redback/p1/bikes/%s/telemetry"
# glibc fills freed memory with this byte: a use after free reads garbage at once.
PERTURB = {"MALLOC_PERTURB_": "165"}


def hup(g, n):
    """SIGHUP; waits for the n-th reload to be taken or refused."""
    g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: g.count("reloaded:") + g.count("reload refused") >= n or
               g.proc.poll() is not None, "reload %d" % n)


def published(sub, payload):
    return [m for m in list(sub.messages) if m["payload"] == payload]


# --- a reload the listener cannot take


def reload_the_listener_cannot_take():
    """The listener's credentials fail to load in the new file (its `enabled`
    takes a restart, so the running listener stays): the whole reload is
    refused, the running configuration stays (a mapping changed and a PSK
    identity added in the same reload are not taken), a connected device goes
    on, and the error names the file and line."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "redback/#")
    g = Gateway(d, broker, pki, mappings=MAPPINGS, mqtt_listener="", env=PERTURB).start()
    dev = MqttDevice(g, pki.device("bike-1"))
    ack = dev.connect("before-" + secrets.token_hex(3))
    check(ack is not None and ack.reason == 0, "bike-1 refused: %r" % ack)
    ack = dev.publish(TEL % "bike-1", "before", qos=1)
    check(ack is not None and ack.reason == 0, "publish before the reload: %r" % ack)
    wait_until(lambda: published(sub, b"before"), "the first message at the broker")

    text = open(g.conf).read()
    lines = text.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("mqtt_listener = {")]
    check(len(at) == 1, "one mqtt_listener line in:\n" + text)
    lines[at[0]] = 'mqtt_listener = { enabled = false; cert = ""; key = ""; };'
    broken = "\n".join(lines).replace("redback/p1/bikes/{identity}/telemetry",
                                      "redback/p2/bikes/{identity}/telemetry") + "\n"
    check("redback/p2" in broken, "the mapping changed")
    open(g.conf, "w").write(broken)
    # A new PSK identity in the same reload: the DTLS credentials are not taken either.
    with open(os.path.join(d, "psk.txt"), "a") as f:
        f.write("bike-3:%s\n" % b"secret-bike-3".hex())
    hup(g, 1)
    check(g.proc.poll() is None, "the gateway died at the reload:\n" + g.text()[-3000:])
    # The device connected before goes on, under the running mappings.
    ack = dev.publish(TEL % "bike-1", "after", qos=1)
    check(g.proc.poll() is None, "the gateway died at the next packet:\n" + g.text()[-3000:])
    check(ack is not None and ack.reason == 0, "publish after the refused reload: %r" % ack)
    check(g.count("reload refused") == 1, "the reload was taken:\n" + g.text()[-3000:])
    where = "%s:%d: mqtt_listener.cert" % (g.conf, at[0] + 1)
    check(g.count(where) >= 1, "no '%s' in the log:\n%s" % (where, g.text()[-3000:]))
    wait_until(lambda: published(sub, b"after"), "the message after the reload at the broker")
    check(published(sub, b"after")[0]["topic"] == TEL % "bike-1",
          "arrived on %r" % published(sub, b"after")[0]["topic"])
    check(dev.ping(), "the device's connection")
    # New devices get the running credentials.
    dev2 = MqttDevice(g, pki.device("bike-2"))
    ack = dev2.connect("new-" + secrets.token_hex(3))
    check(ack is not None and ack.reason == 0, "a new device after the refused reload: %r" % ack)
    ack = dev2.publish(TEL % "bike-2", "new", qos=1)
    check(ack is not None and ack.reason == 0, "the new device's publish: %r" % ack)
    wait_until(lambda: published(sub, b"new"), "the new device's message at the broker")

    # CoAP devices: the running PSK store, not the refused one.
    coaps = "coaps://127.0.0.1:%d/bikes/%%s/telemetry" % g.dtls_port
    r = coap(coaps % "bike-1", payload="psk-after", psk=("bike-1", "secret-bike-1"))
    check(r and r.code == "2.04", "bike-1 over DTLS after the refused reload: %r" % r)
    wait_until(lambda: published(sub, b"psk-after"), "bike-1's CoAP message at the broker")
    r = coap(coaps % "bike-3", payload="refused", psk=("bike-3", "secret-bike-3"), timeout=3)
    check(r is None, "bike-3, from the refused reload's PSK file, was let in: %r" % r)
    check(g.count('unknown PSK identity "bike-3"') >= 1, "bike-3 not refused as unknown:\n" +
          g.text()[-2000:])

    cfg = g.stats_json()["config"]
    check(cfg["reload_failures"] == 1 and cfg["reloads"] == 0, "config counters: %r" % cfg)
    dev.close()
    check(g.stop() == 0, "exit status:\n" + g.text()[-3000:])


# --- slow and idle clients of /metrics and of the control socket

# Where the attackers come from; the operator scrapes from 127.0.0.1.
ATTACKER = "127.0.0.2"
ATTACKERS = ["127.0.0.%d" % i for i in range(2, 6)]
# Connections an attack holds: every slot /metrics and the control socket have.
CROWD = 16
# How long one scrape or `tandem stats` may take while an attack goes on, s.
ATTEMPT = 4.0


class Crowd:
    """n connections that a thread keeps open, each opened again when the
    gateway closes it. open() makes one (a socket, its first bytes sent);
    every `interval` seconds each sends `trickle` (nothing when None). What
    the gateway sends is read and ignored; when it closes a connection, how
    long that one lived is kept in self.lifetimes."""

    def __init__(self, n, open_, trickle=None, interval=1.0):
        """open_(i) opens the i-th connection."""
        self.n, self.open, self.trickle, self.interval = n, open_, trickle, interval
        self.socks = {}  # socket -> [opened at, last trickle at]
        self.lifetimes, self.opened, self.errors = [], 0, []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.is_set():
            while len(self.socks) < self.n and not self.done.is_set():
                time.sleep(0.01)  # refused ones are opened again, but not in a tight loop
                try:
                    s = self.open(self.opened)
                except OSError as e:
                    self.errors.append(e)
                    time.sleep(0.05)
                    continue
                now = time.monotonic()
                self.socks[s] = [now, now]
                with self.lock:
                    self.opened += 1
            ready, _, _ = select.select(list(self.socks), [], [], 0.1)
            now = time.monotonic()
            for s in ready:
                try:
                    data = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    with self.lock:
                        self.lifetimes.append(now - self.socks[s][0])
                    del self.socks[s]
                    s.close()
            if self.trickle:
                for s, t in self.socks.items():
                    if now - t[1] >= self.interval:
                        t[1] = now
                        try:
                            s.send(self.trickle)
                        except OSError:
                            pass  # seen as closed at the next read
        for s in self.socks:
            s.close()

    def full(self):
        return len(self.socks) >= self.n

    def cut_after(self, at_least):
        """How long the connections the gateway closed after at_least s lived."""
        with self.lock:
            return [t for t in self.lifetimes if t >= at_least]

    def stop(self):
        self.done.set()
        self.thread.join(WAIT)


def tcp_from(source, port, first):
    """A connection to 127.0.0.1:port from source, first sent; non-blocking."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((source, 0))
        s.settimeout(WAIT)
        s.connect(("127.0.0.1", port))
        s.sendall(first)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def scrape(port, source="127.0.0.1", timeout=ATTEMPT):
    """GET /metrics: (status, body), or (None, why) when it failed or took
    longer than timeout."""
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        body = r.read()
        if time.monotonic() - t0 > timeout:
            return None, "took %.1f s" % (time.monotonic() - t0)
        return r.status, body
    except (OSError, http.client.HTTPException) as e:
        return None, repr(e)
    finally:
        c.close()


def metrics_gateway():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    return Gateway(d, broker, pki, metrics=True).start()


def scrapes_succeed(g, crowd, what):
    """Three scrapes from 127.0.0.1 while crowd holds its connections."""
    wait_until(lambda: crowd.opened >= crowd.n, "%d attacking connections" % crowd.n)
    for i in range(3):
        status, body = scrape(g.metrics_port)
        check(status == 200 and b"tandem_uptime_seconds" in body,
              "scrape %d during %s: %r %r" % (i + 1, what, status, body[:200]))
        check(crowd.thread.is_alive(), "the attack stopped")


def held_to_deadline(crowd, t0):
    """The gateway closes the attackers' connections at their deadline
    (GW_METRICS_REQUEST_MS, 5 s), whatever they send meanwhile: the first
    closing comes well before 12 s, and no connection lives 9 s."""
    wait_until(lambda: crowd.cut_after(3), "an attacking connection closed at its deadline",
               timeout=12 - (time.monotonic() - t0))
    with crowd.lock:
        longest = max(crowd.lifetimes)
    check(longest < 9, "an attacking connection lived %.1f s" % longest)


def metrics_slow_headers():
    """16 connections each sending one more header line every second kept
    their requests going on today's code: every slot was taken and no scrape
    was answered. A request must be complete within a few seconds of its
    connection whatever it trickles; one address may hold only a few of the
    connections; when all are taken the oldest goes for the new one."""
    g = metrics_gateway()
    port = g.metrics_port
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
    # Four addresses, four connections each: every slot.
    crowd = Crowd(CROWD, lambda i: tcp_from(ATTACKERS[i % 4], port, request),
                  trickle=b"X-Slow: 1\r\n", interval=1.0)
    t0 = time.monotonic()
    try:
        scrapes_succeed(g, crowd, "the slow-header attack")
        held_to_deadline(crowd, t0)
    finally:
        crowd.stop()
    metrics = g.stats_json()["metrics"]
    check(metrics["dropped_deadline"] >= 1 and metrics["dropped_for_new"] >= 1,
          "closings not counted: %r" % metrics)


def metrics_abandoned_requests():
    """16 requests from one address started and abandoned (the headers never
    end) wedged /metrics on today's code. That address holds only a few of
    the connections, each until its deadline; a scrape from another address
    goes through at once."""
    g = metrics_gateway()
    port = g.metrics_port
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
    crowd = Crowd(CROWD, lambda i: tcp_from(ATTACKER, port, request))
    t0 = time.monotonic()
    try:
        scrapes_succeed(g, crowd, "the abandoned requests")
        held_to_deadline(crowd, t0)
    finally:
        crowd.stop()
    metrics = g.stats_json()["metrics"]
    check(metrics["dropped_deadline"] >= 1 and metrics["refused_per_address"] >= 1,
          "closings not counted: %r" % metrics)


def control_idle_clients():
    """16 idle clients on the control socket (each opened again when the
    gateway drops it) made every `tandem stats` fail with "busy" on today's
    code. When all slots are taken, the oldest idle client goes and the new
    one is served."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    g = Gateway(d, broker, pki).start()

    def idle(i):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(WAIT)
        s.connect(g.control_socket)
        s.setblocking(False)
        return s
    crowd = Crowd(CROWD, idle)
    try:
        wait_until(crowd.full, "%d idle clients" % CROWD)
        for i in range(3):
            try:
                r = g.stats("--json", timeout=ATTEMPT)
            except subprocess.TimeoutExpired:
                raise AssertionError("tandem stats %d hung while idle clients held on" % (i + 1))
            check(r.returncode == 0, "tandem stats %d while idle clients held on: exit %d: %s"
                  % (i + 1, r.returncode, r.stderr))
            ctl = json.loads(r.stdout)["control"]
            check(ctl["connected"] <= CROWD, "more clients than slots: %r" % ctl)
        check(ctl["dropped_for_new"] >= 1, "the oldest idle client was not dropped: %r" % ctl)
    finally:
        crowd.stop()


# --- out of file descriptors


def cpu_seconds(pid):
    """User and system time of the process, all its threads, s."""
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def control_out_of_descriptors():
    """With no file descriptor left, accept() fails on the control socket and
    the client stays in the backlog: the socket stays readable, and today's
    loop tries again at once, turn after turn, at full CPU. It must pause,
    count it, and serve the client once descriptors are back."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    g = Gateway(d, broker, pki).start()
    pid = g.proc.pid
    used = {int(n) for n in os.listdir("/proc/%d/fd" % pid)}
    lowest_free = min(set(range(len(used) + 1)) - used)
    was = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, was[1]))
    try:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(WAIT)
        c.connect(g.control_socket)  # into the backlog
        c.sendall(b"ping\n")
        g.wait_log("cannot accept a client (Too many open files)")
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(2.0)  # a measurement over a fixed time, not a wait for an event
        busy = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        check(busy < 0.25, "the gateway used %.0f%% of a CPU without descriptors" % (busy * 100))
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, was)
    got = b""
    while True:
        b = c.recv(100)
        if not b:
            break
        got += b
    check(got == b"pong\n", "the client waiting in the backlog: %r" % got)
    c.close()
    ctl = g.stats_json()["control"]
    check(ctl["accept_paused"] >= 1 and ctl["accept_paused"] <= 20,
          "accept_paused %r over about 2 s" % ctl["accept_paused"])


if __name__ == "__main__":
    run({f.__name__: f for f in [reload_the_listener_cannot_take, metrics_slow_headers,
                                 metrics_abandoned_requests, control_idle_clients,
                                 control_out_of_descriptors]})
