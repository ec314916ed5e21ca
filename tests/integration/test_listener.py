"""MQTT devices over TLS through the gateway's MQTT listener (doc/devices.md, MQTT
devices): each device relayed on its own upstream connection to a real Mosquitto,
held to the same mappings as CoAP devices. Devices are mosquitto_pub/mosquitto_sub
(MQTT 5 and 3.1.1), Paho (python3-paho-mqtt), openssl s_client, and raw packets over
Python's ssl for what the clients cannot send."""

import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import types
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (PROP_CONTENT_TYPE, PROP_RESPONSE_TOPIC,  # noqa: E402
                     PROP_TOPIC_ALIAS, PROP_TOPIC_ALIAS_MAX, WAIT, Broker, Failure, Gateway,
                     MqttDevice, Pki, Subscriber, _mqtt_packet, _mqtt_varint, _ProcTransport,
                     check, coap, mqtt_connect, mqtt_disconnect, mqtt_publish, spawn, wait_until,
                     device_tls_context, workdir, run)

warnings.filterwarnings("ignore", category=DeprecationWarning)  # ssl.TLSVersion.TLSv1_1

MAPPINGS = """
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; },
  { name = "commands"; resource = "bikes/{identity}/commands";
    topic = "redback/p1/bikes/{identity}/commands"; direction = "down"; qos = 1; },
  { name = "state"; resource = "bikes/{identity}/state";
    topic = "redback/p1/bikes/{identity}/state"; direction = "both"; qos = 1; },
  { name = "public"; resource = "public/{name}"; topic = "redback/p1/public/{name}";
    direction = "up"; qos = 1; },
  { name = "news"; resource = "news/{name}"; topic = "redback/p1/news/{name}";
    direction = "down"; qos = 0; }"""

TEL = "redback/p1/bikes/%s/telemetry"
CMD = "redback/p1/bikes/%s/commands"
STATE = "redback/p1/bikes/%s/state"
DENIED = 0x87
SUB_DENIED = {5: 0x87, 4: 0x80}
BIKE1_PSK = ("bike-1", "secret-bike-1")


class Setup:
    """A broker, a subscriber on '#' at the broker, a gateway with the MQTT
    listener, device certificates for bike-1 and bike-2."""

    def __init__(self, listener="", mappings=MAPPINGS, broker_kw=None, sub=True, **gw):
        self.d = workdir()
        self.pki = Pki(self.d)
        self.broker = Broker(self.d, self.pki, **(broker_kw or {})).start()
        self.sub = Subscriber(self.broker, "#") if sub else None
        self.g = Gateway(self.d, self.broker, self.pki, mappings=mappings, mqtt_listener=listener,
                         **gw).start()
        self.bike = {n: self.pki.device(n) for n in ("bike-1", "bike-2")}

    def device(self, name="bike-1", version=5, client_id=None, **kw):
        """A device connected and accepted (CONNACK success)."""
        dev = MqttDevice(self.g, self.bike[name] if name else None, version=version)
        ack = dev.connect(client_id or "dev-" + secrets.token_hex(3), **kw)
        check(ack is not None and ack.reason == 0, "%s refused: %r\n%s" % (name, ack,
                                                                          self.g.text()[-3000:]))
        dev.connack = ack
        return dev

    def sync(self, dev=None):
        """Publishes an allowed message as bike-1 and waits for it at the broker's
        subscriber: whatever bike-1 sent before on that connection has arrived.
        The messages the subscriber has then."""
        own = dev is None
        dev = dev or self.device("bike-1")
        token = "sync-" + secrets.token_hex(4)
        ack = dev.publish(TEL % "bike-1", token, qos=1)
        check(ack is not None and ack.reason == 0, "the allowed publish: %r" % ack)
        wait_until(lambda: any(m["payload"] == token.encode() for m in self.sub.messages),
                   "the allowed message at the broker")
        if own:
            dev.close()
        with self.sub.lock:
            return list(self.sub.messages)

    def broker_log(self):
        return open(self.broker.log, errors="replace").read()

    def stats(self):
        return self.g.stats_json()


def acked(ack, reason=0, what="publish"):
    check(ack is not None, "%s: the connection ended instead of an acknowledgement" % what)
    check(ack.reason == reason, "%s: reason 0x%02x, expected 0x%02x" % (what, ack.reason, reason))


def never_arrived(msgs, payloads=(), topic_part="bike-2"):
    bad = [(m["topic"], m["payload"]) for m in msgs
           if m["payload"] in payloads or (topic_part and topic_part in m["topic"])]
    check(not bad, "delivered although refused: %r" % bad)


def refused_connection(s, cert=None, ctx=None, version=5):
    """True when the gateway refuses the device before any CONNACK (handshake
    failure, or the connection closed after a TLS 1.3 handshake)."""
    try:
        dev = MqttDevice(s.g, cert, version=version, ctx=ctx)
    except (ssl.SSLError, OSError):
        return True
    try:
        ack = dev.connect("refused-" + secrets.token_hex(3))
    finally:
        dev.close()
    return ack is None


def refusals(listener_stats):
    """Connections refused or dropped before relaying, in whichever of the
    listener's counters they are kept (rejected is in the statistics object; handshake
    failures and timeouts may have their own)."""
    return sum(listener_stats.get(k, 0) for k in ("rejected", "handshake_failures", "timeouts"))


def mosquitto(tool, s, cert, *args, version="mqttv5"):
    return subprocess.run([tool, "-V", version, *s.g.device_args(cert), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", timeout=WAIT)


# --- the cases


def own_topic_publish_byte_for_byte():
    s = Setup()
    data = bytes(range(256)) * 8 + b"\x00end"
    path = os.path.join(s.d, "payload.bin")
    with open(path, "wb") as f:
        f.write(data)
    for version in ("mqttv5", "mqttv311"):
        # The device's own username and password are not forwarded: the broker
        # sees the certificate's identity.
        r = mosquitto("mosquitto_pub", s, s.bike["bike-1"], "-q", "1", "-i", "pub-" + version,
                      "-u", "bike-2", "-P", "not-forwarded", "-t", TEL % "bike-1", "-f", path,
                      version=version)
        check(r.returncode == 0, "mosquitto_pub %s: %s" % (version, r.stdout))
    wait_until(lambda: len([m for m in s.sub.messages if m["topic"] == TEL % "bike-1"]) >= 2,
               "both publishes")
    msgs = [m for m in s.sub.messages if m["topic"] == TEL % "bike-1"]
    check(all(m["payload"] == data for m in msgs), "payload changed on the way")
    check(all(m["qos"] == 1 for m in msgs), "QoS changed: %r" % [m["qos"] for m in msgs])
    log = s.broker_log()
    for version in ("mqttv5", "mqttv311"):
        check(re.search(r"New client connected from \S+ as bike-1/pub-%s \(p\d, c\d, k\d+, "
                        r"u'bike-1'\)" % version, log),
              "the broker did not see bike-1/pub-%s with username bike-1:\n%s" % (version, log))
    check("not-forwarded" not in log, "the password reached the broker")


def other_device_topic_refused():
    s = Setup()
    d5 = s.device("bike-1", 5)
    acked(d5.publish(TEL % "bike-2", "forged-q1", qos=1), DENIED, "QoS 1 to bike-2's topic")
    acked(d5.publish(TEL % "bike-2", "forged-q2", qos=2), DENIED, "QoS 2 to bike-2's topic")
    d5.publish(TEL % "bike-2", "forged-q0", qos=0)
    acked(d5.publish("redback/p1/unmapped", "forged-unmapped", qos=1), DENIED, "unmapped topic")
    acked(d5.publish(CMD % "bike-1", "forged-down", qos=1), DENIED, "own down-only topic")
    check(d5.ping(), "the connection did not go on after refusals")
    msgs = s.sync(d5)
    d4 = s.device("bike-1", 4)
    # MQTT 3.1.1 has no refusal code: acknowledged (so the device does not
    # resend forever) and dropped.
    acked(d4.publish(TEL % "bike-2", "forged-311-q1", qos=1), 0, "3.1.1 QoS 1 to bike-2's topic")
    d4.publish(TEL % "bike-2", "forged-311-q0", qos=0)
    r = mosquitto("mosquitto_pub", s, s.bike["bike-1"], "-q", "1", "-t", TEL % "bike-2", "-m",
                  "forged-pub")
    msgs = s.sync(d4)
    never_arrived(msgs, [b"forged-q1", b"forged-q2", b"forged-q0", b"forged-unmapped",
                         b"forged-down", b"forged-311-q1", b"forged-311-q0", b"forged-pub"])
    check("Not authorized" in r.stdout or "not authori" in r.stdout.lower(),
          "mosquitto_pub was not told: %s" % r.stdout)


def commands_own_only():
    s = Setup()
    for version in (5, 4):
        dev = s.device("bike-1", version)
        no = SUB_DENIED[version]
        codes = dev.subscribe([CMD % "bike-1", CMD % "bike-2", "#", "redback/p1/bikes/+/commands",
                               "redback/+/bikes/bike-1/commands", "redback/p1/bikes/bike-1/#"])
        check(codes == [1, no, no, no, no, no], "MQTT %d SUBACK codes %r" % (version, codes))
        s.broker.publish(CMD % "bike-2", "not-yours-%d" % version, "-q", "1")
        s.broker.publish(CMD % "bike-1", "yours-%d" % version, "-q", "1")
        got = dev.wait_message(1)
        check([(m.topic, m.payload) for m in got] == [(CMD % "bike-1",
                                                       b"yours-%d" % version)],
              "MQTT %d device received %r" % (version, [(m.topic, m.payload) for m in got]))
        check(dev.ping() and len(dev.received) == 1, "more arrived: %r" % dev.received)
        dev.close()
    # mosquitto_sub as the device, with a refused filter among its own.
    for version, code in (("mqttv5", "135"), ("mqttv311", "128")):
        sub = spawn(["stdbuf", "-oL", "mosquitto_sub", "-d", "-V", version,
                     *s.g.device_args(s.bike["bike-1"]), "-i", "cmd-" + version, "-q", "1",
                     "-t", CMD % "bike-1", "-t", CMD % "bike-2", "-F", "MSG\t%t\t%p"],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        threading.Thread(target=lambda: [lines.append(x) for x in sub.stdout],
                         daemon=True).start()
        wait_until(lambda: any(x.startswith("Subscribed") for x in lines), "mosquitto_sub SUBACK")
        granted = [x for x in lines if x.startswith("Subscribed")][0]
        check(re.search(r": 1, %s$" % code, granted.strip()), "mosquitto_sub: %r" % granted)
        s.broker.publish(CMD % "bike-2", "other", "-q", "1")
        s.broker.publish(CMD % "bike-1", "mine", "-q", "1")
        wait_until(lambda: any(x.startswith("MSG") for x in lines), "the command at mosquitto_sub")
        got = [x.strip() for x in lines if x.startswith("MSG")]
        check(got == ["MSG\t%s\tmine" % (CMD % "bike-1")], "mosquitto_sub got %r" % got)
        sub.terminate()


def tls11_context(s, cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_verify_locations(s.pki.ca)
    ctx.load_cert_chain(*cert)
    return ctx


def client_can_offer_tls11(s, ctx):
    """Proves that this OpenSSL can make a TLS 1.1 connection at all, against
    a local TLS 1.1 server: the refusal below is then the gateway's."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.minimum_version = ssl.TLSVersion.TLSv1
    sctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    sctx.load_cert_chain(*s.pki.server)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    result = {}

    def serve():
        c, _ = srv.accept()
        try:
            with sctx.wrap_socket(c, server_side=True) as t:
                result["server"] = t.version()
        except (ssl.SSLError, OSError) as e:
            result["error"] = e
    th = threading.Thread(target=serve, daemon=True)
    th.start()
    with ctx.wrap_socket(socket.create_connection(srv.getsockname(), WAIT),
                         server_hostname="localhost") as t:
        version = t.version()
    th.join(WAIT)
    srv.close()
    return version == "TLSv1.1"


def handshake_refusals():
    s = Setup()
    check(refused_connection(s, None), "a device without a certificate was accepted")
    check(refused_connection(s, s.pki.device("bike-1", ca="other-ca")),
          "a certificate of another CA was accepted")
    for bad in ("$bike", "bike#1"):
        check(refused_connection(s, s.pki.device(bad)), "identity %r was accepted" % bad)
    ctx = tls11_context(s, s.bike["bike-1"])
    check(client_can_offer_tls11(s, ctx), "this OpenSSL cannot make TLS 1.1 connections")
    check(refused_connection(s, ctx=ctx), "TLS 1.1 was accepted")
    for version in (5, 4):
        s.device("bike-1", version).close()  # and a good device still works
    check(s.g.proc.poll() is None, "the gateway stopped")


def tls12_one_suite_max_fragment_length():
    """A Tasmota-like device: TLS 1.2, one ECDHE-ECDSA-AES128-GCM suite, 1 KiB
    records (max_fragment_length), MQTT 3.1.1."""
    s = Setup()
    cert = s.bike["bike-1"]
    base = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % s.g.listener_port, "-tls1_2",
            "-maxfraglen", "1024", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256", "-cert", cert[0],
            "-key", cert[1], "-CAfile", s.pki.ca, "-verify_return_error"]
    hs = subprocess.run(base + ["-tlsextdebug"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, errors="replace", timeout=WAIT)
    check("Cipher is ECDHE-ECDSA-AES128-GCM-SHA256" in hs.stdout and "TLSv1.2" in hs.stdout,
          "handshake:\n" + hs.stdout)
    check('"max fragment length"' in hs.stdout,
          "the gateway did not accept max_fragment_length:\n" + hs.stdout)
    proc = spawn(base + ["-quiet"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 stderr=subprocess.DEVNULL)
    dev = MqttDevice(transport=_ProcTransport(proc), version=4)
    ack = dev.connect("tasmota")
    check(ack is not None and ack.reason == 0, "CONNECT over s_client: %r" % ack)
    check(dev.subscribe([CMD % "bike-1"]) == [1], "subscribe")
    big = bytes(range(256)) * 12  # 3 KiB: three records at least each way
    acked(dev.publish(TEL % "bike-1", big, qos=1), 0, "3 KiB publish")
    wait_until(lambda: any(m["payload"] == big for m in s.sub.messages), "3 KiB at the broker")
    s.broker.publish(CMD % "bike-1", "c" * 3000, "-q", "1")
    got = dev.wait_message(1)
    check(got[0].payload == b"c" * 3000, "3000-byte command: %r" % got[0].payload[:40])
    dev.close()


def will_on_other_device_refused():
    s = Setup()
    for version, code in ((5, 0x87), (4, 0x05)):
        dev = MqttDevice(s.g, s.bike["bike-1"], version=version)
        ack = dev.connect("will-%d" % version, will=dict(topic=TEL % "bike-2", qos=1,
                                                       payload="forged-will-%d" % version))
        check(ack is not None and ack.reason == code,
              "MQTT %d CONNACK for a Will on bike-2's topic: %r" % (version, ack))
        dev.close()  # no DISCONNECT: a Will that got through would be published
    # A Will whose MQTT 5 Response Topic is another device's topic.
    dev = MqttDevice(s.g, s.bike["bike-1"], version=5)
    ack = dev.connect("will-resp", will=dict(topic=TEL % "bike-1", payload="forged-will-resp",
                                             props=[(PROP_RESPONSE_TOPIC, CMD % "bike-2")]))
    check(ack is not None and ack.reason == 0x87, "Will with bike-2's Response Topic: %r" % ack)
    dev.close()
    # The device's own Will passes, and is published when it goes away.
    for version in (5, 4):
        dev = s.device("bike-1", version, will=dict(topic=TEL % "bike-1", qos=1,
                                                    payload="own-will-%d" % version))
        dev.close()
        wait_until(lambda: any(m["payload"] == b"own-will-%d" % version for m in s.sub.messages),
                   "the device's own Will (MQTT %d)" % version)
    never_arrived(s.sync(), [b"forged-will-5", b"forged-will-4", b"forged-will-resp"])


def topic_alias_trick():
    s = Setup()
    probe = s.device("bike-1", 5, props=[(PROP_TOPIC_ALIAS_MAX, 10)])
    tam = probe.connack.props.get(PROP_TOPIC_ALIAS_MAX, 0)
    probe.close()

    def fresh():
        return s.device("bike-1", 5)

    def pub(dev, topic, payload, alias):
        """The PUBACK, or None when the gateway closed the connection."""
        if dev.eof:
            return None
        return dev.publish(topic, payload, qos=1, props=[(PROP_TOPIC_ALIAS, alias)])

    if tam >= 1:
        dev = fresh()
        acked(pub(dev, TEL % "bike-1", "alias-set", 1), 0, "alias set on the own topic")
        acked(pub(dev, "", "alias-used", 1), 0, "alias used")
        wait_until(lambda: any(m["payload"] == b"alias-used" and m["topic"] == TEL % "bike-1"
                               for m in s.sub.messages), "the aliased publish at its topic")
    # Alias set on an allowed topic, re-bound to another device's, used again.
    dev = fresh()
    first = pub(dev, TEL % "bike-1", "rebind-1", 1)
    rebind = pub(dev, TEL % "bike-2", "rebind-2", 1)
    check(rebind is None or rebind.reason >= 0x80, "re-binding to bike-2's topic: %r" % rebind)
    pub(dev, "", "rebind-3", 1)
    if tam == 0:
        check(first is None or first.reason >= 0x80,
              "an alias the gateway did not allow (Topic Alias Maximum 0) was accepted")
    # An unknown alias, an alias over the maximum, an alias set on a refused topic.
    dev = fresh()
    r = pub(dev, "", "unknown-alias", 5)
    check(r is None or r.reason >= 0x80, "an unknown alias was accepted: %r" % r)
    dev = fresh()
    r = pub(dev, TEL % "bike-1", "over-max", tam + 1)
    check(r is None or r.reason >= 0x80, "alias %d over the maximum %d: %r" % (tam + 1, tam, r))
    dev = fresh()
    r1 = pub(dev, TEL % "bike-2", "forbidden-set", 2)
    r2 = pub(dev, "", "forbidden-used", 2)
    check((r1 is None or r1.reason >= 0x80) and (r2 is None or r2.reason >= 0x80),
          "alias on bike-2's topic: %r, %r" % (r1, r2))
    msgs = s.sync()
    never_arrived(msgs, [b"rebind-2", b"unknown-alias", b"over-max", b"forbidden-set",
                         b"forbidden-used"])
    stray = [(m["topic"], m["payload"]) for m in msgs
             if m["payload"].startswith(b"rebind") and m["topic"] != TEL % "bike-1"]
    check(not stray, "aliased publishes elsewhere: %r" % stray)


def shared_and_response_topic():
    s = Setup()
    dev = s.device("bike-1", 5)
    codes = dev.subscribe(["$share/g/" + CMD % "bike-2", "$share/g/#", "$share/g/" + CMD % "bike-1",
                           "$share/g/redback/p1/bikes/+/commands", "$SYS/#"])
    # Devices have no use for shared subscriptions: 0x9E Shared Subscriptions not supported.
    check(codes == [0x9E, 0x9E, 0x9E, 0x9E, DENIED], "$share SUBACK codes %r" % codes)
    check(dev.subscribe([CMD % "bike-1"]) == [1], "the own commands")
    s.broker.publish(CMD % "bike-2", "not-yours", "-q", "1")
    s.broker.publish(CMD % "bike-1", "shared-yours", "-q", "1")
    got = dev.wait_message(1)
    check([m.payload for m in got] == [b"shared-yours"], "received %r" % got)
    acked(dev.publish(TEL % "bike-1", "resp-forged", props=[(PROP_RESPONSE_TOPIC, CMD % "bike-2")]),
          DENIED, "Response Topic on bike-2's commands")
    r = dev.publish(TEL % "bike-1", "resp-wild", props=[(PROP_RESPONSE_TOPIC, "redback/#")])
    check(r is None or r.reason >= 0x80, "Response Topic with a wildcard: %r" % r)
    dev = dev if not dev.eof else s.device("bike-1", 5)
    acked(dev.publish(TEL % "bike-1", "resp-own", props=[(PROP_RESPONSE_TOPIC, TEL % "bike-1")]),
          0, "Response Topic on the own telemetry")
    msgs = s.sync(dev)
    never_arrived(msgs, [b"resp-forged", b"resp-wild"], topic_part=None)
    check(any(m["payload"] == b"resp-own" for m in msgs), "the allowed one did not arrive")


def malformed_packets_close_only_their_connection():
    s = Setup()
    other = s.device("bike-2", 5)
    tel = (TEL % "bike-1").encode()
    bad = {
        "remaining length of five bytes": b"\x32\xff\xff\xff\xff\x01\x00",
        "remaining length over the bound": b"\x32" + _mqtt_varint(268435455) + b"\x00" * 64,
        "NUL in the topic": mqtt_publish(tel[:-3] + b"\x00ry", "bad-nul", qos=1),
        "invalid UTF-8 in the topic": mqtt_publish(tel + b"\xc3\x28", "bad-utf8", qos=1),
        "UTF-16 surrogate in the topic": mqtt_publish(tel + b"\xed\xa0\x80", "bad-surr", qos=1),
        "wildcard in the topic": mqtt_publish(b"redback/p1/bikes/bike-1/+", "bad-wild", qos=1),
        "duplicate property": mqtt_publish(tel, "bad-dup", qos=1,
                                           props=[(PROP_CONTENT_TYPE, "a"),
                                                  (PROP_CONTENT_TYPE, "b")]),
        "QoS 3": b"\x36" + mqtt_publish(tel, "bad-qos3", qos=1)[1:],
        "a length beyond the packet": _mqtt_packet(0x32, b"\x00\xff" + tel + b"\x00\x01bad-len"),
        "a second CONNECT": mqtt_connect("again"),
    }
    for i, (what, data) in enumerate(bad.items()):
        dev = s.device("bike-1", 5)
        dev.send(data)
        try:
            dev.closed()
        except Failure as e:
            raise Failure("%s: %s" % (what, e))
        acked(other.publish(TEL % "bike-2", "alive-%d" % i), 0, "the other device after " + what)
    # A malformed CONNECT, and an MQTT 3.1.1 one.
    for what, data, version in (("CONNECT with a bad client id",
                                 _mqtt_packet(0x10, b"\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02\xc3"
                                              b"\x28"), 5),
                                ("3.1.1 PUBLISH with NUL",
                                 mqtt_publish(tel[:-3] + b"\x00ry", "bad-311", 4, qos=1), 4)):
        dev = MqttDevice(s.g, s.bike["bike-1"], version=version)
        if version == 4:
            check(dev.connect("m311").reason == 0, "3.1.1 CONNECT")
        dev.send(data)
        seen = dev.closed()
        check(not [p for p in seen if p.name == "CONNACK" and p.reason == 0],
              "%s accepted: %r" % (what, seen))
        acked(other.publish(TEL % "bike-2", "alive-" + what), 0, "the other device after " + what)
    check(other.ping(), "the other device's connection")
    msgs = s.sync()
    never_arrived(msgs, [b"bad-nul", b"bad-utf8", b"bad-surr", b"bad-wild", b"bad-dup",
                         b"bad-qos3", b"bad-len", b"bad-311"], topic_part=None)
    check(s.g.proc.poll() is None, "the gateway stopped")


def coap_and_mqtt_devices_share_both_mapping():
    from test_down import Observer
    s = Setup()
    s.g.wait_log("held values are served")
    dev = s.device("bike-1", 5)
    check(dev.subscribe([STATE % "bike-1"]) == [1], "subscribe to the own state")
    url = "coaps://127.0.0.1:%d/bikes/bike-1/state" % s.g.dtls_port
    r = coap(url, method="put", payload="from-coap", psk=BIKE1_PSK)
    check(r and r.code == "2.04", "CoAP PUT: %r" % r)
    got = dev.wait_message(1)
    check((got[0].topic, got[0].payload) == (STATE % "bike-1", b"from-coap"),
          "the MQTT device got %r" % got)
    o = Observer(s.g, "bikes/bike-1/state", BIKE1_PSK, seconds=30)
    o.wait(1, "registration")
    acked(dev.publish(STATE % "bike-1", "from-mqtt"), 0, "MQTT publish on the both mapping")
    wait_until(lambda: any(n[2] == "from-mqtt" for n in o.notes), "the CoAP observer's notification")
    r = coap(url, method="get", psk=BIKE1_PSK)
    check(r and r.code == "2.05" and "from-mqtt" in r.raw, "CoAP GET: %r" % r)
    o.stop()
    # bike-2 can reach neither.
    other = s.device("bike-2", 5)
    acked(other.publish(STATE % "bike-1", "forged-state"), DENIED, "bike-2 on bike-1's state")
    check(other.subscribe([STATE % "bike-1"]) == [DENIED], "bike-2 subscribing to bike-1's state")


def broker_restart_keeps_session(version):
    try:
        import paho.mqtt.client as paho
    except ImportError:
        sys.path.append("/usr/lib/python3/dist-packages")  # python3-paho-mqtt
        import paho.mqtt.client as paho
    s = Setup(broker_kw=dict(persistent="at_exit"), sub=False)
    s.sub = Subscriber(s.broker, TEL % "bike-1", session="it-restart")
    cert = s.bike["bike-1"]
    lock = threading.Lock()
    state = {"connects": [], "disconnects": 0, "acked": set()}
    if version == 5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        c = paho.Client(client_id="paho-1", protocol=paho.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        connect_kw = dict(clean_start=False, properties=props)

        def on_connect(client, ud, flags, rc, properties=None):
            with lock:
                state["connects"].append((flags.get("session present"), int(rc.value)
                                          if hasattr(rc, "value") else rc))

        def on_disconnect(client, ud, rc, properties=None):
            with lock:
                state["disconnects"] += 1
    else:
        c = paho.Client(client_id="paho-1", clean_session=False, protocol=paho.MQTTv311)
        connect_kw = {}

        def on_connect(client, ud, flags, rc):
            with lock:
                state["connects"].append((flags.get("session present"), rc))

        def on_disconnect(client, ud, rc):
            with lock:
                state["disconnects"] += 1

    def on_publish(client, ud, mid):
        with lock:
            state["acked"].add(mid)
    c.on_connect, c.on_disconnect, c.on_publish = on_connect, on_disconnect, on_publish
    c.tls_set(ca_certs=s.pki.ca, certfile=cert[0], keyfile=cert[1])
    c.reconnect_delay_set(0.1, 1)
    c.max_queued_messages_set(0)
    c.max_inflight_messages_set(20)
    c.connect("127.0.0.1", s.g.listener_port, keepalive=20, **connect_kw)
    c.loop_start()
    try:
        wait_until(lambda: state["connects"], "Paho connected")
        check(state["connects"][0][1] == 0, "refused: %r" % state["connects"])
        n = 300
        mids = []
        stop = threading.Event()

        def produce():
            for i in range(n):
                mids.append(c.publish(TEL % "bike-1", "m%03d" % i, qos=1).mid)
                stop.wait(0.01)
        prod = threading.Thread(target=produce, daemon=True)
        prod.start()
        wait_until(lambda: len(state["acked"]) >= 60, "the first publishes acknowledged")
        s.broker.stop()
        wait_until(lambda: state["disconnects"] >= 1, "the device's connection to be closed")
        s.broker.start()
        # While the broker is away the gateway may refuse the device's CONNECT
        # (CONNACK "server unavailable"); Paho tries again.
        wait_until(lambda: [x for x in state["connects"][1:] if x[1] == 0], "Paho to reconnect",
                   timeout=3 * WAIT)
        prod.join(WAIT)
        wait_until(lambda: len(mids) == n and set(mids) <= state["acked"],
                   "every publish acknowledged", timeout=3 * WAIT)
        again = [x for x in state["connects"][1:] if x[1] == 0][0]
        check(again[0], "the reconnect did not find its session: %r" %
              state["connects"])
        sub = s.sub.reconnected()
        want = {b"m%03d" % i for i in range(n)}
        wait_until(lambda: want <= {m["payload"] for m in sub.messages},
                   "every acknowledged publish at the broker")
    finally:
        c.loop_stop()
        c.disconnect()
    log = s.broker_log()
    check(log.count("as bike-1/paho-1 (") >= 2, "the upstream client id:\n" + log)


def broker_restart_session_mqtt311():
    broker_restart_keeps_session(4)


def broker_restart_session_mqtt5():
    broker_restart_keeps_session(5)


def idle_and_stalled_connections_dropped():
    s = Setup(sub=False)
    before = s.stats()["mqtt_listener"]
    keep = s.device("bike-1", 5, keepalive=120)
    start = time.monotonic()
    idle = MqttDevice(s.g, s.bike["bike-2"], version=5)  # TLS done, no CONNECT
    half = MqttDevice(s.g, s.bike["bike-2"], version=5)  # a CONNECT that never ends
    half.send(mqtt_connect("half")[:5])
    stalled = socket.create_connection(("127.0.0.1", s.g.listener_port), WAIT)  # TCP only
    bound = 25.0
    for what, dev in (("idle TLS connection", idle), ("half a CONNECT", half)):
        try:
            dev.closed(timeout=max(bound - (time.monotonic() - start), 0.1))
        except Failure as e:
            raise Failure("%s: %s" % (what, e))
    stalled.settimeout(max(bound - (time.monotonic() - start), 0.1))
    try:
        data = stalled.recv(4096)
        check(data == b"" or data[:1] == b"\x15", "stalled handshake got %r" % data[:20])
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise Failure("a stalled handshake stayed open for %.0f s" % bound)
    elapsed = time.monotonic() - start
    check(elapsed < 20, "dropped only after %.1f s" % elapsed)
    check(keep.ping(), "the device that did CONNECT was dropped too")
    after = s.stats()["mqtt_listener"]
    check(refusals(after) - refusals(before) >= 3,
          "the drops were not counted: %r -> %r" % (before, after))


def anonymous_devices():
    s = Setup(listener="require_client_cert = false;")
    anon = s.device(None, 5, client_id="anon-1")
    acked(anon.publish("redback/p1/public/hello", "anon-public"), 0, "anonymous on public")
    acked(anon.publish(TEL % "bike-1", "anon-forged"), DENIED, "anonymous on bike-1's telemetry")
    codes = anon.subscribe(["redback/p1/news/+", CMD % "bike-1", "redback/p1/bikes/+/commands"])
    check(codes[0] < 0x80 and codes[1:] == [DENIED, DENIED], "anonymous SUBACK codes %r" % codes)
    anon4 = s.device(None, 4, client_id="anon-2")
    acked(anon4.publish("redback/p1/public/hello", "anon-311"), 0, "anonymous 3.1.1 on public")
    s.broker.publish("redback/p1/news/today", "news", "-q", "1")
    check([m.payload for m in anon.wait_message(1)] == [b"news"], "news: %r" % anon.received)
    # A device with a certificate is still identified.
    s.device("bike-1", 5).close()
    msgs = s.sync()
    never_arrived(msgs, [b"anon-forged"], topic_part=None)
    check(any(m["payload"] == b"anon-public" for m in msgs), "the anonymous publish")
    check(re.search(r"as /anon-1 \(", s.broker_log()), "anonymous client id rule:\n" +
          s.broker_log())


def client_ids_cannot_take_over():
    s = Setup(sub=False)
    a = s.device("bike-1", 5, client_id="same")
    b = s.device("bike-2", 5, client_id="same")
    dev = MqttDevice(s.g, s.bike["bike-1"], version=5)
    ack = dev.connect("bike-2/same")  # accepted or refused, never bike-2's session
    check(ack is None or ack.reason in (0, 0x85), "CONNECT with id bike-2/same: %r" % ack)
    check(a.ping() and b.ping(), "a device lost its connection to another's client id")
    log = s.broker_log()
    check("as bike-1/same (" in log and "as bike-2/same (" in log, log)
    check(not re.search(r"as bike-2/same \(.*u'bike-1'", log), log)


def max_connections_enforced():
    s = Setup(listener="max_connections = 2;", sub=False)
    d1 = s.device("bike-1", 5)
    d2 = s.device("bike-2", 4)
    before = s.stats()["mqtt_listener"]["rejected"]
    for version, code in ((5, 0x89), (4, 0x03)):
        dev = MqttDevice(s.g, s.bike["bike-1"], version=version)
        ack = dev.connect("third-%d" % version)
        check(ack is not None and ack.reason == code,
              "MQTT %d over max_connections: %r" % (version, ack))
        dev.closed()
    check(s.stats()["mqtt_listener"]["rejected"] - before >= 2, "refusals not counted")
    check(d2.ping(), "a device within the bound lost its connection")
    d1.send(mqtt_disconnect(5))
    d1.closed()

    def admitted():
        dev = MqttDevice(s.g, s.bike["bike-1"], version=5)
        ack = dev.connect("again")
        return ack is not None and ack.reason == 0
    wait_until(admitted, "a device admitted once one left")


def statistics():
    s = Setup()
    before = s.stats()
    check(all(k in before["mqtt_listener"] for k in ("connections", "rejected", "denied_publish",
                                                     "denied_subscribe")),
          "mqtt_listener section: %r" % before["mqtt_listener"])
    dev = s.device("bike-1", 5)
    for i in range(3):
        acked(dev.publish(TEL % "bike-1", "count-%d" % i), 0, "own telemetry")
    for i in range(2):
        acked(dev.publish(TEL % "bike-2", "denied-%d" % i), DENIED, "bike-2's telemetry")
    check(dev.subscribe([CMD % "bike-1", CMD % "bike-2", "#"]) == [1, DENIED, DENIED], "SUBACK")
    s.broker.publish(CMD % "bike-1", "c1", "-q", "1")
    s.broker.publish(CMD % "bike-1", "c2", "-q", "1")
    dev.wait_message(2)
    check(refused_connection(s, None), "no certificate accepted")
    after = s.stats()
    lb, la = before["mqtt_listener"], after["mqtt_listener"]
    delta = {k: la[k] - lb.get(k, 0) for k in la if isinstance(la[k], (int, float))}
    check(delta["connections"] >= 1, "connections: %r" % delta)
    check(refusals(la) - refusals(lb) >= 1, "the refused handshake was not counted: %r" % delta)
    check(delta["denied_publish"] == 2, "denied_publish: %r" % delta)
    check(delta["denied_subscribe"] == 2, "denied_subscribe: %r" % delta)
    check(delta.get("bytes_in", 0) > 0 and delta.get("bytes_out", 0) > 0,
          "bytes both ways: %r" % la)
    mb, ma = before["mappings"], after["mappings"]
    check(ma["telemetry"]["up"] - mb["telemetry"]["up"] == 3, "telemetry.up: %r" % ma)
    check(ma["telemetry"]["refused"] - mb["telemetry"]["refused"] >= 2,
          "telemetry.refused: %r" % ma)
    check(ma["commands"]["down"] - mb["commands"]["down"] >= 2, "commands.down: %r" % ma)
    prom = s.g.stats("--prometheus").stdout
    check(re.search(r"^tandem_mqtt_listener_denied_publish\S* 2$", prom, re.M),
          "prometheus:\n" + "\n".join(x for x in prom.splitlines() if "listener" in x))


def reload_closes_disallowed_subscriptions():
    s = Setup(sub=False)
    sub1 = s.device("bike-1", 5)
    check(sub1.subscribe([CMD % "bike-1"]) == [1], "commands")
    sub2 = s.device("bike-2", 5)
    check(sub2.subscribe([STATE % "bike-2"]) == [1], "state")
    pub = s.device("bike-2", 4)
    text = open(s.g.conf).read()
    cut = re.search(r'\n\s*\{ name = "commands";[^\n]*\n[^\n]*\},', text)
    check(cut, "commands mapping in the configuration")
    open(s.g.conf, "w").write(text.replace(cut.group(0), ""))
    s.g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: s.g.count("reloaded:") + s.g.count("reload refused") >= 1, "the reload")
    check(s.g.count("reloaded:") == 1, "reload refused:\n" + s.g.text()[-2000:])
    seen = sub1.closed()
    # MQTT 5 §3.14.2.1: the server says why it closes; 0x98 administrative action.
    check([p.reason for p in seen if p.name == "DISCONNECT"] == [0x98],
          "closed without DISCONNECT 0x98: %r" % seen)
    check(sub2.ping(), "a subscription still allowed was closed")
    acked(pub.publish(TEL % "bike-2", "after-reload", qos=1), 0, "publish after the reload")
    again = s.device("bike-1", 5)
    check(again.subscribe([CMD % "bike-1"]) == [DENIED], "the removed mapping still allows")


def certificates_reloaded():
    """SIGHUP reloads the listener's certificate, key and CA for new
    handshakes; a device connected before goes on."""
    d = workdir()
    pki = Pki(d)
    cert, key, ca = (os.path.join(d, n) for n in ("listener.pem", "listener.key", "devices.pem"))
    first = pki.leaf("first", "first.example", san="DNS:localhost,IP:127.0.0.1", server=True)
    os.replace(first[0], cert)
    os.replace(first[1], key)
    shutil.copy(pki.ca, ca)
    s = types.SimpleNamespace(pki=pki, broker=Broker(d, pki).start())
    s.sub = Subscriber(s.broker, "#")
    s.g = Gateway(d, s.broker, pki, mappings=MAPPINGS,
                  mqtt_listener='cert = "%s"; key = "%s"; ca = "%s";' % (cert, key, ca)).start()
    s.bike = {"bike-1": pki.device("bike-1")}
    before = MqttDevice(s.g, s.bike["bike-1"])
    ack = before.connect("before-" + secrets.token_hex(3))
    check(ack is not None and ack.reason == 0, "bike-1 refused: %r" % ack)
    def served_cn():
        ctx = device_tls_context(s.pki, s.bike["bike-1"])
        with socket.create_connection(("127.0.0.1", s.g.listener_port), WAIT) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as t:
                return dict(x[0] for x in t.getpeercert()["subject"])["commonName"]
    check(served_cn() == "first.example", "first certificate")

    # certbot's renewal, and devices now signed by another CA
    second = pki.leaf("second", "second.example", san="DNS:localhost,IP:127.0.0.1",
                      server=True)
    os.replace(second[0], cert)
    os.replace(second[1], key)
    foreign = pki.device("bike-2", ca="other-ca")
    shutil.copy(os.path.join(pki.dir, "other-ca.pem"), ca)
    s.g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: s.g.count("reloaded:") + s.g.count("reload refused") >= 1, "the reload")
    check(s.g.count("reloaded:") == 1, "reload refused:\n" + s.g.text()[-2000:])

    check(served_cn() == "second.example", "the renewed certificate is not served")
    check(refused_connection(s, s.bike["bike-1"]), "a device of the old CA still accepted")
    dev = MqttDevice(s.g, foreign)
    ack = dev.connect("after-" + secrets.token_hex(3))
    check(ack is not None and ack.reason == 0, "a device of the new CA refused: %r" % ack)
    acked(dev.publish(TEL % "bike-2", "new-ca", qos=1), 0, "publish of the new CA's device")
    acked(before.publish(TEL % "bike-1", "before", qos=1), 0, "the connection from before")
    wait_until(lambda: {b"new-ca", b"before"} <= {m["payload"] for m in s.sub.messages},
               "both messages at the broker")


CASES = [own_topic_publish_byte_for_byte, other_device_topic_refused, commands_own_only,
         handshake_refusals, tls12_one_suite_max_fragment_length, will_on_other_device_refused,
         topic_alias_trick, shared_and_response_topic,
         malformed_packets_close_only_their_connection, coap_and_mqtt_devices_share_both_mapping,
         broker_restart_session_mqtt311, broker_restart_session_mqtt5,
         idle_and_stalled_connections_dropped, anonymous_devices, client_ids_cannot_take_over,
         max_connections_enforced, statistics, reload_closes_disallowed_subscriptions,
         certificates_reloaded]

if __name__ == "__main__":
    run({f.__name__: f for f in CASES})
