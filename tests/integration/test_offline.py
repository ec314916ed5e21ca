"""No message lost: the offline buffer, broker and gateway restarts, graceful
stop. Each reading carries a sequence number; a subscriber with a persistent
session counts what arrives."""

import os
import signal
import re
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (WAIT, Broker, Gateway, Pki, Subscriber, check, coap,  # noqa: E402
                     coap_decode, coap_raw, run, wait_until, workdir)

BIKE1 = ("bike-1", "secret-bike-1")


def url(g, path="bikes/bike-1/telemetry"):
    return "coaps://127.0.0.1:%d/%s" % (g.dtls_port, path)


class Burst:
    """Posts readings seq-0, seq-1, ... one after another, recording each answer.
    Like a bike, it sends a reading again (once) when no answer came at all."""

    def __init__(self, g, n, path="bikes/bike-1/telemetry", start=0):
        self.g, self.n, self.path, self.start = g, n, path, start
        self.answers = {}  # seq -> code or None
        self.resent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for i in range(self.start, self.start + self.n):
            r = coap(url(self.g, self.path), payload="seq-%d" % i, psk=BIKE1, timeout=8)
            if r is None and self.g.proc.poll() is None:
                self.resent += 1
                r = coap(url(self.g, self.path), payload="seq-%d" % i, psk=BIKE1, timeout=8)
            self.answers[i] = r.code if r else None

    def done(self):
        return len(self.answers) == self.n

    def join(self):
        self.thread.join(120)
        check(self.done(), "the burst did not finish")

    def acked(self):
        return sorted(i for i, c in self.answers.items() if c == "2.04")


def counting_sub(broker, name="counter"):
    return Subscriber(broker, "redback/#", session=name)


def report(name, burst, arrived):
    seqs = [int(m["payload"].decode().split("-")[1]) for m in arrived
            if m["payload"].startswith(b"seq-")]
    codes = list(burst.answers.values())
    print("%s: sent %d (%d sent again, unanswered), 2.04 %d, 5.03 %d, other %d, arrived %d,"
          " duplicates %d" % (name, len(codes), burst.resent, codes.count("2.04"),
                              codes.count("5.03"),
                              len(codes) - codes.count("2.04") - codes.count("5.03"),
                              len(set(seqs)), len(seqs) - len(set(seqs))), flush=True)
    return seqs


def wait_arrived(sub, acked, what):
    def got():
        return {int(m["payload"].decode().split("-")[1]) for m in sub.messages
                if m["payload"].startswith(b"seq-")}
    try:
        wait_until(lambda: set(acked) <= got(), what, timeout=60)
    except AssertionError:
        print("missing: %r" % sorted(set(acked) - got()))
        raise


def setup(**gw):
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, persistent=True).start()
    sub = counting_sub(broker)
    g = Gateway(d, broker, pki, **gw).start()
    return d, pki, broker, sub, g


def broker_restart_mid_burst(kill):
    """The subscriber stays connected while the broker goes away, and comes back
    to the same session. Two things would otherwise lose readings that the
    gateway did deliver: mosquitto_sub, once told to stop, still acknowledges
    what arrives but no longer prints it; and Mosquitto sends PUBACK before it
    saves, even with autosave_on_changes, so a kill -9 in between loses what it
    held for an offline subscriber. It forwards to connected subscribers before
    it acknowledges."""
    d, pki, broker, sub, g = setup()
    burst = Burst(g, 60)
    wait_until(lambda: len(burst.answers) >= 15, "the first readings")
    broker.kill() if kill else broker.stop()
    wait_until(lambda: len(burst.answers) >= 35, "readings while the broker is away")
    broker.start()
    burst.join()
    sub = sub.reconnected()
    wait_arrived(sub, burst.acked(), "every 2.04 reading at the subscriber")
    seqs = report("broker %s mid-burst" % ("kill -9" if kill else "SIGTERM"), burst,
                  sub.messages)
    check(set(burst.acked()) <= set(seqs), "lost: %r" % (set(burst.acked()) - set(seqs)))
    check(len(burst.acked()) == 60, "with an offline buffer every reading is taken: %r"
          % burst.answers)


def broker_sigterm_mid_burst():
    broker_restart_mid_burst(kill=False)


def broker_kill9_mid_burst():
    broker_restart_mid_burst(kill=True)


def gateway_kill9_while_buffering():
    """The broker is down for the whole burst; the gateway dies by kill -9; once
    restarted and the broker back, every 2.04 reading arrives, QoS 0 too."""
    d, pki, broker, sub, g = setup()
    sub.stop()
    broker.stop()
    g.wait_log("mqtt: connection to")
    burst = Burst(g, 20)
    burst.join()
    qos0 = coap(url(g, "bikes/bike-1/status"), payload="seq-1000", psk=BIKE1)
    check(qos0 and qos0.code == "2.04", "QoS 0 while offline: %r" % qos0)
    check(burst.acked() == list(range(20)), "buffered: %r" % burst.answers)
    g.proc.kill()
    g.proc.wait(WAIT)
    g2 = g.restart()
    g2.wait_log("kept from before the restart")
    broker.start()
    g2.wait_log("mqtt: connected to")
    sub = counting_sub(broker)
    wait_arrived(sub, burst.acked() + [1000], "the buffered readings after kill -9")
    seqs = report("gateway kill -9 while buffering", burst, sub.messages)
    check(seqs[:20] == list(range(20)), "order: %r" % seqs)


def buffer_full_503():
    # Presence off: a device's presence document goes through the offline
    # buffer like any publish and would take one of the five places.
    d, pki, broker, sub, g = setup(mqtt='offline_buffer = 5; presence_topic = "";')
    sub.stop()
    broker.stop()
    g.wait_log("mqtt: connection to")
    burst = Burst(g, 8)
    burst.join()
    codes = [burst.answers[i] for i in range(8)]
    check(codes == ["2.04"] * 5 + ["5.03"] * 3, "answers: %r" % codes)
    r = coap(url(g), payload="seq-99", psk=BIKE1)
    check(r and r.code == "5.03" and "Max-Age:" in r.options, "full: %r" % r)
    broker.start()
    sub = counting_sub(broker)
    wait_arrived(sub, burst.acked(), "the 5 buffered readings")
    seqs = report("buffer full", burst, sub.messages)
    check(sorted(set(seqs)) == list(range(5)), "arrived %r" % seqs)


def backlog_drains_promptly():
    """1,000 readings buffered while the broker is away reach it within 15 s of
    the reconnection: the MQTT client is not left sending one broker window
    (Mosquitto: 20 messages) a second. `tandem stats` says what the buffer
    holds: 1,000 while the broker is away, none once they are delivered."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, persistent="at_exit").start()
    sub = counting_sub(broker)
    g = Gateway(d, broker, pki, coap="plain = true;").start()
    sub.stop()
    broker.stop()
    g.wait_log("mqtt: connection to")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", g.plain_port))
    s.settimeout(WAIT)
    for i in range(1000):
        s.send(coap_raw("public/backlog", b"seq-%d" % i, mid=i + 1, token=b"\x0b"))
        while True:
            code, mid = coap_decode(s.recv(2048))[1:3]
            if mid == i + 1:
                break
        check(code == "2.04", "reading %d buffered: %s" % (i, code))
    summary = g.stats().stdout
    check(re.search(r"^buffer: +1000 in the offline buffer", summary, re.M),
          "while the broker is away: %s" % summary)
    broker.start()
    g.wait_log("mqtt: connected to", 2)
    sub = counting_sub(broker)
    got = lambda: {int(m["payload"].split(b"-")[1]) for m in sub.messages}  # noqa: E731
    try:
        wait_until(lambda: len(got()) == 1000, "the backlog at the broker", timeout=15)
    except AssertionError:
        raise AssertionError("%d of 1000 arrived within 15 s of the reconnection" % len(got()))
    wait_until(lambda: re.search(r"^buffer: +0 in the offline buffer", g.stats().stdout, re.M),
               "the summary to say the buffer is empty", 10)


def sigterm_during_burst():
    d, pki, broker, sub, g = setup()
    status = Subscriber(broker, "tandem/it/status")
    burst = Burst(g, 400)
    wait_until(lambda: len(burst.answers) >= 20, "the burst to start")
    t0 = time.monotonic()
    g.proc.send_signal(signal.SIGTERM)
    rc = g.proc.wait(10)
    took = time.monotonic() - t0
    check(rc == 0 and took < 6, "exit %r after %.1f s" % (rc, took))
    wait_until(lambda: status.messages and status.messages[-1]["payload"] == b"offline",
               "offline status")
    burst.join()
    # Whatever was answered 2.04 arrives, if need be after the next start.
    g.restart()
    g.wait_log("mqtt: connected to")
    wait_arrived(sub, burst.acked(), "every 2.04 reading")
    seqs = report("SIGTERM during a burst (stopped in %.1f s)" % took, burst, sub.messages)
    check(set(burst.acked()) <= set(seqs), "lost: %r" % (set(burst.acked()) - set(seqs)))


if __name__ == "__main__":
    run({f.__name__: f for f in [broker_sigterm_mid_burst, broker_kill9_mid_burst,
                                  gateway_kill9_while_buffering, buffer_full_503,
                                  backlog_drains_promptly, sigterm_during_burst]})
