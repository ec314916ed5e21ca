#!/usr/bin/env bash
# Installs what is needed, builds, and runs the whole test suite twice: a
# normal build with warnings as errors, and one with AddressSanitizer and
# UndefinedBehaviorSanitizer. Then the arm64 cross build with its unit tests
# and integration cases under qemu-user (scripts/arm64.sh), the Debian
# packages for amd64 and arm64, checked and lintian-clean (scripts/package.sh,
# without the suites, which have just run), and each fuzz target for
# FUZZ_SECONDS (default 60) with libFuzzer (scripts/fuzz.sh).
# scripts/format.sh checks that the C files follow .clang-format.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh

setup() { # DIR OPTIONS...
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then
    meson setup --reconfigure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$@" >/dev/null
  fi
  ninja -C "$dir"
}

setup build-ci -Dwerror=true
setup build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false

status=0
format=passed
bash scripts/format.sh || { status=1; format=FAILED; }

for dir in build-ci build-asan; do
  echo "== tests in $dir"
  meson test -C "$dir" --print-errorlogs --num-processes 2 || status=1
done

echo "== arm64: cross build, unit tests and integration cases under qemu-user"
arm64=passed
t0=$SECONDS
bash scripts/arm64.sh || { status=1; arm64=FAILED; }
arm64_s=$((SECONDS - t0))

echo "== Debian packages (amd64, arm64)"
packages=passed
t0=$SECONDS
bash scripts/package.sh --nocheck --arm64 || { status=1; packages=FAILED; }
packages_s=$((SECONDS - t0))

echo "== fuzzing"
fuzz=passed
bash scripts/fuzz.sh || { status=1; fuzz=FAILED; }

python3 - build-ci build-asan build-arm64 build-fuzz <<'PY'
import glob, json, sys
passed = failed = 0
for d in sys.argv[1:]:
    for log in sorted(glob.glob(d + "/meson-logs/testlog*.json")):
        with open(log) as f:
            for line in f:
                r = json.loads(line)["result"]
                if r == "OK":
                    passed += 1
                elif r not in ("SKIP", "EXPECTEDFAIL"):
                    failed += 1
print("tests: %d passed, %d failed" % (passed, failed))
PY
echo "format: $format"
echo "arm64: $arm64 (${arm64_s} s)"
echo "packages: $packages (${packages_s} s)"
echo "fuzzing: $fuzz"
exit $status
