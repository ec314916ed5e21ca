"""Throughput and memory of the gateway on this machine: Mosquitto with TLS,
tandem with DTLS-PSK, and coap_load as many devices posting confirmable
readings. Prints the figures; fails only if a request was not answered 2.04
or a reading did not arrive."""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import subprocess  # noqa: E402

from harness import Broker, Gateway, Pki, Subscriber, check, wait_until, workdir  # noqa: E402

SESSIONS = int(os.environ.get("BENCH_SESSIONS", "16"))
COUNT = int(os.environ.get("BENCH_COUNT", "500"))
# Readings per device while the broker is down; they drain slowly (doc/engineering.md,
# Performance).
OFFLINE_COUNT = int(os.environ.get("BENCH_OFFLINE_COUNT", "50"))

MAPPINGS = """
  { name = "qos1"; resource = "q1/{identity}/telemetry"; topic = "redback/q1/{identity}";
    direction = "up"; qos = 1; },
  { name = "qos0"; resource = "q0/{identity}/telemetry"; topic = "redback/q0/{identity}";
    direction = "up"; qos = 0; }
"""


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def main():
    d = workdir()
    pki = Pki(d)
    # Sessions are saved when the broker stops: the subscriber's outlives the restart.
    broker = Broker(d, pki, persistent="at_exit").start()
    psk = {"bike-%d" % i: "key-bike-%d" % i for i in range(SESSIONS)}
    g = Gateway(d, broker, pki, mappings=MAPPINGS, psk=psk, log_level="info",
                mqtt="max_inflight = 1000;").start()
    sub = Subscriber(broker, "redback/#", session="bench")
    idle = proc_status(g.proc.pid)
    print("tandem idle: RSS %d KiB" % idle["VmRSS"])
    rounds = [("q1", "QoS 1: 2.04 after PUBACK"), ("q0", "QoS 0"),
              ("q1", "broker down: 2.04 once stored and fsync'ed in the offline buffer")]
    for qos, what in rounds:
        offline = what.startswith("broker down")
        if offline:
            broker.stop()
            g.wait_log("mqtt: connection to")
        count = OFFLINE_COUNT if offline else COUNT
        before = proc_status(g.proc.pid)
        arrived = len(sub.messages)
        out = subprocess.run([os.environ.get("COAP_LOAD", "coap_load"), "127.0.0.1",
                              str(g.dtls_port), str(SESSIONS), str(count), "bike-", qos,
                              "telemetry"], stdout=subprocess.PIPE, text=True, timeout=300)
        after = proc_status(g.proc.pid)
        print("== %s mapping (%s), %d devices x %d confirmable POSTs over DTLS-PSK"
              % (qos, what, SESSIONS, count))
        print(out.stdout.strip())
        cpu = after["cpu_s"] - before["cpu_s"]
        print("tandem CPU %.2f s (%.0f requests per CPU-second), RSS %d KiB, peak %d KiB"
              % (cpu, SESSIONS * count / cpu if cpu else 0, after["VmRSS"], after["VmHWM"]))
        check(out.returncode == 0, "coap_load failed")
        if offline:
            sub.stop()
            broker.start()
            got = sub.messages
            sub = Subscriber(broker, "redback/#", session="bench")
            sub.messages[:0] = got  # the same session: what it got, then what was kept
        t0 = time.monotonic()
        wait_until(lambda: len(sub.messages) >= arrived + SESSIONS * count,
                   "readings at the broker", timeout=300)
        if offline:
            took = time.monotonic() - t0
            print("the %d buffered readings reached the broker %.1f s after it came back"
                  " (%.0f per second, no other traffic)" % (SESSIONS * count, took,
                                                          SESSIONS * count / took))
    print("all readings arrived")
    check(g.stop() == 0, "tandem exit status")


if __name__ == "__main__":
    main()
