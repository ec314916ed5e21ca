"""What systemd sees: readiness once the listeners are bound, watchdog pings,
reload and stop notifications; the unit file itself."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (TANDEM, WAIT, Broker, Gateway, Pki, check, coap, run,  # noqa: E402
                     wait_until, workdir)

HERE = os.path.dirname(os.path.abspath(__file__))
UNIT = os.path.join(HERE, "..", "..", "deploy", "tandem.service")


class NotifySocket:
    def __init__(self, d):
        self.path = os.path.join(d, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []

    def poll(self):
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except (socket.timeout, BlockingIOError):
            pass

    def wait(self, needle, n=1):
        def seen():
            self.poll()
            return sum(needle in m for m in self.messages) >= n
        wait_until(seen, "%s x%d from the gateway" % (needle, n))


def notifications():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    ns = NotifySocket(d)
    g = Gateway(d, broker, pki, env={"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "400000"})
    g.start()
    ns.wait("READY=1")
    r = coap("coaps://127.0.0.1:%d/bikes/bike-1/telemetry" % g.dtls_port, payload="x",
             psk=("bike-1", "secret-bike-1"))
    check(r and r.code == "2.04", "ready but not serving: %r" % r)
    t0 = time.monotonic()
    ns.wait("WATCHDOG=1", 3)
    check(time.monotonic() - t0 < 5, "watchdog pings too slow")
    g.proc.send_signal(signal.SIGHUP)
    ns.wait("RELOADING=1")
    ns.wait("READY=1", 2)
    g.proc.send_signal(signal.SIGTERM)
    ns.wait("STOPPING=1")
    check(g.proc.wait(WAIT) == 0, "exit status")


def unit_file_verifies():
    check(shutil.which("systemd-analyze"), "systemd-analyze is missing (scripts/deps.sh installs it)")
    d = workdir()
    text = open(UNIT).read().replace("/usr/bin/tandem", os.path.abspath(TANDEM))
    for needle in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID",
                   "ExecStartPre=%s check" % os.path.abspath(TANDEM), "NoNewPrivileges=yes",
                   "ProtectSystem=strict", "StateDirectory=tandem", "RuntimeDirectory=tandem",
                   "User=tandem"):
        check(needle in text, "the unit lacks %s" % needle)
    unit = os.path.join(d, "tandem.service")
    open(unit, "w").write(text)
    # Documentation= names manual pages, which verify looks up with man(1): the
    # repository's, as the package installs them.
    for page in ("tandem.8", "tandem.conf.5"):
        section = os.path.join(d, "man", "man" + page[-1])
        os.makedirs(section, exist_ok=True)
        shutil.copy(os.path.join(HERE, "..", "..", "doc", page), section)
    out = subprocess.run(["systemd-analyze", "verify", unit], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=60,
                         env=dict(os.environ, MANPATH=os.path.join(d, "man")))
    check(out.stdout.strip() == "", "systemd-analyze verify:\n" + out.stdout)


if __name__ == "__main__":
    run({f.__name__: f for f in [notifications, unit_file_verifies]})
