"""`tandem check` and the command line, through the real binary."""

import os
import re
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import TANDEM, Pki, check, openssl, run, workdir  # noqa: E402

MAPPINGS = """mappings = (
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; },
  { name = "shadowed"; resource = "bikes/{identity}/telemetry";
    topic = "other/{identity}"; direction = "up"; }
);
"""


def tandem(*args):
    return subprocess.run([TANDEM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=30)


def write(d, name, text):
    p = os.path.join(d, name)
    with open(p, "w") as f:
        f.write(text)
    return p


def config(d, dtls, extra=""):
    return write(d, "tandem.conf", 'coap = {\n  dtls = {\n%s\n  };\n};\n%s%s' % (dtls, extra,
                                                                                  MAPPINGS))


def valid_config_prints_the_table():
    d = workdir()
    pki = Pki(d)
    write(d, "psk.txt", "# comment\nbike-1:00112233\n\nbike-2:aabbccdd\n")
    conf = config(d, '    psk_file = "psk.txt";\n    cert = "server.pem"; key = "server.key";\n'
                     '    ca = "ca.pem";')
    r = tandem("check", "-c", conf)
    check(r.returncode == 0, "exit %d: %s" % (r.returncode, r.stderr))
    check("telemetry" in r.stdout and "redback/p1/bikes/{identity}/telemetry" in r.stdout,
          "no mapping table: %s" % r.stdout)
    check('"shadowed" is shadowed completely by "telemetry"' in r.stdout,
          "no shadowing warning: %s" % r.stdout)
    check("2 identities" in r.stdout, "PSK count: %s" % r.stdout)
    check(pki, "pki")


def broken_config_reports_the_line():
    d = workdir()
    write(d, "psk.txt", "bike-1:00112233\n")
    conf = config(d, '    psk_file = "psk.txt";\n    colour = "blue";')
    r = tandem("check", "-c", conf)
    check(r.returncode == 1, "exit %d" % r.returncode)
    check("%s:4: coap.dtls.colour: unknown setting" % conf in r.stderr, "stderr: %s" % r.stderr)
    check(r.stdout == "", "printed a table for a broken file")


def broken_psk_file_reports_its_line():
    d = workdir()
    psk = write(d, "psk.txt", "bike-1:00112233\n# fine\nbike-2:xyz1\nbike/3:0011\n")
    conf = config(d, '    psk_file = "psk.txt";')
    r = tandem("check", "-c", conf)
    check(r.returncode == 1, "exit %d" % r.returncode)
    check("%s:3: coap.dtls.psk_file: key is not hexadecimal" % psk in r.stderr or
          "%s:3: coap.dtls.psk_file: key must be" % psk in r.stderr, "stderr: %s" % r.stderr)
    check("%s:4: coap.dtls.psk_file: identity must be" % psk in r.stderr, "stderr: %s" % r.stderr)
    r = tandem("run", "-c", conf)
    check(r.returncode == 1, "run with a broken PSK file: exit %d" % r.returncode)


def certificate_problems():
    d = workdir()
    pki = Pki(d)
    pki.leaf("other", "other")
    # A certificate with another certificate's key.
    conf = config(d, '    cert = "server.pem";\n    key = "other.key";')
    r = tandem("check", "-c", conf)
    check(r.returncode == 1 and "%s:3: coap.dtls.cert: " % conf in r.stderr
          and "does not match" in r.stderr, "mismatch: %s" % r.stderr)
    # An expired certificate.
    expired_cert(d)
    conf = config(d, '    cert = "old.pem";\n    key = "other.key";')
    r = tandem("check", "-c", conf)
    check(r.returncode == 1 and "has expired" in r.stderr, "expired: %s" % r.stderr)
    # Valid but close to its end: accepted, with a warning.
    openssl("x509", "-req", "-in", "other.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "5", "-out", "soon.pem", cwd=d)
    conf = config(d, '    cert = "soon.pem";\n    key = "other.key";')
    r = tandem("check", "-c", conf)
    check(r.returncode == 0 and re.search(r"soon.pem expires in [45] days", r.stderr),
          "expiring: %r" % r.stderr)
    # A missing file.
    conf = config(d, '    cert = "missing.pem";\n    key = "other.key";')
    r = tandem("check", "-c", conf)
    check(r.returncode == 1 and "cannot read" in r.stderr and "missing.pem" in r.stderr,
          "missing: %s" % r.stderr)


def expired_cert(d):
    """A certificate valid for one day in 2000, signed by the test CA."""
    with open(os.path.join(d, "index.txt"), "w"):
        pass
    with open(os.path.join(d, "ca.cnf"), "w") as f:
        f.write("[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=ca.srl\n"
                "default_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n")
    openssl("req", "-new", "-key", "other.key", "-subj", "/CN=old", "-out", "old.csr", cwd=d)
    openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
            "-startdate", "20000101000000Z", "-enddate", "20000102000000Z", "-in", "old.csr",
            "-out", "old.pem", cwd=d)


def port_in_use_is_a_runtime_failure():
    d = workdir()
    write(d, "psk.txt", "bike-1:00112233\n")
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    conf = write(d, "tandem.conf", 'gateway = { control_socket = "control.sock"; };\n'
                 'coap = {\n  bind = "127.0.0.1";\n  dtls = {\n    port = %d;\n'
                 '    psk_file = "psk.txt";\n  };\n};\n%s' % (port, MAPPINGS))
    r = tandem("run", "-c", conf)
    busy.close()
    check(r.returncode == 3, "exit %d: %s" % (r.returncode, r.stderr))
    check("cannot bind DTLS to [127.0.0.1]:%d" % port in r.stderr, "stderr: %s" % r.stderr)


def command_line():
    r = tandem("--version")
    check(r.returncode == 0 and r.stdout.startswith("tandem "), "--version: %r" % r.stdout)
    r = tandem("--help")
    check(r.returncode == 0 and "tandem check -c FILE" in r.stdout, "--help")
    r = tandem("check")
    check(r.returncode == 2 and "needs -c FILE" in r.stderr, "check without -c: %r" % r.stderr)
    r = tandem("frobnicate")
    check(r.returncode == 2, "unknown command: exit %d" % r.returncode)
    r = tandem("check", "-c", "/nonexistent.conf")
    check(r.returncode == 1 and "/nonexistent.conf: config: cannot read" in r.stderr,
          "missing file: %r" % r.stderr)


if __name__ == "__main__":
    run({f.__name__: f for f in [valid_config_prints_the_table, broken_config_reports_the_line,
                                  broken_psk_file_reports_its_line, certificate_problems,
                                  port_in_use_is_a_runtime_failure, command_line]})
