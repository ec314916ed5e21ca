"""What the gateway process itself must hold to whatever its peers do: a
reload that cannot be taken whole keeps the running state whole; slow or
idle clients of /metrics and of the control socket cannot keep the operator
from reading the statistics; running out of file descriptors does not make
the loop spin."""

import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (WAIT, Broker, Gateway, MqttDevice, Pki, Subscriber, check,  # noqa: E402
                     run, wait_until, workdir)

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
    refused, the running configuration stays (a mapping changed in the same
    file is not applied), a connected device goes on, and the error names the
    file and line."""
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

    cfg = g.stats_json()["config"]
    check(cfg["reload_failures"] == 1 and cfg["reloads"] == 0, "config counters: %r" % cfg)
    dev.close()
    check(g.stop() == 0, "exit status:\n" + g.text()[-3000:])


if __name__ == "__main__":
    run({f.__name__: f for f in [reload_the_listener_cannot_take]})
