"""SIGHUP: configuration, mappings, PSK file and certificates are read again;
a broken set keeps the running one."""

import grp
import json
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (TANDEM, DEFAULT_MAPPINGS, Broker, Gateway, Pki, Subscriber, check, coap,  # noqa
                     run, wait_until, workdir)
from test_down import Observer  # noqa: E402

BIKE1 = ("bike-1", "secret-bike-1")
BIKE3 = ("bike-3", "secret-bike-3")

COMMANDS = """,
  { name = "commands"; resource = "bikes/{identity}/commands";
    topic = "redback/p1/bikes/{identity}/commands"; direction = "down"; qos = 1; }"""
EXTRA = """,
  { name = "extra"; resource = "extra/{identity}"; topic = "redback/extra/{identity}";
    direction = "up"; qos = 1; }"""


def url(g, path):
    return "coaps://127.0.0.1:%d/%s" % (g.dtls_port, path)


def hup(g, n):
    g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: g.count("reloaded:") + g.count("reload refused") >= n, "reload %d" % n)


def mapping_and_identity_without_restart():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    sub = Subscriber(broker, "redback/#")
    g = Gateway(d, broker, pki, mappings=DEFAULT_MAPPINGS + COMMANDS).start()
    g.wait_log("held values are served")
    # An established DTLS session: an observer from before the reload.
    o = Observer(g, "bikes/bike-1/commands", BIKE1, seconds=30)
    o.wait(1, "registration")
    r = coap(url(g, "extra/bike-3"), payload="early", psk=BIKE3, timeout=3)
    check(r is None, "bike-3 is not known yet: %r" % r)

    with open(os.path.join(d, "psk.txt"), "a") as f:
        f.write("bike-3:%s\n" % "secret-bike-3".encode().hex())
    text = open(g.conf).read().replace(COMMANDS + "\n);", COMMANDS + EXTRA + "\n);")
    check(EXTRA in text, "config rewrite")
    open(g.conf, "w").write(text)
    hup(g, 1)
    check(g.count("reloaded:") == 1, "reload refused:\n" + g.text())

    r = coap(url(g, "extra/bike-3"), payload="new-identity", psk=BIKE3)
    check(r and r.code == "2.04", "new identity on a new mapping: %r" % r)
    r = coap(url(g, "bikes/bike-1/telemetry"), payload="old-mapping", psk=BIKE1)
    check(r and r.code == "2.04", "old mapping after reload: %r" % r)
    got = [m["payload"] for m in sub.wait_for(2)]
    check(b"new-identity" in got and b"old-mapping" in got, "published: %r" % got)
    broker.publish("redback/p1/bikes/bike-1/commands", "after-reload", "-q", "1")
    notes = o.wait(2, "a notification on the session from before the reload")
    check(notes[-1][2] == "after-reload", "observer got %r" % notes)
    o.stop()


def broken_file_keeps_the_running_set():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    stats = Subscriber(broker, "tandem/it/stats")
    sub = Subscriber(broker, "redback/#")
    odd = """,
  { name = "odd \\"name\\" \\\\"; resource = "odd"; topic = "odd"; direction = "up"; }"""
    g = Gateway(d, broker, pki, mqtt="stats_interval = 1;",
                mappings=DEFAULT_MAPPINGS + odd).start()
    good = open(g.conf).read()
    lines = good.splitlines()
    lines.insert(2, "  oops = ;")
    open(g.conf, "w").write("\n".join(lines) + "\n")
    hup(g, 1)
    check(g.count("reload refused") == 1, "a broken file was taken")
    check(g.count("%s:3: syntax:" % g.conf) == 1, "no FILE:LINE in the log:\n" + g.text())
    # A valid file, but a PSK file with a bad line: refused whole too.
    open(g.conf, "w").write(good)
    with open(os.path.join(d, "psk.txt"), "a") as f:
        f.write("bike-9:nothex\n")
    hup(g, 2)
    check(g.count("reload refused") == 2, "a broken PSK file was taken")
    r = coap(url(g, "bikes/bike-1/telemetry"), payload="still", psk=BIKE1)
    check(r and r.code == "2.04", "the running set: %r" % r)
    check(sub.wait_for(1)[0]["payload"] == b"still", "not published")

    def failures():
        for m in reversed(stats.messages):
            return json.loads(m["payload"])["config"]["reload_failures"]
        return 0
    wait_until(lambda: failures() == 2, "config.reload_failures = 2")
    names = json.loads(stats.messages[-1]["payload"])["mappings"]
    check('odd "name" \\' in names, "mapping names in the statistics: %r" % list(names))


def certificate_renewal():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    cert, key = os.path.join(d, "fullchain.pem"), os.path.join(d, "privkey.pem")
    first = pki.leaf("first", "first.example", san="DNS:first.example,IP:127.0.0.1", server=True)
    os.replace(first[0], cert)
    os.replace(first[1], key)
    g = Gateway(d, broker, pki, dtls='cert = "fullchain.pem"; key = "privkey.pem";').start()
    check("CN = first.example" in server_subject(g, pki), "first certificate")
    # What certbot does: the renewed pair in its lineage folder, then the deploy hook.
    lineage = os.path.join(d, "live")
    os.makedirs(lineage)
    second = pki.leaf("second", "second.example", san="DNS:second.example,IP:127.0.0.1",
                      server=True)
    os.replace(second[0], os.path.join(lineage, "fullchain.pem"))
    os.replace(second[1], os.path.join(lineage, "privkey.pem"))
    r = deploy_hook(g, lineage)
    check(r.returncode == 0, "hook: %s" % r.stderr)
    wait_until(lambda: g.count("reloaded:") == 1, "the hook's reload")
    check("CN = second.example" in server_subject(g, pki), "renewed certificate not served")
    r = coap(url(g, "public/x"), payload="after renewal", ca=pki.ca)
    check(r and r.code == "2.04", "a device after the renewal: %r" % r)

    # A renewal whose key does not match its certificate: the old pair stays, no reload.
    third = pki.leaf("third", "third.example", san="DNS:third.example,IP:127.0.0.1",
                     server=True)
    os.replace(third[0], os.path.join(lineage, "fullchain.pem"))  # keeps second's key
    before = [open(p, "rb").read() for p in (cert, key)]
    r = deploy_hook(g, lineage)
    check(r.returncode != 0, "the hook took a mismatched pair")
    check("old one stays" in r.stderr and "does not match" in r.stderr,
          "the hook's reason: %r" % r.stderr)
    check([open(p, "rb").read() for p in (cert, key)] == before, "the old pair was replaced")
    check(sorted(n for n in os.listdir(d) if n.startswith(".")) == [],
          "files left behind: %r" % os.listdir(d))
    check("CN = second.example" in server_subject(g, pki), "the served certificate changed")
    check(g.count("reloaded:") + g.count("reload refused") == 1, "reloaded anyway")


def deploy_hook(g, lineage):
    """Runs deploy/certbot-deploy-hook as certbot would, for gateway g."""
    hook = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy",
                        "certbot-deploy-hook")
    env = dict(os.environ, RENEWED_LINEAGE=lineage, TANDEM_CERT_DIR=g.dir, TANDEM_CONF=g.conf,
               TANDEM_GROUP=grp.getgrgid(os.getgid()).gr_name, TANDEM_BIN=TANDEM,
               TANDEM_RELOAD="kill -HUP %d" % g.proc.pid)
    return subprocess.run(["sh", hook], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=60)


def server_subject(g, pki):
    """The subject of the certificate the gateway presents to a new DTLS handshake."""
    out = subprocess.run(["openssl", "s_client", "-dtls1_2", "-connect",
                          "127.0.0.1:%d" % g.dtls_port, "-CAfile", pki.ca, "-verify_return_error"],
                         input="", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=20)
    for line in out.stdout.splitlines():
        if line.startswith("subject="):
            return line
    return out.stdout


if __name__ == "__main__":
    run({f.__name__: f for f in [mapping_and_identity_without_restart,
                                  broken_file_keeps_the_running_set, certificate_renewal]})
