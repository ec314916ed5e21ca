"""The gateway's own memory: Private_Dirty from /proc/PID/smaps_rollup (pages
only this process wrote; RSS also counts the shared libraries' pages), idle
with a typical configuration (DTLS with PSKs and the certificate tandem pki
makes, the default mappings, statistics every 60 s, the control socket), then
with DTLS-PSK sessions held open (coap_load posts a few readings from each,
then is stopped, so that its sessions stay), then idle again once they have
timed out (coap.session_idle_timeout = 15 here), and once more after the
gateway has given the freed memory back (it looks every 30 s). Prints what holds the memory,
mapping by mapping (/proc/PID/smaps), and the memory per session; then the
same with PSKs only (no certificate: libcoap 4.3 loads the certificate and
the CA again for every DTLS session).

BENCH_MEMORY_SESSIONS (default 100) sets the sessions of the last step."""

import json
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
from harness import Broker, Gateway, Pki, check, wait_until, workdir  # noqa: E402

SESSIONS = int(os.environ.get("BENCH_MEMORY_SESSIONS", "100"))
COAP_LOAD = os.environ.get("COAP_LOAD", "coap_load")

MAPPINGS = """
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; },
  { name = "commands"; resource = "bikes/{identity}/commands";
    topic = "redback/p1/bikes/{identity}/commands"; direction = "down"; qos = 1; }
"""


def rollup(pid):
    """smaps_rollup's fields, in KiB."""
    out = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                out[m.group(1)] = int(m.group(2))
    return out


def threads(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"^Threads:\s+(\d+)", f.read(), re.M).group(1))


def by_mapping(pid):
    """Private_Dirty (KiB) by what it belongs to: a library or the binary
    (their writable data), the main heap, the other malloc arenas (one per
    thread that allocates), thread stacks, other anonymous memory (large
    blocks malloc takes with mmap)."""
    groups = {}
    head = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")
    with open("/proc/%d/smaps" % pid) as f:
        name, size = None, 0
        for line in f:
            m = head.match(line)
            if m:
                start, end, path = int(m.group(1), 16), int(m.group(2), 16), m.group(3)
                size = (end - start) // 1024
                if path.startswith("/"):
                    name = os.path.basename(path)
                    name = re.sub(r"\.so[.\d]*$", "", name)
                elif path:
                    name = path
                elif start % (64 << 20) == 0:  # glibc's arenas are aligned to their 64 MiB
                    name = "malloc arenas of the MQTT client's threads"
                elif 8188 <= size <= 8196:
                    name = "thread stacks"
                else:
                    name = "other anonymous (mmap'd blocks, arena remainders)"
                continue
            if line.startswith("Private_Dirty:"):
                kib = int(line.split()[1])
                if kib:
                    groups[name] = groups.get(name, 0) + kib
    return groups


def report(what, g, base=None):
    r = rollup(g.proc.pid)
    print("== %s: Private_Dirty %d KiB (%.2f MiB), Rss %d KiB, Pss %d KiB, %d threads"
          % (what, r["Private_Dirty"], r["Private_Dirty"] / 1024, r["Rss"], r["Pss"],
             threads(g.proc.pid)))
    groups = by_mapping(g.proc.pid)
    for name, kib in sorted(groups.items(), key=lambda kv: -kv[1]):
        if kib >= 8:
            delta = "" if base is None else " (%+d)" % (kib - base.get(name, 0))
            print("   %6d KiB%s  %s" % (kib, delta, name))
    return r, groups


def sessions(g):
    r = g.stats("--json")
    check(r.returncode == 0, "tandem stats: " + r.stderr)
    return json.loads(r.stdout)["coap"]["sessions"]


def hold_sessions(g, n, prefix):
    """n DTLS-PSK sessions (identities prefix0..), each having posted readings,
    then coap_load stopped (SIGSTOP) so that they stay open."""
    before = sessions(g)
    p = subprocess.Popen([COAP_LOAD, "127.0.0.1", str(g.dtls_port), str(n), "100000", prefix],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: sessions(g) >= before + n, "%d sessions" % n, timeout=60)
    time.sleep(0.5)  # a few more readings from each
    p.send_signal(signal.SIGSTOP)
    time.sleep(2)  # what was in flight is answered
    return p


def measure(with_cert):
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    cert, key = pki.server
    first, rest = max(1, SESSIONS // 10), SESSIONS - max(1, SESSIONS // 10)
    psk = {}
    for prefix, n in (("bike-a", first), ("bike-b", rest)):
        psk.update({"%s%d" % (prefix, i): "key-%s%d" % (prefix, i) for i in range(n)})
    dtls = 'psk_file = "psk.txt";'
    if with_cert:
        dtls += ' cert = "%s"; key = "%s"; ca = "%s";' % (cert, key, pki.ca)
    what = "PSKs and a certificate" if with_cert else "PSKs only"
    g = Gateway(d, broker, pki, dtls=dtls, mappings=MAPPINGS, psk=psk, log_level="info",
                coap="session_idle_timeout = 15;", mqtt="stats_interval = 60;").start()
    time.sleep(2)
    idle, idle_groups = report("%s: idle, connected to the broker" % what, g)
    held = [hold_sessions(g, first, "bike-a")]
    few, _ = report("%s: %d DTLS-PSK sessions" % (what, first), g, idle_groups)
    if rest:
        held.append(hold_sessions(g, rest, "bike-b"))
    many, _ = report("%s: %d DTLS-PSK sessions" % (what, SESSIONS), g, idle_groups)
    for p in held:
        p.kill()
        p.wait()
    # Sessions caught in their handshake take longer (DTLS retransmissions).
    try:
        wait_until(lambda: sessions(g) == 0, "the sessions to time out", timeout=150)
    except AssertionError:
        print("%d sessions still open 150 s after their devices went away" % sessions(g))
    time.sleep(1)
    after, _ = report("%s: idle again, the sessions gone (glibc keeps what was freed)" % what,
                      g, idle_groups)
    # The gateway gives back what its heaps hold unused every 30 s (malloc_trim).
    kept = after["Private_Dirty"]
    try:
        wait_until(lambda: rollup(g.proc.pid)["Private_Dirty"] < kept - 512,
                   "freed memory given back", timeout=40)
    except AssertionError:
        pass
    trimmed, _ = report("%s: idle, after the gateway gave freed memory back" % what, g,
                        idle_groups)
    print("tandem (%s): idle Private_Dirty %d KiB; with %d sessions %d KiB: %.1f KiB a session "
          "(%.1f KiB a session from %d to %d); idle again %d KiB, %d KiB once given back"
          % (what, idle["Private_Dirty"], SESSIONS, many["Private_Dirty"],
             (many["Private_Dirty"] - idle["Private_Dirty"]) / SESSIONS,
             (many["Private_Dirty"] - few["Private_Dirty"]) / max(1, rest), first, SESSIONS,
             kept, trimmed["Private_Dirty"]))
    check(g.stop() == 0, "tandem did not stop cleanly")
    broker.stop()


def main():
    measure(True)
    measure(False)


if __name__ == "__main__":
    main()
