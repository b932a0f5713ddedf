#!/bin/sh
# check-format.sh — every C file of the project matches .clang-format (a unit test).
cd "$(dirname "$0")/.." || exit 1
command -v clang-format >/dev/null || { echo "clang-format missing: skipped"; exit 77; }
# tracked files and new ones not yet added (not the ignored build trees)
files=$(git ls-files --cached --others --exclude-standard '*.c' '*.h' 2>/dev/null) || exit 77
[ -n "$files" ] || exit 77
# shellcheck disable=SC2086
clang-format --dry-run --Werror $files
