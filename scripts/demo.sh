#!/usr/bin/env bash
# The quick-start demo: a throw-away CA (tandem pki), Mosquitto with TLS, Tandem with DTLS
# and its MQTT device listener, and the reference bikes (examples/): bike-coap's
# readings over CoAP/DTLS (with a certificate, and with a PSK) and bike-mqtt's over
# MQTT/TLS (Paho, with its certificate), all arriving on MQTT, and a command from
# the backend reaching bike-mqtt.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null

dir=$(mktemp -d /tmp/tandem-demo-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# wait_for FILE PATTERN SECONDS: waits until FILE contains PATTERN.
wait_for() {
  for _ in $(seq 1 $(($3 * 10))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "demo: timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}

echo "== 1. a throw-away CA and certificates with tandem pki (in $dir)"
tandem=$PWD/build/tandem
bike_coap=$PWD/build/examples/bike-coap  # the reference bikes (examples/README.md)
bike_mqtt=$PWD/build/examples/bike-mqtt
cd "$dir"
"$tandem" pki init --dir "$dir" --days 30 --hostname localhost --hostname 127.0.0.1
# bike-7 speaks CoAP, bike-9 MQTT: their certificates' CN is their identity.
"$tandem" pki device --dir "$dir" --days 30 bike-7
"$tandem" pki device --dir "$dir" --days 30 bike-9
# A PSK device would use this key (its hex is the key's bytes).
psk8=$("$tandem" pki psk --file "$dir/psk.txt" bike-8)
echo "bike-8's PSK: $psk8"

mqtt_port=$(free_port)
dtls_port=$(free_port)
listener_port=$(free_port)
echo "== 2. Mosquitto with a TLS listener on 127.0.0.1:$mqtt_port"
{
  [ "$(id -u)" -eq 0 ] && echo "user root"
  echo "allow_anonymous true"
  echo "listener $mqtt_port 127.0.0.1"
  echo "cafile $dir/ca.pem"
  echo "certfile $dir/gateway.pem"
  echo "keyfile $dir/gateway.key"
} > mosquitto.conf
mosquitto -c mosquitto.conf > mosquitto.log 2>&1 & pids+=($!)

pub() { mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" --cafile ca.pem "$@"; }
for i in $(seq 1 50); do  # until Mosquitto accepts TLS connections
  pub -t demo/ready -m ready 2>/dev/null && break
  [ "$i" -lt 50 ] || { echo "demo: Mosquitto did not start" >&2; cat mosquitto.log >&2; exit 1; }
  sleep 0.2
done
stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" --cafile ca.pem -V 5 -q 1 -v \
  -t 'redback/#' -t demo/ready > received.txt 2>&1 & pids+=($!)
for _ in $(seq 1 50); do  # until the subscription is in place
  pub -t demo/ready -m ready
  grep -q ready received.txt && break
  sleep 0.2
done

echo "== 3. Tandem with DTLS on udp/127.0.0.1:$dtls_port, MQTT devices on tcp/127.0.0.1:$listener_port"
cat > tandem.conf <<CONF
gateway = { id = "demo"; control_socket = "$dir/control.sock"; state_dir = "$dir"; };
coap = {
  bind = "127.0.0.1";
  dtls = { port = $dtls_port; psk_file = "psk.txt";
           cert = "gateway.pem"; key = "gateway.key"; ca = "ca.pem"; };
};
mqtt = { uri = "mqtts://127.0.0.1:$mqtt_port"; ca = "ca.pem"; stats_interval = 0; };
mqtt_listener = {
  enabled = true; bind = "127.0.0.1"; port = $listener_port;
  cert = "gateway.pem"; key = "gateway.key"; ca = "ca.pem";
};
mappings = (
  { name = "telemetry"; resource = "bikes/{identity}/telemetry";
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; },
  { name = "commands"; resource = "bikes/{identity}/commands";
    topic = "redback/p1/bikes/{identity}/commands"; direction = "down"; qos = 1; }
);
CONF
"$tandem" check -c tandem.conf
"$tandem" run -c tandem.conf 2> tandem.log & pids+=($!)
wait_for tandem.log "mqtt: connected" 15

echo "== 4. bike-7 posts readings over CoAP/DTLS (bike-coap, its certificate, CN=bike-7)"
echo "bike-coap -p $dtls_port -i bike-7 --ca ca.pem --cert bike-7.pem --key bike-7.key -n 3 -I 200 --no-observe"
"$bike_coap" -p "$dtls_port" -i bike-7 --ca ca.pem --cert bike-7.pem --key bike-7.key \
  -n 3 -I 200 --no-observe 2>&1 | sed 's/^/   /'
echo "   and bike-8 with its PSK:"
echo "bike-coap -p $dtls_port -i bike-8 --psk-hex $psk8 -n 1 --no-observe"
"$bike_coap" -p "$dtls_port" -i bike-8 --psk-hex "$psk8" -n 1 --no-observe 2>&1 | sed 's/^/   /'

echo "== 5. bike-9 publishes readings over MQTT/TLS (bike-mqtt: Paho, its certificate, CN=bike-9)"
echo "bike-mqtt -p $listener_port -i bike-9 --ca ca.pem --cert bike-9.pem --key bike-9.key -n 0 -I 500 -c"
"$bike_mqtt" -p "$listener_port" -i bike-9 --ca ca.pem --cert bike-9.pem --key bike-9.key \
  --store bike-9-store -n 0 -I 500 -c > bike-9.out 2> bike-9.log & bike9=$!
pids+=("$bike9")
wait_for bike-9.log "subscribed to" 15
echo "   the backend sends bike-9 a command; the bike prints it:"
pub -q 1 -t redback/p1/bikes/bike-9/commands -m '{"resistance":6}'
wait_for bike-9.out resistance 10
sed 's/^/   /' bike-9.out
wait_for received.txt "redback/p1/bikes/bike-9/telemetry" 10
kill -TERM "$bike9"
wait "$bike9" || { echo "demo: bike-mqtt failed" >&2; cat bike-9.log >&2; exit 1; }
sed 's/^/   /' bike-9.log
echo "   and tries bike-7's topic (refused: MQTT 5 PUBACK 0x87 Not authorized):"
mosquitto_pub -V mqttv5 -h 127.0.0.1 -p "$listener_port" --cafile ca.pem --cert bike-9.pem \
  --key bike-9.key -q 1 -t redback/p1/bikes/bike-7/telemetry -m forged 2>&1 | sed 's/^/   /' || true

echo "== 6. what the backend sees on MQTT"
wait_for received.txt "redback/p1/bikes/bike-7/telemetry" 10
wait_for received.txt "redback/p1/bikes/bike-9/telemetry" 10
wait_for received.txt "redback/p1/bikes/bike-8/telemetry" 10
grep redback received.txt
if grep -q forged received.txt; then echo "demo: the forged reading arrived" >&2; exit 1; fi
echo "   Mosquitto saw bike-9's relayed connection as:"
grep "as bike-9/" mosquitto.log | sed 's/^/   /'
echo "== 7. the gateway's log"
cat tandem.log
echo "== demo OK: bike-7's and bike-8's readings (CoAP) and bike-9's (MQTT) arrived, bike-9 got its"
echo "   command; the forged reading did not arrive"
