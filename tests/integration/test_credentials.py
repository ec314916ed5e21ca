"""Credentials over their whole life: PSKs that work as `tandem pki psk`
prints them, managed in place; the gateway certificate renewed and served
after a reload; device certificates revoked by a CRL on both listeners;
CRLs checked; keys and PSK files readable by a group."""

import datetime
import os
import re
import secrets
import signal
import socket
import ssl
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (TANDEM, Broker, Gateway, MqttDevice, Pki, Subscriber,  # noqa: E402
                     check, coap, coap_decode, coap_raw, device_tls_context, run, wait_until,
                     workdir)
from test_pki import dtls_psk_request  # noqa: E402


def tandem(*args):
    return subprocess.run([TANDEM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=60)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def new_psk(path, name, *extra):
    """`tandem pki psk`: the key as printed in text and in hex."""
    r = tandem("pki", "psk", "--file", path, *extra, name)
    check(r.returncode == 0, "pki psk: %s" % r.stderr)
    text = re.search(r"^key \(text\): (\S+)$", r.stdout, re.M)
    hexkey = re.search(r"^key \(hex\): +([0-9a-f]+)$", r.stdout, re.M)
    check(text and hexkey, "pki psk prints the key as text and as hex: %r" % r.stdout)
    return text.group(1), hexkey.group(1)


def reload(g, n):
    g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: g.count("reloaded:") + g.count("reload refused") >= n, "reload %d" % n)
    check(g.count("reloaded:") == n, "reload refused:\n" + g.text()[-2000:])


def psk_as_printed():
    """The key `pki psk` prints works as text with coap-client (libcoap takes
    text keys) and as hex with OpenSSL's DTLS client."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "redback/#")
    psk_file = os.path.join(d, "devices.psk")
    keys = {}
    for name in ("bike-1", "bike-2"):
        text, hexkey = new_psk(psk_file, name)
        check(len(text) * 8 >= 128, "key of %d bits" % (len(text) * 8))
        check(all(0x21 <= ord(c) < 0x7f for c in text), "unprintable key %r" % text)
        check(text.encode().hex() == hexkey, "text %r and hex %r differ" % (text, hexkey))
        keys[name] = (text, hexkey)
    with open(psk_file) as f:
        check(f.read() == "".join("%s:%s\n" % (n, k[1]) for n, k in keys.items()),
              "the file holds identity:hex")
    g = Gateway(d, broker, pki, dtls='psk_file = "%s";' % psk_file).start()
    url = "coaps://127.0.0.1:%d/bikes/bike-1/telemetry" % g.dtls_port
    r = coap(url, payload="text-key", psk=("bike-1", keys["bike-1"][0]))
    check(r and r.code == "2.04", "coap-client -k TEXT: %r" % r)
    resp = dtls_psk_request(g.dtls_port, "bike-2", keys["bike-2"][1],
                            coap_raw("bikes/bike-2/telemetry", b"hex-key", mid=3, token=b"h"))
    check(resp and coap_decode(resp)[1] == "2.04", "openssl -psk HEX: %r" % resp)
    got = sorted((m["topic"], m["payload"]) for m in sub.wait_for(2))
    check(got == [("redback/p1/bikes/bike-1/telemetry", b"text-key"),
                  ("redback/p1/bikes/bike-2/telemetry", b"hex-key")], "got %r" % got)
    g.stop()


def psk_remove_and_list():
    """--list prints identities and never a key; --remove rewrites the file
    whole keeping its mode and owner; an unknown name changes nothing."""
    d = workdir()
    path = os.path.join(d, "psk.txt")
    with open(path, "w") as f:
        f.write("# fleet\nbike-1:00112233445566778899aabbccddeeff\n")
    keys = [new_psk(path, n)[1] for n in ("bike-2", "bike-3")]
    os.chmod(path, 0o640)
    owner = None
    if os.geteuid() == 0:
        owner = (1, 1)  # daemon: a file the service's user owns, edited by root
        os.chown(path, *owner)
    r = tandem("pki", "psk", "--file", path, "--list")
    check(r.returncode == 0 and r.stdout.split() == ["bike-1", "bike-2", "bike-3"],
          "--list: %r %r" % (r.stdout, r.stderr))
    for k in keys + ["00112233445566778899aabbccddeeff"]:
        check(k not in r.stdout and bytes.fromhex(k).decode("latin-1") not in r.stdout,
              "--list printed a key")
    r = tandem("pki", "psk", "--file", path, "--remove", "bike-2")
    check(r.returncode == 0, "--remove: %s" % r.stderr)
    check(keys[0] not in r.stdout + r.stderr, "--remove printed the key")
    with open(path) as f:
        check(f.read() == "# fleet\nbike-1:00112233445566778899aabbccddeeff\nbike-3:%s\n" %
              keys[1], "content after --remove")
    check(mode(path) == 0o640, "mode after --remove: %o" % mode(path))
    if owner:
        st = os.stat(path)
        check((st.st_uid, st.st_gid) == owner, "owner after --remove: %d:%d" %
              (st.st_uid, st.st_gid))
    with open(path, "rb") as f:
        before = f.read()
    r = tandem("pki", "psk", "--file", path, "--remove", "bike-9")
    check(r.returncode == 1 and "bike-9" in r.stderr, "unknown name: %d %r" %
          (r.returncode, r.stderr))
    with open(path, "rb") as f:
        check(f.read() == before, "a refused --remove changed the file")
    check(not [n for n in os.listdir(d) if ".tmp" in n], "temporary file left")


def other_group():
    """A group this process may give files to, other than its own."""
    if os.geteuid() == 0:
        return 1, "1"
    for gid in os.getgroups():
        if gid != os.getegid():
            return gid, str(gid)
    return None, None


def group_readable():
    """--group: keys and PSK files written 0640 and given to the group."""
    gid, name = other_group()
    if gid is None:
        print("no second group to give files to: the group is not checked")
    d = workdir()
    out = os.path.join(d, "pki")
    args = ["--group", name] if name else []
    check(tandem("pki", "init", "--dir", out, "--hostname", "localhost", *args).returncode == 0,
          "init --group")
    check(tandem("pki", "device", "--dir", out, "bike-1", *args).returncode == 0,
          "device --group")
    psk = os.path.join(d, "psk.txt")
    new_psk(psk, "bike-1", *args)
    for p in (os.path.join(out, "gateway.key"), os.path.join(out, "bike-1.key"), psk):
        if name:
            check(mode(p) == 0o640, "%s mode %o, want 0640" % (p, mode(p)))
            check(os.stat(p).st_gid == gid, "%s group %d, want %d" % (p, os.stat(p).st_gid, gid))
    check(mode(os.path.join(out, "ca.key")) == 0o600, "the CA key stays 0600")
    if name:
        # A renewed gateway key keeps the group's read access.
        check(tandem("pki", "gateway", "--dir", out).returncode == 0, "gateway")
        p = os.path.join(out, "gateway.key")
        check(mode(p) == 0o640 and os.stat(p).st_gid == gid, "renewed key: %o %d" %
              (mode(p), os.stat(p).st_gid))
    r = tandem("pki", "psk", "--file", psk, "--group", "no-such-group-here", "bike-2")
    check(r.returncode == 2, "an unknown group is a usage error: %d" % r.returncode)


def served_serial(port, ca):
    """The serial of the certificate the MQTT listener serves (openssl s_client)."""
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-CAfile", ca,
                        "-servername", "localhost"], input="", stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True, timeout=30)
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", r.stdout, re.S)
    check(m, "no certificate from s_client: %s" % r.stdout[-500:])
    x = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=m.group(0),
                       stdout=subprocess.PIPE, text=True, check=True)
    return x.stdout.strip()


def serial_of(path):
    return subprocess.run(["openssl", "x509", "-in", path, "-noout", "-serial"],
                          stdout=subprocess.PIPE, text=True, check=True).stdout.strip()


def pki_gateway_setup(d, crl=False):
    """A broker, and a gateway whose DTLS and MQTT listeners use only what
    `tandem pki` made in d/tp (with d/tp/crl.pem when crl)."""
    pki = Pki(d)
    broker = Broker(d, pki).start()
    out = os.path.join(d, "tp")
    check(tandem("pki", "init", "--dir", out, "--hostname", "localhost", "--hostname",
                 "127.0.0.1").returncode == 0, "init")
    for n in ("bike-1", "bike-2", "bike-3"):
        check(tandem("pki", "device", "--dir", out, n).returncode == 0, "device %s" % n)
    files = 'cert = "{0}/gateway.pem"; key = "{0}/gateway.key"; ca = "{0}/ca.pem";'.format(out)
    if crl:
        files += ' crl = "%s/crl.pem";' % out
    g = Gateway(d, broker, pki, dtls=files, mqtt_listener=files)
    return out, g


def cert_of(out, name):
    return (os.path.join(out, name + ".pem"), os.path.join(out, name + ".key"))


def dtls_ok(g, out, name):
    r = coap("coaps://127.0.0.1:%d/bikes/%s/telemetry" % (g.dtls_port, name), payload="x",
             cert=cert_of(out, name), ca=os.path.join(out, "ca.pem"))
    return r is not None and r.code == "2.04"


def mqtt_ok(g, out, name):
    ctx = device_tls_context(None, cert_of(out, name), ca=os.path.join(out, "ca.pem"))
    try:
        dev = MqttDevice(g, ctx=ctx)
    except (ssl.SSLError, OSError):
        return False
    try:
        ack = dev.connect("%s-%s" % (name, secrets.token_hex(3)))
    finally:
        dev.close()
    return ack is not None and ack.reason == 0


def gateway_renewed():
    """`pki gateway` renews the gateway pair from the same CA, keeping the old
    one as .old; after SIGHUP the new certificate is served and devices
    connect again on both listeners."""
    d = workdir()
    out, g = pki_gateway_setup(d)
    g.start()
    ca = os.path.join(out, "ca.pem")
    first = serial_of(os.path.join(out, "gateway.pem"))
    check(served_serial(g.listener_port, ca) == first, "the first certificate is served")
    check(mqtt_ok(g, out, "bike-1") and dtls_ok(g, out, "bike-1"), "bike-1 before renewal")
    r = tandem("pki", "gateway", "--dir", out, "--days", "90")
    check(r.returncode == 0, "pki gateway: %s" % r.stderr)
    second = serial_of(os.path.join(out, "gateway.pem"))
    check(second != first, "the certificate was not renewed")
    check(serial_of(os.path.join(out, "gateway.pem.old")) == first, "the old one is kept")
    check(os.path.exists(os.path.join(out, "gateway.key.old")), "the old key is kept")
    check(mode(os.path.join(out, "gateway.key")) == 0o600, "new key mode")
    san = subprocess.run(["openssl", "x509", "-in", os.path.join(out, "gateway.pem"), "-noout",
                          "-ext", "subjectAltName"], stdout=subprocess.PIPE, text=True).stdout
    check("DNS:localhost" in san and "IP Address:127.0.0.1" in san, "names kept: %s" % san)
    check(subprocess.run(["openssl", "x509", "-in", os.path.join(out, "gateway.pem"), "-noout",
                          "-checkend", str(91 * 86400)], stdout=subprocess.DEVNULL).returncode
          == 1, "--days 90 not honoured")
    reload(g, 1)
    check(served_serial(g.listener_port, ca) == second, "the renewed certificate is not served")
    check(mqtt_ok(g, out, "bike-1"), "MQTT device after renewal")
    check(dtls_ok(g, out, "bike-1"), "DTLS device after renewal")
    # New names: the certificate carries them.
    r = tandem("pki", "gateway", "--dir", out, "--hostname", "gw.example.net", "--hostname",
               "127.0.0.1")
    check(r.returncode == 0, "pki gateway --hostname: %s" % r.stderr)
    san = subprocess.run(["openssl", "x509", "-in", os.path.join(out, "gateway.pem"), "-noout",
                          "-ext", "subjectAltName"], stdout=subprocess.PIPE, text=True).stdout
    check("DNS:gw.example.net" in san and "DNS:localhost" not in san, "new names: %s" % san)
    # Without a CA nothing is written.
    empty = os.path.join(d, "empty")
    os.makedirs(empty)
    r = tandem("pki", "gateway", "--dir", empty, "--hostname", "x")
    check(r.returncode == 1 and os.listdir(empty) == [], "gateway without a CA: %r" %
          os.listdir(empty))
    g.stop()


def revoked_refused():
    """A revoked device certificate is refused at the handshake over DTLS and
    TLS, others are served; a reload with a new CRL revokes one more."""
    d = workdir()
    out, g = pki_gateway_setup(d, crl=True)
    r = tandem("pki", "revoke", "--dir", out, "bike-2")
    check(r.returncode == 0, "revoke: %s" % r.stderr)
    crl = os.path.join(out, "crl.pem")
    text = subprocess.run(["openssl", "crl", "-in", crl, "-noout", "-text"],
                          stdout=subprocess.PIPE, text=True).stdout
    check(serial_of(cert_of(out, "bike-2")[0]).split("=")[1] in text, "serial not in the CRL")
    v = subprocess.run(["openssl", "crl", "-in", crl, "-noout", "-CAfile",
                        os.path.join(out, "ca.pem")], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    check("verify OK" in v.stdout, "the CRL is not signed by the CA: %s" % v.stdout)
    r = tandem("pki", "revoke", "--dir", out, "bike-2")
    check(r.returncode == 1 and "already" in r.stderr, "revoking twice: %r" % r.stderr)
    g.start()
    check(dtls_ok(g, out, "bike-1"), "bike-1 over DTLS")
    check(mqtt_ok(g, out, "bike-1"), "bike-1 over TLS")
    check(not dtls_ok(g, out, "bike-2"), "revoked bike-2 served over DTLS")
    # The refusal's info line names the identity and the peer (the debug line
    # before it, from the certificate callback, has no peer).
    wait_until(lambda: any("certificate revoked" in l and "127.0.0.1" in l and "MQTT" not in l
                           for l in list(g.lines)), "the DTLS refusal logged with its peer")
    line = [l for l in g.lines if "certificate revoked" in l and "127.0.0.1" in l][-1]
    check("bike-2" in line, "DTLS log line: %r" % line)
    check(not mqtt_ok(g, out, "bike-2"), "revoked bike-2 served over TLS")
    wait_until(lambda: any("certificate revoked" in l and "MQTT" in l for l in g.lines),
               "the TLS refusal logged")
    line = [l for l in g.lines if "certificate revoked" in l and "MQTT" in l][-1]
    check("bike-2" in line and "127.0.0.1" in line, "TLS log line: %r" % line)
    check(dtls_ok(g, out, "bike-3") and mqtt_ok(g, out, "bike-3"), "bike-3 before its revocation")
    stats = g.stats_json()["certificates"]
    for s in ("coap.dtls.crl", "mqtt_listener.crl"):
        check(s in stats and stats[s]["days_left"] in (29, 30), "%s in statistics: %r" %
              (s, stats))

    check(tandem("pki", "revoke", "--dir", out, "--days", "10", "bike-3").returncode == 0,
          "revoke bike-3")
    reload(g, 1)
    check(not dtls_ok(g, out, "bike-3"), "bike-3 served over DTLS after the reload")
    check(not mqtt_ok(g, out, "bike-3"), "bike-3 served over TLS after the reload")
    check(not dtls_ok(g, out, "bike-2"), "bike-2 served again")
    check(dtls_ok(g, out, "bike-1") and mqtt_ok(g, out, "bike-1"), "bike-1 after the reload")
    stats = g.stats_json()["certificates"]
    check(stats["coap.dtls.crl"]["days_left"] in (9, 10), "next update after the reload: %r" %
          stats)
    # A CRL that is not the CA's is refused at reload: the running one stays.
    with open(crl, "w") as f:
        f.write("not a CRL\n")
    g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: g.count("reload refused") >= 1, "the refused reload")
    check(not dtls_ok(g, out, "bike-3") and dtls_ok(g, out, "bike-1"), "the running CRL stays")
    g.stop()


def sign_crl(out, path, this_update, next_update, revoked=()):
    """A CRL signed by out's CA with the given times (Python's cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    with open(os.path.join(out, "ca.pem"), "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    # Read through OpenSSL: GnuTLS may write a private scalar with its leading zero left out,
    # which Python's cryptography refuses.
    pem = subprocess.run(["openssl", "pkey", "-in", os.path.join(out, "ca.key")],
                         stdout=subprocess.PIPE, check=True).stdout
    key = serialization.load_pem_private_key(pem, None)
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
         .last_update(this_update).next_update(next_update))
    for serial in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(this_update).build())
    crl = b.sign(key, hashes.SHA256())
    with open(path, "wb") as f:
        f.write(crl.public_bytes(serialization.Encoding.PEM))


def crl_checked():
    """`tandem check` refuses an expired CRL, one of another CA and one without
    a CA, as FILE:LINE: setting: reason; a CRL near its next update is
    warned about; `pki crl` signs it anew."""
    d = workdir()
    out, g = pki_gateway_setup(d, crl=True)
    crl = os.path.join(out, "crl.pem")
    now = datetime.datetime.now(datetime.timezone.utc)
    sign_crl(out, crl, now - datetime.timedelta(days=40), now - datetime.timedelta(days=10))

    def checked():
        return subprocess.run([TANDEM, "check", "-c", g.conf], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    with open(g.conf) as f:
        conf = f.read().splitlines()
    line = next(i + 1 for i, l in enumerate(conf) if l.startswith("coap"))
    line = next(i + 1 for i, l in enumerate(conf) if "crl =" in l and "dtls" in l)
    r = checked()
    check(r.returncode == 1, "an expired CRL passed check: %s" % r.stdout)
    check(re.search(r"%s:%d: coap\.dtls\.crl: .*expired" % (re.escape(g.conf), line), r.stdout),
          "FILE:LINE: setting: reason for the expired CRL: %s" % r.stdout)
    check("mqtt_listener.crl" in r.stdout, "the listener's CRL is named too: %s" % r.stdout)
    # The gateway does not start with it either.
    s = subprocess.run([TANDEM, "run", "-c", g.conf], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    check(s.returncode == 1 and "coap.dtls.crl" in s.stdout, "start with an expired CRL: %s" %
          s.stdout[-1000:])

    # pki crl signs it anew: valid again, with the next update asked for.
    r = tandem("pki", "crl", "--dir", out, "--days", "3")
    check(r.returncode == 0, "pki crl: %s" % r.stderr)
    r = checked()
    check(r.returncode == 0, "check after pki crl: %s" % r.stdout)
    check("coap.dtls.crl" in r.stdout and "next update" in r.stdout,
          "no warning for a CRL 3 days from its next update: %s" % r.stdout)
    check(tandem("pki", "crl", "--dir", out).returncode == 0, "pki crl (30 days)")
    r = checked()
    check(r.returncode == 0 and "next update" not in r.stdout, "warned at 30 days: %s" %
          r.stdout)

    # Signed by another CA.
    other = os.path.join(d, "other")
    check(tandem("pki", "init", "--dir", other, "--hostname", "x").returncode == 0, "other CA")
    sign_crl(other, crl, now, now + datetime.timedelta(days=5))
    r = checked()
    check(r.returncode == 1 and re.search(r":%d: coap\.dtls\.crl: .*not signed by" % line,
                                          r.stdout), "a foreign CRL: %s" % r.stdout)
    check(subprocess.run([TANDEM, "pki", "revoke", "--dir", out, "bike-1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE).returncode == 1,
          "pki revoke adds to a CRL that is not its CA's")


def crl_past_next_update():
    """A CRL that passes its next update in a running gateway refuses every
    device certificate on both listeners (as Mosquitto's crlfile), saying why,
    until it is signed anew and reloaded."""
    d = workdir()
    out, g = pki_gateway_setup(d, crl=True)
    crl = os.path.join(out, "crl.pem")
    now = datetime.datetime.now(datetime.timezone.utc)
    sign_crl(out, crl, now - datetime.timedelta(seconds=10), now + datetime.timedelta(seconds=3))
    g.start()
    check(dtls_ok(g, out, "bike-1") and mqtt_ok(g, out, "bike-1"), "bike-1 before")
    wait_until(lambda: not mqtt_ok(g, out, "bike-1"), "TLS refusal once the next update passed")
    check(not dtls_ok(g, out, "bike-1"), "DTLS device served with a CRL past its next update")
    for what in ("coap.dtls.crl is past its next update", "mqtt_listener.crl is past its next "
                 "update"):
        wait_until(lambda: any(what in l and "bike-1" in l for l in list(g.lines)),
                   "a log line %r" % what)
    # Re-signed and reloaded: served again.
    check(tandem("pki", "crl", "--dir", out).returncode == 0, "pki crl")
    reload(g, 1)
    check(dtls_ok(g, out, "bike-1") and mqtt_ok(g, out, "bike-1"), "bike-1 after pki crl")
    g.stop()


if __name__ == "__main__":
    run({f.__name__: f for f in (psk_as_printed, psk_remove_and_list, group_readable,
                                 gateway_renewed, revoked_refused, crl_checked,
                                 crl_past_next_update)})
