"""`tandem check` and the command line, through the real binary."""

import grp
import os
import pwd
import re
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import TANDEM, Pki, check, free_port, openssl, run, workdir  # noqa: E402

MAPPINGS = """mappings = (
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; },
  { name = "shadowed"; resource = "bikes/{identity}/telemetry";
    topic = "other/{identity}"; direction = "up"; }
);
"""


def tandem(*args, env=None, **kw):
    e = dict(os.environ)
    e.setdefault("LSAN_OPTIONS", "suppressions=%s:print_suppressions=0" % os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "lsan.supp"))
    e.update(env or {})
    return subprocess.run([TANDEM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=30, env=e, **kw)


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
    check(r.returncode == 0 and "tandem check [-c FILE]" in r.stdout, "--help")
    r = tandem("frobnicate")
    check(r.returncode == 2, "unknown command: exit %d" % r.returncode)
    r = tandem("check", "-c", "/nonexistent.conf")
    check(r.returncode == 1 and "/nonexistent.conf: config: cannot read" in r.stderr,
          "missing file: %r" % r.stderr)


def default_configuration_file():
    """Every command reads /etc/tandem/tandem.conf without -c; -c FILE alone runs."""
    default = "/etc/tandem/tandem.conf"
    r = tandem("check")
    check(r.returncode != 2 and default in r.stdout + r.stderr and "-c" not in r.stderr,
          "check without -c: %d %r" % (r.returncode, r.stderr))
    if not os.path.exists(default):  # else it would run the gateway installed here
        r = tandem("run")
        check(r.returncode == 1 and "%s: config: cannot read" % default in r.stderr,
              "run without -c: %d %r" % (r.returncode, r.stderr))
        r = tandem()
        check(r.returncode == 1 and "%s: config: cannot read" % default in r.stderr,
              "no command: %d %r" % (r.returncode, r.stderr))
    d = workdir()
    conf = write(d, "tandem.conf", "gateway = { idd = \"x\"; };\n")
    r = tandem("-c", conf)
    check(r.returncode == 1 and "%s:1: gateway.idd: unknown setting" % conf in r.stderr,
          "-c FILE alone: %d %r" % (r.returncode, r.stderr))
    r = tandem("--help")
    check("[-c FILE]" in r.stdout and default in r.stdout, "--help: %r" % r.stdout)


def key_problems_name_the_key():
    """A key that cannot be read is coap.dtls.key's problem, not coap.dtls.cert's."""
    d = workdir()
    Pki(d)
    conf = config(d, '    cert = "server.pem";\n    key = "gone.key";')
    r = tandem("check", "-c", conf)
    check(r.returncode == 1 and "%s:4: coap.dtls.key: cannot read %s/gone.key" % (conf, d)
          in r.stderr and "coap.dtls.cert" not in r.stderr, "stderr: %r" % r.stderr)
    write(d, "junk.key", "not a key\n")
    conf = config(d, '    cert = "server.pem";\n    key = "junk.key";')
    r = tandem("check", "-c", conf)
    check(r.returncode == 1 and "%s:4: coap.dtls.key: " % conf in r.stderr and
          "coap.dtls.cert" not in r.stderr, "stderr: %r" % r.stderr)


SERVICE_CONF = ('gateway = { state_dir = "state"; control_socket = "run/control.sock"; };\n'
                'coap = {\n  dtls = {\n    psk_file = "psk.txt";\n    cert = "server.pem";\n'
                '    key = "server.key";\n  };\n};\nmqtt = { password_file = "password";'
                ' };\n' + MAPPINGS)


def check_as_the_service_user():
    """Run as root, check opens each file as the service user (TANDEM_SERVICE_USER)."""
    d = workdir()
    os.chmod(d, 0o755)
    Pki(d)
    write(d, "psk.txt", "bike-1:00112233\n")
    write(d, "password", "secret\n")
    for sub in ("state", "run"):
        os.mkdir(os.path.join(d, sub), 0o755)
    conf = write(d, "tandem.conf", SERVICE_CONF)
    for f in os.listdir(d):
        if os.path.isfile(os.path.join(d, f)):
            os.chmod(os.path.join(d, f), 0o644)
    for f in ("server.key", "psk.txt", "password"):
        os.chmod(os.path.join(d, f), 0o600)
    user = {"TANDEM_SERVICE_USER": "nobody"}
    if os.geteuid() != 0:
        r = tandem("check", "-c", conf, env=user)
        check(r.returncode == 0 and r.stderr.count("cannot tell") == 1,
              "not root: %d %r" % (r.returncode, r.stderr))
        return
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    r = tandem("check", "-c", conf, env=user)
    check(r.returncode == 1 and "configuration OK" not in r.stdout, "accepted: %r" % r.stdout)
    for line, setting, name in ((6, "coap.dtls.key", "server.key"),
                                (4, "coap.dtls.psk_file", "psk.txt"),
                                (9, "mqtt.password_file", "password")):
        want = ("%s:%d: %s: %s/%s cannot be read by the service user nobody (Permission denied);"
                " make it readable by group %s" % (conf, line, setting, d, name, group))
        check(want in r.stderr, "wanted %r in %r" % (want, r.stderr))
    check("coap.dtls.cert" not in r.stderr, "blames the certificate: %r" % r.stderr)
    for setting, sub in (("gateway.state_dir", "state"), ("gateway.control_socket", "run")):
        want = ("%s:1: %s: the folder %s/%s cannot be written by the service user nobody "
                "(Permission denied)" % (conf, setting, d, sub))
        check(want in r.stderr, "wanted %r in %r" % (want, r.stderr))
    # Made readable by the group, and the folders the user's: OK.
    for f in ("server.key", "psk.txt", "password"):
        os.chown(os.path.join(d, f), 0, nobody.pw_gid)
        os.chmod(os.path.join(d, f), 0o640)
    for sub in ("state", "run"):
        os.chown(os.path.join(d, sub), nobody.pw_uid, nobody.pw_gid)
    r = tandem("check", "-c", conf, env=user)
    check(r.returncode == 0 and "configuration OK" in r.stdout and "service user" not in r.stderr,
          "readable: %d %r" % (r.returncode, r.stderr))
    # A folder that does not exist yet is made by systemd: a warning that says how otherwise.
    os.rmdir(os.path.join(d, "run"))
    r = tandem("check", "-c", conf, env=user)
    check(r.returncode == 0 and "gateway.control_socket: the folder %s/run does not exist" % d
          in r.stderr and "systemd-tmpfiles --create tandem.conf" in r.stderr,
          "missing folder: %d %r" % (r.returncode, r.stderr))
    # No such user: one line saying it cannot tell.
    os.chmod(os.path.join(d, "server.key"), 0o600)
    os.chown(os.path.join(d, "server.key"), 0, 0)
    r = tandem("check", "-c", conf, env={"TANDEM_SERVICE_USER": "tandem-no-such-user"})
    lines = [x for x in r.stderr.splitlines() if "cannot tell" in x]
    check(r.returncode == 0 and len(lines) == 1 and "tandem-no-such-user" in lines[0],
          "no such user: %d %r" % (r.returncode, r.stderr))
    # Run as the service user itself (as the unit's ExecStartPre): the key is the key's setting.
    r = tandem("check", "-c", conf, env=user, user=nobody.pw_uid, group=nobody.pw_gid,
               extra_groups=[])
    check(r.returncode == 1 and "%s:6: coap.dtls.key: cannot read %s/server.key" % (conf, d)
          in r.stderr and "coap.dtls.cert" not in r.stderr, "as nobody: %r" % r.stderr)


def listener_and_broker_clash():
    d = workdir()
    Pki(d)
    write(d, "psk.txt", "bike-1:00112233\n")
    listener = ('mqtt_listener = {\n  enabled = true;\n  cert = "server.pem";\n'
                '  key = "server.key";\n  ca = "ca.pem";\n%s};\n')
    conf = config(d, '    psk_file = "psk.txt";', listener % "")
    r = tandem("check", "-c", conf)
    check(r.returncode == 1 and "%s:7: mqtt_listener.port: " % conf in r.stderr and
          "mqtts://localhost:8883" in r.stderr and "relay devices to itself" in r.stderr,
          "default ports: %d %r" % (r.returncode, r.stderr))
    conf = config(d, '    psk_file = "psk.txt";', listener % "  port = 8884;\n")
    r = tandem("check", "-c", conf)
    check(r.returncode == 0, "another port: %d %r" % (r.returncode, r.stderr))


def syntax_and_unknown_settings():
    d = workdir()
    write(d, "psk.txt", "bike-1:00112233\n")
    conf = config(d, '    psk_file = "psk.txt;\n    port = 5684;',
                  'gateway = {\n  id = "edge";\n};\n')
    r = tandem("check", "-c", conf)
    check(r.returncode == 1 and r.stderr.strip() == "%s:3: syntax: unterminated string" % conf,
          "unterminated: %r" % r.stderr)
    conf = config(d, '    psk_file = "psk.txt";', 'mqtt = {\n  keepalvie = 30;\n};\n')
    r = tandem("check", "-c", conf)
    check(r.returncode == 1 and "%s:7: mqtt.keepalvie: unknown setting; did you mean "
          "mqtt.keepalive?" % conf in r.stderr, "did you mean: %r" % r.stderr)


def one_identity():
    d = workdir()
    write(d, "psk.txt", "bike-1:00112233\n")
    conf = config(d, '    psk_file = "psk.txt";')
    r = tandem("check", "-c", conf)
    check(r.returncode == 0 and "psk_file: 1 identity\n" in r.stdout and
          "identities" not in r.stdout, "stdout: %r" % r.stdout)


def stats_says_which_group():
    """A user outside the socket's group hears which group to join."""
    if os.geteuid() != 0:
        return  # needs another user and a group of root's choice
    nobody = pwd.getpwnam("nobody")
    group = next((g for g in grp.getgrall() if g.gr_gid not in (0, nobody.pw_gid)
                  and "nobody" not in g.gr_mem), None)
    check(group is not None, "no group to give the socket")
    d = workdir()
    os.chmod(d, 0o755)
    sock = os.path.join(d, "control.sock")
    conf = write(d, "tandem.conf", 'gateway = { control_socket = "%s"; };\n' % sock)
    os.chmod(conf, 0o644)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock)
    srv.listen(1)
    os.chown(sock, 0, group.gr_gid)
    os.chmod(sock, 0o660)
    try:
        r = tandem("stats", "-c", conf, user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
    finally:
        srv.close()
    want = ("tandem stats: cannot connect to %s (Permission denied): join the group %s "
            "(usermod -aG %s $USER" % (sock, group.gr_name, group.gr_name))
    check(r.returncode != 0 and want in r.stderr, "wanted %r in %r" % (want, r.stderr))


def run_names_a_missing_folder():
    d = workdir()
    write(d, "psk.txt", "bike-1:00112233\n")
    base = ('coap = {\n  bind = "127.0.0.1";\n  dtls = { port = %d; psk_file = "psk.txt"; };\n};\n'
            'mqtt = { uri = "mqtt://127.0.0.1:%d"; };\n' % (free_port(socket.SOCK_DGRAM),
                                                           free_port()))
    conf = write(d, "tandem.conf", base + 'gateway = {\n  state_dir = "no/such/state";\n'
                 '  control_socket = "control.sock";\n};\n' + MAPPINGS)
    r = tandem("run", "-c", conf)
    check(r.returncode == 1 and "%s:7: gateway.state_dir: the folder %s/no/such/state does not "
          "exist and cannot be made (No such file or directory)" % (conf, d) in r.stderr and
          "systemd-tmpfiles --create tandem.conf" in r.stderr,
          "state_dir: %d %r" % (r.returncode, r.stderr))
    conf = write(d, "tandem.conf", base + 'gateway = {\n  state_dir = "state";\n'
                 '  control_socket = "gone/run/control.sock";\n};\n' + MAPPINGS)
    r = tandem("run", "-c", conf)
    check(r.returncode == 1 and "%s:8: gateway.control_socket: the folder %s/gone/run does not "
          "exist" % (conf, d) in r.stderr and "install -d" in r.stderr,
          "control socket: %d %r" % (r.returncode, r.stderr))


if __name__ == "__main__":
    run({f.__name__: f for f in [valid_config_prints_the_table, broken_config_reports_the_line,
                                  broken_psk_file_reports_its_line, certificate_problems,
                                  port_in_use_is_a_runtime_failure, command_line,
                                  default_configuration_file, key_problems_name_the_key,
                                  check_as_the_service_user, listener_and_broker_clash,
                                  syntax_and_unknown_settings, one_identity,
                                  stats_says_which_group, run_names_a_missing_folder]})
