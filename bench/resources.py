"""What the down direction's values cost: RSS of the gateway holding N
concrete resources (coap.max_resources = N), and how fast values arrive.
Prints the figures."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
from harness import (Broker, Gateway, Pki, Subscriber, check, mqtt_publish_many,  # noqa: E402
                     proc_rss_kib, wait_until, workdir)

N = int(os.environ.get("BENCH_RESOURCES", "100000"))
SIZE = int(os.environ.get("BENCH_VALUE_BYTES", "64"))
STEP = 10000

MAPPINGS = """
  { name = "commands"; resource = "bikes/{bike}/commands"; topic = "redback/bikes/{bike}/commands";
    direction = "down"; qos = 0; }
"""


def main():
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki).start()
    g = Gateway(d, broker, pki, mappings=MAPPINGS, log_level="info",
                coap="max_resources = %d;" % N, mqtt="stats_interval = 1;").start()
    stats = Subscriber(broker, "tandem/it/stats")
    g.wait_log("subscribing to")
    idle = proc_rss_kib(g.proc.pid)

    def received():
        """Values the gateway took in or had to drop, from its latest statistics."""
        if not stats.messages:
            return 0
        s = json.loads(stats.messages[-1]["payload"])
        return (s["down"]["received"] + s["mqtt_in"]["dropped_too_large"])

    value = b"v" * SIZE
    for rnd, (lo, hi) in enumerate([(0, N), (N, 2 * N)]):
        t0 = time.monotonic()
        # In steps the broker can queue: Mosquitto drops QoS 0 messages for a
        # subscriber that falls more than max_queued_messages behind.
        for step in range(lo, hi, STEP):
            end = min(step + STEP, hi)
            mqtt_publish_many(broker, [("redback/bikes/b%d/commands" % i, value)
                                       for i in range(step, end)])
            try:
                wait_until(lambda: received() >= end, "%d values at the gateway" % end,
                           timeout=60)
            except AssertionError:
                print("the gateway saw %d of %d: %s" % (received(), end,
                      stats.messages[-1]["payload"].decode() if stats.messages else "no stats"))
                raise
        dt = time.monotonic() - t0
        full = json.loads(stats.messages[-1]["payload"])
        s = full["down"]
        rss = proc_rss_kib(g.proc.pid)
        print("%s %d distinct topics of %d bytes in %.1f s (in steps of %d, waiting for the "
              "gateway's statistics after each): "
              "resources %d, evicted %d, dropped (too large) %d, RSS %d KiB (idle %d KiB, "
              "%.0f bytes per resource)"
              % ("first" if rnd == 0 else "then", hi - lo, SIZE, dt, STEP,
                 s["resources"], s["evicted"], full["mqtt_in"]["dropped_too_large"], rss, idle,
                 (rss - idle) * 1024.0 / max(s["resources"], 1)), flush=True)
    check(s["resources"] <= N, "over the bound")
    g.stop()


if __name__ == "__main__":
    main()
