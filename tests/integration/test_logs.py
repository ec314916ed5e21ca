"""Logs an operator can act on: one line per failed handshake naming the
peer, the identity and the cause; device sessions beginning and ending;
refusals with identity and path; timestamps."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Broker, Gateway, Pki, check, coap, run, wait_until,  # noqa: E402
                     workdir)


def info_gateway(**kw):
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    kw.setdefault("log_level", "info")
    g = Gateway(d, broker, pki, metrics=True, **kw).start()
    return d, pki, broker, g


def failures(g):
    return [l for l in list(g.lines) if "handshake failed" in l]


def coap_lines(g):
    """libcoap's own lines (and the gateway's CoAP lines but its listening ones) above debug."""
    return [l for l in list(g.lines)
            if re.match(r"(\S+Z )?(info|warning) coap:", l) and "listening" not in l]


def wrong_key_one_line():
    """A wrong PSK: exactly one line naming the peer, the identity and
    "wrong key"; none of libcoap's own lines at info."""
    d, pki, broker, g = info_gateway()
    r = coap("coaps://127.0.0.1:%d/zones/a/b" % g.dtls_port, payload="x",
             psk=("bike-1", "not-the-key"), timeout=3)
    check(r is None, "wrong key answered %r" % r)
    wait_until(lambda: failures(g), "a handshake failure line")
    f = failures(g)
    check(len(f) == 1, "one line per failed handshake:\n" + g.text())
    check(re.search(r'from 127\.0\.0\.1:\d+ \(identity "bike-1": wrong key\)', f[0]),
          "peer, identity and cause: " + f[0])
    check(not coap_lines(g), "libcoap's lines at info:\n" + "".join(coap_lines(g)))


def unknown_identity_one_line():
    d, pki, broker, g = info_gateway()
    r = coap("coaps://127.0.0.1:%d/zones/a/b" % g.dtls_port, payload="x",
             psk=("bike-9", "whatever"), timeout=3)
    check(r is None, "unknown identity answered %r" % r)
    wait_until(lambda: failures(g), "a handshake failure line")
    f = failures(g)
    check(len(f) == 1, "one line per failed handshake:\n" + g.text())
    check('(identity "bike-9": unknown identity)' in f[0], "cause: " + f[0])
    check(not coap_lines(g), "libcoap's lines at info:\n" + "".join(coap_lines(g)))


def wrong_key_flood_is_bounded():
    """50 wrong-key handshakes from one address: a bounded number of lines,
    all of them counted."""
    import concurrent.futures
    d, pki, broker, g = info_gateway()
    url = "coaps://127.0.0.1:%d/zones/a/b" % g.dtls_port
    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        list(ex.map(lambda i: coap(url, payload="x", psk=("bike-1", "wrong-%d" % i), timeout=3),
                    range(50)))
    wait_until(lambda: failures(g), "a handshake failure line")
    n = len(failures(g))
    # 6 a minute for one address; the test may straddle two minutes.
    check(1 <= n <= 12, "%d lines for 50 failed handshakes of one peer:\n%s" % (n, g.text()))
    check(not coap_lines(g), "libcoap's lines at info:\n" + "".join(coap_lines(g)[:10]))


def certificate_causes():
    """A device certificate of another CA (which the device does not send:
    the gateway's CA list names another), and none: one line each naming the
    cause."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    cert, key = pki.server
    g = Gateway(d, broker, pki, log_level="info",
                dtls='cert = "%s"; key = "%s"; ca = "%s"; require_client_cert = true;'
                % (cert, key, pki.ca)).start()
    url = "coaps://127.0.0.1:%d/bikes/bike-7/telemetry" % g.dtls_port
    foreign = pki.leaf("foreign", "bike-7", ca="other-ca")
    check(coap(url, payload="x", cert=foreign, ca=pki.ca, timeout=3) is None, "foreign answered")
    wait_until(lambda: failures(g), "a handshake failure line")
    check(len(failures(g)) == 1 and "no client certificate signed by the device CA" in failures(g)[0],
          "other CA:\n" + g.text())
    check(coap(url, payload="x", ca=pki.ca, timeout=3) is None, "no certificate answered")
    wait_until(lambda: len(failures(g)) >= 2, "a second handshake failure line")
    check(len(failures(g)) == 2 and "no client certificate signed by the device CA" in failures(g)[1],
          "no certificate:\n" + g.text())
    check(not coap_lines(g), "libcoap's lines at info:\n" + "".join(coap_lines(g)))


def mqtt_refused(g, cert):
    from harness import MqttDevice
    try:
        dev = MqttDevice(g, cert)
    except OSError:  # ssl.SSLError included
        return True
    try:
        ack = dev.connect("logs-dev")
    finally:
        dev.close()
    return ack is None


def mqtt_certificate_cause():
    """The MQTT listener: a device certificate of another CA gives one line
    naming the peer, the certificate's CN and the cause."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    g = Gateway(d, broker, pki, log_level="info", mqtt_listener="").start()
    check(mqtt_refused(g, pki.device("bike-7", ca="other-ca")), "a foreign certificate let in")
    mf = lambda: [l for l in list(g.lines) if "MQTT device handshake failed" in l]  # noqa: E731
    wait_until(mf, "a handshake failure line")
    check(len(mf()) == 1 and
          re.search(r'from 127\.0\.0\.1:\d+ \(identity "bike-7": not signed by the device CA\)',
                    mf()[0]), "other CA:\n" + g.text())


def device_sessions_begin_and_end():
    """A CoAP device's DTLS session and an MQTT device's connection: a line
    when each begins and when it ends, with identity, protocol and address."""
    from harness import MqttDevice
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    g = Gateway(d, broker, pki, log_level="info", mqtt_listener="").start()
    r = coap("coaps://127.0.0.1:%d/bikes/bike-1/telemetry" % g.dtls_port, payload="x",
             psk=("bike-1", "secret-bike-1"))
    check(r and r.code == "2.04", "bike-1: %r" % r)
    g.wait_log('device "bike-1" connected (coap from 127.0.0.1:')
    dev = MqttDevice(g, pki.device("bike-7"))
    ack = dev.connect("bike-7-logs")
    check(ack is not None and ack.reason == 0, "bike-7 refused: %r" % ack)
    g.wait_log('device "bike-7" connected (mqtt from 127.0.0.1:')
    dev.close()
    g.wait_log('device "bike-7" disconnected (mqtt from 127.0.0.1:')
    g.wait_log('device "bike-1" disconnected (coap from 127.0.0.1:')


def refusal_names_identity_and_path():
    """A 4.03 (another device's path) and a 4.04: one info line each with the
    identity, the path and the reason."""
    d, pki, broker, g = info_gateway()
    base = "coaps://127.0.0.1:%d/" % g.dtls_port
    r = coap(base + "bikes/bike-2/telemetry", payload="x", psk=("bike-1", "secret-bike-1"))
    check(r and r.code == "4.03", "another's path: %r" % r)
    g.wait_log('request refused with 4.03 (identity "bike-1", path "bikes/bike-2/telemetry": ')
    r = coap(base + "nowhere/at/all", payload="x", psk=("bike-1", "secret-bike-1"))
    check(r and r.code == "4.04", "no mapping: %r" % r)
    g.wait_log('request refused with 4.04 (identity "bike-1", path "nowhere/at/all": no mapping)')


STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (error|warning|info|debug) [a-z]+: "
PLAIN = r"(error|warning|info|debug) [a-z]+: "


def timestamps_on_and_off():
    """gateway.log_timestamps: true stamps every line, false none, "auto"
    (the default) stamps unless stderr is the journal."""
    import subprocess
    import time
    from harness import TANDEM
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    for setting, pattern in (("log_timestamps = true;", STAMP), ("log_timestamps = false;", PLAIN),
                             ("", STAMP)):
        g = Gateway(d, broker, pki, log_level="info", gateway=setting).start()
        g.wait_log("ready")
        bad = [l for l in list(g.lines) if not re.match(pattern, l)]
        check(g.lines and not bad, "%r: %r" % (setting, bad[:3]))
        if pattern == STAMP:
            t = time.strftime("%Y-%m-%dT", time.gmtime())
            check(g.lines[0].startswith(t), "not UTC now: %r" % g.lines[0])
        g.stop()
    # "auto" with stderr the journal (JOURNAL_STREAM names it): no time.
    g = Gateway(d, broker, pki, log_level="info")
    err = os.path.join(d, "journal.log")
    with open(err, "w") as f:
        st = os.fstat(f.fileno())
        env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
        p = subprocess.Popen([TANDEM, "run", "-c", g.conf], stdout=subprocess.DEVNULL, stderr=f,
                             env=env)
    try:
        wait_until(lambda: "ready" in open(err).read(), "the gateway ready")
    finally:
        p.terminate()
        p.wait(timeout=15)
    lines = open(err).read().splitlines()
    bad = [l for l in lines if not re.match(PLAIN, l)]
    check(lines and not bad, "to the journal: %r" % bad[:3])


CASES = {
    "timestamps_on_and_off": timestamps_on_and_off,
    "refusal_names_identity_and_path": refusal_names_identity_and_path,
    "device_sessions_begin_and_end": device_sessions_begin_and_end,
    "mqtt_certificate_cause": mqtt_certificate_cause,
    "wrong_key_flood_is_bounded": wrong_key_flood_is_bounded,
    "certificate_causes": certificate_causes,
    "wrong_key_one_line": wrong_key_one_line,
    "unknown_identity_one_line": unknown_identity_one_line,
}

if __name__ == "__main__":
    run(CASES)
