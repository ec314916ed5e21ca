#!/usr/bin/env bash
# The quick-start demo: a throw-away CA (tandem pki), Mosquitto with TLS, Tandem with DTLS
# and its MQTT device listener, a bike reading sent over CoAP/DTLS and another
# bike's reading sent over MQTT/TLS (mosquitto_pub with its certificate), both
# arriving on MQTT.
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
cd "$dir"
"$tandem" pki init --dir "$dir" --days 30 --hostname localhost --hostname 127.0.0.1
# bike-7 speaks CoAP, bike-9 MQTT: their certificates' CN is their identity.
"$tandem" pki device --dir "$dir" --days 30 bike-7
"$tandem" pki device --dir "$dir" --days 30 bike-9
# A PSK device would use this key (its hex is the key's bytes).
echo "bike-8's PSK: $("$tandem" pki psk --file "$dir/psk.txt" bike-8)"

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
    topic = "redback/p1/bikes/{identity}/telemetry"; direction = "up"; qos = 1; }
);
CONF
"$tandem" check -c tandem.conf
"$tandem" run -c tandem.conf 2> tandem.log & pids+=($!)
wait_for tandem.log "mqtt: connected" 15

echo "== 4. bike-7 posts a reading over CoAP/DTLS (its certificate, CN=bike-7)"
reading='{"bike":"bike-7","heart_rate":142,"cadence":88,"power_w":215}'
echo "coap-client-gnutls -m post -c bike-7.pem -j bike-7.key -R ca.pem -t json -e '$reading' coaps://127.0.0.1:$dtls_port/bikes/bike-7/telemetry"
coap-client-gnutls -v 6 -B 10 -m post -c bike-7.pem -j bike-7.key -R ca.pem -t json -e "$reading" \
  "coaps://127.0.0.1:$dtls_port/bikes/bike-7/telemetry" 2>&1 | grep -E '^v:1 t:(ACK|CON) c:[245]' || true

echo "== 5. bike-9 publishes a reading over MQTT/TLS (its certificate, CN=bike-9)"
reading9='{"bike":"bike-9","heart_rate":131,"cadence":92,"power_w":198}'
echo "mosquitto_pub -h 127.0.0.1 -p $listener_port --cafile ca.pem --cert bike-9.pem --key bike-9.key -q 1 -t redback/p1/bikes/bike-9/telemetry -m '$reading9'"
mosquitto_pub -h 127.0.0.1 -p "$listener_port" --cafile ca.pem --cert bike-9.pem --key bike-9.key \
  -i pi-bike -q 1 -t redback/p1/bikes/bike-9/telemetry -m "$reading9"
echo "   and tries bike-7's topic (refused: MQTT 5 PUBACK 0x87 Not authorized):"
mosquitto_pub -V mqttv5 -h 127.0.0.1 -p "$listener_port" --cafile ca.pem --cert bike-9.pem \
  --key bike-9.key -q 1 -t redback/p1/bikes/bike-7/telemetry -m forged 2>&1 | sed 's/^/   /' || true

echo "== 6. what the backend sees on MQTT"
wait_for received.txt "redback/p1/bikes/bike-7/telemetry" 10
wait_for received.txt "redback/p1/bikes/bike-9/telemetry" 10
grep redback received.txt
if grep -q forged received.txt; then echo "demo: the forged reading arrived" >&2; exit 1; fi
echo "   Mosquitto saw bike-9's relayed connection as:"
grep "as bike-9/" mosquitto.log | sed 's/^/   /'
echo "== 7. the gateway's log"
cat tandem.log
echo "== demo OK: bike-7's reading (CoAP) and bike-9's (MQTT) arrived; the forged one did not"
