"""MQTT -> CoAP through the real gateway: retained values, GET, Observe,
Block2, discovery, access between devices, broker restarts, the bound on
resources."""

import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (WAIT, Broker, Failure, Gateway, Pki, Subscriber, check, coap,  # noqa: E402
                     mqtt_publish_many, proc_rss_kib, run, spawn, wait_until, workdir)

BIKE1 = ("bike-1", "secret-bike-1")
BIKE2 = ("bike-2", "secret-bike-2")

MAPPINGS = """
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; },
  { name = "commands"; resource = "bikes/{identity}/commands";
    topic = "redback/p1/bikes/{identity}/commands"; direction = "down"; qos = 1; },
  { name = "plans"; resource = "plans/{plan}"; topic = "redback/p1/plans/{plan}";
    direction = "both"; qos = 0; },
  { name = "firmware"; resource = "firmware/{rest*}"; topic = "redback/p1/firmware/{rest*}";
    direction = "down"; qos = 0; }
"""


def url(g, path):
    return "coaps://127.0.0.1:%d/%s" % (g.dtls_port, path)


def setup(**gw):
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    return d, pki, broker


def start_gateway(d, broker, pki, **kw):
    kw.setdefault("mappings", MAPPINGS)
    return Gateway(d, broker, pki, **kw).start()


class Observer:
    """coap-client observing a resource; collects notifications as they come."""

    def __init__(self, g, path, psk, seconds=60):
        self.proc = spawn(["stdbuf", "-oL", "-eL", "coap-client-gnutls", "-v", "6", "-w", "-s",
                           str(seconds), "-B", str(seconds + 5), "-m", "get", "-u", psk[0], "-k",
                           psk[1], url(g, path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
        self.notes = []  # (code, observe number or None, payload)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        import re
        pdu = re.compile(r"^v:1 t:(CON|NON|ACK) c:(\d\.\d\d) i:[0-9a-f]+ \{[0-9a-f]*\} "
                         r"\[(.*?)\](?: :: '(.*)')?")
        for line in self.proc.stdout:
            self.lines.append(line)
            m = pdu.match(line)
            if m and m.group(2)[0] in "245":
                obs = re.search(r"Observe:(\d+)", m.group(3))
                self.notes.append((m.group(2), int(obs.group(1)) if obs else None,
                                   m.group(4) or ""))

    def wait(self, n, what):
        wait_until(lambda: len(self.notes) >= n, what)
        return list(self.notes)

    def stop(self):
        self.proc.terminate()


def retained_value_and_properties():
    d, pki, broker = setup()
    broker.publish("redback/p1/plans/week-1", '{"km":42}', "-r", "-V", "5", "-D", "publish",
                   "content-type", "application/json", "-D", "publish",
                   "message-expiry-interval", "600")
    g = start_gateway(d, broker, pki)
    wait_until(lambda: g.count("subscribing to") >= 1, "subscription")
    r = None
    for _ in range(50):  # the retained message comes after the subscription
        r = coap(url(g, "plans/week-1"), method="get", psk=BIKE1)
        if r and r.code == "2.05":
            break
        time.sleep(0.1)
    check(r and r.code == "2.05", "GET retained: %r" % r)
    check("'{\"km\":42}'" in r.raw, "value: %s" % r.raw)
    check("Content-Format:application/json" in r.options, "content format: %r" % r.options)
    check("Max-Age:" in r.options, "expiry as Max-Age: %r" % r.options)
    r = coap(url(g, "plans/week-2"), method="get", psk=BIKE1)
    check(r and r.code == "4.04", "no value yet: %r" % r)
    r = coap(url(g, "bikes/bike-1/commands"), method="post", payload="x", psk=BIKE1)
    check(r and r.code == "4.05", "POST on a down resource: %r" % r)


def observe_every_message_in_order():
    d, pki, broker = setup()
    g = start_gateway(d, broker, pki)
    # Observing before any value: registered with an empty 2.05.
    o = Observer(g, "bikes/bike-1/commands", BIKE1)
    first = o.wait(1, "the registration")[0]
    check(first[0] == "2.05" and first[1] is not None and first[2] == "",
          "registration: %r" % (first,))
    n = 10
    for i in range(n):
        broker.publish("redback/p1/bikes/bike-1/commands", "cmd-%d" % i, "-q", "1")
    try:
        notes = o.wait(n + 1, "%d notifications" % n)[1:]
    except AssertionError:
        print("".join(o.lines))
        raise
    check([p for _, _, p in notes] == ["cmd-%d" % i for i in range(n)], "order: %r" % notes)
    numbers = [first[1]] + [obs for _, obs, _ in notes]
    check(all(b > a for a, b in zip(numbers, numbers[1:])), "Observe numbers: %r" % numbers)
    check(any("t:CON c:2.05" in line for line in o.lines), "QoS 1: confirmable notifications")
    o.stop()


def devices_cannot_see_each_other():
    d, pki, broker = setup()
    g = start_gateway(d, broker, pki)
    broker.publish("redback/p1/bikes/bike-2/commands", "for bike-2 only", "-r")
    broker.publish("redback/p1/bikes/bike-1/commands", "for bike-1", "-r")
    wait_until(lambda: (coap(url(g, "bikes/bike-2/commands"), method="get", psk=BIKE2) or
                        type("r", (), {"code": None})).code == "2.05", "bike-2's value")
    for method_extra in ([], ["-s", "1"]):
        r = coap(url(g, "bikes/bike-2/commands"), method="get", psk=BIKE1, extra=method_extra)
        check(r and r.code == "4.03", "bike-1 reads bike-2 (%s): %r" % (method_extra, r))
    r = coap(url(g, ".well-known/core"), method="get", psk=BIKE1)
    check(r and r.code == "2.05", "discovery: %r" % r)
    check("</bikes/bike-1/commands>" in r.raw and "</bikes/bike-1/telemetry>" in r.raw,
          "own resources missing: %s" % r.raw)
    check("bike-2" not in r.raw, "discovery shows another device: %s" % r.raw)
    r2 = coap(url(g, ".well-known/core"), method="get", psk=BIKE2)
    check("</bikes/bike-2/commands>" in r2.raw and "bike-1" not in r2.raw, "bike-2: %s" % r2.raw)


def large_value_block2():
    d, pki, broker = setup()
    g = start_gateway(d, broker, pki)
    body = os.urandom(3000).hex()  # 6000 bytes of text
    broker.publish("redback/p1/firmware/v2/notes", body, "-r")
    out = os.path.join(d, "got.txt")
    for _ in range(50):
        if os.path.exists(out):
            os.unlink(out)
        coap(url(g, "firmware/v2/notes"), method="get", psk=BIKE1, extra=["-o", out])
        if os.path.exists(out) and os.path.getsize(out) > 0:
            break
        time.sleep(0.1)
    got = open(out).read().rstrip("\n") if os.path.exists(out) else ""  # -w adds one
    check(got == body, "Block2 value: %d bytes, wanted %d" % (len(got), len(body)))


def resubscribe_after_broker_restart():
    d, pki, broker = setup()
    g = start_gateway(d, broker, pki)
    o = Observer(g, "bikes/bike-1/commands", BIKE1, seconds=60)
    o.wait(1, "registration")
    broker.publish("redback/p1/bikes/bike-1/commands", "before", "-q", "1")
    o.wait(2, "the first notification")
    broker.stop()
    g.wait_log("mqtt: connection to")
    broker.start()
    g.wait_log("mqtt: connected to", 2)
    g.wait_log("subscribing to", 2)
    # The subscription may still be on its way: publish until the observer hears.
    for i in range(50):
        broker.publish("redback/p1/bikes/bike-1/commands", "after-%d" % i, "-q", "1")
        try:
            wait_until(lambda: any(p.startswith("after") for _, _, p in o.notes), "", 0.3)
            break
        except AssertionError:
            pass
    check(any(p.startswith("after") for _, _, p in o.notes), "no notification after restart")
    o.stop()


def max_resources_bounds_memory():
    d, pki, broker = setup()
    # Under AddressSanitizer freed memory waits in a quarantine: no quarantine
    # here, so that the resident size measures what the gateway holds.
    asan = os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0"
    g = start_gateway(d, broker, pki, coap="max_resources = 100;",
                      mqtt="stats_interval = 1;", env={"ASAN_OPTIONS": asan.lstrip(":")})
    stats = Subscriber(broker, "tandem/it/stats")
    value = b"x" * 1000

    def flood(start, n):
        mqtt_publish_many(broker, [("redback/p1/firmware/t%d" % i, value)
                                   for i in range(start, start + n)])

    def down_stats(want_received):
        def got():
            for m in reversed(stats.messages):
                s = json.loads(m["payload"])
                if s["down"]["received"] >= want_received:
                    return s
            return None
        wait_until(lambda: got() is not None, "stats showing %d received" % want_received)
        return got()

    flood(0, 3000)
    s1 = down_stats(3000)
    rss1 = proc_rss_kib(g.proc.pid)
    flood(3000, 3000)
    s2 = down_stats(6000)
    rss2 = proc_rss_kib(g.proc.pid)
    print("resources %d, evicted %d, value bytes %d; RSS after 3000 topics %d KiB, after 6000 "
          "%d KiB" % (s2["down"]["resources"], s2["down"]["evicted"], s2["down"]["value_bytes"],
                      rss1, rss2))
    check(s2["down"]["resources"] <= 100, "resources over the limit: %r" % s2["down"])
    check(s2["down"]["evicted"] >= 6000 - 100 - 2, "evictions not counted: %r" % s2["down"])
    check(s1["down"]["evicted"] >= 3000 - 100 - 2, "evictions not counted: %r" % s1["down"])
    check(rss2 - rss1 < 2048, "memory grew by %d KiB for 3000 more topics" % (rss2 - rss1))
    # The newest values are still served.
    r = coap(url(g, "firmware/t5999"), method="get", psk=BIKE1)
    check(r and r.code == "2.05", "newest value: %r" % r)
    r = coap(url(g, "firmware/t0"), method="get", psk=BIKE1)
    check(r and r.code == "4.04", "oldest value should be gone: %r" % r)


def observed_resources_are_kept():
    """At the bound, what someone observes stays; once deregistered, it may go."""
    d, pki, broker = setup()
    g = start_gateway(d, broker, pki, coap="max_resources = 20;")
    o = Observer(g, "bikes/bike-1/commands", BIKE1, seconds=3)
    o.wait(1, "registration")
    mqtt_publish_many(broker, [("redback/p1/firmware/f%d" % i, b"v") for i in range(200)])
    broker.publish("redback/p1/bikes/bike-1/commands", "still observed", "-q", "1")
    notes = o.wait(2, "a notification after the flood")
    check(notes[-1][2] == "still observed", "observer got %r" % notes)
    r = coap(url(g, "bikes/bike-1/commands"), method="get", psk=BIKE1)
    check(r and r.code == "2.05", "observed value evicted: %r" % r)
    # coap-client deregisters (Observe: 1) when its -s time is over.
    o.proc.wait(WAIT)
    mqtt_publish_many(broker, [("redback/p1/firmware/g%d" % i, b"v") for i in range(200)])
    # The broker has them; the gateway receives them a little later.
    last = []

    def evicted():
        last[:] = [coap(url(g, "bikes/bike-1/commands"), method="get", psk=BIKE1)]
        return last[0] and last[0].code == "4.04"
    try:
        wait_until(evicted, "the unobserved old value to go")
    except Failure:
        raise Failure("an unobserved old value stays: %r" % last)


def one_subscription_mqtt5_and_311():
    """A single down mapping (Paho reports one subscription differently from
    several), over MQTT 5 and 3.1.1."""
    d, pki, broker = setup()
    one = """{ name = "commands"; resource = "bikes/{identity}/commands";
               topic = "redback/p1/bikes/{identity}/commands"; direction = "down"; qos = 1; }"""
    broker.publish("redback/p1/bikes/bike-1/commands", "go", "-r", "-q", "1")
    for version in (5, 3):
        g = start_gateway(d, broker, pki, mappings=one, mqtt="version = %d;" % version)
        wait_until(lambda: (coap(url(g, "bikes/bike-1/commands"), method="get", psk=BIKE1) or
                            type("r", (), {"code": None})).code == "2.05",
                   "the retained value over MQTT %d" % version)
        check(g.count("subscription refused") == 0, "subscription refused")
        check(g.stop() == 0, "exit status with MQTT %d" % version)


def both_mapping_put_and_observe():
    d, pki, broker = setup()
    g = start_gateway(d, broker, pki)
    sub = Subscriber(broker, "redback/p1/plans/#")
    broker.publish("redback/p1/plans/shared", "v0", "-r")
    wait_until(lambda: (coap(url(g, "plans/shared"), method="get", psk=BIKE1) or
                        type("r", (), {"code": None})).code == "2.05", "first value")
    o = Observer(g, "plans/shared", BIKE2)
    o.wait(1, "registration")
    r = coap(url(g, "plans/shared"), method="put", payload="from-bike-1", psk=BIKE1)
    check(r and r.code == "2.04", "PUT on a both mapping: %r" % r)
    check(any(m["payload"] == b"from-bike-1" for m in sub.wait_for(2)), "PUT not published")
    notes = o.wait(2, "the notification of the PUT")
    check(notes[-1][2] == "from-bike-1", "observer got %r" % notes)
    o.stop()


if __name__ == "__main__":
    run({f.__name__: f for f in [retained_value_and_properties, observe_every_message_in_order,
                                  devices_cannot_see_each_other, large_value_block2,
                                  resubscribe_after_broker_restart, max_resources_bounds_memory,
                                  observed_resources_are_kept, one_subscription_mqtt5_and_311,
                                  both_mapping_put_and_observe]})
