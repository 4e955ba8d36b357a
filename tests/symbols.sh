#!/usr/bin/env bash
# What the libraries export: nothing but pgtag_ names, so that no internal
# name of pgtag's (conn_send, op_new, refuse...) can collide with one of
# the program that links it.  In libpgtag.a every global symbol is pgtag_
# (the public API) or pgtag__ (internals, named as libuv names uv__); the
# shared library exports the public API alone, every name of it declared
# in pgtag.h.
#
#   tests/symbols.sh BUILD_DIR      prints TAP lines; exits 1 on a failure
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:?usage: tests/symbols.sh BUILD_DIR}
# shellcheck source=tests/tap.sh
source "$root/tests/tap.sh"

static="$build/libpgtag.a" shared="$build/libpgtag.so"
for lib in "$static" "$shared"; do
  [ -f "$lib" ] || { echo "not ok 1 - $lib is built"; exit 1; }
done

defined=$(nm -g --defined-only "$static" | awk 'NF == 3 { print $3 }' | sort -u)
other=$(grep -v '^pgtag_' <<<"$defined" || true)
result "libpgtag.a: $(wc -l <<<"$defined") global symbols, every one pgtag_ or pgtag__" \
  "$([ -z "$other" ] && echo 0 || echo 1)" "without the prefix:" $other
internal=$(grep -c '^pgtag__' <<<"$defined" || true)
[ "$internal" -gt 0 ]
result "libpgtag.a: the internal ones ($internal) are pgtag__" "$?"

exported=$(nm -D --defined-only "$shared" | awk 'NF == 3 && $2 ~ /[TDBR]/ { print $3 }' | sort -u)
bad=$(grep -v '^pgtag_' <<<"$exported"; grep '^pgtag__' <<<"$exported")
result "libpgtag.so: $(wc -l <<<"$exported") exported symbols, all public pgtag_, no pgtag__" \
  "$([ -z "$bad" ] && echo 0 || echo 1)" "should not be exported:" $bad
undeclared=""
for s in $exported; do
  grep -qE "\b$s\b" "$root/include/pgtag.h" || undeclared="$undeclared $s"
done
result "libpgtag.so: every exported name is declared in include/pgtag.h" \
  "$([ -z "$undeclared" ] && echo 0 || echo 1)" "not in the header:" $undeclared

tap_end
