#!/usr/bin/env bash
# The API reference builds from include/pgtag.h with Doxygen, warnings as
# errors, and documents every public function.
#
#   tests/docs.sh BUILD_DIR        prints TAP lines; exits 1 on a failure
set -uo pipefail
build=${1:?usage: docs.sh BUILD_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
if cmake --build "$build" --target docs >"$build/docs.log" 2>&1; then
  echo "ok 1 - cmake --build --target docs: Doxygen, no warning"
else
  echo "not ok 1 - cmake --build --target docs"; sed 's/^/# /' "$build/docs.log"
  echo "1..1"; exit 1
fi
missing=0
for f in $(grep -oE '^[a-z][a-z_0-9 ]*\**\s*\**pgtag_[a-z_]+\(' "$root/include/pgtag.h" |
           grep -oE 'pgtag_[a-z_]+'); do
  grep -rq "$f" "$build/docs/html/pgtag_8h.html" || { echo "# $f is not in the reference"; missing=1; }
done
if [ "$missing" = 0 ]; then echo "ok 2 - every function of pgtag.h is in the reference"
else echo "not ok 2 - every function of pgtag.h is in the reference"; fi
echo "1..2"
[ "$missing" = 0 ]
