#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer (build-fuzz), replays their corpora, then runs
# each target for FUZZ_SECONDS (default 60) over a copy of its seed corpus.
# Exits non-zero when a target crashed, leaked, hit undefined behaviour, timed
# out or ran out of memory, and prints the reproducer's path.
#
#   bash scripts/fuzz.sh                    # every target, 60 s each
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh mapping
#
# Kept after the run, in build-fuzz/fuzz-out/TARGET/: reproducers (crash-*,
# leak-*, timeout-*, oom-*), the fuzzer's log (fuzz.log), and the corpus it
# grew (corpus/), from which new inputs may be merged into tests/fuzz/corpus.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
build=build-fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(mapping policy config psk gate coap packet store client)

# Debian 12's clang is clang 14; libFuzzer and the sanitizers' runtimes are in
# libclang-rt-14-dev, llvm-symbolizer (readable stack traces) in llvm-14.
scripts/deps.sh clang clang-14 libclang-rt-14-dev llvm-14

if [ -f "$build/build.ninja" ]; then
  if ! grep -q 'C compiler for the host machine: clang' "$build/meson-logs/meson-log.txt"; then
    echo "fuzz: $build was configured with another compiler than clang; remove it" >&2
    exit 1
  fi
  meson setup --reconfigure "$build" -Dfuzz=true -Dtests=false -Dwerror=true >/dev/null
else
  CC=clang meson setup "$build" -Dfuzz=true -Dtests=false -Dwerror=true >/dev/null
fi
ninja -C "$build"

export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-$(command -v llvm-symbolizer-14 || true)}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
# A use after free shows within one input, so a smaller quarantine than
# ASan's 256 MiB loses nothing here and spares page faults: the file-reading
# targets run about twice as fast.
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=32}
# Those targets write each input to a file: on tmpfs when there is one.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=/dev/shm
fi

echo "== fuzz: replaying the corpora"
if ! meson test -C "$build" --suite fuzz --print-errorlogs; then
  echo "fuzz: a checked-in corpus input fails (the log above names it)" >&2
  exit 1
fi

status=0
for t in "${targets[@]}"; do
  exe=$build/tests/fuzz/fuzz_$t
  out=$build/fuzz-out/$t
  if [ ! -x "$exe" ] || [ ! -d "tests/fuzz/corpus/$t" ]; then
    echo "fuzz: no target $t" >&2
    status=1
    continue
  fi
  mkdir -p "$out"
  rm -rf "$out/corpus"
  cp -r "tests/fuzz/corpus/$t" "$out/corpus"
  common=(-timeout=10 -rss_limit_mb=2048 -artifact_prefix="$out/")
  args=("${common[@]}" -max_total_time="$seconds" -print_final_stats=1)
  [ -f "tests/fuzz/$t.dict" ] && args+=(-dict="tests/fuzz/$t.dict")
  # libconfig 1.5 leaks a string on many syntax errors (suppressed in the
  # target), and each suppressed leak costs LeakSanitizer a scan of the whole
  # heap: the config target runs five times faster without leak checks. Its
  # grown corpus (every input that reached new code) is replayed with them
  # afterwards.
  leaks_after=false
  if [ "$t" = config ]; then
    args+=(-detect_leaks=0)
    leaks_after=true
  fi

  echo "== fuzz: $t for ${seconds}s"
  rc=0
  # The outer timeout only guards against a fuzzer that stops answering.
  timeout --kill-after=30 $((seconds + 300)) \
    "$exe" "${args[@]}" "$out/corpus" </dev/null >"$out/fuzz.log" 2>&1 || rc=$?
  if [ $rc -eq 0 ] && $leaks_after; then
    echo "-- replaying the grown corpus with leak checks" >>"$out/fuzz.log"
    timeout --kill-after=30 600 \
      "$exe" "${common[@]}" -runs=0 "$out/corpus" </dev/null >>"$out/fuzz.log" 2>&1 || rc=$?
  fi
  if [ $rc -eq 0 ]; then
    grep -E '^#[0-9]+[[:space:]]+DONE' "$out/fuzz.log" | tail -1 || true
    grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$out/fuzz.log" || true
    continue
  fi
  status=1
  echo "fuzz: $t FAILED (exit $rc); the end of $out/fuzz.log:" >&2
  grep -v -E '^#[0-9]+ ' "$out/fuzz.log" | tail -40 >&2
  units=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$out/fuzz.log")
  if [ -n "$units" ]; then
    for u in $units; do
      echo "fuzz: reproducer: $u" >&2
      echo "fuzz: run it again: $exe $u" >&2
    done
  else
    echo "fuzz: no reproducer written (see $out/fuzz.log)" >&2
  fi
done
exit $status
