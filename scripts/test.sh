#!/usr/bin/env bash
# Installs what is needed, builds, and runs the whole test suite twice: a
# normal build with warnings as errors, and one with AddressSanitizer and
# UndefinedBehaviorSanitizer. Then each fuzz target runs for FUZZ_SECONDS
# (default 60) with libFuzzer (scripts/fuzz.sh). scripts/format.sh checks
# that the C files follow .clang-format.
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

echo "== fuzzing"
fuzz=passed
bash scripts/fuzz.sh || { status=1; fuzz=FAILED; }

python3 - build-ci build-asan build-fuzz <<'PY'
import json, os, sys
passed = failed = 0
for d in sys.argv[1:]:
    if not os.path.exists(d + "/meson-logs/testlog.json"):
        continue
    with open(d + "/meson-logs/testlog.json") as f:
        for line in f:
            r = json.loads(line)["result"]
            if r == "OK":
                passed += 1
            elif r not in ("SKIP", "EXPECTEDFAIL"):
                failed += 1
print("tests: %d passed, %d failed" % (passed, failed))
PY
echo "format: $format"
echo "fuzzing: $fuzz"
exit $status
