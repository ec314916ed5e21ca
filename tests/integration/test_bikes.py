"""The reference bikes (examples/) against the real gateway: bike-mqtt, a
Paho MQTTAsync device on the MQTT listener, and bike-coap, a libcoap device
over DTLS (PSK and certificate). Their readings arrive at the broker, the same
for both protocols; commands published at the broker reach them; bike-mqtt's
session survives a gateway restart without losing a QoS 1 reading."""

import json
import os
import signal
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (WAIT, Broker, Gateway, Pki, Subscriber, check, spawn,  # noqa: E402
                     wait_until, workdir, run)

BIKE_MQTT = os.environ.get("BIKE_MQTT", "bike-mqtt")
BIKE_COAP = os.environ.get("BIKE_COAP", "bike-coap")

MAPPINGS = """
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; },
  { name = "commands"; resource = "bikes/{identity}/commands";
    topic = "redback/p1/bikes/{identity}/commands"; direction = "down"; qos = 1; }"""

TEL = "redback/p1/bikes/%s/telemetry"
CMD = "redback/p1/bikes/%s/commands"


class Bike:
    """A bike process; its stdout (commands) and stderr (what it reports) read
    into lists as they come."""

    def __init__(self, args, d):
        self.args = args
        self.proc = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          errors="replace", cwd=d)
        self.out, self.err = [], []
        self.readers = [threading.Thread(target=self._read, args=(f, lst), daemon=True)
                        for f, lst in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.readers:
            t.start()

    @staticmethod
    def _read(f, lst):
        for line in f:
            lst.append(line.rstrip("\n"))

    def log(self):
        return "\n".join(self.err)

    def count(self, needle):
        return sum(needle in line for line in list(self.err))

    def wait_log(self, needle, n=1, timeout=WAIT):
        wait_until(lambda: self.count(needle) >= n or self.proc.poll() is not None,
                   "'%s' x%d from %s" % (needle, n, os.path.basename(self.args[0])),
                   timeout=timeout)
        check(self.count(needle) >= n, "%s exited (%r):\n%s" % (self.args[0],
                                                                self.proc.returncode, self.log()))

    def wait_command(self, line):
        wait_until(lambda: line in self.out or self.proc.poll() is not None,
                   "the command %r printed by the bike" % line)
        check(line in self.out, "the bike exited (%r) without printing %r:\n%s" %
              (self.proc.returncode, line, self.log()))

    def stop(self):
        """SIGTERM: the bike waits for its readings' acknowledgements and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self, timeout=WAIT * 3):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("the bike did not exit:\n" + self.log())
        for t in self.readers:
            t.join(WAIT)
        return self.proc.returncode


class Setup:
    """A broker, a gateway with DTLS (PSKs and certificates) and the MQTT
    listener, certificates for bike-1 and bike-2."""

    def __init__(self, subscriber=True, session=None):
        self.d = workdir()
        self.pki = Pki(self.d)
        self.broker = Broker(self.d, self.pki).start()
        self.sub = Subscriber(self.broker, TEL % "+", session=session) if subscriber else None
        cert, key = self.pki.server
        self.g = Gateway(self.d, self.broker, self.pki, mappings=MAPPINGS, mqtt_listener="",
                         dtls='psk_file = "psk.txt"; cert = "%s"; key = "%s"; ca = "%s";' %
                         (cert, key, self.pki.ca)).start()
        self.cert = {n: self.pki.device(n) for n in ("bike-1", "bike-2")}

    def mqtt_bike(self, identity="bike-1", *extra):
        cert, key = self.cert[identity]
        return Bike([BIKE_MQTT, "-H", "127.0.0.1", "-p", str(self.g.listener_port),
                     "--ca", self.pki.ca, "--cert", cert, "--key", key, "-i", identity,
                     "--store", os.path.join(self.d, "store-" + identity), *extra], self.d)

    def coap_bike(self, identity="bike-1", *extra, psk=True):
        if psk:
            auth = ["--psk-key", self.g.psk[identity]]
        else:
            cert, key = self.cert[identity]
            auth = ["--ca", self.pki.ca, "--cert", cert, "--key", key]
        return Bike([BIKE_COAP, "-H", "127.0.0.1", "-p", str(self.g.dtls_port), "-i", identity,
                     *auth, *extra], self.d)

    def readings(self, identity):
        """The readings of identity the subscriber has, decoded, in arrival order."""
        with self.sub.lock:
            msgs = [m for m in self.sub.messages if m["topic"] == TEL % identity]
        return [(json.loads(m["payload"]), m) for m in msgs]

    def seqs(self, identity):
        return {r["seq"] for r, _ in self.readings(identity)}


def check_readings(s, identity, n):
    """Readings 1..n of identity arrived, well formed, as JSON with its
    content type."""
    wait_until(lambda: set(range(1, n + 1)) <= s.seqs(identity),
               "readings 1..%d of %s at the broker (have %r)" % (n, identity, s.seqs(identity)))
    for r, m in s.readings(identity):
        check(r["bike"] == identity and isinstance(r["seq"], int), "reading %r" % r)
        check(all(isinstance(r[k], int) and r[k] > 0 for k in ("heart_rate", "cadence", "power_w")),
              "reading values %r" % r)
        check(m["qos"] == 1, "reading at QoS %d" % m["qos"])
        check(m["content_type"] == "application/json", "content type %r" % m["content_type"])
        check("device:%s" % identity in m["props"], "device property %r" % m["props"])


def readings_and_commands(s, bike, identity):
    check_readings(s, identity, 3)
    for i in range(2):
        payload = '{"resistance":%d}' % (5 + i)
        s.broker.publish(CMD % identity, payload, "-q", "1")
        bike.wait_command("%s\t%s" % (bike_commands_name(bike, identity), payload))
    # Another bike's command never reaches this one.
    other = "bike-2" if identity == "bike-1" else "bike-1"
    s.broker.publish(CMD % other, "not-yours", "-q", "1")
    s.broker.publish(CMD % identity, "last", "-q", "1")
    bike.wait_command("%s\tlast" % bike_commands_name(bike, identity))
    check(not any("not-yours" in line for line in bike.out), "got %r" % bike.out)
    rc = bike.stop()
    check(rc == 0, "the bike exited %r:\n%s" % (rc, bike.log()))


def bike_commands_name(bike, identity):
    """What the bike prints before a command: its topic (MQTT) or resource (CoAP)."""
    return (CMD if bike.args[0] == BIKE_MQTT else "bikes/%s/commands") % identity


# --- the cases


def mqtt_readings_and_commands():
    s = Setup()
    bike = s.mqtt_bike("bike-1", "-n", "0", "-I", "100", "-c")
    bike.wait_log("subscribed to " + CMD % "bike-1")
    readings_and_commands(s, bike, "bike-1")
    check(bike.count("session present: no") == 1, "a first session:\n" + bike.log())
    log = open(s.broker.log, errors="replace").read()
    check("as bike-1/bike-1 " in log, "the broker did not see bike-1's client:\n" + log)


def mqtt_session_resumed_across_gateway_restart():
    """The gateway stops (SIGTERM) and starts again on the same ports while the
    bike goes on taking readings and reconnecting (Paho's automatic reconnect):
    its session is resumed at the broker, so a command published while the
    gateway was down arrives once it is back (with a new session it would be
    lost: the test fails with --session-expiry 0), and every QoS 1 reading,
    those taken while the gateway was down included, arrives at a backend
    subscriber with a persistent session."""
    s = Setup(session="backend-" + os.urandom(3).hex())
    bike = s.mqtt_bike("bike-1", "-n", "0", "-I", "20", "-c", "-v", "--retry-max", "1")
    bike.wait_log("subscribed to " + CMD % "bike-1")
    check_readings(s, "bike-1", 5)
    rc = s.g.stop()
    check(rc == 0, "tandem stop: %r" % rc)
    bike.wait_log("connection lost")
    # Readings are taken while the gateway is down, and a command is sent.
    taken = bike.count("bike-1: reading ")
    s.broker.publish(CMD % "bike-1", "while-down", "-q", "1")
    bike.wait_log("bike-1: reading ", taken + 5)
    check(bike.proc.poll() is None, "the bike gave up:\n" + bike.log())
    s.g.restart()
    bike.wait_log("reconnected")
    bike.wait_command("%s\twhile-down" % (CMD % "bike-1"))
    s.broker.publish(CMD % "bike-1", "after", "-q", "1")
    bike.wait_command("%s\tafter" % (CMD % "bike-1"))
    taken = bike.count("bike-1: reading ")
    bike.wait_log("bike-1: reading ", taken + 3)
    rc = bike.stop()
    check(rc == 0, "the bike exited %r (readings not all acknowledged?):\n%s" % (rc, bike.log()))
    sent = bike.count("bike-1: reading ")
    check(bike.count("%d readings sent, %d acknowledged" % (sent, sent)) == 1,
          "the bike's count (%d sent):\n%s" % (sent, bike.log()))
    s.sub.sync()
    missing = set(range(1, sent + 1)) - s.seqs("bike-1")
    check(not missing, "readings lost across the restart: %r\nbike:\n%s\ngateway:\n%s" %
          (sorted(missing), bike.log(), s.g.text()[-4000:]))
    check(bike.count("session present: no") == 1, "sessions:\n" + bike.log())
    check(bike.out.count("%s\twhile-down" % (CMD % "bike-1")) == 1, "commands %r" % bike.out)


def coap_bike_across_gateway_restart():
    """bike-coap goes on through a gateway restart: the readings it takes while
    the gateway is away wait for a new DTLS session (none lost), and it
    observes its commands again on that session."""
    s = Setup()
    bike = s.coap_bike("bike-1", "-n", "0", "-I", "50", "-c")
    bike.wait_log("observing bikes/bike-1/commands")
    check_readings(s, "bike-1", 3)
    check(s.g.stop() == 0, "tandem stop")
    bike.wait_log("DTLS session closed")
    s.g.restart()
    bike.wait_log("DTLS session up again")
    bike.wait_log("observing bikes/bike-1/commands", 2)
    s.broker.publish(CMD % "bike-1", "after-restart", "-q", "1")
    bike.wait_command("bikes/bike-1/commands\tafter-restart")
    rc = bike.stop()
    check(rc == 0, "bike-coap exited %r:\n%s" % (rc, bike.log()))
    acked = [line for line in bike.err if " readings acknowledged" in line]
    check(len(acked) == 1, "bike-coap's count:\n" + bike.log())
    n = int(acked[0].split(": ")[1].split()[0])
    s.sub.sync()
    missing = set(range(1, n + 1)) - s.seqs("bike-1")
    check(n > 3 and not missing, "readings lost across the restart: %r of %d\n%s" %
          (sorted(missing), n, bike.log()))
    check(not bike.out[:-1], "stdout has more than the command: %r" % bike.out)


def same_readings_both_protocols():
    """bike-mqtt and bike-coap send the same documents to the same topic."""
    s = Setup()
    m = s.mqtt_bike("bike-1", "-n", "4", "-I", "20")
    check(m.wait() == 0, "bike-mqtt exited %r:\n%s" % (m.proc.returncode, m.log()))
    check_readings(s, "bike-1", 4)
    first = [m["payload"] for _, m in s.readings("bike-1")]
    c = s.coap_bike("bike-1", "-n", "4", "-I", "20", "--no-observe")
    check(c.wait() == 0, "bike-coap exited %r:\n%s" % (c.proc.returncode, c.log()))
    wait_until(lambda: len(s.readings("bike-1")) >= 8, "bike-coap's readings")
    second = [m["payload"] for _, m in s.readings("bike-1")][4:]
    check(sorted(first) == sorted(second) and len(set(first)) == 4,
          "MQTT %r\nCoAP %r" % (first, second))


def coap_psk_readings_and_commands():
    s = Setup()
    bike = s.coap_bike("bike-1", "-n", "0", "-I", "100", "-c", psk=True)
    bike.wait_log("observing bikes/bike-1/commands")
    readings_and_commands(s, bike, "bike-1")


def coap_certificate_readings_and_commands():
    s = Setup()
    bike = s.coap_bike("bike-2", "-n", "0", "-I", "100", "-c", psk=False)
    bike.wait_log("observing bikes/bike-2/commands")
    readings_and_commands(s, bike, "bike-2")


def coap_retries_after_503():
    """With the broker away and the gateway's offline buffer full, a reading
    gets 5.03 with Max-Age; bike-coap posts it again after that, and once the
    broker is back every reading arrives, each acknowledged 2.04."""
    d = workdir()
    pki = Pki(d)
    broker = Broker(d, pki, persistent="at_exit").start()
    sub = Subscriber(broker, TEL % "bike-1", session="backend-" + os.urandom(3).hex())
    # Presence off: the bike's presence document would take one of the three places.
    g = Gateway(d, broker, pki, mappings=MAPPINGS,
                mqtt='offline_buffer = 3; presence_topic = "";').start()
    broker.stop()
    g.wait_log("mqtt: connection to")
    bike = Bike([BIKE_COAP, "-p", str(g.dtls_port), "-i", "bike-1", "--psk-key",
                 g.psk["bike-1"], "-n", "6", "-I", "20", "--no-observe", "-v"], d)
    bike.wait_log(": 5.03, again in ")
    first = [line for line in bike.err if ": 5.03, again in " in line][0]
    check("reading 4: 5.03" in first, "the first 5.03 was not the 4th reading's: %r" % first)
    broker.start()
    rc = bike.wait()
    check(rc == 0, "bike-coap exited %r:\n%s" % (rc, bike.log()))
    check(bike.count("bike-1: 6 readings acknowledged") == 1, "bike-coap:\n" + bike.log())
    sub = sub.reconnected()
    wait_until(lambda: {json.loads(m["payload"])["seq"] for m in list(sub.messages)} >=
               set(range(1, 7)), "readings 1..6 at the broker")


def exit_status_tells_what_failed():
    """A refused bike says so in its exit status."""
    s = Setup(subscriber=False)
    # bike-1's certificate on bike-2's topics: the readings are refused (0x87).
    cert, key = s.cert["bike-1"]
    b = Bike([BIKE_MQTT, "-p", str(s.g.listener_port), "--ca", s.pki.ca, "--cert", cert,
              "--key", key, "-i", "bike-2", "-n", "2", "-I", "10", "--wait", "5",
              "--store", os.path.join(s.d, "store-forged")], s.d)
    check(b.wait() == 4, "forged readings: exit %r\n%s" % (b.proc.returncode, b.log()))
    check(b.count("refused") >= 1, "not told:\n" + b.log())
    # A wrong PSK: no DTLS session.
    c = Bike([BIKE_COAP, "-p", str(s.g.dtls_port), "-i", "bike-1", "--psk-key", "wrong",
              "-n", "1"], s.d)
    check(c.wait() == 3, "wrong PSK: exit %r\n%s" % (c.proc.returncode, c.log()))
    # A foreign certificate: no TLS connection.
    foreign = s.pki.device("bike-1", ca="other-ca")
    f = Bike([BIKE_MQTT, "-p", str(s.g.listener_port), "--ca", s.pki.ca, "--cert", foreign[0],
              "--key", foreign[1], "-i", "bike-1", "-n", "1",
              "--store", os.path.join(s.d, "store-foreign")], s.d)
    check(f.wait() == 3, "foreign certificate: exit %r\n%s" % (f.proc.returncode, f.log()))
    # Usage.
    u = Bike([BIKE_MQTT, "-i", "bike-1"], s.d)
    check(u.wait() == 2, "usage: exit %r" % u.proc.returncode)


CASES = [mqtt_readings_and_commands, mqtt_session_resumed_across_gateway_restart,
         same_readings_both_protocols, coap_psk_readings_and_commands,
         coap_certificate_readings_and_commands, coap_bike_across_gateway_restart,
         coap_retries_after_503,
         exit_status_tells_what_failed]

if __name__ == "__main__":
    run({f.__name__: f for f in CASES})
