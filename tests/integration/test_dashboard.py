"""The Grafana dashboard (deploy/grafana/tandem.json) and the Prometheus alerting
rules (deploy/prometheus/tandem-rules.yml) against a real Prometheus scraping a
running gateway: every panel's query parses and returns series, every rule's
expression parses and names only metrics the gateway exports."""

import json
import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (WAIT, Broker, Gateway, MqttDevice, Pki, check, coap,  # noqa: E402
                     free_port, run, spawn, wait_until, workdir)

DEPLOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy")
DASHBOARD = os.path.join(DEPLOY, "grafana", "tandem.json")
RULES = os.path.join(DEPLOY, "prometheus", "tandem-rules.yml")
JOB = "tandem"

# Series Prometheus makes itself for each scrape, beside the gateway's own.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                 "scrape_samples_post_metric_relabeling", "scrape_series_added"}

# Words of PromQL that are not metric names: keywords, aggregation modifiers.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan"}


def http_get(port, path, timeout=5):
    """(status, body) of a GET to Prometheus on loopback."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Prometheus:
    """Debian's prometheus scraping the gateway's /metrics every second under
    job "tandem", with the alerting rules loaded."""

    def __init__(self, d, g):
        self.port = free_port()
        self.target = "127.0.0.1:%d" % g.metrics_port
        conf = os.path.join(d, "prometheus.yml")
        with open(conf, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "rule_files: ['%s']\n"
                    "scrape_configs:\n  - job_name: %s\n    static_configs:\n"
                    "      - targets: ['%s']\n" % (os.path.abspath(RULES), JOB, self.target))
        self.log = os.path.join(d, "prometheus.log")
        with open(self.log, "w") as log:
            self.proc = spawn(["prometheus", "--config.file=" + conf, "--storage.tsdb.path=" +
                               os.path.join(d, "tsdb"),
                               "--web.listen-address=127.0.0.1:%d" % self.port],
                              stdout=log, stderr=subprocess.STDOUT)

        def ready():
            check(self.proc.poll() is None,
                  "prometheus exited: " + open(self.log).read()[-2000:])
            try:
                return http_get(self.port, "/-/ready", timeout=1)[0] == 200
            except OSError:
                return False
        wait_until(ready, "prometheus to be ready", timeout=60)

    def query(self, expr):
        """(status, error or None, result list) of an instant query."""
        status, body = http_get(self.port, "/api/v1/query?query=" + urllib.parse.quote(expr))
        try:
            answer = json.loads(body)
        except ValueError:
            return status, body, []
        if answer.get("status") != "success":
            return status, "%s: %s" % (answer.get("errorType"), answer.get("error")), []
        return status, None, answer["data"]["result"]

    def stop(self):
        self.proc.kill()
        self.proc.wait(WAIT)


def traffic(d, pki, g):
    """CoAP requests answered 2.04, 4.03 and 4.04; an MQTT device through the
    listener, one publish relayed and one denied; a failed DTLS handshake."""
    base = "coaps://127.0.0.1:%d/" % g.dtls_port
    r = coap(base + "bikes/bike-1/telemetry", payload="21.5", psk=("bike-1", "secret-bike-1"))
    check(r and r.code == "2.04", "POST: %r" % r)
    r = coap(base + "bikes/bike-2/telemetry", payload="x", psk=("bike-1", "secret-bike-1"))
    check(r and r.code == "4.03", "another device's resource: %r" % r)
    r = coap(base + "nowhere/at/all", payload="x", psk=("bike-1", "secret-bike-1"))
    check(r and r.code == "4.04", "unknown path: %r" % r)
    r = coap(base + "bikes/bike-1/telemetry", payload="x", psk=("bike-1", "wrong-key"),
             timeout=3)
    check(r is None or not r.code.startswith("2."), "a wrong key was answered: %r" % r)

    dev = MqttDevice(g, pki.device("bike-1"))
    ack = dev.connect("dash-" + secrets.token_hex(3))
    check(ack is not None and ack.reason == 0, "the MQTT device refused: %r" % ack)
    ack = dev.publish("redback/p1/bikes/bike-1/telemetry", "22.0", qos=1)
    check(ack is not None and ack.reason in (0, 0x10), "own telemetry: %r" % ack)
    ack = dev.publish("redback/p1/bikes/bike-2/telemetry", "x", qos=1)
    check(ack is not None and ack.reason == 0x87, "bike-2's telemetry: %r" % ack)
    return dev


def setup():
    """A broker, a gateway with metrics and the MQTT listener, some traffic
    (counted in its statistics), Prometheus scraping it: (g, prometheus, the
    gateway's /metrics text, the MQTT device kept connected)."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    g = Gateway(d, broker, pki, metrics=True, mqtt_listener="").start()
    dev = traffic(d, pki, g)
    s = g.stats_json()
    check(s["coap"]["responses"].get("4.03") == 1 and s["coap"]["responses"].get("4.04") == 1,
          "responses: %r" % s["coap"]["responses"])
    check(s["mqtt_listener"]["denied_publish"] == 1, "listener: %r" % s["mqtt_listener"])
    prom = Prometheus(d, g)
    want = s["coap"]["requests"]

    def scraped():
        status, err, result = prom.query("tandem_coap_requests_total")
        check(err is None, "query: %s" % err)
        return [float(x["value"][1]) for x in result] == [float(want)]
    wait_until(scraped, "prometheus to have tandem_coap_requests_total = %d" % want, timeout=30)
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % g.metrics_port,
                                timeout=WAIT) as r:
        metrics = r.read().decode()
    return g, prom, metrics, dev


def exported_names(text):
    """The metric names of the samples of a /metrics text."""
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M)}


def metric_names(expr):
    """The metric names an expression selects: its identifiers outside string
    literals, label matchers, ranges, offsets, grouping clauses and numbers,
    less function and aggregation names (followed by '(') and keywords."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\boffset\s+-?\w+", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"(?<![\w:.])(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", " ", e)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word = m.group(0)
        if word.lower() in KEYWORDS or e[m.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


# What Grafana puts in place of its variables when it sends a query: the
# gateway's job and instance, and intervals for a dashboard showing the last
# few minutes.
def substitute(expr, instance):
    values = {"job": JOB, "instance": instance, "__rate_interval": "1m",
              "__interval": "15s", "__range": "5m", "__range_s": "300"}

    def one(m):
        name = m.group(1) or m.group(2)
        check(name in values, "unknown variable $%s in %r" % (name, expr))
        return values[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def dashboard_queries_return_series():
    dash = json.load(open(DASHBOARD))
    check(dash.get("schemaVersion", 0) >= 36, "schemaVersion %r" % dash.get("schemaVersion"))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    check(variables.get("datasource", {}).get("type") == "datasource" and
          variables["datasource"].get("query") == "prometheus",
          "no Prometheus data source variable: %r" % list(variables))
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    check(len(ids) == len(set(ids)), "panel ids repeat: %r" % ids)
    targets = []
    for p in panels:
        check(p.get("datasource", {}).get("uid") == "${datasource}",
              "panel %r does not use the data source variable" % p["title"])
        check(p.get("targets"), "panel %r has no query" % p["title"])
        for t in p["targets"]:
            check(t.get("expr"), "panel %r: a target without expr" % p["title"])
            targets.append((p["title"], t["expr"]))
    check(len(panels) >= 10, "only %d panels" % len(panels))

    g, prom, metrics, dev = setup()
    exported = exported_names(metrics)
    empty = []
    try:
        # The variables' label_values() queries: the label is there.
        for name in ("job", "instance"):
            q = variables[name]["query"]
            q = q["query"] if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
            check(m, "variable %s: %r" % (name, q))
            status, err, result = prom.query(substitute(m.group(1), prom.target))
            check(err is None, "variable %s: %s" % (name, err))
            got = {r["metric"].get(m.group(2)) for r in result}
            check(got == {JOB if name == "job" else prom.target},
                  "variable %s: %r" % (name, got))

        queries = [(title, expr, substitute(expr, prom.target)) for title, expr in targets]
        for title, expr, q in queries:
            status, err, _ = prom.query(q)
            check(err is None and status == 200,
                  "panel %r: %r does not parse: %s %s" % (title, q, status, err))
            names = metric_names(expr)
            check(names and names <= exported,
                  "panel %r: %r names metrics the gateway does not export: %r" %
                  (title, expr, sorted(names - exported)))

        # Each returns series once Prometheus has enough samples for rate().

        def all_have_series():
            empty[:] = [(title, q) for title, _, q in queries if not prom.query(q)[2]]
            return not empty
        wait_until(all_have_series, "every panel's query to return series", timeout=30)
        print("%d queries of %d panels return series" % (len(queries), len(panels)))
    except Exception:
        if empty:
            sys.stderr.write("queries without series:\n%s\n" %
                             "\n".join("  %s: %s" % e for e in empty))
        raise
    finally:
        prom.stop()
    dev.close()
    check(g.stop() == 0, "gateway exit status")


def rule_expressions_use_exported_metrics():
    g, prom, metrics, dev = setup()
    exported = exported_names(metrics) | SCRAPE_SERIES
    try:
        # Prometheus loaded the file (it does not start with a rule that does
        # not parse) and evaluates every rule on the gateway's series.
        status, body = http_get(prom.port, "/api/v1/rules")
        check(status == 200, "/api/v1/rules: %d %s" % (status, body))
        rules = [r for grp in json.loads(body)["data"]["groups"] for r in grp["rules"]]
        text = open(RULES).read()
        check(len(rules) == len(re.findall(r"^\s*- alert:", text, re.M)) and len(rules) >= 7,
              "prometheus loaded %d rules of %s" % (len(rules), RULES))

        def evaluated():
            status, body = http_get(prom.port, "/api/v1/rules")
            got = [r for grp in json.loads(body)["data"]["groups"] for r in grp["rules"]]
            return all(r.get("health") == "ok" for r in got) and got
        wait_until(evaluated, "every rule evaluated without error", timeout=30)
        for r in rules:
            name = r["name"]
            check(r["type"] == "alerting", "%s: %s" % (name, r["type"]))
            check(r.get("labels", {}).get("severity") in ("critical", "warning", "info"),
                  "%s: severity %r" % (name, r.get("labels")))
            for key in ("summary", "description"):
                check(r.get("annotations", {}).get(key), "%s: no %s" % (name, key))
            status, err, _ = prom.query(r["query"])
            check(err is None and status == 200,
                  "%s: %r does not parse: %s %s" % (name, r["query"], status, err))
            names = metric_names(r["query"])
            check(names, "%s: no metric name found in %r" % (name, r["query"]))
            check(names <= exported, "%s: %r names metrics the gateway does not export: %r" %
                  (name, r["query"], sorted(names - exported)))
            # Each name has series under the job the rules expect.
            for n in names:
                _, err, result = prom.query('%s{job="%s"}' % (n, JOB))
                check(err is None and result, "%s: no series %s{job=%r}" % (name, n, JOB))
        print("%d rules parse and use exported metrics" % len(rules))
    finally:
        prom.stop()
    dev.close()
    check(g.stop() == 0, "gateway exit status")


if __name__ == "__main__":
    run({"dashboard_queries_return_series": dashboard_queries_return_series,
         "rule_expressions_use_exported_metrics": rule_expressions_use_exported_metrics})
