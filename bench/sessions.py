"""What sessions cost, and that coap.max_sessions holds: N plain CoAP peers
(BENCH_PEERS, default 12000), each from its own port, post one reading to a
gateway with coap.max_sessions = BENCH_MAX_SESSIONS (default 10000, the
default of the setting). Prints the gateway's memory idle, at the bound and
after it, per session, and the sessions, evictions and remembered peers it
reports. Then times discovery for a device while the gateway holds
BENCH_OTHERS (default 100000) values of other devices."""

import json
import os
import resource
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
from harness import (DEFAULT_MAPPINGS, Broker, Gateway, Pki, Subscriber, check,  # noqa: E402
                     coap_decode, coap_raw, mqtt_publish_many, proc_rss_kib, wait_until, workdir)

PEERS = int(os.environ.get("BENCH_PEERS", "12000"))
MAX = int(os.environ.get("BENCH_MAX_SESSIONS", "10000"))
OTHERS = int(os.environ.get("BENCH_OTHERS", "100000"))

DOWN = """,
  { name = "commands"; resource = "bikes/{identity}/commands";
    topic = "redback/p1/bikes/{identity}/commands"; direction = "down"; qos = 0; }"""


def stats(sub):
    n = len(sub.messages)
    wait_until(lambda: len(sub.messages) > n, "statistics")
    return json.loads(sub.messages[-1]["payload"])


OPEN = []  # every socket stays open, so that each peer keeps its own port


def seen(st):
    """Values the gateway took in or had to drop."""
    return (st["down"]["received"] + st["mqtt_in"]["dropped_too_large"])


def post_from_many(g, count):
    """One confirmable POST from each of count new sockets (each its own
    port); waits for the answers, 200 at a time."""
    answered = 0
    socks = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(coap_raw("public/p%d" % (i % 50), b"r", mid=i & 0xFFFF, token=b"s"),
                 ("127.0.0.1", g.plain_port))
        socks.append(s)
        OPEN.append(s)
        if len(socks) >= 200 or i == count - 1:
            for t in socks:
                try:
                    answered += coap_decode(t.recv(512))[1] == "2.04"
                except socket.timeout:
                    pass
            socks = []
    return answered


def discovery_ms(g, rounds=50):
    """Median time of a discovery request from bike-1 over DTLS is what a
    device sees; over plain CoAP the gateway's own cost shows alone."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    times = []
    for i in range(rounds):
        t0 = time.perf_counter()
        s.sendto(coap_raw(".well-known/core", mid=i, token=b"d", code=0x01),
                 ("127.0.0.1", g.plain_port))
        s.recv(4096)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2]


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "tandem/it/stats")
    g = Gateway(d, broker, pki, log_level="info", mappings=DEFAULT_MAPPINGS + DOWN,
                coap="plain = true; max_sessions = %d; max_resources = %d;" % (MAX, OTHERS + 1000),
                mqtt="stats_interval = 1;").start()
    g.wait_log("held values are served")
    idle = proc_rss_kib(g.proc.pid)
    first = post_from_many(g, MAX)
    at_bound = proc_rss_kib(g.proc.pid)
    st = stats(sub)
    rest = post_from_many(g, PEERS - MAX) if PEERS > MAX else 0
    after = proc_rss_kib(g.proc.pid)
    st2 = stats(sub)
    print("sessions: %d peers posted, %d answered 2.04, max_sessions %d" %
          (PEERS, first + rest, MAX))
    print("  at the bound: %d sessions, RSS %.1f MiB (idle %.1f MiB): %.0f bytes a session"
          % (st["coap"]["sessions"], at_bound / 1024, idle / 1024,
             (at_bound - idle) * 1024 / max(1, st["coap"]["sessions"])))
    print("  after %d more peers: %d sessions, %d evicted, %d peers remembered, RSS %.1f MiB"
          % (PEERS - MAX, st2["coap"]["sessions"], st2["coap"]["sessions_evicted"],
             st2["coap"]["peers_remembered"], after / 1024))
    check(st2["coap"]["sessions"] <= MAX, "the bound did not hold")

    # Discovery while other devices' values are held.
    before = discovery_ms(g)
    for start in range(0, OTHERS, 10000):  # in steps the broker can queue
        end = min(OTHERS, start + 10000)
        mqtt_publish_many(broker, [("redback/p1/bikes/other-%d/commands" % i, b"v")
                                   for i in range(start, end)])
        wait_until(lambda: seen(stats(sub)) >= end, "%d values" % end, 120)
    held_values = stats(sub)["down"]["resources"]
    held = discovery_ms(g)
    print("discovery (anonymous device, plain CoAP): median %.2f ms with no other values, "
          "%.2f ms with %d other devices' values held" % (before, held, held_values))
    g.stop()


if __name__ == "__main__":
    main()
