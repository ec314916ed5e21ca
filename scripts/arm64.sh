#!/usr/bin/env bash
# Proves the arm64 build on an amd64 machine: cross-builds Tandem with Debian's
# aarch64 toolchain and the :arm64 libraries (scripts/cross/arm64.ini) into
# build-arm64, runs the unit tests under qemu-user, then integration cases with
# the arm64 tandem under qemu-user against the native Mosquitto and coap-client
# (a DTLS device's reading arrives, with a PSK and with a certificate; GET and
# Observe; SIGHUP and SIGTERM; a gateway from tandem pki's files; tandem stats
# and /metrics). Prints how long each step took.
#
#   scripts/arm64.sh              all of it
#   scripts/arm64.sh --deps-only  only installs what the cross build needs
#
# Debian 12, as root (or with sudo): adds the arm64 architecture to dpkg and
# installs crossbuild-essential-arm64, qemu-user and the :arm64 -dev packages
# beside the amd64 ones (all Multi-Arch: same). Criterion's arm64 package
# cannot be installed beside the amd64 one (they need different builds of
# nanomsg), so it is unpacked into build-arm64-criterion instead. Criterion runs
# every test in a new process of the test binary, which the kernel can only
# start through binfmt_misc: the script registers qemu-aarch64 there
# (qemu-user-binfmt's entry) when an aarch64 binary does not run by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)

# The cross build's libraries, and what the unpacked Criterion needs at run time.
arm64_packages=(libc6-dev pkg-config libcoap3-dev libgnutls28-dev libconfig-dev
                libsystemd-dev libjson-c-dev libmicrohttpd-dev libffi8 libgit2-1.5
                libpaho-mqtt-dev)  # the reference MQTT bike (examples/), built with the tests
# Integration cases run under qemu-user (the whole suite runs natively).
smoke=(post_psk_gnutls x509 retained_value_and_properties observe_every_message_in_order
       mapping_and_identity_without_restart sigterm_stops_cleanly gateway_from_pki_output
       same_counts_everywhere)

install_deps() {
  scripts/deps.sh crossbuild-essential-arm64 qemu-user qemu-user-binfmt file
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "arm64: dpkg --add-architecture arm64"
    "${sudo[@]}" dpkg --add-architecture arm64
  fi
  local missing=() p
  for p in "${arm64_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p:arm64" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$p:arm64")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "arm64: installing ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  # --no-remove: an :arm64 package that could only replace an amd64 one fails
  # here rather than take away what the native build needs.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends --no-remove "${missing[@]}"
}

# Criterion for arm64, unpacked, with a pkg-config file of its own. The rpath
# (DT_RPATH, which also serves libcriterion's own nanomsg) lets the test
# binaries find it under qemu-user without LD_LIBRARY_PATH.
criterion_dir=$PWD/build-arm64-criterion
unpack_criterion() {
  [ -f "$criterion_dir/pkgconfig/criterion.pc" ] && return 0
  rm -rf "$criterion_dir"
  mkdir -p "$criterion_dir/debs" "$criterion_dir/root" "$criterion_dir/pkgconfig"
  (cd "$criterion_dir/debs" &&
     apt-get download libcriterion3:arm64 libcriterion-dev:arm64 libnanomsg5:arm64 2>&1 |
       grep -v "^W: Download is performed unsandboxed" || true)
  local deb
  for deb in "$criterion_dir"/debs/*.deb; do
    dpkg-deb -x "$deb" "$criterion_dir/root"
  done
  [ -f "$criterion_dir/root/usr/lib/aarch64-linux-gnu/libcriterion.so" ] ||
    { echo "arm64: could not unpack Criterion for arm64" >&2; exit 1; }
  cat >"$criterion_dir/pkgconfig/criterion.pc" <<EOF
prefix=$criterion_dir/root/usr
includedir=\${prefix}/include
libdir=\${prefix}/lib/aarch64-linux-gnu

Name: criterion
Description: Criterion for arm64, unpacked beside the system's own
Version: $(dpkg-deb -f "$criterion_dir"/debs/libcriterion-dev_*.deb Version | sed 's/-[^-]*$//')
Libs: -L\${libdir} -lcriterion -Wl,--disable-new-dtags -Wl,-rpath,\${libdir}
Cflags: -I\${includedir}
EOF
}

# The kernel starts aarch64 binaries through qemu-user (binfmt_misc).
enable_binfmt() {
  "$1" --version >/dev/null 2>&1 && return 0
  echo "arm64: registering qemu-aarch64 with binfmt_misc"
  "${sudo[@]}" sh -c '
    set -e
    mountpoint -q /proc/sys/fs/binfmt_misc ||
      mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
      echo 1 > /proc/sys/fs/binfmt_misc/qemu-aarch64
    else
      cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
    fi'
  "$1" --version >/dev/null 2>&1 ||
    { echo "arm64: $1 does not run under qemu-user" >&2; exit 1; }
}

# "N passed, M failed" from a meson test log.
counts() {
  python3 - "$1" <<'PY'
import json, sys
ok = bad = 0
with open(sys.argv[1]) as f:
    for line in f:
        r = json.loads(line)["result"]
        if r == "OK":
            ok += 1
        elif r not in ("SKIP", "EXPECTEDFAIL"):
            bad += 1
print("%d passed, %d failed" % (ok, bad))
PY
}

install_deps
[ "${1:-}" = "--deps-only" ] && exit 0
unpack_criterion

dir=build-arm64
t0=$SECONDS
if [ -f "$dir/build.ninja" ]; then
  meson setup --reconfigure "$dir" >/dev/null
else
  meson setup "$dir" --cross-file scripts/cross/arm64.ini \
    -Dpkg_config_path="$criterion_dir/pkgconfig" -Dwerror=true >/dev/null
fi
ninja -C "$dir"
build_s=$((SECONDS - t0))
echo "arm64: $(file -b "$dir/tandem" | cut -d, -f1-2)"
enable_binfmt "$dir/tandem"
echo "arm64: $("$dir/tandem" --version) runs under qemu-user"

status=0
rm -f "$dir"/meson-logs/testlog*.json
echo "== arm64 unit tests under qemu-user"
t0=$SECONDS
meson test -C "$dir" --suite unit --print-errorlogs --num-processes 2 --logbase testlog-unit ||
  status=1
unit_s=$((SECONDS - t0))
echo "== arm64 integration cases under qemu-user"
t0=$SECONDS
meson test -C "$dir" --print-errorlogs --num-processes 2 --logbase testlog-smoke "${smoke[@]}" ||
  status=1
smoke_s=$((SECONDS - t0))

echo "arm64: cross build ${build_s} s; unit tests under qemu-user ${unit_s} s" \
     "($(counts "$dir/meson-logs/testlog-unit.json")); integration cases under qemu-user" \
     "${smoke_s} s ($(counts "$dir/meson-logs/testlog-smoke.json"))"
exit $status
