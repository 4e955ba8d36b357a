#!/usr/bin/env bash
# Failover with the default settings: how long after the promotion writes
# resume, and how many connection attempts the pool makes meanwhile.
#
#   bench/failover.sh [RUNS [CEILINGS...]]
#
# For each ceiling (reconnect_waiting_max_ms; "default" for the pool's own
# default), RUNS failovers (default 5) of a primary and its streaming
# standby under 64 writing requests (bench/failover.c), each on servers
# started for it; then, per ceiling, the range and median of the first
# write after `pg_ctl promote -w` returned, and of the failed attempts per
# second of outage.  PROMOTE_AFTER=ms: the time from the primary's stop to
# the promotion (default 300).  FENCE=1 fences the primary read-only
# instead of stopping it, LOAD=N keeps N busy loops running meanwhile (both
# CPUs loaded: LOAD=2), BENCH=path runs another build of
# pgtag_failover_bench.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
shift || true
ceilings=("$@")
[ ${#ceilings[@]} -gt 0 ] || ceilings=(default)
bench=${BENCH:-build/pgtag_failover_bench}

if [ -z "${BENCH:-}" ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build -j"$(nproc)" --target pgtag_failover_bench >/dev/null
fi

loads=()
stop_load() { for p in "${loads[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap stop_load EXIT
for _ in $(seq 1 "${LOAD:-0}"); do
  (while :; do :; done) &
  loads+=($!)
done

# min, median, max of the numbers on stdin
spread() { sort -n | awk '{v[NR]=$1} END {printf "%s to %s (median %s)", v[1], v[NR], v[int((NR+1)/2)]}'; }

for c in "${ceilings[@]}"; do
  arg=0
  [ "$c" = default ] || arg=$c
  log=$(mktemp /tmp/pgtag-fobench-log.XXXXXX)
  "$bench" "$runs" "$arg" "${PROMOTE_AFTER:-300}" ${FENCE:+fence} | tee "$log"
  first=$(sed -nE 's/.*first write ([0-9]+) ms.*/\1/p' "$log" | spread)
  rate=$(sed -nE 's/.*\(([0-9.]+) per second.*/\1/p' "$log" | spread)
  echo "ceiling $c, promoted after ${PROMOTE_AFTER:-300} ms${FENCE:+, fenced}${LOAD:+, $LOAD busy loops}: first write ${first} ms after the promotion; ${rate} failed attempts per second of outage"
  rm -f "$log"
done
