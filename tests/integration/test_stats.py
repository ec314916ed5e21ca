"""The statistics object on mqtt.stats_topic (doc/operating.md, Metrics)."""

import calendar
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Broker, Gateway, Pki, Subscriber, check, coap, run,  # noqa: E402
                     wait_until, workdir)

BIKE1 = ("bike-1", "secret-bike-1")


def days_left(cert):
    """Whole days until cert expires, from openssl rather than GnuTLS."""
    out = subprocess.run(["openssl", "x509", "-enddate", "-noout", "-in", cert],
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    end = calendar.timegm(time.strptime(out.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z"))
    return int((end - time.time()) // 86400)


def statistics_object():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    cert, key = pki.server
    stats = Subscriber(broker, "tandem/it/stats")
    g = Gateway(d, broker, pki, mqtt="stats_interval = 1;",
                dtls='psk_file = "psk.txt"; cert = "%s"; key = "%s";' % (cert, key)).start()
    r = coap("coaps://127.0.0.1:%d/bikes/bike-1/telemetry" % g.dtls_port, payload="x",
             psk=BIKE1)
    check(r and r.code == "2.04", "POST: %r" % r)
    r = coap("coaps://127.0.0.1:%d/nowhere" % g.dtls_port, payload="x", psk=BIKE1)
    check(r and r.code == "4.04", "unknown path: %r" % r)

    def latest():
        for m in reversed(stats.messages):
            return json.loads(m["payload"])
        return None

    wait_until(lambda: latest() and latest()["coap"]["responses"].get("4.04") == 1,
               "statistics that count both requests")
    s = latest()
    check(s["gateway"] == "it" and s["version"] and s["uptime_s"] >= 0, "head: %r" % s)
    coap_ = s["coap"]
    for k in ("sessions", "dtls_handshakes_ok", "dtls_handshakes_failed", "requests",
              "notifications", "bytes_in"):
        check(isinstance(coap_.get(k), int), "coap.%s in %r" % (k, coap_))
    check(coap_["requests"] == 2 and coap_["responses"].get("2.04") == 1,
          "requests and answers: %r" % coap_)
    check(coap_["bytes_in"] == 2, "request bodies: %r" % coap_)
    mqtt = s["mqtt"]
    for k in ("reconnects", "published", "acked", "received", "offline_buffered"):
        check(isinstance(mqtt.get(k), int), "mqtt.%s in %r" % (k, mqtt))
    check(mqtt["connected"] is True and mqtt["acked"] >= 1, "mqtt: %r" % mqtt)
    check(set(mqtt["ack_latency_ms"]) == {"p50", "p99"}, "latency: %r" % mqtt)
    listener = s["mqtt_listener"]
    check(set(listener) >= {"connections", "rejected", "denied_publish", "denied_subscribe",
                            "accepted", "bytes_in", "bytes_out", "handshake_failures",
                            "timeouts", "malformed", "upstream_failures", "closed_at_reload"}
          and not any(listener.values()), "listener: %r" % listener)
    check(s["mappings"]["telemetry"]["up"] == 1, "mappings: %r" % s["mappings"])
    check(s["certificates"] == {"coap.dtls.cert": {"days_left": days_left(cert)}},
          "certificates: %r, openssl says %d days" % (s["certificates"], days_left(cert)))
    check(s["config"] == {"reloads": 0, "reload_failures": 0}, "config: %r" % s["config"])


if __name__ == "__main__":
    run({f.__name__: f for f in [statistics_object]})
