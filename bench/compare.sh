#!/usr/bin/env bash
# pgtag against pgbench, back to back on the same server, in one run: the
# same tagged point select on pgbench_accounts (scale 10).
#
#   bench/compare.sh [SECONDS]        a throwaway server (tests/pgserver.sh)
#   PGTAG_TEST_CONNINFO=... bench/compare.sh [SECONDS]   your own server
#
# Builds build/ if needed.  Prints each run's result line, then the ratios:
#   W1            pgtag, 64 requests over 8 connections, no pipelining (-d 1)
#                 vs pgbench -c 8 (-M extended: unnamed statements, as pgtag)
#   W1 default    the same with the default pipeline_depth
#   W1 pipelined  pgtag, 64 requests over 2 connections, 16 deep, with one
#                 loop thread (-j 1) and with two (-j 2: a loop and a pool of
#                 one connection each, as pgbench -j 2 has a thread each)
#                 vs pgbench -c 2 -j 2 with \startpipeline / 16 queries /
#                 \endpipeline
#   tagging       pgtag W1 with the tag vs without
#   hot rows      64 requests of one UPDATE ... WHERE id = $1 on 4 rows (and
#                 on 100), a pool of 4: the default config vs depth 1, with
#                 the deadlocks the server broke and an exactly-once check
#   slow mix      64 requests of the point select plus a 200 ms query every
#                 100 ms, a pool of 4: the default config vs depth 1, with
#                 the fast queries that took 100 ms or more
# plus W2 and W3 on their own.  Every pair runs twice, alternating, and the
# best of each side counts: the machine is shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-10}

if [ ! -x build/pgtag_bench ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build -j"$(nproc)" --target pgtag_bench >/dev/null
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
  echo "compare: pgbench -i -s 10"
  pgbench -i -s 10 -q -d "$conninfo" >/dev/null 2>&1 || pgbench -i -s 10 -q "$conninfo" >/dev/null
fi

id="00000000-0000-4000-8000-000000000000" # a request ID's length
work=$(mktemp -d /tmp/pgtag-compare.XXXXXX)
cat >"$work/select.sql" <<EOF
\set aid random(1, 1000000)
/* requestId=$id */ SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
EOF
# Each query of the pipeline draws its own aid, as every pgtag request does:
# sixteen reads of one row would be cheaper for the server than sixteen rows.
{
  for i in $(seq 16); do echo "\\set aid$i random(1, 1000000)"; done
  echo '\startpipeline'
  for i in $(seq 16); do
    echo "/* requestId=$id */ SELECT abalance FROM pgbench_accounts WHERE aid = :aid$i;"
  done
  echo '\endpipeline'
} >"$work/pipeline.sql"

pgbench_qps() { # pgbench_qps CLIENTS SCRIPT QUERIES_PER_TRANSACTION
  local tps
  tps=$(pgbench -n -M extended -c "$1" -j 2 -T "$secs" -f "$2" "$conninfo" 2>/dev/null |
        sed -nE 's/^tps = ([0-9.]+).*/\1/p')
  echo "pgbench clients=$1 script=$(basename "$2") tps=$tps qps=$(echo "$tps * $3" | bc)" >&2
  echo "$tps * $3" | bc
}

pgtag_qps() { # pgtag_qps ARGS...
  local line
  line=$(./build/pgtag_bench -t "$secs" "$@" "$conninfo")
  echo "$line" >&2
  sed -nE 's/.* qps=([0-9]+) .*/\1/p' <<<"$line"
}

best() { printf '%s\n' "$@" | sort -g | tail -1; }
ratio() { echo "scale=2; $1 / $2" | bc; }

a1=$(pgbench_qps 8 "$work/select.sql" 1); b1=$(pgtag_qps -c 64 -p 8 -d 1)
a2=$(pgbench_qps 8 "$work/select.sql" 1); b2=$(pgtag_qps -c 64 -p 8 -d 1)
d1=$(pgtag_qps -c 64 -p 8); d2=$(pgtag_qps -c 64 -p 8)
pa1=$(pgbench_qps 2 "$work/pipeline.sql" 16); pb1=$(pgtag_qps -c 64 -p 2 -d 16)
pj1=$(pgtag_qps -c 64 -p 2 -d 16 -j 2)
pa2=$(pgbench_qps 2 "$work/pipeline.sql" 16); pb2=$(pgtag_qps -c 64 -p 2 -d 16)
pj2=$(pgtag_qps -c 64 -p 2 -d 16 -j 2)
n1=$(pgtag_qps -c 64 -p 8 -d 1 -n); n2=$(pgtag_qps -c 64 -p 8 -d 1 -n)
# The pipelining safety workloads: every run prints its own check line.
pgtag_check() { # pgtag_check ARGS...: the qps line, then the check line, to stderr
  local out
  out=$(./build/pgtag_bench -t "$secs" "$@" "$conninfo")
  echo "$out" >&2
  sed -nE 's/.* qps=([0-9]+) .*/\1/p' <<<"$out"
}
h4d1=$(pgtag_check -w HOT -c 64 -p 4 -d 1); h4=$(pgtag_check -w HOT -c 64 -p 4)
h4d1b=$(pgtag_check -w HOT -c 64 -p 4 -d 1); h4b=$(pgtag_check -w HOT -c 64 -p 4)
h100d1=$(pgtag_check -w HOT -r 100 -c 64 -p 4 -d 1); h100=$(pgtag_check -w HOT -r 100 -c 64 -p 4)
h100d1b=$(pgtag_check -w HOT -r 100 -c 64 -p 4 -d 1); h100b=$(pgtag_check -w HOT -r 100 -c 64 -p 4)
s1=$(pgtag_check -w SLOW -c 64 -p 4 -d 1); s2=$(pgtag_check -w SLOW -c 64 -p 4)
s1b=$(pgtag_check -w SLOW -c 64 -p 4 -d 1); s2b=$(pgtag_check -w SLOW -c 64 -p 4)
./build/pgtag_bench -t "$secs" -w W2 "$conninfo"
./build/pgtag_bench -w W3 "$conninfo"
./build/pgtag_bench -w W3 -p 1 "$conninfo"
rm -rf "$work"

pg=$(best "$a1" "$a2"); pt=$(best "$b1" "$b2")
pgp=$(best "$pa1" "$pa2"); ptp=$(best "$pb1" "$pb2"); ptj=$(best "$pj1" "$pj2")
untagged=$(best "$n1" "$n2")
dflt=$(best "$d1" "$d2")
echo
echo "W1: pgtag $pt q/s, pgbench (8 connections) $pg q/s: ratio $(ratio "$pt" "$pg")"
echo "W1 default pipeline_depth: pgtag $dflt q/s: $(ratio "$dflt" "$pg") x pgbench (8 connections)"
echo "W1 pipelined, 2 loop threads: pgtag $ptj q/s, pgbench pipelined (2 connections," \
     "16 deep, 2 threads) $pgp q/s: ratio $(ratio "$ptj" "$pgp");" \
     "versus pgbench with 8 connections: $(ratio "$ptj" "$pg")"
echo "W1 pipelined, 1 loop thread: pgtag $ptp q/s: ratio $(ratio "$ptp" "$pgp");" \
     "versus pgbench with 8 connections: $(ratio "$ptp" "$pg")"
echo "tagging: pgtag with the tag $pt q/s, without $untagged q/s: ratio $(ratio "$pt" "$untagged")"
hot4=$(best "$h4" "$h4b"); hot4d1=$(best "$h4d1" "$h4d1b")
hot100=$(best "$h100" "$h100b"); hot100d1=$(best "$h100d1" "$h100d1b")
slow=$(best "$s2" "$s2b"); slowd1=$(best "$s1" "$s1b")
echo "hot rows (4): default $hot4 q/s, depth 1 $hot4d1 q/s: ratio $(ratio "$hot4" "$hot4d1")"
echo "hot rows (100): default $hot100 q/s, depth 1 $hot100d1 q/s: ratio $(ratio "$hot100" "$hot100d1")"
echo "slow mix: default $slow fast q/s, depth 1 $slowd1 fast q/s: ratio $(ratio "$slow" "$slowd1")"
echo "(deadlocks, exactly-once and the fast queries over 100 ms: the 'hot' and 'slow' lines above)"
