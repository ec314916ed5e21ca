"""TLS policy of the device listeners and what device-chosen text does to the
log: TLS 1.2 suites on the MQTT listener (ECDHE with AEAD ciphers only, with
an RSA and with an ECDSA gateway certificate), TLS 1.3, the clientAuth key
purpose of device certificates on the MQTT listener and on DTLS, an
mqtt.client_id a device could take over, bidirectional controls in log lines."""

import os
import secrets
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (TANDEM, WAIT, Broker, Gateway, MqttDevice, Pki, Subscriber,  # noqa: E402
                     _ProcTransport, check, coap, coap_decode, coap_raw, openssl, run, spawn,
                     wait_until, workdir)

MAPPINGS = """
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; }"""

TEL = "redback/p1/bikes/%s/telemetry"

# TLS 1.2 suites (OpenSSL names) by the gateway certificate's key type: what
# must be refused (static RSA key exchange: no forward secrecy; DHE; CBC) and
# what must be accepted (ECDHE with an AEAD cipher).
REFUSED = {
    "rsa": ["AES128-SHA", "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA256",
            "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES128-SHA", "ECDHE-RSA-AES128-SHA",
            "ECDHE-RSA-AES256-SHA", "ECDHE-RSA-AES128-SHA256"],
    "ecdsa": ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA256",
              "ECDHE-ECDSA-AES256-SHA384"],
}
ACCEPTED = {
    "rsa": ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
            "ECDHE-RSA-CHACHA20-POLY1305"],
    "ecdsa": ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
              "ECDHE-ECDSA-CHACHA20-POLY1305"],
}


def leaf(pki, name, cn, key="ec", eku="clientAuth", san=None):
    """(certificate, key) signed by the PKI's CA: key "ec" (P-256) or "rsa"
    (2048 bits); eku the extendedKeyUsage value, or None for no such
    extension."""
    d = pki.dir
    ext = os.path.join(d, name + ".ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\n")
        f.write("keyUsage=digitalSignature,%s\n" % ("keyEncipherment" if key == "rsa"
                                                     else "keyAgreement"))
        if eku:
            f.write("extendedKeyUsage=%s\n" % eku)
        if san:
            f.write("subjectAltName=%s\n" % san)
    if key == "rsa":
        openssl("genrsa", "-out", name + ".key", "2048", cwd=d)
    else:
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", name + ".key",
                cwd=d)
    openssl("req", "-new", "-key", name + ".key", "-subj", "/CN=" + cn, "-out", name + ".csr",
            cwd=d)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "30", "-sha256", "-extfile", ext, "-out", name + ".pem",
            cwd=d)
    return (os.path.join(d, name + ".pem"), os.path.join(d, name + ".key"))


def s_client(g, pki, cert, *args):
    """openssl s_client to the MQTT listener as the device with cert: the
    CompletedProcess (its output in stdout)."""
    return subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % g.listener_port,
                           "-cert", cert[0], "-key", cert[1], "-CAfile", pki.ca,
                           "-verify_return_error", *args],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace", timeout=WAIT)


def relayed_over_s_client(g, pki, cert, sub, *args):
    """A device connected through openssl s_client with args publishes; the
    message must reach the broker."""
    proc = spawn(["openssl", "s_client", "-connect", "127.0.0.1:%d" % g.listener_port, "-cert",
                  cert[0], "-key", cert[1], "-CAfile", pki.ca, "-verify_return_error", "-quiet",
                  *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 stderr=subprocess.DEVNULL)
    dev = MqttDevice(transport=_ProcTransport(proc), version=4)
    ack = dev.connect("s-client-" + secrets.token_hex(3))
    check(ack is not None and ack.reason == 0, "CONNECT over s_client %r: %r" % (args, ack))
    token = "via-" + secrets.token_hex(4)
    ack = dev.publish(TEL % "bike-1", token, qos=1)
    check(ack is not None and ack.reason == 0, "publish over s_client %r: %r" % (args, ack))
    wait_until(lambda: any(m["payload"] == token.encode() for m in sub.messages),
               "the message sent over s_client %r at the broker" % (args,))
    dev.close()


def tls12_suites(kind):
    d = workdir()
    pki = Pki(d)
    server = leaf(pki, "gw-" + kind, "localhost", key=kind, eku="serverAuth,clientAuth",
                  san="DNS:localhost,IP:127.0.0.1")
    # The broker has the same kind of certificate: the listener's upstream
    # connections (TLS client side, same policy) must still reach Mosquitto.
    broker = Broker(d, pki, server=server).start()
    sub = Subscriber(broker, "redback/#")
    g = Gateway(d, broker, pki, mappings=MAPPINGS,
                mqtt_listener='cert = "%s"; key = "%s";' % server).start()
    dev = pki.device("bike-1")
    before = g.stats_json()["mqtt_listener"]["handshake_failures"]
    for suite in REFUSED[kind]:
        r = s_client(g, pki, dev, "-tls1_2", "-cipher", suite)
        check("Cipher is %s" % suite not in r.stdout and r.returncode != 0,
              "%s certificate: TLS 1.2 suite %s was negotiated:\n%s" % (kind, suite, r.stdout))
    after = g.stats_json()["mqtt_listener"]["handshake_failures"]
    check(after - before == len(REFUSED[kind]),
          "%d refused handshakes counted, expected %d" % (after - before, len(REFUSED[kind])))
    for suite in ACCEPTED[kind]:
        r = s_client(g, pki, dev, "-tls1_2", "-cipher", suite)
        check("Cipher is %s" % suite in r.stdout and "TLSv1.2" in r.stdout,
              "%s certificate: TLS 1.2 suite %s refused:\n%s" % (kind, suite, r.stdout))
    r = s_client(g, pki, dev, "-tls1_3")
    check("TLSv1.3" in r.stdout and "Cipher is TLS_" in r.stdout,
          "%s certificate: no TLS 1.3:\n%s" % (kind, r.stdout))
    # Devices really get through with each version.
    relayed_over_s_client(g, pki, dev, sub, "-tls1_2", "-cipher", ACCEPTED[kind][0])
    relayed_over_s_client(g, pki, dev, sub, "-tls1_3")
    check(g.proc.poll() is None, "the gateway stopped")


def tls12_suites_rsa_certificate():
    tls12_suites("rsa")


def tls12_suites_ecdsa_certificate():
    tls12_suites("ecdsa")


def mqtt_refused(g, cert):
    """True when the listener refuses the device before any CONNACK (a failed
    TLS 1.2 handshake, or with TLS 1.3 the connection ended after it)."""
    try:
        dev = MqttDevice(g, cert)
    except OSError:  # ssl.SSLError included
        return True
    try:
        ack = dev.connect("eku-" + secrets.token_hex(3))
    finally:
        dev.close()
    return ack is None


def server_certificate_is_no_device():
    """A certificate from the device CA whose extended key usage is serverAuth
    only (CN bike-7) is refused on the MQTT listener (TLS 1.3 and 1.2) and on
    DTLS, counted; clientAuth, both purposes, or no extended key usage at all
    are devices."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "redback/#")
    server_only = leaf(pki, "bike7-server", "bike-7", eku="serverAuth")
    good = {"clientAuth": leaf(pki, "bike7-client", "bike-7", eku="clientAuth"),
            "no EKU": leaf(pki, "bike7-noeku", "bike-7", eku=None),
            "both": leaf(pki, "bike7-both", "bike-7", eku="serverAuth,clientAuth")}
    cert, key = pki.server
    g = Gateway(d, broker, pki, mappings=MAPPINGS, mqtt_listener="",
                dtls='cert = "%s"; key = "%s"; ca = "%s"; require_client_cert = true;'
                % (cert, key, pki.ca)).start()

    # The MQTT listener, TLS 1.3 (Python's default) and TLS 1.2.
    before = g.stats_json()["mqtt_listener"]["handshake_failures"]
    check(mqtt_refused(g, server_only), "a serverAuth-only certificate was accepted (TLS 1.3)")
    r = s_client(g, pki, server_only, "-tls1_2")
    check(r.returncode != 0,
          "a serverAuth-only certificate was accepted (TLS 1.2): exit %d\n%s"
          % (r.returncode, r.stdout))
    wait_until(lambda: g.stats_json()["mqtt_listener"]["handshake_failures"] - before >= 2,
               "two refused handshakes counted")
    check(g.count("extended key usage has no clientAuth") >= 1,
          "the refusal is not logged with its reason")
    for what, c in good.items():
        dev = MqttDevice(g, c)
        ack = dev.connect("eku-" + secrets.token_hex(3))
        check(ack is not None and ack.reason == 0, "%s device refused: %r" % (what, ack))
        token = "mqtt-" + what
        ack = dev.publish(TEL % "bike-7", token, qos=1)
        check(ack is not None and ack.reason == 0, "%s publish: %r" % (what, ack))
        dev.close()
    check(g.stats_json()["mqtt_listener"]["handshake_failures"] - before == 2,
          "refusals counted: %r" % g.stats_json()["mqtt_listener"])

    # DTLS (libcoap's GnuTLS backend).
    before = g.stats_json()["coap"]["dtls_handshakes_failed"]
    url = "coaps://127.0.0.1:%d/bikes/bike-7/telemetry" % g.dtls_port
    r = coap(url, payload="dtls-server-only", cert=server_only, ca=pki.ca, timeout=3)
    check(r is None, "DTLS: a serverAuth-only certificate was answered: %r" % (r,))
    wait_until(lambda: g.stats_json()["coap"]["dtls_handshakes_failed"] > before,
               "the refused DTLS handshake counted")
    check(g.count("device certificate's extended key usage has no clientAuth") >= 1,
          "the DTLS refusal is not logged with its reason")
    for what, c in good.items():
        r = coap(url, payload="dtls-" + what, cert=c, ca=pki.ca)
        check(r is not None and r.code == "2.04", "DTLS: %s device: %r" % (what, r))
    sub.sync()
    got = [m["payload"] for m in sub.messages]
    want = [("mqtt-" + w).encode() for w in good] + [("dtls-" + w).encode() for w in good]
    check(got == want, "at the broker: %r, expected %r" % (got, want))


def dtls_s_client(g, who, suite, payload):
    """openssl s_client over DTLS 1.2 with one suite, as who (a (certificate,
    key) of bike-7, or a PSK identity of the gateway); once the handshake is
    done, POSTs payload to the identity's telemetry. The CoAP answer's (type,
    code, mid, token), or None when none came (the handshake failed, or the
    session was dropped)."""
    if isinstance(who, str):
        args = ["-psk_identity", who, "-psk", g.psk[who].encode().hex()]
        identity = who
    else:
        args = ["-cert", who[0], "-key", who[1], "-CAfile", g.pki.ca]
        identity = "bike-7"
    proc = spawn(["openssl", "s_client", "-dtls1_2", "-connect", "127.0.0.1:%d" % g.dtls_port,
                  "-cipher", suite, "-quiet", *args], stdin=subprocess.PIPE,
                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    t = _ProcTransport(proc)
    mid = secrets.randbelow(65536)
    t.send(coap_raw("bikes/%s/telemetry" % identity, payload.encode(), mid=mid, token=b"\x5a"))
    try:
        data = t.recv(5)
        return coap_decode(data) if data else None
    finally:
        proc.kill()
        proc.wait(WAIT)


def dtls_suites():
    """DTLS handshakes: static RSA key exchange refused during the handshake,
    a CBC suite's session dropped as soon as its handshake is done (nothing it
    sends is published), ECDHE with an AEAD cipher served; with an RSA and
    with an ECDSA gateway certificate; PSK with an AEAD cipher (RFC 7925's
    CCM-8 among them) served, with CBC dropped; refusals counted."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "redback/#")
    dev = leaf(pki, "bike7", "bike-7")
    rsa = leaf(pki, "gw-dtls-rsa", "localhost", key="rsa", eku="serverAuth")
    cases = [(rsa, [(dev, "AES128-SHA", False), (dev, "AES128-GCM-SHA256", False),
                    (dev, "ECDHE-RSA-AES128-SHA", False), (dev, "ECDHE-RSA-AES256-SHA", False),
                    (dev, "ECDHE-RSA-AES128-GCM-SHA256", True)]),
             (pki.server, [(dev, "ECDHE-ECDSA-AES128-SHA", False),
                           (dev, "ECDHE-ECDSA-AES128-SHA256", False),
                           (dev, "ECDHE-ECDSA-AES128-GCM-SHA256", True),
                           (dev, "ECDHE-ECDSA-AES128-CCM8", True),
                           ("bike-1", "PSK-AES128-CBC-SHA256", False),
                           ("bike-1", "ECDHE-PSK-AES128-CBC-SHA256", False),
                           ("bike-1", "PSK-AES128-CCM8", True),
                           ("bike-1", "PSK-AES128-GCM-SHA256", True)])]
    sent = []
    for (cert, key), tries in cases:
        g = Gateway(d, broker, pki, mappings=MAPPINGS,
                    dtls='cert = "%s"; key = "%s"; ca = "%s"; psk_file = "psk.txt";'
                    % (cert, key, pki.ca)).start()
        before = g.stats_json()["coap"]
        for who, suite, ok in tries:
            payload = "%s-%s" % (os.path.basename(cert), suite)
            got = dtls_s_client(g, who, suite, payload)
            if ok:
                check(got is not None and got[1] == "2.04",
                      "%s: %s was not served: %r\n%s" % (cert, suite, got, g.text()[-2000:]))
                sent.append(payload.encode())
                wait_until(lambda: any(m["payload"] == payload.encode() for m in sub.messages),
                           "the message sent with %s at the broker" % suite)
            else:
                check(got is None, "%s: %s was served: %r" % (cert, suite, got))
        refused = sum(not ok for _, _, ok in tries)
        wait_until(lambda: g.stats_json()["coap"]["dtls_handshakes_failed"] -
                   before["dtls_handshakes_failed"] >= refused, "%d refusals counted" % refused)
        after = g.stats_json()["coap"]
        check(after["dtls_handshakes_failed"] - before["dtls_handshakes_failed"] == refused and
              after["dtls_handshakes_ok"] - before["dtls_handshakes_ok"] == len(tries) - refused,
              "handshakes counted: %r then %r" % (before, after))
        check(g.count("handshake refused (cipher is not AEAD)") >= 1, "no log of the CBC refusal")
        g.stop()
    sub.sync()
    got = [m["payload"] for m in sub.messages]
    check(got == sent, "published: %r, expected %r" % (got, sent))


def tandem(*args):
    return subprocess.run([TANDEM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=30)


def gateway_client_id_a_device_could_take():
    """mqtt.client_id "edge-01/bridge" (or "{gateway}/bridge") is what a device
    with CN edge-01 and client id "bridge" gets upstream: refused by check and
    at start, with the file and line."""
    d = workdir()
    with open(os.path.join(d, "psk.txt"), "w") as f:
        f.write("bike-1:00112233\n")
    conf = os.path.join(d, "tandem.conf")
    for client_id, shown in (("edge-01/bridge", "edge-01/bridge"),
                             ("{gateway}/bridge", "edge-01/bridge"),
                             ("/anonymous", "/anonymous")):
        with open(conf, "w") as f:
            f.write('gateway = { id = "edge-01"; };\n'
                    'coap = { dtls = { psk_file = "psk.txt"; }; };\n'
                    'mqtt = {\n  uri = "mqtt://127.0.0.1:1";\n  client_id = "%s";\n};\n'
                    % client_id)
        for cmd in ("check", "run"):
            r = tandem(cmd, "-c", conf)
            check(r.returncode == 1, "%s accepted client_id %r: exit %d\n%s%s"
                  % (cmd, client_id, r.returncode, r.stdout, r.stderr))
            check('%s:5: mqtt.client_id: "%s"' % (conf, shown) in r.stderr,
                  "%s: stderr for %r:\n%s" % (cmd, client_id, r.stderr))
    with open(conf, "w") as f:
        f.write('gateway = { id = "edge-01"; };\ncoap = { dtls = { psk_file = "psk.txt"; }; };\n'
                'mqtt = {\n  uri = "mqtt://127.0.0.1:1";\n  client_id = "tandem-{gateway}";\n};\n')
    r = tandem("check", "-c", conf)
    check(r.returncode == 0, "the default form refused: %s" % r.stderr)

    # At a reload: refused whole, logged with the line and counted; the
    # gateway's session goes on under its own identifier.
    pki = Pki(d)
    broker = Broker(d, pki).start()
    g = Gateway(d, broker, pki, mqtt='client_id = "gw-it";').start()
    text = open(g.conf).read()
    check('client_id = "gw-it";' in text, "the configuration: " + text)
    with open(g.conf, "w") as f:
        f.write(text.replace('client_id = "gw-it";', 'client_id = "bike-1/x";'))
    g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: g.count("reload refused"), "the reload refused")
    line = 1 + [n for n, l in enumerate(text.splitlines()) if "client_id" in l][0]
    check(g.count('%s:%d: mqtt.client_id: "bike-1/x" has the form IDENTITY/ID'
                  % (g.conf, line)) == 1,
          "no FILE:LINE of mqtt.client_id in the log:\n" + g.text()[-2000:])
    wait_until(lambda: g.stats_json()["config"]["reload_failures"] == 1,
               "config.reload_failures = 1")
    check(g.proc.poll() is None, "the gateway stopped")


def bidi_controls_escaped_in_log():
    """A device publishing to a refused topic that holds U+202E RIGHT-TO-LEFT
    OVERRIDE (and U+2066): the gateway's log line shows '?' in their place."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    g = Gateway(d, broker, pki, mappings=MAPPINGS, mqtt_listener="").start()
    dev = MqttDevice(g, pki.device("bike-1"))
    ack = dev.connect("bidi-1")
    check(ack is not None and ack.reason == 0, "connect: %r" % ack)
    topic = "redback/p1/bikes/bike-1\u202eexe.gpj/x\u2066y"
    ack = dev.publish(topic, "x", qos=1)
    check(ack is not None and ack.reason == 0x87, "the refused publish: %r" % ack)
    want = "PUBLISH to redback/p1/bikes/bike-1?exe.gpj/x?y refused"
    wait_until(lambda: g.count(want), "the escaped refusal in the log")
    dev.close()
    check(g.proc.poll() is None, "the gateway stopped")
    text = g.text()
    for ch in ("\u202e", "\u2066"):
        check(ch not in text, "U+%04X in the log:\n%s" % (ord(ch), text[-2000:]))


if __name__ == "__main__":
    run({f.__name__: f for f in [tls12_suites_rsa_certificate, tls12_suites_ecdsa_certificate,
                                  server_certificate_is_no_device, dtls_suites,
                                  gateway_client_id_a_device_could_take,
                                  bidi_controls_escaped_in_log]})
