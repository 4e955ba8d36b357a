#!/usr/bin/env bash
# The ceiling each way of sending the W1 point select leaves for a pool:
# libpq alone (build/pgtag_protocols, bench/protocols.c), no pgtag, the
# same server, in one run.  Against untagged prepared statements, as in
# bench/compare.sh's rows against pgbench -M prepared.
#
#   bench/protocols.sh [SECONDS]        a throwaway server (tests/pgserver.sh)
#   PGTAG_TEST_CONNINFO=... bench/protocols.sh [SECONDS]   your own server
#
# One at a time (8 connections) and 16 deep (2 connections); each way
# runs twice, the two rounds in opposite orders, and the best counts.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-5}

if [ ! -x build/pgtag_protocols ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build -j"$(nproc)" --target pgtag_protocols >/dev/null
fi

tmp=""
cleanup() {
  if [ -n "$tmp" ]; then
    "$root/tests/pgserver.sh" stop "$tmp/pg" || true
    rm -rf "$tmp"
  fi
}
if [ -z "${PGTAG_TEST_CONNINFO:-}" ]; then
  tmp=$(mktemp -d /tmp/pgtag-bench.XXXXXX)
  chmod 755 "$tmp"
  trap cleanup EXIT
  "$root/tests/pgserver.sh" start "$tmp/pg"
  # shellcheck disable=SC1091
  source "$tmp/pg/env"
fi
conninfo=$PGTAG_TEST_CONNINFO

if ! psql -X -q -At -d "$conninfo" -c "SELECT count(*) FROM pgbench_accounts" 2>/dev/null | grep -qx 1000000; then
  echo "protocols: pgbench -i -s 10"
  pgbench -i -s 10 -q -d "$conninfo" >/dev/null 2>&1 || pgbench -i -s 10 -q "$conninfo" >/dev/null
fi

declare -A best
measure() { # measure WAY DEPTH CONNECTIONS
  local out qps key="$1 $2"
  out=$(./build/pgtag_protocols "$1" "$2" "$3" "$secs" "$conninfo")
  echo "$out"
  qps=${out##*qps=}
  if [ -z "${best[$key]:-}" ] || [ "$qps" -gt "${best[$key]}" ]; then best[$key]=$qps; fi
}

one=(prepared unnamed execute simple)
deep=(prepared unnamed execute multi)
for round in forward backward; do
  ways=("${one[@]}")
  [ "$round" = backward ] && ways=(simple execute unnamed prepared)
  for w in "${ways[@]}"; do measure "$w" 1 8; done
  ways=("${deep[@]}")
  [ "$round" = backward ] && ways=(multi execute unnamed prepared)
  for w in "${ways[@]}"; do measure "$w" 16 2; done
done

echo
echo "| way | one at a time, 8 connections | ratio | 16 deep, 2 connections | ratio |"
echo "| --- | --- | --- | --- | --- |"
for w in prepared unnamed execute simple multi; do
  a=${best["$w 1"]:-} b=${best["$w 16"]:-}
  ra="" rb=""
  [ -n "$a" ] && ra=$(awk -v x="$a" -v y="${best["prepared 1"]}" 'BEGIN { printf "%.2f", x / y }')
  [ -n "$b" ] && rb=$(awk -v x="$b" -v y="${best["prepared 16"]}" 'BEGIN { printf "%.2f", x / y }')
  echo "| $w | ${a:--} | ${ra:--} | ${b:--} | ${rb:--} |"
done
