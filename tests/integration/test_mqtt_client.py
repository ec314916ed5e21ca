"""Tandem's own MQTT client (mqtt/client.c over mqtt/link.c) against a real
Mosquitto, through tests/mqtt_pub.c: publishes over TLS and plain TCP, MQTT 5
and 3.1.1, the broker's certificate checked against mqtt.ca and the host name,
and the words an operator reads when the broker cannot be reached."""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import WAIT, Broker, Pki, Subscriber, check, free_port, workdir  # noqa: E402

MQTT_PUB = os.environ.get("MQTT_PUB", "mqtt_pub")


def mqtt_pub(*args):
    """Runs mqtt_pub; (exit status, its event lines, its log)."""
    p = subprocess.run([MQTT_PUB, *args], capture_output=True, text=True, timeout=WAIT + 10)
    return p.returncode, p.stdout, p.stderr


def tls_publish_arrives():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "up/#", "gw/status")
    rc, out, log = mqtt_pub("-c", pki.ca, "-q", "1", "-n", "5", "-s", "gw/status",
                            "mqtts://localhost:%d" % broker.port, "up/t1", "hello")
    check(rc == 0, "mqtt_pub failed: %s %s" % (out, log))
    check("acked 5" in out, out)
    msgs = sub.wait_for(6)
    ups = [m for m in msgs if m["topic"] == "up/t1"]
    check(len(ups) == 5, "arrived %r" % msgs)
    for m in ups:
        check(m["payload"] == b"hello" and m["qos"] == 1, "arrived %r" % m)
        check(m["content_type"] == "text/plain", "content type %r" % m["content_type"])
        check("mqtt_pub" in m["props"], "device property %r" % m["props"])
    status = [m for m in msgs if m["topic"] == "gw/status"]
    check(status and status[-1]["payload"] == b"offline", "status %r" % status)


def mqtt311_plain_qos2():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, plain=True).start()
    sub = Subscriber(broker, "up/#")
    rc, out, log = mqtt_pub("-V", "4", "-q", "2", "-n", "3",
                            "mqtt://127.0.0.1:%d" % broker.plain_port, "up/q2", "exactly")
    check(rc == 0, "mqtt_pub failed: %s %s" % (out, log))
    msgs = sub.wait_for(3)
    check(len(msgs) == 3 and all(m["payload"] == b"exactly" for m in msgs), "arrived %r" % msgs)
    sub.sync()
    check(len(sub.messages) == 3, "each exactly once: %r" % sub.messages)


def receive_maximum_2_never_overrun():
    """Mosquitto gives max_inflight_messages as its Receive Maximum and drops a
    client that sends more (0x93): 40 messages at max_inflight 10 all arrive on
    one connection."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, extra="max_inflight_messages 2\n").start()
    sub = Subscriber(broker, "up/#")
    for qos in ("1", "2"):
        rc, out, log = mqtt_pub("-c", pki.ca, "-q", qos, "-n", "20",
                                "mqtts://localhost:%d" % broker.port, "up/rm", "q" + qos)
        check(rc == 0 and "acked 20" in out, "mqtt_pub: %s %s" % (out, log))
        check("lost" not in out, out)
    msgs = sub.wait_for(40)
    check([m["payload"] for m in msgs].count(b"q1") == 20, "QoS 1 arrived %r" % msgs)
    check([m["payload"] for m in msgs].count(b"q2") == 20, "QoS 2 arrived %r" % msgs)


def hostname_verified():
    d = workdir()
    pki = Pki(d)
    wrong = pki.leaf("wrong-name", "broker.example", san="DNS:broker.example", server=True)
    broker = Broker(d, pki, server=wrong).start()
    uri = "mqtts://localhost:%d" % broker.port
    rc, out, log = mqtt_pub("-c", pki.ca, uri, "up/t", "x")
    check(rc == 2, "a certificate for another name was accepted: %s" % out)
    check("not valid for the host name localhost" in out, out)
    check("not valid for the host name localhost" in log, "the log says why: " + log)
    rc, out, log = mqtt_pub("-c", pki.ca, "--no-verify-hostname", uri, "up/t", "x")
    check(rc == 0, "verify_hostname = false still checks the chain only: %s %s" % (out, log))


def wrong_ca_in_words():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    other = os.path.join(d, "other-ca.pem")
    rc, out, log = mqtt_pub("-c", other, "mqtts://localhost:%d" % broker.port, "up/t", "x")
    check(rc == 2, "a broker signed by another CA was accepted: %s" % out)
    check("not trusted by mqtt.ca %s" % other in log, "the log says why: " + log)


def broker_down_in_words():
    d = workdir()
    pki = Pki(d)
    port = free_port()
    rc, out, log = mqtt_pub("-c", pki.ca, "mqtts://127.0.0.1:%d" % port, "up/t", "x")
    check(rc == 2, out)
    check("connection refused by 127.0.0.1:%d" % port in log, "the log says why: " + log)
    check("TCP/TLS connect failure" not in log, log)


def name_not_resolved_in_words():
    rc, out, log = mqtt_pub("mqtts://no-such-broker.invalid:8883", "up/t", "x")
    check(rc == 2, out)
    check("no-such-broker.invalid was not resolved" in log, "the log says why: " + log)


if __name__ == "__main__":
    from harness import run
    run({f.__name__: f for f in [tls_publish_arrives, mqtt311_plain_qos2, hostname_verified,
                                  receive_maximum_2_never_overrun,
                                  wrong_ca_in_words, broker_down_in_words,
                                  name_not_resolved_in_words]})
