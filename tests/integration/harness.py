"""Integration test harness: a real Mosquitto with TLS, the real tandem binary,
libcoap's coap-client as the device. Loopback only, free ports, every process
and file cleaned up at exit, every wait bounded and driven by an event."""

import atexit
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

TANDEM = os.environ.get("TANDEM", "tandem")
WAIT = float(os.environ.get("TANDEM_TEST_WAIT", "15"))  # bound on any single wait, s

_procs = []
_dirs = []
_gateways = []


def _cleanup(*_, keep=False):
    """Stops every process a case started and removes its folders (kept for a
    failed case when TANDEM_TEST_KEEP is set, to read the logs)."""
    for p in _procs:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
    for d in _dirs:
        if keep:
            sys.stderr.write("kept %s\n" % d)
        else:
            shutil.rmtree(d, ignore_errors=True)


def _on_signal(signum, _frame):
    _cleanup()
    sys.exit(128 + signum)


atexit.register(_cleanup)
signal.signal(signal.SIGTERM, _on_signal)


class Failure(AssertionError):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def spawn(args, **kw):
    p = subprocess.Popen(args, **kw)
    _procs.append(p)
    return p


def workdir():
    d = tempfile.mkdtemp(prefix="tandem-it-")
    _dirs.append(d)
    return d


def free_port(kind=socket.SOCK_STREAM):
    """A port free for both TCP and UDP on 127.0.0.1, at the time of asking."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(socket.AF_INET, other) as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise Failure("no free port")


def wait_until(pred, what, timeout=WAIT):
    """Polls pred (cheap, local) until true; the bound turns a hang into a failure."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise Failure("timed out waiting for " + what)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


class Pki:
    """A throw-away CA, a gateway/broker certificate, device certificates, and a
    second, foreign CA."""

    def __init__(self, d):
        self.dir = d
        self._ca("ca")
        self._ca("other-ca")
        self.server = self.leaf("server", "localhost", "ca",
                                san="DNS:localhost,IP:127.0.0.1,IP:::1", server=True)

    def _ca(self, name):
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", name + ".key",
                cwd=self.dir)
        openssl("req", "-x509", "-new", "-key", name + ".key", "-sha256", "-days", "30",
                "-subj", "/CN=Tandem test " + name, "-out", name + ".pem", cwd=self.dir)

    def leaf(self, name, cn, ca="ca", san=None, server=False):
        ext = os.path.join(self.dir, name + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyAgreement\n")
            f.write("extendedKeyUsage=%s\n" % ("serverAuth,clientAuth" if server else "clientAuth"))
            if san:
                f.write("subjectAltName=%s\n" % san)
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", name + ".key",
                cwd=self.dir)
        openssl("req", "-new", "-key", name + ".key", "-subj", "/CN=" + cn, "-out", name + ".csr",
                cwd=self.dir)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                "-CAcreateserial", "-days", "30", "-sha256", "-extfile", ext, "-out",
                name + ".pem", cwd=self.dir)
        return (os.path.join(self.dir, name + ".pem"), os.path.join(self.dir, name + ".key"))

    @property
    def ca(self):
        return os.path.join(self.dir, "ca.pem")

    def device(self, identity, ca="ca"):
        """(certificate, key) of a device whose subject CN is identity, signed by
        ca ("ca", or "other-ca" for a foreign one)."""
        name = "dev-%s-%s" % (ca, re.sub(r"[^A-Za-z0-9_.-]", "_", identity))
        return self.leaf(name, identity, ca)


class Broker:
    """Mosquitto with one TLS listener on loopback."""

    def __init__(self, d, pki, port=None, require_certificate=False, plain=False, server=None,
                 persistent=False, extra=""):
        """plain: also a TCP listener without TLS (self.plain_port); server: the
        broker's certificate and key, the PKI's server certificate by default;
        persistent: True saves at every change, "at_exit" only when it stops;
        extra: more lines for its configuration."""
        self.dir, self.pki = d, pki
        self.port = port or free_port()
        self.plain_port = free_port() if plain else None
        self.conf = os.path.join(d, "mosquitto-%d.conf" % self.port)
        cert, key = server or pki.server
        with open(self.conf, "w") as f:
            if os.geteuid() == 0:
                f.write("user root\n")
            f.write("per_listener_settings false\nallow_anonymous true\n")
            if persistent:
                f.write("persistence true\npersistence_location %s/\n" % d)
                f.write("max_queued_messages 100000\n")
            if persistent == "at_exit":
                f.write("autosave_interval 0\n")
            elif persistent:
                # Saved at every change, so that a kill -9 loses little (see
                # test_offline.py for what it can still lose).
                f.write("autosave_on_changes true\nautosave_interval 1\n")
            else:
                f.write("persistence false\n")
            if self.plain_port:
                f.write("listener %d 127.0.0.1\n" % self.plain_port)
            f.write("listener %d 127.0.0.1\n" % self.port)
            f.write("cafile %s\ncertfile %s\nkeyfile %s\n" % (pki.ca, cert, key))
            if require_certificate:
                f.write("require_certificate true\n")
            f.write(extra)
        self.proc = None
        self.log = os.path.join(d, "mosquitto-%d.log" % self.port)
        self.client_cert = pki.leaf("mqtt-client", "test-client") if require_certificate else None

    def start(self):
        self.proc = spawn(["mosquitto", "-c", self.conf], stdout=open(self.log, "a"),
                          stderr=subprocess.STDOUT)

        def listening():
            check(self.proc.poll() is None, "mosquitto exited: " + open(self.log).read())
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False
        wait_until(listening, "mosquitto to listen on %d" % self.port)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(WAIT)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)

    def pause(self):
        """Freezes the broker: connections stay open, nothing is acknowledged."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def client_args(self):
        args = ["-h", "127.0.0.1", "-p", str(self.port), "--cafile", self.pki.ca]
        if self.client_cert:
            args += ["--cert", self.client_cert[0], "--key", self.client_cert[1]]
        return args

    def publish(self, topic, payload, *extra):
        subprocess.run(["mosquitto_pub", *self.client_args(), "-t", topic, "-m", payload, *extra],
                       check=True, timeout=WAIT)


def _mqtt_str(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _mqtt_packet(kind, body):
    n, rem = len(body), b""
    while True:
        byte, n = n % 128, n // 128
        rem += bytes([byte | (0x80 if n else 0)])
        if not n:
            return bytes([kind]) + rem + body


def mqtt_publish_many(broker, messages, retain=False):
    """Publishes (topic, payload bytes) pairs at QoS 0 over one TLS connection
    (MQTT 3.1.1, encoded here: mosquitto_pub starts a process per message),
    then waits for a PINGRESP, by which the broker has handled them all."""
    import ssl
    ctx = ssl.create_default_context(cafile=broker.pki.ca)
    raw = socket.create_connection(("127.0.0.1", broker.port), WAIT)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.sendall(_mqtt_packet(0x10, _mqtt_str("MQTT") + bytes([4, 0x02, 0, 60]) +
                           _mqtt_str("bulk-" + secrets.token_hex(4))))
    check(s.recv(4)[:1] == b"\x20", "no CONNACK")
    buf = []
    for topic, payload in messages:
        buf.append(_mqtt_packet(0x30 | (1 if retain else 0), _mqtt_str(topic) + payload))
        if len(buf) >= 200:
            s.sendall(b"".join(buf))
            buf = []
    s.sendall(b"".join(buf) + _mqtt_packet(0xC0, b""))
    check(s.recv(2) == b"\xd0\x00", "no PINGRESP")
    s.sendall(_mqtt_packet(0xE0, b""))
    s.close()


def under_asan(pid):
    """Whether the process runs with AddressSanitizer, whose quarantine holds
    freed memory back (up to 256 MiB): its memory says nothing of leaks."""
    with open("/proc/%d/maps" % pid) as f:
        return "libasan" in f.read()


def proc_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Subscriber:
    """mosquitto_sub (MQTT 5, QoS 2) collecting messages as dicts."""

    FORMAT = r"%t\t%q\t%r\t%C\t%F\t%P\t%x"

    def __init__(self, broker, *filters, session=None):
        """session: a client id whose session the broker keeps while this
        subscriber is away (messages for it are queued)."""
        self.broker, self.filters, self.session = broker, filters, session
        self.probe_topic = "probe/" + (session or secrets.token_hex(4))
        args = ["stdbuf", "-oL", "mosquitto_sub", "-V", "5", "-q", "2", *broker.client_args(),
                "-F", self.FORMAT, "-t", self.probe_topic]
        if session:
            args += ["-i", session, "-c", "-x", "86400"]
        for f in filters:
            args += ["-t", f]
        self.proc = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.messages = []
        self.probes = 0
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.sync()

    def _read(self):
        for line in self.proc.stdout:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 7:
                continue
            t, q, r, ctype, pfi, props, hexdata = parts
            with self.lock:
                if t == self.probe_topic:
                    self.probes += 1
                    continue
                self.messages.append({"topic": t, "qos": int(q), "retain": r == "1",
                                      "content_type": ctype, "pfi": pfi, "props": props,
                                      "payload": bytes.fromhex(hexdata)})

    def sync(self):
        """Publishes a probe and waits until it arrives: everything the broker had
        routed to this subscriber before it has arrived too."""
        with self.lock:
            want = self.probes + 1
        deadline = time.monotonic() + WAIT
        while True:
            self.broker.publish(self.probe_topic, "probe", "-q", "1")
            try:
                wait_until(lambda: self.probes >= want, "probe", timeout=1.0)
                return
            except Failure:
                if time.monotonic() > deadline:
                    raise Failure("the subscriber never received its probe")

    def wait_for(self, n, what="messages"):
        wait_until(lambda: len(self.messages) >= n, "%d %s" % (n, what))
        with self.lock:
            return list(self.messages)

    def stop(self):
        self.proc.terminate()

    def reconnected(self):
        """After the broker went away and came back: this subscriber if
        mosquitto_sub reconnected by itself, else (it exits on some connection
        losses) a new one for the same session that starts with what this one
        received."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.reader.join(WAIT)
                check(not self.reader.is_alive(), "the subscriber's output was not read")
                new = Subscriber(self.broker, *self.filters, session=self.session)
                with new.lock:
                    new.messages[:0] = self.messages
                return new
            with self.lock:
                want = self.probes + 1
            self.broker.publish(self.probe_topic, "probe", "-q", "1")
            try:
                wait_until(lambda: self.probes >= want or self.proc.poll() is not None,
                           "probe", timeout=1.0)
            except Failure:
                continue
            if self.probes >= want:
                return self
        raise Failure("the subscriber neither reconnected nor exited")


class Gateway:
    """The tandem binary with a generated configuration."""

    def __init__(self, d, broker, pki, coap="", dtls='psk_file = "psk.txt";', mqtt="",
                 mappings=None, gateway="", psk=None, log_level="debug", uri=None, env=None,
                 metrics=False, mqtt_listener=None):
        """metrics: serve /metrics on 127.0.0.1:self.metrics_port (or on this
        "HOST:PORT" text); the control socket is self.control_socket, in d
        unless gateway sets one. mqtt_listener: None for no MQTT device
        listener, else more settings for it (text): it listens on 127.0.0.1 at
        self.listener_port with the PKI's server certificate and CA unless
        these settings give others."""
        self.dir, self.pki = d, pki
        self.listener_port = free_port() if mqtt_listener is not None else None
        self.dtls_port = free_port(socket.SOCK_DGRAM)
        self.plain_port = free_port(socket.SOCK_DGRAM)
        self.metrics_port = None
        if metrics is True:
            self.metrics_port = free_port()
            metrics = "127.0.0.1:%d" % self.metrics_port
        m = re.search(r'control_socket\s*=\s*"([^"]*)"', gateway)
        self.control_socket = m.group(1) if m else os.path.join(d, "control-%d.sock" %
                                                                self.dtls_port)
        self.psk = psk if psk is not None else {"bike-1": "secret-bike-1",
                                                 "bike-2": "secret-bike-2"}
        psk_file = os.path.join(d, "psk.txt")
        with open(psk_file, "w") as f:
            f.write("# test identities\n")
            for ident, key in self.psk.items():
                f.write("%s:%s\n" % (ident, key.encode().hex()))
        if mappings is None:
            mappings = DEFAULT_MAPPINGS
        self.conf = os.path.join(d, "tandem.conf")
        with open(self.conf, "w") as f:
            if "state_dir" not in gateway:
                gateway += ' state_dir = "%s";' % os.path.join(d, "state-%d" % self.dtls_port)
            if "control_socket" not in gateway:
                gateway += ' control_socket = "%s";' % self.control_socket
            f.write('gateway = { id = "it"; log_level = "%s"; %s };\n' % (log_level, gateway))
            f.write('coap = { bind = "127.0.0.1"; port = %d; %s\n' % (self.plain_port, coap))
            f.write('  dtls = { port = %d; %s };\n' % (self.dtls_port, dtls))
            f.write("};\n")
            uri = uri or "mqtts://127.0.0.1:%d" % broker.port
            ca = 'ca = "%s"; ' % pki.ca if uri.startswith("mqtts") and "ca =" not in mqtt else ""
            quiet = "" if "stats_interval" in mqtt else "stats_interval = 0; "
            f.write('mqtt = { uri = "%s"; %s%s%s };\n' % (uri, ca, quiet, mqtt))
            if metrics:
                f.write('metrics = { listen = "%s"; };\n' % metrics)
            if mqtt_listener is not None:
                f.write("mqtt_listener = { enabled = true; %s };\n" %
                        self._listener_settings(pki, mqtt_listener))
            f.write("mappings = (\n%s\n);\n" % mappings)
        self.log = os.path.join(d, "tandem.log")
        self.proc = None
        self.lines = []
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault("LSAN_OPTIONS", "suppressions=%s:print_suppressions=0" % os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "lsan.supp"))
        _gateways.append(self)

    def _listener_settings(self, pki, extra):
        out = ""
        if not re.search(r"(^|[\s;])bind\s*=", extra):
            out += 'bind = "127.0.0.1"; '
        if not re.search(r"(^|[\s;])port\s*=", extra):
            out += "port = %d; " % self.listener_port
        for name, path in (("cert", pki.server[0]), ("key", pki.server[1]), ("ca", pki.ca)):
            if not re.search(r"(^|[\s;])%s\s*=" % name, extra):
                out += '%s = "%s"; ' % (name, path)
        return out + extra

    def listening(self):
        """Whether the MQTT listener's port is in the LISTEN state (read from
        /proc, so that asking makes no connection the gateway would count)."""
        port = "%04X" % self.listener_port
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    next(f)
                    for line in f:
                        cols = line.split()
                        if cols[1].rsplit(":", 1)[1] == port and cols[3] == "0A":
                            return True
            except OSError:
                continue
        return False

    def wait_listening(self):
        wait_until(lambda: self.listening() or self.proc.poll() is not None,
                   "the MQTT listener on %d" % self.listener_port)
        check(self.proc.poll() is None, "tandem exited:\n" + self.text())

    def device_args(self, cert=None, ca=None):
        """mosquitto_pub/mosquitto_sub arguments that reach the MQTT listener as
        the device with cert ((certificate, key), or None for none)."""
        args = ["-h", "127.0.0.1", "-p", str(self.listener_port), "--cafile", ca or self.pki.ca]
        if cert:
            args += ["--cert", cert[0], "--key", cert[1]]
        return args

    def stats_json(self):
        """The statistics object (tandem stats --json)."""
        import json
        r = self.stats("--json")
        check(r.returncode == 0, "tandem stats: %s" % r.stderr)
        return json.loads(r.stdout)

    def start(self, wait_connected=True):
        self.proc = spawn([TANDEM, "run", "-c", self.conf], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, errors="replace", env=self.env)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        wait_until(lambda: self.count(" ready (tandem") or self.proc.poll() is not None,
                   "tandem ready")
        check(self.proc.poll() is None, "tandem exited at start:\n" + self.text())
        if wait_connected:
            self.wait_log("mqtt: connected to")
        if self.listener_port:
            self.wait_listening()
        return self

    def restart(self):
        """Starts the same configuration again (same ports, same state_dir)."""
        self.lines = []
        return self.start(wait_connected=False)

    def _read(self):
        with open(self.log, "a") as out:
            for line in self.proc.stderr:
                out.write(line)
                out.flush()
                self.lines.append(line)

    def text(self):
        return "".join(self.lines)

    def count(self, needle):
        return sum(needle in l for l in list(self.lines))

    def wait_log(self, needle, n=1):
        wait_until(lambda: self.count(needle) >= n, "'%s' x%d in the gateway log" % (needle, n))

    def stats(self, *args, timeout=WAIT):
        """`tandem stats -c` this gateway's configuration: the CompletedProcess."""
        return subprocess.run([TANDEM, "stats", "-c", self.conf, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout, env=self.env)

    def stop(self):
        """SIGTERM, then the exit status once the log is read to its end."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(WAIT)
        self.reader.join(WAIT)
        return self.proc.returncode


DEFAULT_MAPPINGS = """
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; },
  { name = "status"; resource = "bikes/{identity}/status";
    topic = "redback/p1/bikes/{identity}/status"; direction = "up"; qos = 0; retain = true; },
  { name = "exact"; resource = "bikes/{identity}/workout";
    topic = "redback/p1/bikes/{identity}/workout"; direction = "up"; qos = 2; },
  { name = "zones"; resource = "zones/{zone}/{rest*}";
    topic = "redback/p1/zones/{zone}/{rest*}"; direction = "up"; qos = 1; },
  { name = "public"; resource = "public/{name}";
    topic = "redback/p1/public/{name}"; direction = "up"; qos = 1; }
"""


class Response:
    def __init__(self, type_, code, options, raw):
        self.type, self.code, self.options, self.raw = type_, code, options, raw

    def __repr__(self):
        return "Response(%s %s, %r)" % (self.type, self.code, self.options)


_PDU = re.compile(r"^v:1 t:(CON|NON|ACK|RST) c:(\d\.\d\d) i:[0-9a-f]+ \{[0-9a-f]*\} \[(.*?)\]")


def coap(url, method="post", payload=None, file=None, client="coap-client-gnutls", psk=None,
         cert=None, ca=None, cf=None, block=None, extra=(), timeout=5):
    """Runs coap-client; returns the last response (code "2.04", options text), or
    None when no response came. coap-client exits 0 whatever the answer, so the
    answer is read from the PDUs it prints at verbosity 6."""
    args = [client, "-v", "6", "-w", "-B", str(timeout), "-m", method]
    if psk:
        args += ["-u", psk[0], "-k", psk[1]]
    if cert:
        args += ["-c", cert[0], "-j", cert[1]]
    if ca:
        args += ["-R", ca]
    if cf is not None:
        args += ["-t", str(cf)]
    if block:
        args += ["-b", str(block)]
    if payload is not None:
        args += ["-e", payload]
    if file:
        args += ["-f", file]
    args += list(extra) + [url]
    out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         errors="replace", timeout=timeout + WAIT)
    last = None
    for line in out.stdout.splitlines():
        m = _PDU.match(line)
        if m and m.group(2) != "0.00" and int(m.group(2)[0]) >= 2:
            last = Response(m.group(1), m.group(2), m.group(3), out.stdout)
    return last


def coap_option(num, value, last):
    """One encoded CoAP option (RFC 7252 §3.1) after option number last."""
    ext = b""
    fields = []
    for n in (num - last, len(value)):
        if n < 13:
            fields.append(n)
        elif n < 269:
            fields.append(13)
            ext += bytes([n - 13])
        else:
            fields.append(14)
            ext += struct.pack("!H", n - 269)
    return bytes([fields[0] << 4 | fields[1]]) + ext + value


def coap_raw(path, payload=b"", mid=1, token=b"", confirmable=True, code=0x02, observe=None,
             block1=None):
    """Encodes a CoAP request by hand (RFC 7252 §3; POST unless code says
    otherwise), for tests that must control the Message ID or the bytes; observe:
    the Observe value (RFC 7641); block1: (num, more, szx) of a Block1 option
    (RFC 7959)."""
    def uint(v):
        return v.to_bytes((v.bit_length() + 7) // 8, "big")

    options = [(11, seg.encode()) for seg in path.split("/")]
    if observe is not None:
        options.append((6, uint(observe)))
    if block1:
        num, more, szx = block1
        options.append((27, uint(num << 4 | (8 if more else 0) | szx)))
    head = struct.pack("!BBH", 0x40 | (0 if confirmable else 0x10) | len(token), code, mid) + token
    opts, last = b"", 0
    for num, value in sorted(options, key=lambda o: o[0]):
        opts += coap_option(num, value, last)
        last = num
    return head + opts + (b"\xff" + payload if payload else b"")


def coap_parse(data):
    """({option number: [values]}, payload) of an encoded CoAP message."""
    tkl = data[0] & 0x0F
    i, num, found = 4 + tkl, 0, {}
    while i < len(data) and data[i] != 0xFF:
        delta, length = data[i] >> 4, data[i] & 0x0F
        i += 1
        ext = []
        for field in (delta, length):
            if field == 13:
                ext.append(data[i] + 13)
                i += 1
            elif field == 14:
                ext.append(struct.unpack("!H", data[i:i + 2])[0] + 269)
                i += 2
            else:
                ext.append(field)
        num += ext[0]
        found.setdefault(num, []).append(data[i:i + ext[1]])
        i += ext[1]
    return found, data[i + 1:]


def coap_decode(data):
    """(type, code "c.dd", mid, token) of a CoAP message."""
    b0, code, mid = struct.unpack("!BBH", data[:4])
    tkl = b0 & 0x0F
    return ((b0 >> 4) & 3, "%d.%02d" % (code >> 5, code & 31), mid, data[4:4 + tkl])


def sanitizer_reports():
    """What AddressSanitizer/UndefinedBehaviorSanitizer said in any gateway's log."""
    found = []
    for g in _gateways:
        for line in g.lines:
            if "runtime error:" in line or "Sanitizer" in line:
                found.append(line.strip())
    return found


def run(cases):
    """Runs the case named on the command line (or all); prints a summary line."""
    names = sys.argv[1:] or list(cases)
    passed = failed = 0
    for name in names:
        start = time.monotonic()
        case_failed = True
        try:
            cases[name]()
            for g in _gateways:
                g.stop()
            reports = sanitizer_reports()
            if reports:
                for g in _gateways:
                    sys.stderr.write("---- gateway log %s\n%s" % (g.conf, g.text()))
            check(not reports, "sanitizer reports:\n" + "\n".join(reports[:20]))
            passed += 1
            case_failed = False
            print("ok %s (%.1fs)" % (name, time.monotonic() - start), flush=True)
        except Exception as e:  # report every kind of failure as this case's
            failed += 1
            print("FAIL %s: %s: %s" % (name, type(e).__name__, e), flush=True)
            import traceback
            traceback.print_exc()
        finally:
            _cleanup(keep=case_failed and bool(os.environ.get("TANDEM_TEST_KEEP")))
            _procs.clear()
            _dirs.clear()
            _gateways.clear()
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


def _mqtt_varint(n):
    out = b""
    while True:
        byte, n = n % 128, n // 128
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


class ScriptedBroker:
    """A broker that misbehaves on purpose: a TLS listener speaking just enough
    MQTT (3.1.1 and 5) to accept the gateway, acknowledge what it sends and
    answer its subscriptions, with a hook at each packet to do what a real
    broker would not (drop the connection, send a DISCONNECT, garbage, huge or
    malformed packets). behave(broker, conn, kind, body) returns True when it
    handled the packet itself. Every connection is served by a thread."""

    def __init__(self, d, pki, behave=None):
        import ssl
        self.pki, self.behave = pki, behave
        self.port = free_port()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(*pki.server)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.lock = threading.Lock()
        self.connections = 0
        self.published = []  # (topic, payload) of every PUBLISH received
        self.session_kept = True  # False: "session present" is never set, as after a broker restart
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    @staticmethod
    def _read_packet(conn):
        head = conn.recv(1)
        if not head:
            return None, None
        n, mult = 0, 1
        for _ in range(4):
            b = conn.recv(1)
            if not b:
                return None, None
            n += (b[0] & 0x7F) * mult
            mult *= 128
            if not b[0] & 0x80:
                break
        body = b""
        while len(body) < n:
            chunk = conn.recv(n - len(body))
            if not chunk:
                return None, None
            body += chunk
        return head[0], body

    def send(self, conn, kind, body):
        conn.sendall(bytes([kind]) + _mqtt_varint(len(body)) + body)

    def _serve(self, raw):
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except OSError:
            return
        with self.lock:
            self.connections += 1
        conn.version5 = False
        try:
            while True:
                kind, body = self._read_packet(conn)
                if kind is None:
                    return
                if self.behave and self.behave(self, conn, kind, body):
                    continue
                t = kind >> 4
                if t == 1:  # CONNECT
                    plen = struct.unpack("!H", body[:2])[0]
                    conn.version5 = body[2 + plen] == 5
                    # A persistent session when the client asks for one, as
                    # Mosquitto keeps it: "session present" from the second
                    # connection of a client id on.
                    with self.lock:
                        present = not body[3 + plen] & 0x02 and self.connections > 1 and \
                            self.session_kept
                    flags = b"\x01" if present else b"\x00"
                    self.send(conn, 0x20, flags + (b"\x00\x00" if conn.version5 else b"\x00"))
                elif t == 3:  # PUBLISH
                    qos = (kind >> 1) & 3
                    tlen = struct.unpack("!H", body[:2])[0]
                    topic = body[2:2 + tlen].decode("utf-8", "replace")
                    rest = body[2 + tlen:]
                    mid = rest[:2] if qos else b""
                    rest = rest[2:] if qos else rest
                    if conn.version5:
                        n, shift, i = 0, 0, 0
                        while True:
                            n |= (rest[i] & 0x7F) << shift
                            shift += 7
                            i += 1
                            if not rest[i - 1] & 0x80:
                                break
                        rest = rest[i + n:]
                    with self.lock:
                        self.published.append((topic, rest))
                    if qos == 1:
                        self.send(conn, 0x40, mid + (b"\x00" if conn.version5 else b""))
                    elif qos == 2:
                        self.send(conn, 0x50, mid + (b"\x00" if conn.version5 else b""))
                elif t == 6:  # PUBREL
                    self.send(conn, 0x70, body[:2] + (b"\x00" if conn.version5 else b""))
                elif t == 8:  # SUBSCRIBE: grant QoS 0 to each filter
                    mid, rest = body[:2], body[2:]
                    if conn.version5:
                        rest = rest[1 + rest[0]:] if rest and not rest[0] & 0x80 else rest
                    codes, i = b"", 0
                    while i + 2 <= len(rest):
                        flen = struct.unpack("!H", rest[i:i + 2])[0]
                        i += 2 + flen + 1
                        codes += b"\x00"
                    self.send(conn, 0x90, mid + (b"\x00" if conn.version5 else b"") + codes)
                elif t == 10:  # UNSUBSCRIBE
                    self.send(conn, 0xB0, body[:2] + (b"\x00\x00" if conn.version5 else b""))
                elif t == 12:  # PINGREQ
                    self.send(conn, 0xD0, b"")
                elif t == 14:  # DISCONNECT
                    return
        except (OSError, IndexError, struct.error):
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def stop(self):
        self.closed = True
        self.sock.close()


# --- MQTT devices: raw MQTT 3.1.1/5 packets, for what mosquitto_pub/sub cannot send

# MQTT 5 property types (§2.2.2.2): b byte, h two-byte, i four-byte, v variable
# byte integer, s UTF-8 string, d binary data, p string pair.
MQTT_PROP_TYPES = {0x01: "b", 0x02: "i", 0x03: "s", 0x08: "s", 0x09: "d", 0x0B: "v", 0x11: "i",
                   0x12: "s", 0x13: "h", 0x15: "s", 0x16: "d", 0x17: "b", 0x18: "i", 0x19: "b",
                   0x1A: "s", 0x1C: "s", 0x1F: "s", 0x21: "h", 0x22: "h", 0x23: "h", 0x24: "b",
                   0x25: "b", 0x26: "p", 0x27: "i", 0x28: "b", 0x29: "b", 0x2A: "b"}
PROP_RESPONSE_TOPIC, PROP_TOPIC_ALIAS_MAX, PROP_TOPIC_ALIAS = 0x08, 0x22, 0x23
PROP_CONTENT_TYPE, PROP_SESSION_EXPIRY = 0x03, 0x11


def _mqtt_bin(v):
    """A Two Byte length and the bytes (str is UTF-8 encoded; bytes go as they are,
    so that tests can send what is not UTF-8)."""
    b = v.encode() if isinstance(v, str) else bytes(v)
    return struct.pack("!H", len(b)) + b


def mqtt_props(props):
    """An encoded property list from (id, value) pairs, in the given order
    (duplicates included)."""
    out = b""
    for pid, v in props:
        t = MQTT_PROP_TYPES[pid]
        out += _mqtt_varint(pid)
        if t == "b":
            out += bytes([v])
        elif t == "h":
            out += struct.pack("!H", v)
        elif t == "i":
            out += struct.pack("!I", v)
        elif t == "v":
            out += _mqtt_varint(v)
        elif t == "p":
            out += _mqtt_bin(v[0]) + _mqtt_bin(v[1])
        else:
            out += _mqtt_bin(v)
    return _mqtt_varint(len(out)) + out


def _read_varint(b, i):
    n, shift = 0, 0
    while True:
        n |= (b[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not b[i - 1] & 0x80:
            return n, i


def _parse_props(b, i):
    """({id: value or [values]}, index after the list)."""
    n, i = _read_varint(b, i)
    end, props = i + n, {}
    while i < end:
        pid, i = _read_varint(b, i)
        t = MQTT_PROP_TYPES.get(pid, "d")
        if t == "b":
            v, i = b[i], i + 1
        elif t == "h":
            v, i = struct.unpack("!H", b[i:i + 2])[0], i + 2
        elif t == "i":
            v, i = struct.unpack("!I", b[i:i + 4])[0], i + 4
        elif t == "v":
            v, i = _read_varint(b, i)
        else:
            ln = struct.unpack("!H", b[i:i + 2])[0]
            v, i = b[i + 2:i + 2 + ln], i + 2 + ln
            if t == "p":
                ln2 = struct.unpack("!H", b[i:i + 2])[0]
                v, i = (v, b[i + 2:i + 2 + ln2]), i + 2 + ln2
        if pid == 0x26:
            props.setdefault(pid, []).append(v)
        else:
            props[pid] = v
    return props, end


def mqtt_connect(client_id, version=5, clean=True, keepalive=60, props=(), will=None,
                 username=None, password=None):
    """CONNECT. will: dict(topic=, payload=, qos=0, retain=False, props=())."""
    flags = 0x02 if clean else 0
    payload = _mqtt_bin(client_id)
    if will:
        flags |= 0x04 | will.get("qos", 0) << 3 | (0x20 if will.get("retain") else 0)
        if version == 5:
            payload += mqtt_props(will.get("props", ()))
        payload += _mqtt_bin(will["topic"]) + _mqtt_bin(will["payload"])
    if username is not None:
        flags |= 0x80
        payload += _mqtt_bin(username)
    if password is not None:
        flags |= 0x40
        payload += _mqtt_bin(password)
    body = _mqtt_bin("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        body += mqtt_props(props)
    return _mqtt_packet(0x10, body + payload)


def mqtt_publish(topic, payload, version=5, qos=0, pid=1, retain=False, dup=False, props=()):
    body = _mqtt_bin(topic) + (struct.pack("!H", pid) if qos else b"")
    if version == 5:
        body += mqtt_props(props)
    payload = payload.encode() if isinstance(payload, str) else payload
    return _mqtt_packet(0x30 | (8 if dup else 0) | qos << 1 | (1 if retain else 0), body + payload)


def mqtt_subscribe(filters, version=5, pid=1, qos=1, props=()):
    """SUBSCRIBE; filters: topic filters (str or bytes), or (filter, options) pairs."""
    body = struct.pack("!H", pid) + (mqtt_props(props) if version == 5 else b"")
    for f in filters:
        f, opts = f if isinstance(f, tuple) else (f, qos)
        body += _mqtt_bin(f) + bytes([opts])
    return _mqtt_packet(0x82, body)


def mqtt_ack(kind, pid, version=5, reason=0):
    """PUBACK (4), PUBREC (5), PUBREL (6) or PUBCOMP (7)."""
    body = struct.pack("!H", pid) + (bytes([reason]) if version == 5 and reason else b"")
    return _mqtt_packet(kind << 4 | (2 if kind == 6 else 0), body)


def mqtt_disconnect(version=5, reason=0):
    return _mqtt_packet(0xE0, bytes([reason]) if version == 5 and reason else b"")


MQTT_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
              7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
              12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH"}


class MqttPacket:
    """A decoded packet: name, flags, and per type session_present/reason/props
    (CONNACK), topic/qos/id/retain/props/payload (PUBLISH), id/reason (acks),
    id/codes (SUBACK, UNSUBACK), reason (DISCONNECT)."""

    def __init__(self, kind, body, version):
        self.type, self.flags, self.body = kind >> 4, kind & 0x0F, body
        self.name = MQTT_NAMES.get(self.type, "?")
        self.props, self.reason = {}, 0
        v5 = version == 5
        if self.type == 2:
            self.session_present, self.reason = bool(body[0] & 1), body[1]
            if v5 and len(body) > 2:
                self.props, _ = _parse_props(body, 2)
        elif self.type == 3:
            self.qos, self.retain = (self.flags >> 1) & 3, bool(self.flags & 1)
            tl = struct.unpack("!H", body[:2])[0]
            self.topic, i = body[2:2 + tl].decode("utf-8", "replace"), 2 + tl
            self.id = 0
            if self.qos:
                self.id, i = struct.unpack("!H", body[i:i + 2])[0], i + 2
            if v5:
                self.props, i = _parse_props(body, i)
            self.payload = body[i:]
        elif self.type in (4, 5, 6, 7):
            self.id = struct.unpack("!H", body[:2])[0]
            self.reason = body[2] if len(body) > 2 else 0
        elif self.type in (9, 11):
            self.id, i = struct.unpack("!H", body[:2])[0], 2
            if v5:
                self.props, i = _parse_props(body, i)
            self.codes = list(body[i:])
        elif self.type == 14:
            self.reason = body[0] if body else 0

    def __repr__(self):
        return "%s(reason=0x%02x, %r)" % (self.name, self.reason, self.body[:40])


class _SockTransport:
    def __init__(self, sock):
        self.sock = sock

    def send(self, data):
        self.sock.sendall(data)

    def recv(self, timeout):
        """Bytes; b"" at the end of the connection; None when nothing came in time."""
        import ssl
        self.sock.settimeout(max(timeout, 0.001))
        try:
            return self.sock.recv(65536)
        except socket.timeout:
            return None
        except (ssl.SSLError, OSError):
            return b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class _ProcTransport:
    """A process (openssl s_client) whose input goes to the server and whose
    output is what the server sent."""

    def __init__(self, proc):
        self.proc, self.q = proc, queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            data = os.read(self.proc.stdout.fileno(), 65536)
            self.q.put(data)
            if not data:
                return

    def send(self, data):
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except OSError:
            pass

    def recv(self, timeout):
        try:
            return self.q.get(timeout=max(timeout, 0.001))
        except queue.Empty:
            return None

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()


def device_tls_context(pki, cert=None, ca=None):
    """A TLS client context that verifies the gateway with the PKI's CA and
    presents cert ((certificate, key)) when given."""
    import ssl
    ctx = ssl.create_default_context(cafile=ca or pki.ca)
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


class MqttDevice:
    """A device speaking raw MQTT to the gateway's listener over TLS (or over
    any transport). Reads are synchronous and bounded; PUBLISH packets that
    arrive while waiting for something else are kept in self.received (QoS 1
    and 2 ones acknowledged)."""

    def __init__(self, g=None, cert=None, version=5, ctx=None, transport=None, port=None):
        """Opens the TLS connection (the handshake may raise ssl.SSLError or
        OSError when the gateway refuses it; with TLS 1.3 a refused client
        certificate shows only as the end of the connection afterwards)."""
        self.version = version
        self.buf, self.eof, self.received = b"", False, []
        if transport is None:
            ctx = ctx or device_tls_context(g.pki, cert)
            raw = socket.create_connection(("127.0.0.1", port or g.listener_port), WAIT)
            try:
                transport = _SockTransport(ctx.wrap_socket(raw, server_hostname="localhost"))
            except Exception:
                raw.close()
                raise
        self.t = transport
        self.next_id = 1

    def send(self, data):
        try:
            self.t.send(data)
        except OSError:
            pass  # the gateway closed the connection: seen at the next read

    def _take(self):
        b = self.buf
        if len(b) < 2:
            return None
        n, mult, i = 0, 1, 1
        while True:
            if i >= len(b) or i > 4:
                return None
            n += (b[i] & 0x7F) * mult
            mult *= 128
            i += 1
            if not b[i - 1] & 0x80:
                break
        if len(b) < i + n:
            return None
        self.buf = b[i + n:]
        return MqttPacket(b[0], b[i:i + n], self.version)

    def packet(self, timeout=WAIT):
        """The next packet, or None when the connection ended first."""
        deadline = time.monotonic() + timeout
        while True:
            p = self._take()
            if p:
                return p
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure("no packet from the gateway within %.0f s" % timeout)
            data = self.t.recv(left)
            if data == b"":
                self.eof = True
            elif data:
                self.buf += data

    def expect(self, name, pid=None, timeout=WAIT):
        """The next packet called name (with that id), handling PUBLISH packets
        that come first; None when the connection ended first."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.packet(max(deadline - time.monotonic(), 0))
            if p is None:
                return None
            if p.name == name and (pid is None or getattr(p, "id", None) == pid):
                return p
            if p.name == "PUBLISH":
                self.received.append(p)
                if p.qos == 1:
                    self.send(mqtt_ack(4, p.id, self.version))
                elif p.qos == 2:
                    self.send(mqtt_ack(5, p.id, self.version))
            elif p.name == "PUBREL":
                self.send(mqtt_ack(7, p.id, self.version))
            elif p.name in ("DISCONNECT",):
                self.disconnect_packet = p

    def connect(self, client_id="dev", **kw):
        """Sends CONNECT; the CONNACK, or None when the connection ended."""
        self.send(mqtt_connect(client_id, version=self.version, **kw))
        return self.expect("CONNACK")

    def _id(self):
        self.next_id = self.next_id % 65535 + 1
        return self.next_id

    def publish(self, topic, payload, qos=1, **kw):
        """Publishes; for QoS 1 the PUBACK, for QoS 2 the PUBREC (then completes
        the exchange when it is a success), for QoS 0 nothing; None when the
        connection ended."""
        pid = self._id()
        self.send(mqtt_publish(topic, payload, self.version, qos, pid, **kw))
        if qos == 1:
            return self.expect("PUBACK", pid)
        if qos == 2:
            rec = self.expect("PUBREC", pid)
            if rec is not None and rec.reason < 0x80:
                self.send(mqtt_ack(6, pid, self.version))
                if self.expect("PUBCOMP", pid) is None:
                    return None
            return rec
        return None

    def subscribe(self, filters, qos=1, **kw):
        """The SUBACK's codes, or None when the connection ended."""
        pid = self._id()
        self.send(mqtt_subscribe(filters, self.version, pid, qos, **kw))
        ack = self.expect("SUBACK", pid)
        return ack.codes if ack else None

    def ping(self, timeout=WAIT):
        """True when a PINGRESP comes back: the connection works both ways."""
        self.send(_mqtt_packet(0xC0, b""))
        return self.expect("PINGRESP", timeout=timeout) is not None

    def wait_message(self, n=1, timeout=WAIT):
        """Waits until n PUBLISH packets have arrived (acknowledging them); returns them."""
        deadline = time.monotonic() + timeout
        while len(self.received) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure("%d messages expected, %d came" % (n, len(self.received)))
            p = self.packet(left)
            if p is None:
                raise Failure("the connection ended after %d of %d messages" %
                              (len(self.received), n))
            if p.name == "PUBLISH":
                self.received.append(p)
                if p.qos:
                    self.send(mqtt_ack(4 if p.qos == 1 else 5, p.id, self.version))
            elif p.name == "PUBREL":
                self.send(mqtt_ack(7, p.id, self.version))
        return list(self.received)

    def closed(self, timeout=WAIT):
        """Waits until the gateway ends the connection (reading what it still
        sends); the packets seen on the way. A Failure when it stays open."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure("the gateway kept the connection open for %.0f s (it sent %r)" %
                              (timeout, seen))
            try:
                p = self.packet(left)
            except Failure:
                continue
            if p is None:
                return seen
            seen.append(p)

    def close(self):
        self.t.close()
