"""Device presence: the retained online/offline document of every
authenticated device on mqtt.presence_topic, for CoAP (DTLS PSK, openssl
s_client and coap-client) and MQTT devices (raw packets through the
listener); `tandem devices` and tandem_devices_online."""

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (WAIT, Broker, Gateway, MqttDevice, Pki, Subscriber, TANDEM,  # noqa: E402
                     check, coap, coap_raw, spawn, wait_until, workdir, run)

MAPPINGS = """
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; },
  { name = "commands"; resource = "bikes/{identity}/commands";
    topic = "redback/p1/bikes/{identity}/commands"; direction = "down"; qos = 1; },
  { name = "public"; resource = "public/{name}"; topic = "redback/p1/public/{name}";
    direction = "up"; qos = 1; }"""

BIKE1 = ("bike-1", "secret-bike-1")
TOPIC = "tandem/it/devices/%s"
ADDR4 = re.compile(r"^127\.0\.0\.1:\d+$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class Setup:
    def __init__(self, listener="", mqtt="", coap_extra="", **gw):
        self.d = workdir()
        self.pki = Pki(self.d)
        self.broker = Broker(self.d, self.pki).start()
        self.sub = Subscriber(self.broker, "tandem/it/#")
        self.g = Gateway(self.d, self.broker, self.pki, mappings=MAPPINGS, mqtt_listener=listener,
                         mqtt=mqtt, coap=coap_extra, **gw).start()
        self.bike = {n: self.pki.device(n) for n in ("bike-1", "bike-2")}

    def docs(self, identity):
        """The presence documents of identity received so far, parsed."""
        return [(json.loads(m["payload"]), m) for m in list(self.sub.messages)
                if m["topic"] == TOPIC % identity]

    def wait_doc(self, identity, n, online):
        wait_until(lambda: len(self.docs(identity)) >= n and
                   self.docs(identity)[-1][0]["online"] is online,
                   "presence document %d of %s, online %s (got %r)" %
                   (n, identity, online, [d for d, _ in self.docs(identity)]))
        doc, msg = self.docs(identity)[-1]
        # live deliveries lose the retain flag (no Retain As Published): checked by late subscribers
        check(msg["qos"] >= 1, "not QoS 1: %r" % msg)
        check(set(doc) == {"online", "protocol", "address", "since"}, "fields: %r" % doc)
        check(ADDR4.match(doc["address"]), "address: %r" % doc)
        check(STAMP.match(doc["since"]), "since: %r" % doc)
        return doc

    def mqtt(self, name="bike-1", **kw):
        dev = MqttDevice(self.g, self.bike[name] if name else None)
        ack = dev.connect("dev-" + secrets.token_hex(3), **kw)
        check(ack is not None and ack.reason == 0, "%s refused: %r" % (name, ack))
        return dev

    def devices(self, *args):
        r = subprocess.run([TANDEM, "devices", "-c", self.g.conf, *args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=WAIT, env=self.g.env)
        check(r.returncode == 0, "tandem devices: %d %s" % (r.returncode, r.stderr))
        return r.stdout


class DtlsDevice:
    """openssl s_client as a CoAP device over DTLS (PSK): its session lasts
    until its input is closed (close_notify) or it is killed (no alert)."""

    def __init__(self, g, psk):
        self.proc = spawn(["openssl", "s_client", "-dtls1_2", "-cipher", "PSK", "-connect",
                           "127.0.0.1:%d" % g.dtls_port, "-psk_identity", psk[0], "-psk",
                           psk[1].encode().hex()], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.out = b""
        threading.Thread(target=self._read, daemon=True).start()
        wait_until(lambda: b"Verify return code" in self.out, "the DTLS handshake")

    def _read(self):
        while True:
            data = os.read(self.proc.stdout.fileno(), 4096)
            if not data:
                return
            self.out += data

    def post(self, path, payload, mid):
        self.proc.stdin.write(coap_raw(path, payload.encode(), mid=mid, token=b"\x01", code=0x02))
        self.proc.stdin.flush()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(WAIT)

    def kill(self):
        self.proc.kill()
        self.proc.wait(WAIT)


def coap_device_online_then_offline():
    """A CoAP device: online at its handshake, offline at its close alert, and
    offline again after an idle timeout when it vanishes without one; retained."""
    s = Setup(coap_extra="session_idle_timeout = 2;")
    dev = DtlsDevice(s.g, BIKE1)
    doc = s.wait_doc("bike-1", 1, True)
    check(doc["protocol"] == "coap", "protocol: %r" % doc)
    dev.close()
    doc = s.wait_doc("bike-1", 2, False)
    check(doc["protocol"] == "coap", "protocol: %r" % doc)
    # vanishes without an alert: its session ends at the idle timeout
    time.sleep(1.1)
    dev = DtlsDevice(s.g, BIKE1)
    s.wait_doc("bike-1", 3, True)
    dev.kill()
    t0 = time.monotonic()
    s.wait_doc("bike-1", 4, False)
    print("offline after the idle timeout in %.1f s" % (time.monotonic() - t0))
    # coap-client: a request, then it ends its session
    time.sleep(1.1)  # one document per second: this case counts every one
    r = coap("coaps://127.0.0.1:%d/bikes/bike-1/telemetry" % s.g.dtls_port, payload="1",
             psk=BIKE1)
    check(r and r.code == "2.04", "POST: %r" % r)
    s.wait_doc("bike-1", 6, False)
    # retained: a new subscriber gets the last state
    late = Subscriber(s.broker, TOPIC % "bike-1")
    msgs = late.wait_for(1, "the retained document")
    check(msgs[0]["retain"] and json.loads(msgs[0]["payload"])["online"] is False,
          "retained: %r" % msgs)
    st = s.g.stats_json()["devices"]
    check(st["online"] == 0 and st["presence_published"] >= 6, "devices: %r" % st)


def mqtt_device_online_then_offline():
    """An MQTT device: online at its CONNECT; offline at DISCONNECT, at a lost
    connection and when a reload closes it; retained."""
    s = Setup()
    dev = s.mqtt()
    doc = s.wait_doc("bike-1", 1, True)
    check(doc["protocol"] == "mqtt", "protocol: %r" % doc)
    dev.send(bytes([0xE0, 0]))  # DISCONNECT
    s.wait_doc("bike-1", 2, False)
    time.sleep(1.1)  # one document per second: this case counts every one
    dev = s.mqtt()
    s.wait_doc("bike-1", 3, True)
    dev.t.close()  # connection lost
    s.wait_doc("bike-1", 4, False)
    time.sleep(1.1)
    dev = s.mqtt()
    check(dev.subscribe(["redback/p1/bikes/bike-1/commands"]) == [1], "subscribed")
    s.wait_doc("bike-1", 5, True)
    text = open(s.g.conf).read()
    cut = re.search(r'\n\s*\{ name = "commands";[^\n]*\n[^\n]*\},', text)
    check(cut, "commands mapping in the configuration")
    open(s.g.conf, "w").write(text.replace(cut.group(0), ""))
    s.g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: s.g.count("reloaded:") >= 1, "the reload")
    doc = s.wait_doc("bike-1", 6, False)
    check(doc["protocol"] == "mqtt", "protocol: %r" % doc)
    late = Subscriber(s.broker, TOPIC % "bike-1")
    msgs = late.wait_for(1, "the retained document")
    check(msgs[0]["retain"] and json.loads(msgs[0]["payload"])["online"] is False,
          "retained: %r" % msgs)


def graceful_stop_offline_for_all():
    """At a graceful stop every connected device goes offline, before the status
    topic's "offline"."""
    s = Setup()
    DtlsDevice(s.g, ("bike-2", "secret-bike-2"))
    s.mqtt("bike-1")
    s.wait_doc("bike-1", 1, True)
    s.wait_doc("bike-2", 1, True)
    check(s.g.stop() == 0, "exit status")
    s.wait_doc("bike-1", 2, False)
    s.wait_doc("bike-2", 2, False)
    s.sub.sync()
    topics = [(m["topic"], m["payload"]) for m in s.sub.messages]
    off = topics.index(("tandem/it/status", b"offline"))
    for ident in ("bike-1", "bike-2"):
        last = max(i for i, (t, _) in enumerate(topics) if t == TOPIC % ident)
        check(last < off, "%s offline after the status offline: %r" % (ident, topics))


def flapping_is_bounded():
    """A device connecting and disconnecting 100 times: a bounded number of
    documents, the last one offline."""
    s = Setup()
    t0 = time.monotonic()
    for _ in range(100):
        dev = s.mqtt()
        dev.send(bytes([0xE0, 0]))
        dev.closed()
    took = time.monotonic() - t0
    s.wait_doc("bike-1", 1, False)
    # the last window ends within a second, then nothing more comes
    time.sleep(2.5)
    s.sub.sync()
    docs = s.docs("bike-1")
    check(docs[-1][0]["online"] is False, "last state: %r" % docs[-1][0])
    bound = 2 * (int(took) + 3)
    print("100 flaps in %.1f s: %d presence messages (bound %d)" % (took, len(docs), bound))
    check(len(docs) <= bound, "%d documents for 100 flaps in %.1f s" % (len(docs), took))
    st = s.g.stats_json()["devices"]
    check(st["presence_suppressed"] > 0 and st["presence_published"] == len(docs),
          "devices: %r" % st)


def anonymous_devices_none():
    """Plain CoAP and MQTT devices without a certificate have no presence."""
    s = Setup(listener="require_client_cert = false;", coap_extra="plain = true;")
    r = coap("coap://127.0.0.1:%d/public/x" % s.g.plain_port, payload="1")
    check(r and r.code == "2.04", "plain POST: %r" % r)
    anon = s.mqtt(None)
    check(anon.ping(), "anonymous device connected")
    check("bike" not in s.devices(), "listed")
    check(json.loads(s.devices("--json")) == {"devices": []}, "listed in JSON")
    anon.send(bytes([0xE0, 0]))
    anon.closed()
    # an authenticated one afterwards: its document is the only one
    s.mqtt("bike-1")
    s.wait_doc("bike-1", 1, True)
    s.sub.sync()
    topics = {m["topic"] for m in s.sub.messages if "/devices/" in m["topic"]}
    check(topics == {TOPIC % "bike-1"}, "presence topics: %r" % topics)


def off_when_empty():
    """presence_topic = "": nothing published; the devices are still listed."""
    s = Setup(mqtt='presence_topic = "";')
    s.mqtt("bike-1")
    DtlsDevice(s.g, BIKE1)
    wait_until(lambda: s.devices().count("bike-1") == 1 and
               json.loads(s.devices("--json"))["devices"], "bike-1 listed")
    s.sub.sync()
    check(not [m for m in s.sub.messages if "/devices/" in m["topic"]],
          "published: %r" % s.sub.messages)


def devices_command_and_metrics():
    """`tandem devices` lists CoAP and MQTT devices; tandem_devices_online counts them."""
    s = Setup(metrics=True)
    coap_dev = DtlsDevice(s.g, BIKE1)
    coap_dev.post("bikes/bike-1/telemetry", "7", mid=0x1234)
    wait_until(lambda: b"\x61\x44\x12\x34" in coap_dev.out or b"\x60\x44\x12\x34" in coap_dev.out,
               "the 2.04")
    mq = s.mqtt("bike-2")
    check(mq.ping(), "ping")
    s.wait_doc("bike-2", 1, True)
    table = s.devices()
    print(table, end="")
    lines = table.splitlines()
    check(lines[0].split() == ["IDENTITY", "PROTOCOL", "ADDRESS", "SINCE", "REQUESTS"],
          "header: %r" % lines[0])
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    check(set(rows) == {"bike-1", "bike-2"}, "rows: %r" % rows)
    check(rows["bike-1"][1] == "coap" and rows["bike-2"][1] == "mqtt", "protocols: %r" % rows)
    check(int(rows["bike-1"][4]) >= 1 and int(rows["bike-2"][4]) >= 1, "requests: %r" % rows)
    devs = {d["identity"]: d for d in json.loads(s.devices("--json"))["devices"]}
    check(set(devs) == {"bike-1", "bike-2"}, "json: %r" % devs)
    check(devs["bike-1"]["protocol"] == "coap" and devs["bike-2"]["protocol"] == "mqtt" and
          ADDR4.match(devs["bike-2"]["address"]) and STAMP.match(devs["bike-1"]["since"]),
          "json: %r" % devs)
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % s.g.metrics_port,
                                timeout=WAIT) as resp:
        text = resp.read().decode()
    check(re.search(r"^tandem_devices_online 2$", text, re.M), "metrics:\n%s" %
          "\n".join(ln for ln in text.splitlines() if "devices" in ln))
    check(not re.search(r"^tandem_devices_\w+\{", text, re.M), "a label per device")


def documents_survive_broker_restart():
    """A device that comes and goes while the broker is away: its documents wait
    in the offline buffer and reach the broker once it is back (the last state,
    retained)."""
    s = Setup()
    s.sub.stop()
    s.broker.stop()
    s.g.wait_log("mqtt: connection to")
    dev = DtlsDevice(s.g, BIKE1)
    wait_until(lambda: "bike-1" in s.devices(), "bike-1 listed")
    dev.close()
    wait_until(lambda: "bike-1" not in s.devices(), "bike-1 gone")
    s.broker.start()
    s.g.wait_log("mqtt: connected to", 2)
    late = Subscriber(s.broker, TOPIC % "bike-1")
    msgs = late.wait_for(1, "the retained document")
    doc = json.loads(msgs[-1]["payload"])
    check(msgs[-1]["retain"] and doc["online"] is False and doc["protocol"] == "coap",
          "retained: %r" % msgs)
    check(s.g.stats_json()["devices"]["presence_failed"] == 0, "a document was lost")


if __name__ == "__main__":
    run({f.__name__: f for f in [coap_device_online_then_offline, mqtt_device_online_then_offline,
                                  graceful_stop_offline_for_all, flapping_is_bounded,
                                  anonymous_devices_none, off_when_empty,
                                  devices_command_and_metrics,
                                  documents_survive_broker_restart]})
