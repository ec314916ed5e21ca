"""`tandem pki`: the files it makes (modes, names, curve, chain), its
refusals (nothing replaced, nothing half-written), and a gateway set up from
its output alone serving a device with a certificate and one with a PSK."""

import hashlib
import os
import re
import select
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (TANDEM, WAIT, Broker, Gateway, Pki, Subscriber, check, coap,  # noqa: E402
                     coap_decode, coap_raw, run, workdir)


def tandem(*args):
    return subprocess.run([TANDEM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=60)


def x509(path, *what):
    return subprocess.run(["openssl", "x509", "-in", path, "-noout", *what],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=True).stdout


def verify(ca, cert, purpose):
    r = subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile", ca, cert],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r.returncode == 0 and r.stdout.strip().endswith(": OK"), r.stdout


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def snapshot(d):
    """Every file in d with its mode and a hash of its bytes."""
    out = {}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        with open(p, "rb") as f:
            out[name] = (mode(p), hashlib.sha256(f.read()).hexdigest())
    return out


def refused(r, what, needle):
    check(r.returncode == 1, "%s: exit %d (want 1): %s" % (what, r.returncode, r.stderr))
    check(needle in r.stderr and r.stderr.count("\n") >= 1,
          "%s: message %r lacks %r" % (what, r.stderr, needle))


def printed_hex(out):
    """The hex key of `tandem pki psk`'s output."""
    m = re.search(r"^key \(hex\): +([0-9a-f]+)$", out, re.M)
    return m.group(1) if m else out


def init_makes_a_ca_and_a_gateway_certificate():
    d = os.path.join(workdir(), "pki")
    r = tandem("pki", "init", "--dir", d, "--days", "400", "--hostname", "gw.example.net",
               "--hostname", "127.0.0.1", "--hostname", "::1")
    check(r.returncode == 0, "init: %d %s" % (r.returncode, r.stderr))
    for setting in ("gateway.pem", "gateway.key", "ca.pem"):
        check(setting in r.stdout, "init's output names %s: %s" % (setting, r.stdout))
    check("cert =" in r.stdout and "key =" in r.stdout and "ca =" in r.stdout,
          "init's output says what to put in tandem.conf: %s" % r.stdout)
    check(sorted(os.listdir(d)) == ["ca.key", "ca.pem", "gateway.key", "gateway.pem"],
          "files: %r" % os.listdir(d))
    for name, want in (("ca.key", 0o600), ("gateway.key", 0o600), ("ca.pem", 0o644),
                       ("gateway.pem", 0o644)):
        check(mode(os.path.join(d, name)) == want,
              "%s mode %o, want %o" % (name, mode(os.path.join(d, name)), want))
    ca, gw = os.path.join(d, "ca.pem"), os.path.join(d, "gateway.pem")
    text = x509(gw, "-text")
    check("ASN1 OID: prime256v1" in text, "gateway key is not P-256: %s" % text)
    check("ASN1 OID: prime256v1" in x509(ca, "-text"), "CA key is not P-256")
    san = re.search(r"Subject Alternative Name:.*\n\s*(.*)", text).group(1)
    check(san == "DNS:gw.example.net, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1",
          "SANs: %r" % san)
    check("CN = gw.example.net" in x509(gw, "-subject"), "gateway CN")
    check("CA:TRUE" in x509(ca, "-text"), "the CA is not a CA")
    ok, out = verify(ca, gw, "sslserver")
    check(ok, "openssl verify (server): %s" % out)
    ok, out = verify(ca, gw, "sslclient")
    check(ok, "openssl verify (client, towards a broker): %s" % out)
    # --days: the gateway certificate ends 400 days on (within a day)
    end = x509(gw, "-enddate").strip()
    check(subprocess.run(["openssl", "x509", "-in", gw, "-noout", "-checkend",
                          str(399 * 86400)], stdout=subprocess.DEVNULL).returncode == 0 and
          subprocess.run(["openssl", "x509", "-in", gw, "-noout", "-checkend",
                          str(401 * 86400)], stdout=subprocess.DEVNULL).returncode == 1,
          "--days 400 not honoured: %s" % end)

    # An existing CA is never replaced, and nothing else is written.
    before = snapshot(d)
    r = tandem("pki", "init", "--dir", d, "--hostname", "other")
    refused(r, "second init", "exists")
    check(snapshot(d) == before, "a refused init changed files")
    # Neither is a lone gateway certificate.
    d2 = os.path.join(workdir(), "pki2")
    os.makedirs(d2)
    with open(os.path.join(d2, "gateway.pem"), "w") as f:
        f.write("mine\n")
    r = tandem("pki", "init", "--dir", d2, "--hostname", "x")
    refused(r, "init over a gateway.pem", "gateway.pem exists")
    check(os.listdir(d2) == ["gateway.pem"], "files written beside it: %r" % os.listdir(d2))
    # Bad names and usage.
    d3 = os.path.join(workdir(), "pki3")
    r = tandem("pki", "init", "--dir", d3, "--hostname", "bad name!")
    refused(r, "bad hostname", "bad name!")
    check(not os.path.exists(d3) or os.listdir(d3) == [], "files for a refused init")
    check(tandem("pki", "init").returncode == 2, "init without --dir is a usage error")
    check(tandem("pki", "init", "--dir", d3, "--days", "x").returncode == 2, "--days x")
    check(tandem("pki", "frobnicate").returncode == 2, "unknown pki command")


def device_certificates():
    d = os.path.join(workdir(), "pki")
    check(tandem("pki", "init", "--dir", d, "--hostname", "localhost").returncode == 0, "init")
    r = tandem("pki", "device", "--dir", d, "bike-7")
    check(r.returncode == 0, "device: %s" % r.stderr)
    pem, key = os.path.join(d, "bike-7.pem"), os.path.join(d, "bike-7.key")
    check(mode(pem) == 0o644 and mode(key) == 0o600, "modes %o %o" % (mode(pem), mode(key)))
    check("CN = bike-7" in x509(pem, "-subject"), "CN: %s" % x509(pem, "-subject"))
    check("ASN1 OID: prime256v1" in x509(pem, "-text"), "device key is not P-256")
    check("TLS Web Client Authentication" in x509(pem, "-text"), "not for client auth")
    ok, out = verify(os.path.join(d, "ca.pem"), pem, "sslclient")
    check(ok, "openssl verify: %s" % out)
    # the key is the certificate's
    pub1 = subprocess.run(["openssl", "pkey", "-in", key, "-pubout"], stdout=subprocess.PIPE,
                          check=True).stdout
    pub2 = subprocess.run(["openssl", "x509", "-in", pem, "-noout", "-pubkey"],
                          stdout=subprocess.PIPE, check=True).stdout
    check(pub1 == pub2, "bike-7.key does not match bike-7.pem")

    before = snapshot(d)
    refused(tandem("pki", "device", "--dir", d, "bike-7"), "existing device", "exists")
    refused(tandem("pki", "device", "--dir", d, "a/b"), "identity with '/'", "identity")
    refused(tandem("pki", "device", "--dir", d, "$SYS"), "identity with '$'", "identity")
    refused(tandem("pki", "device", "--dir", d, "x" * 129), "identity too long", "identity")
    refused(tandem("pki", "device", "--dir", d, "ca"), "a device named ca", "exists")
    check(snapshot(d) == before, "a refused device command changed files")
    empty = os.path.join(workdir(), "nothing")
    os.makedirs(empty)
    refused(tandem("pki", "device", "--dir", empty, "bike-8"), "no CA", "ca.pem")
    check(os.listdir(empty) == [], "files without a CA: %r" % os.listdir(empty))


def psk_keys():
    d = workdir()
    psk = os.path.join(d, "psk.txt")
    r = tandem("pki", "psk", "--file", psk, "bike-1")
    check(r.returncode == 0, "psk: %s" % r.stderr)
    key = printed_hex(r.stdout)
    check(re.fullmatch(r"[0-9a-f]{32,}", key), "printed key %r is not 128 bits of hex" % key)
    check(mode(psk) == 0o600, "new PSK file mode %o" % mode(psk))
    with open(psk) as f:
        check(f.read() == "bike-1:%s\n" % key, "file content")
    r2 = tandem("pki", "psk", "--file", psk, "bike-2")
    key2 = printed_hex(r2.stdout)
    check(r2.returncode == 0 and key2 != key, "second key: %s" % r2.stderr)
    with open(psk) as f:
        check(f.read() == "bike-1:%s\nbike-2:%s\n" % (key, key2), "appended")

    before = snapshot(d)
    refused(tandem("pki", "psk", "--file", psk, "bike-2"), "existing name", "bike-2")
    refused(tandem("pki", "psk", "--file", psk, "a+b"), "invalid name", "identity")
    check(snapshot(d) == before, "a refused psk command changed the file")

    # A file the gateway would refuse is not added to.
    bad = os.path.join(d, "bad.txt")
    with open(bad, "w") as f:
        f.write("bike-1:zz\n")
    os.chmod(bad, 0o640)
    before = snapshot(d)
    refused(tandem("pki", "psk", "--file", bad, "bike-3"), "broken file", "bad.txt")
    check(snapshot(d) == before, "a broken file was changed")

    # An existing file keeps its mode; one without a final newline gets a whole line.
    other = os.path.join(d, "other.txt")
    with open(other, "w") as f:
        f.write("# devices\nbike-1:00ff")
    os.chmod(other, 0o640)
    r = tandem("pki", "psk", "--file", other, "bike-9")
    check(r.returncode == 0, "psk on an existing file: %s" % r.stderr)
    with open(other) as f:
        check(f.read() == "# devices\nbike-1:00ff\nbike-9:%s\n" % printed_hex(r.stdout), "content")
    check(mode(other) == 0o640, "mode changed to %o" % mode(other))
    check(not [n for n in os.listdir(d) if n.endswith(".tmp")], "temporary file left")


def dtls_psk_request(port, identity, hexkey, request):
    """Sends one CoAP request over DTLS 1.2 with a PSK given in hex (openssl
    s_client) and returns the first answer's bytes, or None."""
    p = subprocess.Popen(["openssl", "s_client", "-dtls1_2", "-quiet", "-connect",
                          "127.0.0.1:%d" % port, "-psk_identity", identity, "-psk", hexkey,
                          "-cipher", "PSK-AES128-CCM8:PSK-AES128-GCM-SHA256"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        p.stdin.write(request)
        p.stdin.flush()
        fd = p.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], WAIT)
        return os.read(fd, 2048) if ready else None
    finally:
        p.kill()
        p.wait()


def gateway_from_pki_output():
    """Only what tandem pki made: the gateway's certificate and CA, one device
    certificate and one PSK, and both devices are served."""
    d = workdir()
    pki = Pki(d)  # the broker's own certificates
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "redback/#")
    out = os.path.join(d, "tandem-pki")
    check(tandem("pki", "init", "--dir", out, "--hostname", "localhost", "--hostname",
                 "127.0.0.1").returncode == 0, "init")
    check(tandem("pki", "device", "--dir", out, "bike-7").returncode == 0, "device")
    psk_file = os.path.join(out, "psk.txt")
    r = tandem("pki", "psk", "--file", psk_file, "bike-1")
    check(r.returncode == 0, "psk")
    key = printed_hex(r.stdout)
    dtls = ('psk_file = "%s"; cert = "%s/gateway.pem"; key = "%s/gateway.key"; ca = "%s/ca.pem";'
            % (psk_file, out, out, out))
    g = Gateway(d, broker, pki, dtls=dtls)
    r = subprocess.run([TANDEM, "check", "-c", g.conf], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    check(r.returncode == 0, "tandem check: %s" % r.stdout)
    g.start()
    url = "coaps://127.0.0.1:%d/bikes/%%s/telemetry" % g.dtls_port
    cert = (os.path.join(out, "bike-7.pem"), os.path.join(out, "bike-7.key"))
    r = coap(url % "bike-7", payload="by-certificate", cert=cert,
             ca=os.path.join(out, "ca.pem"))
    check(r and r.code == "2.04", "device certificate from tandem pki: %r" % r)
    # coap-client takes a PSK as text only; OpenSSL's DTLS client takes it in hex.
    resp = dtls_psk_request(g.dtls_port, "bike-1", key,
                            coap_raw("bikes/bike-1/telemetry", b"by-psk", mid=7, token=b"t"))
    check(resp and coap_decode(resp)[1] == "2.04", "PSK device from tandem pki: %r" % resp)
    msgs = sub.wait_for(2)
    got = sorted((m["topic"], m["payload"]) for m in msgs)
    check(got == [("redback/p1/bikes/bike-1/telemetry", b"by-psk"),
                  ("redback/p1/bikes/bike-7/telemetry", b"by-certificate")], "got %r" % got)
    g.stop()


if __name__ == "__main__":
    run({f.__name__: f for f in (init_makes_a_ca_and_a_gateway_certificate, device_certificates,
                                 psk_keys, gateway_from_pki_output)})
