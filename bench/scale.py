"""Tandem at scale, side by side with libcoap's own example server
(coap-server-gnutls, which answers the same DTLS-PSK requests with nothing
behind it), on the same machine and the same load from coap_load:

1. steady throughput: SCALE_SESSIONS sessions (200), each keeping one
   confirmable PUT in flight, over a window of SCALE_SECONDS (8) that starts
   once every session has had its first answer: coap-server, Tandem with a
   QoS 1 mapping (2.04 after the broker's PUBACK) and with a QoS 0 mapping;
2. the CPU time of each thread of the server during that window, per request,
   and Mosquitto's and coap_load's;
3. system calls per request (strace -c -f on the server for SCALE_STRACE
   seconds of the same load);
4. Private_Dirty per idle DTLS session (SCALE_IDLE sessions, 1000, each held
   open after one request);
5. the thundering herd: SCALE_BURST devices (1000) whose handshakes start at
   once from SCALE_FORKS processes (4), one PUT each: answered within 5 s and
   60 s; then as many arriving at SCALE_RATE a second (1000);
6. a summary with the aims of issue 11.

SCALE_PHASES (steady,memory,herd) runs some of them only.

Fails only when something broke (an answer other than the expected code, a
reading that did not reach the broker, a server that died), never for an aim
not met."""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
from harness import (Broker, Gateway, Pki, check, free_port, spawn, wait_until,  # noqa: E402
                     workdir)

COAP_LOAD = os.environ.get("COAP_LOAD", "coap_load")
COAP_SERVER = os.environ.get("COAP_SERVER", "coap-server-gnutls")
SESSIONS = int(os.environ.get("SCALE_SESSIONS", "200"))
SECONDS = float(os.environ.get("SCALE_SECONDS", "8"))
STRACE = float(os.environ.get("SCALE_STRACE", "3"))
IDLE = int(os.environ.get("SCALE_IDLE", "1000"))
BURST = int(os.environ.get("SCALE_BURST", "1000"))
FORKS = int(os.environ.get("SCALE_FORKS", "4"))
RATE = float(os.environ.get("SCALE_RATE", "1000"))
HERD_WAIT = float(os.environ.get("SCALE_HERD_WAIT", "60"))
PHASES = set(os.environ.get("SCALE_PHASES", "steady,memory,herd").split(","))
TICK = os.sysconf("SC_CLK_TCK")

MAPPINGS = """
  { name = "qos1"; resource = "q1/{identity}/telemetry"; topic = "scale/q1/{identity}";
    direction = "up"; qos = 1; },
  { name = "qos0"; resource = "q0/{identity}/telemetry"; topic = "scale/q0/{identity}";
    direction = "up"; qos = 0; }
"""

# The identity prefixes of each phase: every phase has sessions of its own.
PREFIXES = {"st": SESSIONS, "ma": max(1, IDLE // 10), "mb": IDLE - max(1, IDLE // 10),
            "hb": BURST, "rt": BURST}


def kv(line):
    """The key=value fields of one of coap_load's lines, numbers as floats."""
    out = {}
    for tok in line.split():
        k, sep, v = tok.partition("=")
        if sep:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


class Load:
    """coap_load running, its lines read as they come."""

    def __init__(self, args):
        self.args = [COAP_LOAD] + [str(a) for a in args]
        self.proc = spawn(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
        self.lines = queue.Queue()
        self.all = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.all.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, word, timeout):
        """The fields of the next line that starts with word (lines between are kept)."""
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError("coap_load: no '%s' line within %.0f s:\n%s"
                                     % (word, timeout, "".join(self.all)))
            if line is None:
                raise AssertionError("coap_load ended before '%s' (status %s):\n%s"
                                     % (word, self.proc.wait(), "".join(self.all)))
            if line.startswith(word + " "):
                return kv(line)

    def finish(self, timeout=30):
        """Closes its stdin; its last line's fields and its exit status."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        done = self.expect("done", timeout)
        return done, self.proc.wait(timeout)


class Server:
    """What is measured: a name, its pid, its DTLS port, what it answers."""

    def __init__(self, name, tag, pid, port, codes, opts, path, gateway=None):
        """tag: the start of its devices' identities; opts and path: coap_load's
        options and PATH_PREFIX PATH_SUFFIX for it."""
        self.name, self.tag, self.pid, self.port, self.codes = name, tag, pid, port, codes
        self.opts, self.path, self.gateway = opts, path, gateway

    def load_args(self, *opts, sessions, count, phase):
        return ["-m", "put", "-a", self.codes, *self.opts, *opts, "127.0.0.1", self.port,
                sessions, count, self.tag + phase + "-"] + self.path

    def alive(self):
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False


def threads_cpu(pid):
    """{tid: (comm, CPU seconds)} of a process's threads."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[tid] = (comm, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def process_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def private_dirty(pid):
    with open("/proc/%d/smaps_rollup" % pid) as f:
        return int(re.search(r"^Private_Dirty:\s+(\d+) kB", f.read(), re.M).group(1))


def udp_drops(port):
    """Datagrams dropped at the socket bound to 127.0.0.1:port (its receive
    buffer was full), and the machine's UDP RcvbufErrors."""
    drops = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if cols[1] == "0100007F:%04X" % port:
                drops += int(cols[-1])
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    rcvbuf = int(rows[1][rows[0].index("RcvbufErrors")])
    return drops, rcvbuf


def broker_received(broker):
    """The PUBLISH packets Mosquitto has received ($SYS, every second)."""
    out = subprocess.run(["mosquitto_sub", *broker.client_args(), "-C", "1", "-W", "5", "-t",
                          "$SYS/broker/publish/messages/received"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=15)
    return int(out.stdout.split()[0]) if out.stdout.strip() else -1


class Readings:
    """Checks that what Tandem answered 2.04 reached the broker."""

    def __init__(self, broker):
        self.broker = broker
        self.before = broker_received(broker)

    def check(self, answered, what):
        want = self.before + answered
        try:
            wait_until(lambda: broker_received(self.broker) >= want, what, timeout=30)
        except AssertionError:
            got = broker_received(self.broker) - self.before
            raise AssertionError("%s: %d readings answered 2.04, %d reached the broker"
                                 % (what, answered, got))


def steady(srv, label, broker, others):
    """Phases 1-3 for one server: the window's figures, CPU by thread, syscalls."""
    load = Load(srv.load_args("-s", SECONDS, "-c", "-r", 500, "-t", 120, sessions=SESSIONS,
                              count=1, phase="st"))
    readings = Readings(broker) if broker else None
    load.expect("window start", 120)
    t0 = (threads_cpu(srv.pid), {n: process_cpu(p) for n, p in others.items()},
          process_cpu(load.proc.pid))
    end = load.expect("window end", SECONDS + 60)
    t1 = (threads_cpu(srv.pid), {n: process_cpu(p) for n, p in others.items()},
          process_cpu(load.proc.pid))
    n = max(1, end["answered"])
    cpu = {}
    for tid, (comm, s) in t1[0].items():
        before = t0[0].get(tid, (comm, 0))[1]
        cpu.setdefault(comm, [0, 0])
        cpu[comm][0] += (s - before) * 1e6 / n
        cpu[comm][1] += 1
    r = {"label": label, "rps": end["requests_per_s"], "p50": end["p50_ms"], "p99": end["p99_ms"],
         "answered": end["answered"], "threads": cpu,
         "server_us": sum(v[0] for v in cpu.values()),
         "others": {k: (t1[1][k] - t0[1][k]) * 1e6 / n for k in others},
         "load_us": (t1[2] - t0[2]) * 1e6 / n, "load_own_us": end["cpu_us_per_request"]}
    r["syscalls"] = strace(srv, load)
    done, status = load.finish()
    check(status == 0 and done["other"] == 0,
          "%s: coap_load failed (status %d, %d wrong answers):\n%s"
          % (label, status, done["other"], "".join(load.all)))
    if readings:
        readings.check(int(done["ok"]), "%s: readings at the broker" % label)
    check(srv.alive(), "%s died" % srv.name)
    print("== %s: %d sessions, one confirmable PUT in flight each, %.1f s window"
          % (label, SESSIONS, end["seconds"]))
    print("   %.0f requests/s, latency p50 %.2f ms, p99 %.2f ms, max %.1f ms; %d lost"
          % (end["requests_per_s"], end["p50_ms"], end["p99_ms"], end["max_ms"], done["lost"]))
    print("   CPU per request, µs: server %.1f (%s); %s; coap_load %.1f (its own count %.1f)"
          % (r["server_us"], ", ".join("%s %.1f%s" % (c, v[0], " x%d" % v[1] if v[1] > 1 else "")
                                        for c, v in sorted(cpu.items(), key=lambda kv: -kv[1][0])),
             "; ".join("%s %.1f" % kv for kv in r["others"].items()) or "nothing else",
             r["load_us"], r["load_own_us"]))
    calls, per = r["syscalls"]
    print("   system calls per request (strace -c -f, %.0f s, %d requests): %.1f in all: %s"
          % (STRACE, calls, sum(per.values()) if per else 0,
             ", ".join("%s %.2f" % kv for kv in sorted(per.items(), key=lambda kv: -kv[1])[:10])))
    return r


def strace(srv, load):
    """(requests, {syscall: calls per request}) while strace -c -f follows the server."""
    out = os.path.join(workdir(), "strace.txt")
    st = spawn(["strace", "-c", "-f", "-p", str(srv.pid), "-o", out],
               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # strace says "Process N attached" (with its threads) once it follows them all.
    attached = threading.Event()

    def watch():
        for line in st.stderr:
            if "attached" in line:
                attached.set()
    threading.Thread(target=watch, daemon=True).start()
    if not attached.wait(10):
        st.kill()
        return 0, {}
    time.sleep(0.2)
    load.proc.send_signal(signal.SIGUSR1)
    a = load.expect("mark", 10)
    time.sleep(STRACE)
    load.proc.send_signal(signal.SIGUSR1)
    b = load.expect("mark", 10)
    st.send_signal(signal.SIGINT)
    st.wait(30)
    n = max(1, b["answered"] - a["answered"])
    per = {}
    with open(out) as f:
        for line in f:
            cols = line.split()
            if len(cols) >= 5 and cols[0][0].isdigit() and cols[-1] != "total":
                per[cols[-1]] = int(cols[3]) / n
    return n, per


def hold(srv, phase, n):
    """n sessions, each after one answered PUT, held idle by coap_load."""
    load = Load(srv.load_args("-i", "-r", 400, "-t", 120, sessions=n, count=1, phase=phase))
    held = load.expect("held", 120)
    check(held["other"] == 0, "%s: wrong answers while opening sessions" % srv.name)
    time.sleep(1)
    return load, held


def memory(srv):
    """Phase 4: KiB of Private_Dirty per idle DTLS session."""
    idle = private_dirty(srv.pid)
    few_n, rest_n = PREFIXES["ma"], PREFIXES["mb"]
    a, ha = hold(srv, "ma", few_n)
    few = private_dirty(srv.pid)
    b, hb = hold(srv, "mb", rest_n)
    many = private_dirty(srv.pid)
    sessions = srv.gateway.stats_json()["coap"]["sessions"] if srv.gateway else None
    for load in (a, b):
        done, status = load.finish()
        check(status == 0, "%s: coap_load failed holding sessions" % srv.name)
    per = (many - idle) / IDLE
    marginal = (many - few) / max(1, rest_n)
    print("== %s: Private_Dirty idle %d KiB, with %d sessions %d KiB, with %d %d KiB: "
          "%.1f KiB a session (%.1f from %d to %d)%s; %d + %d answered"
          % (srv.name, idle, few_n, few, IDLE, many, per, marginal, few_n, IDLE,
             "" if sessions is None else "; the gateway counted %d sessions" % sessions,
             ha["answered"], hb["answered"]))
    return {"idle": idle, "many": many, "per": per, "marginal": marginal,
            "answered": ha["answered"] + hb["answered"]}


def herd(srv, what, opts, phase, label):
    """Phase 5: BURST devices, one PUT each, started by opts; answered when."""
    drops0 = udp_drops(srv.port)
    stats0 = srv.gateway.stats_json()["coap"] if srv.gateway else None
    load = Load(srv.load_args(*opts, "-t", HERD_WAIT, sessions=BURST, count=1, phase=phase))
    procs = load.expect("processes", HERD_WAIT + 30)
    s = load.expect("starts", 30)
    done, status = load.finish()
    check(status == 0 and s["other"] == 0, "%s: coap_load failed (status %d, %d wrong answers)"
          % (label, status, s["other"]))
    check(srv.alive(), "%s died" % srv.name)
    drops1 = udp_drops(srv.port)
    extra = ""
    if srv.gateway:
        st = srv.gateway.stats_json()["coap"]
        extra = "; the gateway: %d handshakes completed, %d failed" % (
            st["dtls_handshakes_ok"] - stats0["dtls_handshakes_ok"],
            st["dtls_handshakes_failed"] - stats0["dtls_handshakes_failed"])
    print("== %s: %d devices %s (from %d process%s, the starts spread over %.1f ms)"
          % (label, BURST, what, procs["count"], "" if procs["count"] == 1 else "es",
             s["spread_ms"]))
    print("   answered within 5 s %d, within 60 s %d, the last after %.2f s; handshakes "
          "completed %d (p50 %.0f ms, p99 %.0f ms), first answer p50 %.0f ms, p99 %.0f ms; "
          "requests given up %d"
          % (s["within_5s"], s["within_60s"], s["last_s"], s["connected"], s["handshake_p50_ms"],
             s["handshake_p99_ms"], s["first_answer_p50_ms"], s["first_answer_p99_ms"], s["lost"]))
    print("   datagrams dropped at the server's socket (receive buffer full) %d; machine's UDP "
          "RcvbufErrors +%d%s" % (drops1[0] - drops0[0], drops1[1] - drops0[1], extra))
    return s


class Servers:
    """coap-server and Tandem, started afresh for each phase: the sessions of
    one phase (servers keep idle sessions for minutes) do not weigh on the
    next."""

    def __init__(self, pki, broker, psk):
        self.pki, self.broker, self.psk = pki, broker, psk
        self.g = self.cs = None

    def start(self):
        d = workdir()
        self.g = Gateway(d, self.broker, self.pki, mappings=MAPPINGS, psk=self.psk,
                         log_level="info").start()
        ids = os.path.join(d, "coap-server-identities")
        with open(ids, "w") as f:
            f.writelines("CoAP,%s,%s\n" % kv for kv in self.psk.items() if kv[0][0] == "c")
        while True:
            port = free_port(socket.SOCK_DGRAM)
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", port + 1))
                break
            except OSError:
                continue
        self.cs = spawn([COAP_SERVER, "-A", "127.0.0.1", "-p", str(port), "-k",
                         "no-such-device-key", "-i", ids, "-v", "0"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.cs.poll() is not None or any(
            "0100007F:%04X" % (port + 1) in line for line in open("/proc/net/udp")),
            "coap-server to listen")
        check(self.cs.poll() is None, "coap-server exited at start")
        g = self.g
        # coap-server: PUT /example_data, 2.01 Created the first time, then 2.04 Changed.
        self.libcoap = Server("coap-server", "c", self.cs.pid, port + 1, "2.01,2.04",
                              ["-U", "example_data"], [])
        self.q1 = Server("tandem", "q1", g.proc.pid, g.dtls_port, "2.04", [],
                         ["q1", "telemetry"], g)
        self.q0 = Server("tandem", "q0", g.proc.pid, g.dtls_port, "2.04", [],
                         ["q0", "telemetry"], g)
        return self

    def stop(self):
        check(self.cs.poll() is None, "coap-server died")
        self.cs.terminate()
        self.cs.wait(15)
        check(self.g.stop() == 0, "tandem did not stop cleanly")


def main():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, extra="sys_interval 1\n").start()
    psk = {}
    for p, n in PREFIXES.items():
        for tag in ("c", "q1", "q0") if p == "st" else ("c", "q1"):
            psk.update({"%s%s-%d" % (tag, p, i): "key-%s%s-%d" % (tag, p, i) for i in range(n)})
    print("coap-server-gnutls from libcoap3-bin %s, tandem, mosquitto %s; %d CPUs; the servers "
          "are started afresh for each phase"
          % (subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libcoap3-bin"],
                            stdout=subprocess.PIPE, text=True).stdout,
             subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "mosquitto"],
                            stdout=subprocess.PIPE, text=True).stdout, os.cpu_count()))
    servers = Servers(pki, broker, psk)

    runs, mem, herds = None, None, None
    if "steady" in PHASES:
        sv = servers.start()
        others = {"mosquitto": broker.proc.pid}
        runs = [steady(sv.libcoap, "coap-server", None, {}),
                steady(sv.q1, "tandem QoS 1", broker, others),
                steady(sv.q0, "tandem QoS 0", broker, others)]
        servers.stop()

    if "memory" in PHASES:
        sv = servers.start()
        mem = {"coap-server": memory(sv.libcoap)}
        readings = Readings(broker)
        mem["tandem"] = memory(sv.q1)
        readings.check(int(mem["tandem"]["answered"]), "memory: readings at the broker")
        servers.stop()

    if "herd" in PHASES:
        herds = {}
        readings = Readings(broker)
        tandem_ok = 0
        for kind in ("burst", "rate"):
            sv = servers.start()
            for srv, name in ((sv.libcoap, "coap-server"), (sv.q1, "tandem QoS 1")):
                if kind == "burst":
                    r = herd(srv, "whose handshakes start at once", ["-b", "-f", FORKS], "hb",
                             "%s, the thundering herd" % name)
                else:
                    r = herd(srv, "arriving at %.0f a second" % RATE, ["-r", RATE], "rt",
                             "%s, arrivals at %.0f/s" % (name, RATE))
                herds.setdefault(srv.name, []).append(r)
                if srv.gateway:
                    tandem_ok += r["ok"]
            servers.stop()
        readings.check(int(tandem_ok), "herd: readings at the broker")
    summary(runs, mem, herds)


def summary(runs, mem, herds):
    print()
    print("== Summary (aims from issue 11)")
    row = "%-44s %14s %14s  %s"
    print(row % ("", "coap-server", "tandem", "aim"))
    if runs:
        base = runs[0]
        for r, aim in ((runs[1], 0.5), (runs[2], 0.7)):
            ratio = r["rps"] / base["rps"] if base["rps"] else 0
            print(row % ("requests/s, %s (p50/p99 ms %.1f/%.1f)"
                         % (r["label"][7:], r["p50"], r["p99"]),
                         "%.0f" % base["rps"], "%.0f" % r["rps"],
                         "%.2fx of coap-server, aim >= %.1fx: %s"
                         % (ratio, aim, "met" if ratio >= aim else "not met")))
        for r in runs[1:]:
            print(row % ("CPU µs per request, %s (server only)" % r["label"][7:],
                         "%.1f" % base["server_us"], "%.1f" % r["server_us"], ""))
        for r in runs[1:]:
            print(row % ("system calls per request, %s" % r["label"][7:],
                         "%.1f" % sum(base["syscalls"][1].values()),
                         "%.1f" % sum(r["syscalls"][1].values()), ""))
    if mem:
        per = mem["tandem"]["per"]
        print(row % ("KiB per idle DTLS session (%d sessions)" % IDLE,
                     "%.1f" % mem["coap-server"]["per"], "%.1f" % per,
                     "aim <= 16: %s" % ("met" if per <= 16 else "not met")))
    if herds:
        cb, cr = herds["coap-server"]
        tb, tr = herds["tandem"]
        print(row % ("herd of %d: answered within 5 s" % BURST, "%d" % cb["within_5s"],
                     "%d" % tb["within_5s"],
                     "all within 5 s: %s" % ("met" if tb["within_5s"] >= BURST else "not met")))
        print(row % ("herd of %d: answered within 60 s" % BURST, "%d" % cb["within_60s"],
                     "%d" % tb["within_60s"], ""))
        print(row % ("herd of %d: the last answered after, s" % BURST, "%.2f" % cb["last_s"],
                     "%.2f" % tb["last_s"], ""))
        print(row % ("%d arriving at %.0f/s: answered (last after, s)" % (BURST, RATE),
                     "%d (%.2f)" % (cr["answered"], cr["last_s"]),
                     "%d (%.2f)" % (tr["answered"], tr["last_s"]),
                     "all: %s" % ("met" if tr["answered"] >= BURST else "not met")))


if __name__ == "__main__":
    main()
