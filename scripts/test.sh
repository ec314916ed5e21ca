#!/usr/bin/env bash
# Installs what is needed, builds, and runs the whole test suite twice: a
# normal build with warnings as errors, and one with AddressSanitizer and
# UndefinedBehaviorSanitizer.
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
for dir in build-ci build-asan; do
  echo "== tests in $dir"
  meson test -C "$dir" --print-errorlogs --num-processes 2 || status=1
done

python3 - build-ci build-asan <<'PY'
import json, sys
passed = failed = 0
for d in sys.argv[1:]:
    with open(d + "/meson-logs/testlog.json") as f:
        for line in f:
            r = json.loads(line)["result"]
            if r == "OK":
                passed += 1
            elif r not in ("SKIP", "EXPECTEDFAIL"):
                failed += 1
print("tests: %d passed, %d failed" % (passed, failed))
PY
exit $status
