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

# shellcheck source=bench/server.sh
source bench/server.sh
trap bench_server_stop EXIT
bench_build pgtag_protocols
bench_server protocols

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
