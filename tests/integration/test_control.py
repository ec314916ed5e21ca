"""The control socket, `tandem stats` and /metrics: the same numbers everywhere
(stats topic, --json, --prometheus, /metrics, a real Prometheus), the bounds
on control clients, the socket's life cycle."""

import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (TANDEM, WAIT, Broker, Gateway, Pki, Subscriber, check, coap,  # noqa: E402
                     free_port, run, spawn, wait_until, workdir)

BIKE1 = ("bike-1", "secret-bike-1")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The outcomes provoked by requests(): 2.04 twice, 4.03, 4.04, 4.13.
OUTCOMES = {"2.04": 2, "4.03": 1, "4.04": 1, "4.13": 1}


def url(g, path):
    return "coaps://127.0.0.1:%d/%s" % (g.dtls_port, path)


def requests(d, g):
    """Requests of known outcomes (see test_up.py's refusals); coap.max_payload
    must be 2000."""
    for body in ("a", "b"):
        r = coap(url(g, "bikes/bike-1/telemetry"), payload=body, psk=BIKE1)
        check(r and r.code == "2.04", "POST: %r" % r)
    r = coap(url(g, "bikes/bike-2/telemetry"), payload="x", psk=BIKE1)
    check(r and r.code == "4.03", "another device's resource: %r" % r)
    r = coap(url(g, "nowhere/at/all"), payload="x", psk=BIKE1)
    check(r and r.code == "4.04", "unknown path: %r" % r)
    big = os.path.join(d, "big.bin")
    with open(big, "wb") as fh:
        fh.write(os.urandom(3000))
    r = coap(url(g, "bikes/bike-1/telemetry"), file=big, psk=BIKE1)
    check(r and r.code == "4.13", "too large: %r" % r)


def setup(**gw):
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    g = Gateway(d, broker, pki, **gw).start()
    return d, pki, broker, g


def stats_json(g):
    r = g.stats("--json")
    check(r.returncode == 0, "tandem stats --json: exit %d: %s" % (r.returncode, r.stderr))
    check(r.stdout.endswith("\n") and r.stdout.count("\n") == 1, "not one line: %r" % r.stdout)
    return json.loads(r.stdout)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def prometheus_samples(text):
    """{(name, frozenset of label pairs): value} of a text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        check(m, "not a sample line: %r" % line)
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def sample(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def counts_of_json(s):
    """What must be the same everywhere: requests, answers by code, per-mapping up."""
    return (s["coap"]["requests"], {k: v for k, v in s["coap"]["responses"].items() if v},
            {k: v["up"] for k, v in s["mappings"].items()})


def counts_of_prometheus(samples, mappings):
    codes = {}
    for (name, labels), v in samples.items():
        if name == "tandem_coap_responses_total" and v:
            codes[dict(labels)["code"]] = int(v)
    up = {m: int(sample(samples, "tandem_mapping_up_total", mapping=m) or 0) for m in mappings}
    return int(sample(samples, "tandem_coap_requests_total")), codes, up


def http(method, port, path, timeout=WAIT):
    """(status, headers, body) of one request to the metrics endpoint."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def same_counts_everywhere():
    d, pki, broker, g = setup(coap="max_payload = 2000;", mqtt="stats_interval = 1;",
                              metrics=True)
    topic = Subscriber(broker, "tandem/it/stats")
    requests(d, g)

    s = stats_json(g)
    want = counts_of_json(s)
    check(want[1] == OUTCOMES, "answers by code: %r" % (want[1],))
    check(want[0] >= sum(OUTCOMES.values()), "requests: %r" % (want[0],))
    check(want[2]["telemetry"] == 2 and sum(want[2].values()) == 2, "mappings: %r" % (want[2],))

    r = g.stats("--prometheus")
    check(r.returncode == 0, "--prometheus: %s" % r.stderr)
    check(counts_of_prometheus(prometheus_samples(r.stdout), want[2]) == want,
          "--prometheus differs from --json: %r" % (want,))

    status, headers, body = http("GET", g.metrics_port, "/metrics")
    check(status == 200, "GET /metrics: %d" % status)
    check(headers["Content-Type"] == CONTENT_TYPE, "Content-Type: %r" % headers["Content-Type"])
    check(counts_of_prometheus(prometheus_samples(body), want[2]) == want,
          "/metrics differs from --json")

    def latest():
        for m in reversed(topic.messages):
            return json.loads(m["payload"])
        return None
    wait_until(lambda: latest() and counts_of_json(latest()) == want,
               "the stats topic to show %r" % (want,))

    # The endpoint's own rules: one path, GET (and HEAD), a bounded idle connection.
    status, headers, body = http("GET", g.metrics_port, "/other")
    check(status == 404, "GET /other: %d" % status)
    status, headers, body = http("POST", g.metrics_port, "/metrics")
    check(status == 405 and "GET" in headers.get("Allow", ""), "POST: %d %r" % (status, headers))
    status, headers, body = http("HEAD", g.metrics_port, "/metrics")
    check(status == 200 and body == "", "HEAD: %d %r" % (status, body[:80]))
    s = stats_json(g)
    check(s["metrics"]["requests"] == 4 and s["metrics"]["not_found"] == 1 and
          s["metrics"]["not_allowed"] == 1, "metrics counters: %r" % s["metrics"])
    t0 = time.monotonic()
    idle = socket.create_connection(("127.0.0.1", g.metrics_port), WAIT)
    idle.settimeout(30)
    check(idle.recv(1) == b"", "an idle connection got data")
    check(time.monotonic() - t0 < 10 + 5, "an idle connection stayed %.1f s" %
          (time.monotonic() - t0))
    idle.close()
    check(g.stop() == 0, "gateway exit status")


def prometheus_scrapes():
    d, pki, broker, g = setup(coap="max_payload = 2000;", metrics=True)
    requests(d, g)
    want = stats_json(g)["coap"]["requests"]

    port = free_port()
    conf = os.path.join(d, "prometheus.yml")
    with open(conf, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: tandem\n    static_configs:\n"
                "      - targets: ['127.0.0.1:%d']\n" % g.metrics_port)
    log = open(os.path.join(d, "prometheus.log"), "w")
    prom = spawn(["prometheus", "--config.file=" + conf, "--storage.tsdb.path=" +
                  os.path.join(d, "tsdb"), "--web.listen-address=127.0.0.1:%d" % port],
                 stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready():
            check(prom.poll() is None, "prometheus exited: " + open(log.name).read()[-2000:])
            try:
                return http("GET", port, "/-/ready", timeout=1)[0] == 200
            except OSError:
                return False
        wait_until(ready, "prometheus to be ready", timeout=60)

        def query(q):
            status, _, body = http("GET", port, "/api/v1/query?query=" + q, timeout=5)
            check(status == 200, "query %s: %d %s" % (q, status, body))
            result = json.loads(body)["data"]["result"]
            return [float(r["value"][1]) for r in result]
        wait_until(lambda: query("up") == [1.0], "prometheus to scrape the gateway (up == 1)",
                   timeout=30)
        wait_until(lambda: query("tandem_coap_requests_total") == [float(want)],
                   "prometheus to have tandem_coap_requests_total = %d" % want, timeout=30)
        check(query('tandem_coap_responses_total{code="2.04"}') == [2.0], "2.04 in prometheus")
    finally:
        prom.kill()
        prom.wait(WAIT)
    check(g.stop() == 0, "gateway exit status")


def no_gateway():
    d = workdir()
    sock = os.path.join(d, "control.sock")
    conf = os.path.join(d, "tandem.conf")
    with open(conf, "w") as f:
        f.write('gateway = { control_socket = "control.sock"; };\n')
    for args in ([], ["--json"], ["--prometheus"], ["--watch", "1"]):
        r = subprocess.run([TANDEM, "stats", "-c", conf, *args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=WAIT)
        check(r.returncode == 3, "%r: exit %d" % (args, r.returncode))
        check(sock in r.stderr and r.stderr.count("\n") == 1, "%r: stderr %r" % (args, r.stderr))
        check(r.stdout == "", "%r: stdout %r" % (args, r.stdout))
    # A socket file nobody listens on (a gateway that was killed): refused, exit 3 too.
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock)
    s.close()
    r = subprocess.run([TANDEM, "stats", "-c", conf], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=WAIT)
    check(r.returncode == 3 and sock in r.stderr and "refused" in r.stderr,
          "stale socket: exit %d %r" % (r.returncode, r.stderr))
    # Usage errors are 2, an unreadable configuration 1.
    r = subprocess.run([TANDEM, "stats", "-c", conf, "--watch", "0"], stderr=subprocess.PIPE,
                       text=True, timeout=WAIT)
    check(r.returncode == 2, "--watch 0: exit %d" % r.returncode)
    r = subprocess.run([TANDEM, "stats", "-c", conf, "--json", "--prometheus"],
                       stderr=subprocess.PIPE, text=True, timeout=WAIT)
    check(r.returncode == 2, "both formats: exit %d" % r.returncode)
    r = subprocess.run([TANDEM, "stats", "-c", os.path.join(d, "none.conf")],
                       stderr=subprocess.PIPE, text=True, timeout=WAIT)
    check(r.returncode == 1 and "none.conf: config: cannot read" in r.stderr,
          "missing configuration: exit %d %r" % (r.returncode, r.stderr))


def watch():
    d, pki, broker, g = setup()
    p = spawn([TANDEM, "stats", "-c", g.conf, "--json", "--watch", "1"], stdout=subprocess.PIPE,
              stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in p.stdout], daemon=True).start()
    first = json.loads(lines.get(timeout=WAIT))
    second = json.loads(lines.get(timeout=WAIT))
    check(second["uptime_s"] > first["uptime_s"],
          "uptime %r then %r" % (first["uptime_s"], second["uptime_s"]))
    p.send_signal(signal.SIGINT)
    check(p.wait(WAIT) == 0, "--watch after SIGINT: exit %d: %s" % (p.returncode,
                                                                   p.stderr.read()))


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(WAIT)
    s.connect(path)
    return s


def read_to_end(s):
    """What the gateway sends before it closes; ECONNRESET counts as closed."""
    got = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                return got
            got += b
    except ConnectionResetError:
        return got


def hostile_clients():
    d, pki, broker, g = setup()
    path = g.control_socket

    # Garbage: 1 MB without a newline. The gateway answers one error line and closes.
    garbage = connect(path)
    sent = []

    def flood():
        try:
            garbage.sendall(b"x" * (1 << 20))
            sent.append("all")
        except OSError as e:
            sent.append(e)
    t0 = time.monotonic()
    threading.Thread(target=flood, daemon=True).start()
    answer = read_to_end(garbage)
    check(answer in (b"", b"error request too long\n"), "answer to garbage: %r" % answer[:100])
    wait_until(lambda: sent, "the garbage sender to be cut off")
    check(sent[0] != "all", "the gateway read 1 MB of garbage")
    check(time.monotonic() - t0 < WAIT, "garbage took %.1f s" % (time.monotonic() - t0))
    garbage.close()

    # A request that never ends: dropped after 2 s. Meanwhile tandem stats answers.
    stall = connect(path)
    stall.sendall(b"stats js")
    t0 = time.monotonic()
    s = stats_json(g)
    check(time.monotonic() - t0 < 1.5, "tandem stats waited behind a stalled client")
    check(s["control"]["dropped_garbage"] == 1, "garbage counted: %r" % s["control"])
    answer = read_to_end(stall)
    elapsed = time.monotonic() - t0
    check(answer == b"error timeout\n", "answer to a stalled request: %r" % answer)
    check(1.0 < elapsed < 2.0 + 3.0, "a stalled client was dropped after %.1f s" % elapsed)
    stall.close()

    # Unknown requests are garbage too, answered with one line.
    c = connect(path)
    c.sendall(b"shutdown\n")
    check(read_to_end(c).startswith(b"error unknown request"), "unknown request")
    c.close()
    c = connect(path)
    c.sendall(b"ping\n")
    check(read_to_end(c) == b"pong\n", "ping")
    c.close()

    # 16 clients at most: when all are taken, the oldest idle one goes for the new one.
    idle = [connect(path) for _ in range(16)]
    extra = connect(path)
    check(read_to_end(idle[0]) == b"error dropped for a new client\n", "the oldest idle client")
    r = g.stats("--json")
    check(r.returncode == 0, "tandem stats while full: %r" % r.stderr)
    check(read_to_end(idle[1]) == b"error dropped for a new client\n", "the next oldest")
    for c in idle[2:] + [extra]:
        check(read_to_end(c) == b"error timeout\n", "an idle client")
    for c in idle + [extra]:
        c.close()
    s = stats_json(g)
    ctl = s["control"]
    check(ctl["dropped_garbage"] == 2 and ctl["dropped_stalled"] == 16 and
          ctl["dropped_for_new"] == 2 and ctl["refused_full"] == 0 and ctl["connected"] == 1,
          "control counters: %r" % ctl)
    r = g.stats("--prometheus")
    check("tandem_control_dropped_stalled_total 16" in r.stdout.splitlines(),
          "prometheus: %s" % r.stdout)
    g.wait_log("control: client dropped (no request in 2000 ms)")
    check(g.stop() == 0, "gateway exit status")


def socket_life_cycle():
    d, pki, broker, g = setup()
    path = g.control_socket
    st = os.stat(path)
    check(stat.S_ISSOCK(st.st_mode), "not a socket")
    check(stat.S_IMODE(st.st_mode) == 0o660, "mode %o" % stat.S_IMODE(st.st_mode))

    # A second gateway for the same socket refuses to start and steals nothing.
    g2 = Gateway(d, broker, pki, gateway='control_socket = "%s";' % path)
    r = subprocess.run([TANDEM, "run", "-c", g2.conf], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=WAIT, env=g2.env)
    check(r.returncode == 3, "second gateway: exit %d: %s" % (r.returncode, r.stderr))
    check("a running gateway answers on %s" % path in r.stderr, "stderr: %s" % r.stderr)
    check("mqtt: connected" not in r.stderr, "the second gateway went as far as the broker")
    check(os.stat(path).st_ino == st.st_ino, "the socket was replaced")
    check(stats_json(g)["gateway"] == "it", "the first gateway stopped answering")

    # Removed at a clean stop.
    check(g.stop() == 0, "gateway exit status")
    check(not os.path.exists(path), "the socket is left after a stop")

    # kill -9 leaves it; the next start replaces it.
    g.restart()
    g.proc.kill()
    g.proc.wait(WAIT)
    check(stat.S_ISSOCK(os.stat(path).st_mode), "no socket left by kill -9")
    r = g.stats()
    check(r.returncode == 3 and path in r.stderr, "a dead gateway's socket: %r" % r.stderr)
    g.restart()
    g.wait_log("control: replaced the stale socket %s" % path)
    check(stats_json(g)["gateway"] == "it", "no answer after replacing a stale socket")

    # Anything else at that path is never removed.
    check(g.stop() == 0, "gateway exit status")
    with open(path, "w") as f:
        f.write("not a socket\n")
    r = subprocess.run([TANDEM, "run", "-c", g.conf], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=WAIT, env=g.env)
    check(r.returncode == 3 and "is not a socket" in r.stderr, "a file in the way: %r" % r.stderr)
    check(open(path).read() == "not a socket\n", "the file was touched")


def control_socket_off():
    """gateway.control_socket = "": no socket, and tandem stats says so."""
    d, pki, broker, g = setup(gateway='control_socket = "";')
    check(not g.count("control:"), "a control socket anyway:\n" + g.text())
    r = g.stats()
    check(r.returncode == 3 and "sets no gateway.control_socket" in r.stderr,
          "tandem stats: exit %d %r" % (r.returncode, r.stderr))
    check(g.stop() == 0, "gateway exit status")


def human_summary():
    d, pki, broker, g = setup(coap="max_payload = 2000;")
    requests(d, g)
    s = stats_json(g)
    r = g.stats()
    check(r.returncode == 0, "tandem stats: exit %d: %s" % (r.returncode, r.stderr))
    out = r.stdout
    check(out.startswith("gateway it (tandem "), "head: %r" % out)
    check(re.search(r"^coap: .*\b%d requests\b" % s["coap"]["requests"], out, re.M),
          "request count: %s" % out)
    check(re.search(r"^answers: .*\b2\.04: 2\b.*\b4\.04: 1\b", out, re.M), "answers: %s" % out)
    check(re.search(r"^broker: +connected\b", out, re.M), "broker: %s" % out)
    check(re.search(r"^ +telemetry +2 up\b", out, re.M), "mappings: %s" % out)
    check(g.stop() == 0, "gateway exit status")


def metrics_listen_errors():
    """[IPv6]:PORT works; a port in use stops the start with exit 3."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    port = free_port()
    try:
        g = Gateway(d, broker, pki, metrics="[::1]:%d" % port).start()
        with socket.create_connection(("::1", port), WAIT) as c:
            c.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                b = c.recv(65536)
                if not b:
                    break
                data += b
        check(data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n")[0],
              "[::1]: %r" % data[:100])
        check(g.stop() == 0, "gateway exit status")
    except OSError as e:
        if "Cannot assign requested address" not in str(e):
            raise
        sys.stderr.write("no IPv6 loopback: [::1] not tried\n")
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    g = Gateway(d, broker, pki, metrics="127.0.0.1:%d" % port)
    r = subprocess.run([TANDEM, "run", "-c", g.conf], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=WAIT, env=g.env)
    busy.close()
    check(r.returncode == 3, "port in use: exit %d" % r.returncode)
    check("metrics: cannot listen on 127.0.0.1:%d (Address already in use)" % port in r.stderr,
          "stderr: %s" % r.stderr)
    check(not os.path.exists(g.control_socket), "the control socket is left after a failed start")


def readme_lists_every_metric():
    """The metric table of doc/operating.md (Metrics) names every family /metrics
    serves (with the listener, a certificate and answers by code), and no family it
    does not."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    cert, key = pki.server
    g = Gateway(d, broker, pki, metrics=True, mqtt_listener="",
                dtls='psk_file = "psk.txt"; cert = "%s"; key = "%s";' % (cert, key)).start()
    r = coap(url(g, "bikes/bike-1/telemetry"), payload="a", psk=BIKE1)
    check(r and r.code == "2.04", "POST: %r" % r)
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % g.metrics_port,
                                timeout=WAIT) as resp:
        text = resp.read().decode()
    served = set(re.findall(r"^# HELP (tandem_\w+) ", text, re.M))
    check(len(served) > 60, "families served: %d" % len(served))
    table = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "doc",
                         "operating.md")
    with open(table) as f:
        rows = set(re.findall(r"^\| `(tandem_\w+)[`{]", f.read(), re.M))
    check(not served - rows,
          "metrics missing from doc/operating.md's table: %s" % sorted(served - rows))
    check(not rows - served,
          "doc/operating.md lists metrics that are not served: %s" % sorted(rows - served))


if __name__ == "__main__":
    run({f.__name__: f for f in [same_counts_everywhere, prometheus_scrapes, no_gateway, watch,
                                  hostile_clients, socket_life_cycle, control_socket_off,
                                  human_summary, metrics_listen_errors,
                                  readme_lists_every_metric]})
