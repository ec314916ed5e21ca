#!/usr/bin/env bash
# Builds Tandem's Debian package (debian/) and checks it: the files it must
# hold, its conffile, its maintainer scripts, and lintian (no errors).
#
#   scripts/package.sh              the amd64 package, with the test suites
#   scripts/package.sh --nocheck    without them (DEB_BUILD_OPTIONS=nocheck)
#   scripts/package.sh --arm64      also the arm64 package, cross-built
#                                   (dpkg-buildpackage -aarm64 -Pcross,nocheck)
#   scripts/package.sh --arm64-only only the arm64 package
#
# The build runs in a copy of the tree in build-deb/src, so that what
# dpkg-buildpackage leaves beside the source stays inside build-deb; the
# packages, .buildinfo and .changes end up in build-deb/. Installs what is
# needed on Debian 12 (as root, or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

amd64=1 arm64=0 nocheck=0
for arg in "$@"; do
  case $arg in
    --arm64) arm64=1 ;;
    --arm64-only) arm64=1 amd64=0 ;;
    --nocheck) nocheck=1 ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "package: unknown option $arg" >&2; exit 2 ;;
  esac
done

scripts/deps.sh debhelper dpkg-dev fakeroot lintian file
[ $arm64 -eq 0 ] || scripts/arm64.sh --deps-only

version=$(dpkg-parsechangelog -l debian/changelog -S Version)
meson_version=$(sed -n "s/^ *version *: *'\([^']*\)'.*/\1/p" meson.build | head -1)
if [ "$version" != "$meson_version" ]; then
  echo "package: debian/changelog says $version, meson.build $meson_version" >&2
  exit 1
fi

out=$PWD/build-deb
rm -rf "$out"
mkdir -p "$out/src/tandem"
# The tree as it is (tracked files and new ones not ignored), without builds.
git ls-files -z --cached --others --exclude-standard |
  (while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done) |
  tar --null -T - -cf - | tar -xf - -C "$out/src/tandem"

status=0
fail() { echo "package: $*" >&2; status=1; }

build() { # ARCH DPKG-BUILDPACKAGE-OPTIONS...
  local arch=$1; shift
  local start=$SECONDS
  echo "== dpkg-buildpackage $* ($arch)"
  if ! (cd "$out/src/tandem" && dpkg-buildpackage -us -uc -b "$@" >"$out/build-$arch.log" 2>&1); then
    tail -n 60 "$out/build-$arch.log"
    fail "the $arch package did not build (build-deb/build-$arch.log)"
    return 1
  fi
  mv "$out"/src/tandem[-_]* "$out"/
  echo "package: $arch built in $((SECONDS - start)) s"
}

# The contents that the package must have, and how they are installed.
inspect() { # ARCH
  local arch=$1 deb="$out/tandem_${version}_$1.deb" root="$out/root-$1"
  [ -f "$deb" ] || { fail "no $deb"; return 1; }
  rm -rf "$root" && mkdir -p "$root" && dpkg-deb -x "$deb" "$root" && dpkg-deb -e "$deb" "$root/DEBIAN"
  local f
  for f in usr/bin/tandem lib/systemd/system/tandem.service usr/lib/sysusers.d/tandem.conf \
           usr/lib/sysctl.d/60-tandem.conf usr/lib/tmpfiles.d/tandem.conf \
           etc/tandem/tandem.conf usr/share/man/man8/tandem.8.gz usr/share/man/man5/tandem.conf.5.gz \
           usr/share/doc/tandem/operating.md usr/share/doc/tandem/devices.md \
           usr/share/doc/tandem/engineering.md \
           usr/share/tandem/certbot-deploy-hook usr/share/doc/tandem/copyright \
           usr/share/tandem/prometheus/tandem-rules.yml usr/share/tandem/grafana/tandem.json; do
    [ -f "$root/$f" ] || fail "$arch: /$f is missing"
  done
  [ -x "$root/usr/share/tandem/certbot-deploy-hook" ] || fail "$arch: the certbot hook is not executable"
  # The packaged alerting rules load in Prometheus; the dashboard is JSON.
  if command -v promtool >/dev/null; then
    promtool check rules "$root/usr/share/tandem/prometheus/tandem-rules.yml" >/dev/null ||
      fail "$arch: promtool refuses the packaged alerting rules"
  fi
  python3 -c 'import json, sys; json.load(open(sys.argv[1]))' \
    "$root/usr/share/tandem/grafana/tandem.json" || fail "$arch: the packaged dashboard is not JSON"
  grep -qx /etc/tandem/tandem.conf "$root/DEBIAN/conffiles" 2>/dev/null ||
    fail "$arch: /etc/tandem/tandem.conf is not a conffile"
  grep -q 'systemd-sysusers.*tandem.conf' "$root/DEBIAN/postinst" ||
    fail "$arch: postinst does not create the tandem user"
  grep -qx 'd /var/lib/tandem 0750 tandem tandem -' "$root/usr/lib/tmpfiles.d/tandem.conf" &&
    grep -qx 'd /run/tandem 0750 tandem tandem -' "$root/usr/lib/tmpfiles.d/tandem.conf" &&
    grep -q 'systemd-tmpfiles.*tandem.conf' "$root/DEBIAN/postinst" ||
    fail "$arch: the state and runtime folders are not made outside systemd (tmpfiles.d)"
  grep -qx 'net.core.rmem_max = 8388608' "$root/usr/lib/sysctl.d/60-tandem.conf" &&
    grep -q 'systemd-sysctl /usr/lib/sysctl.d/60-tandem.conf' "$root/DEBIAN/postinst" ||
    fail "$arch: the DTLS receive buffer ceiling is not installed or not applied"
  # dh_installsystemd --no-enable --no-start: the unit is enabled again only
  # where it was enabled before (debian-installed), and never started.
  if ! grep -q "deb-systemd-helper debian-installed 'tandem.service'" "$root/DEBIAN/postinst" ||
     grep -q 'deb-systemd-invoke' "$root/DEBIAN/postinst"; then
    fail "$arch: postinst enables or starts tandem.service"
  fi
  local want
  want=$([ "$arch" = amd64 ] && echo x86-64 || echo aarch64)
  file -b "$root/usr/bin/tandem" | grep -q "$want" || fail "$arch: /usr/bin/tandem is not $want"
  zcat "$root/usr/share/man/man8/tandem.8.gz" | grep -q '^\.SH SIGNALS' || fail "$arch: man page"
  zcat "$root/usr/share/man/man5/tandem.conf.5.gz" | grep -q '^\.B coap\.dtls\.port = ' ||
    fail "$arch: tandem.conf(5)"
  grep -q '^Documentation=man:tandem(8) man:tandem.conf(5)' "$root/lib/systemd/system/tandem.service" &&
    grep -q '^Documentation=file:/usr/share/doc/tandem/operating.md' "$root/lib/systemd/system/tandem.service" ||
    fail "$arch: the unit does not name its documentation"
  # The packaged configuration passes `tandem check` once `tandem pki` has
  # made the credentials it names (the packaged binary; arm64 under qemu);
  # not as the service user, whom this machine need not have.
  local run=("$root/usr/bin/tandem")
  [ "$arch" = amd64 ] || run=(qemu-aarch64 "$root/usr/bin/tandem")
  if [ "$arch" = amd64 ] || command -v qemu-aarch64 >/dev/null; then
    local etc="$root/etc/tandem"
    if "${run[@]}" pki init --dir "$etc" --hostname localhost >/dev/null &&
       "${run[@]}" pki psk --file "$etc/psk.txt" bike-1 >/dev/null &&
       TANDEM_SERVICE_USER= "${run[@]}" check -c "$etc/tandem.conf" >"$out/check-$arch.txt" 2>&1; then
      echo "package: $arch: tandem check accepts /etc/tandem/tandem.conf with tandem pki's files"
    else
      cat "$out/check-$arch.txt" >&2 || true
      fail "$arch: tandem check refuses the packaged tandem.conf with tandem pki's files"
    fi
  fi
  echo "package: $arch contents:"
  dpkg-deb -c "$deb" | awk '{print "  " $1, $6}' | grep -v '/$'
  echo "== lintian $arch"
  if ! lintian --fail-on error "$out"/tandem*_"${version}_$arch".deb \
      >"$out/lintian-$arch.txt" 2>&1; then
    fail "$arch: lintian reports errors"
  fi
  sed 's/^/  /' "$out/lintian-$arch.txt"
  echo "package: $arch: lintian $(grep -c '^E:' "$out/lintian-$arch.txt" || true) errors," \
       "$(grep -c '^W:' "$out/lintian-$arch.txt" || true) warnings"
}

if [ $amd64 -eq 1 ]; then
  if [ $nocheck -eq 1 ]; then
    DEB_BUILD_OPTIONS="nocheck ${DEB_BUILD_OPTIONS:-}" build amd64 -Pnocheck && inspect amd64
  else
    build amd64 && inspect amd64
  fi
fi
if [ $arm64 -eq 1 ]; then
  rm -rf "$out/src/tandem/obj-"* "$out/src/tandem/debian/tandem" "$out/src/tandem/debian/files"
  DEB_BUILD_OPTIONS="nocheck ${DEB_BUILD_OPTIONS:-}" build arm64 -aarm64 -Pcross,nocheck && inspect arm64
fi
rm -rf "$out/src" "$out"/root-*

echo "== packages"
for deb in "$out"/*.deb; do
  [ -e "$deb" ] || continue
  printf '  %-36s %8d bytes, installed %5d KiB\n' "$(basename "$deb")" "$(stat -c %s "$deb")" \
    "$(dpkg-deb -f "$deb" Installed-Size)"
done
exit $status
