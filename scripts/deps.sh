#!/usr/bin/env bash
# Installs what Tandem needs to build, test and run its demo (Debian 12), and
# the packages named as arguments (scripts/fuzz.sh adds clang's).
set -euo pipefail

packages=(
  build-essential meson ninja-build pkg-config
  libcoap3-dev libcoap3-bin libgnutls28-dev libconfig-dev libsystemd-dev
  libjson-c-dev libmicrohttpd-dev
  libcriterion-dev
  mosquitto mosquitto-clients openssl python3 coreutils procps
  libpaho-mqtt-dev  # the reference MQTT bike in examples/ (a device, not the gateway)
  python3-paho-mqtt  # a real MQTT device with a session in tests/integration/test_listener.py
  systemd  # systemd-analyze checks the unit in deploy/
  prometheus  # promtool checks the /metrics text; tests/integration/test_control.py scrapes it
  strace  # bench/scale.py counts the servers' system calls per request
  nodejs  # node-coap, a second CoAP client library, in tests/integration/test_down.py (npm below)
  "$@"
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q " ok installed" || missing+=("$p")
done
# npm: Debian's package, unless the nodejs installed brings its own (NodeSource's
# does, and conflicts with Debian's npm).
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "deps: installing ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
# Tandem runs its own brokers; the packaged one is not needed.
"${sudo[@]}" systemctl disable --now mosquitto >/dev/null 2>&1 || true
