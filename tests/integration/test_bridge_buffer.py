"""The bridge's broker connection over Tandem's own MQTT client and offline
buffer: what holds without an offline buffer too."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Broker, Gateway, Pki, Subscriber, check, coap, run,  # noqa: E402
                     wait_until, workdir)
from test_hostile import Plain, stats_now  # noqa: E402


def poison_found_without_offline_buffer():
    """mqtt.offline_buffer = 0: no reading is kept while the broker is away,
    but what waits for its acknowledgement is still held where the guard
    against a message the broker drops the connection for finds it. MQTT
    3.1.1, a reading larger than Mosquitto's max_packet_size: it is set aside
    and the others reach the broker."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, extra="max_packet_size 8192\n").start()
    sub = Subscriber(broker, "redback/#")
    g = Gateway(d, broker, pki, coap="plain = true;",
                mqtt="version = 3; offline_buffer = 0; stats_interval = 1; publish_timeout = 2;",
                log_level="info").start()
    big = os.path.join(d, "big.bin")
    with open(big, "wb") as f:
        f.write(b"y" * 12000)
    r = coap("coap://127.0.0.1:%d/zones/a/big" % g.plain_port, file=big, block=1024)
    check(r and r.code in ("5.04", "5.03"), "the big reading: %r" % r)
    dev = Plain(g)
    for i in range(3):
        code, _, _ = dev.request("zones/a/small", b"small%d" % i)
        check(code in ("2.04", "5.03", "5.04"), "small reading %d: %s" % (i, code))
    wait_until(lambda: g.count("it was set aside") == 1, "the message set aside", 60)
    check(not [m for m in sub.messages if m["payload"].startswith(b"yyy")],
          "the big one reached the broker")
    refused = os.path.join(d, "state-%d" % g.dtls_port, "mqtt-refused")
    kept = os.listdir(refused)
    check(len(kept) == 1 and b"y" * 12000 in open(os.path.join(refused, kept[0]), "rb").read(),
          "set aside: %r" % kept)
    wait_until(lambda: g.count("messages go at the full rate again") >= 1, "the full rate again",
               30)
    code, _, _ = dev.request("zones/a/after", b"after")
    check(code == "2.04", "after: %s" % code)
    wait_until(lambda: b"after" in [m["payload"] for m in sub.messages], "the reading after", 10)
    st = stats_now(g, broker)
    check(st["mqtt"]["set_aside"] == 1 and st["mqtt"]["offline_buffered"] == 0,
          "mqtt: %r" % st["mqtt"])


CASES = {
    "poison_found_without_offline_buffer": poison_found_without_offline_buffer,
}

if __name__ == "__main__":
    run(CASES)
