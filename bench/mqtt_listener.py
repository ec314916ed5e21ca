"""MQTT devices through the gateway's MQTT listener against the same devices
connected straight to Mosquitto, in the same run: BENCH_DEVICES devices
(default 50), each with its own certificate, publish BENCH_MESSAGES (default
200) QoS 1 messages each (mosquitto_pub --repeat: one in flight per device, as
a device waits for its PUBACK), all at once. Prints messages/s both ways and
their ratio, the gateway's memory per device connection (its Private_Dirty
from /proc/PID/smaps_rollup with no device and with every device connected,
divided by their number; the connection's upstream included), and TLS
handshakes/s (a TLS handshake with the client certificate, then
CONNECT/CONNACK, one device after another) both ways."""

import os
import secrets
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
from harness import (WAIT, Broker, Gateway, MqttDevice, Pki, check, device_tls_context,  # noqa
                     mqtt_disconnect, spawn, wait_until, workdir)

DEVICES = int(os.environ.get("BENCH_DEVICES", "50"))
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "200"))
PAYLOAD = "x" * int(os.environ.get("BENCH_PAYLOAD", "100"))

MAPPINGS = """
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; }"""


def private_dirty_kib(pid):
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1])
    return 0


def publish_all(port, pki, certs):
    """Every device publishes MESSAGES QoS 1 messages at once; messages/s."""
    procs = []
    lines = os.path.join(pki.dir, "lines.txt")
    with open(lines, "w") as f:
        f.write((PAYLOAD + "\n") * MESSAGES)
    start = time.monotonic()
    for name, cert in certs.items():
        procs.append(spawn(["mosquitto_pub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(port),
                            "--cafile", pki.ca, "--cert", cert[0], "--key", cert[1], "-i",
                            "bench-" + secrets.token_hex(3), "-q", "1", "-t",
                            "redback/p1/bikes/%s/telemetry" % name, "-l"],
                           stdin=open(lines), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL))
    for p in procs:
        check(p.wait(600) == 0, "a mosquitto_pub failed")
    return len(certs) * MESSAGES / (time.monotonic() - start)


def connect_all(port, pki, certs):
    """Connects every device, one after another; (devices, handshakes/s)."""
    devs = []
    start = time.monotonic()
    for cert in certs.values():
        dev = MqttDevice(ctx=device_tls_context(pki, cert), port=port, version=5)
        ack = dev.connect("idle-" + secrets.token_hex(3), keepalive=600)
        check(ack is not None and ack.reason == 0, "connect: %r" % ack)
        devs.append(dev)
    return devs, len(certs) / (time.monotonic() - start)


def close_all(devs):
    for dev in devs:
        dev.send(mqtt_disconnect(5))
        dev.close()


def main():
    d = workdir()
    pki = Pki(d)
    t0 = time.monotonic()
    certs = {"bike-%d" % i: pki.device("bike-%d" % i) for i in range(DEVICES)}
    print("certificates: %d in %.1f s" % (DEVICES, time.monotonic() - t0))
    broker = Broker(d, pki, require_certificate=True,
                    extra="use_identity_as_username true\nmax_inflight_messages 0\n").start()
    cert, key = broker.client_cert
    g = Gateway(d, broker, pki, mappings=MAPPINGS, log_level="info",
                mqtt='cert = "%s"; key = "%s";' % (cert, key),
                mqtt_listener="max_connections = %d;" % (DEVICES + 10)).start()

    idle = private_dirty_kib(g.proc.pid)
    devs, hs_gw = connect_all(g.listener_port, pki, certs)
    wait_until(lambda: g.stats_json()["mqtt_listener"]["connections"] >= DEVICES,
               "every device counted", timeout=WAIT)
    loaded = private_dirty_kib(g.proc.pid)
    close_all(devs)
    devs, hs_direct = connect_all(broker.port, pki, certs)
    close_all(devs)

    direct = publish_all(broker.port, pki, certs)
    through = publish_all(g.listener_port, pki, certs)
    st = g.stats_json()["mqtt_listener"]

    print("devices: %d, messages: %d each, QoS 1, %d-byte payload" %
          (DEVICES, MESSAGES, len(PAYLOAD)))
    print("straight to Mosquitto: %.0f messages/s" % direct)
    print("through the gateway:   %.0f messages/s" % through)
    print("ratio: %.2f (aim >= 0.5)" % (through / direct))
    print("gateway Private_Dirty: %d KiB idle, %d KiB with %d devices: %.1f KiB per device "
          "connection with its upstream (aim <= 64)" %
          (idle, loaded, DEVICES, (loaded - idle) / DEVICES))
    print("TLS handshakes + CONNECT/CONNACK, one after another: %.0f/s through the gateway, "
          "%.0f/s straight to Mosquitto" % (hs_gw, hs_direct))
    print("mqtt_listener: %s" % st)
    g.stop()


if __name__ == "__main__":
    main()
