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
    return [l for l in list(g.lines) if (l.startswith("info coap:") or
                                         l.startswith("warning coap:")) and "listening" not in l]


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


CASES = {
    "wrong_key_one_line": wrong_key_one_line,
    "unknown_identity_one_line": unknown_identity_one_line,
}

if __name__ == "__main__":
    run(CASES)
