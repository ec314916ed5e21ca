#!/usr/bin/env bash
# Checks that every C file follows .clang-format (CI runs it); with --fix,
# rewrites the files that do not.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh clang-format

mapfile -t files < <(git ls-files '*.c' '*.h')
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${files[@]}"
  exit 0
fi
if ! clang-format --dry-run --Werror "${files[@]}"; then
  echo "format: the files above differ from .clang-format; scripts/format.sh --fix rewrites them" >&2
  exit 1
fi
echo "format: ${#files[@]} files follow .clang-format"
