#!/usr/bin/env bash
# pgtag against pgbench, back to back on the same server, in one run: the
# same tagged point select on pgbench_accounts (scale 10).
#
#   bench/compare.sh [SECONDS]        a throwaway server (tests/pgserver.sh)
#   PGTAG_TEST_CONNINFO=... bench/compare.sh [SECONDS]   your own server
#
# Builds build/ if needed.  Prints each run's result line, then the ratios
# (every pair runs twice, A B B A, and the best of each side counts:
# the machine is shared and noisy):
#   W1            pgtag, 64 requests, each a fresh request ID and one tagged
#                 point select on pgbench_accounts, over 8 connections:
#                 default settings, and no pipelining (-d 1); against
#                 pgbench -c 8 -j 2 with the same tagged query, unnamed
#                 (-M extended), and untagged and prepared (-M prepared:
#                 what a user gives up tags for)
#   W1 16 deep    pgtag over 2 connections, 16 deep, one loop thread,
#                 against pgbench -c 2 -j 2 with \startpipeline / 16
#                 queries (a random aid each) / \endpipeline, tagged
#                 extended and untagged prepared
#   hot rows      64 requests of one UPDATE ... WHERE id = $1 on 4 rows (and
#                 on 100), a pool of 4: the default config vs depth 1, with
#                 the deadlocks the server broke and an exactly-once check
#   slow mix      64 requests of the point select plus a 200 ms query every
#                 100 ms, a pool of 4: the default config vs depth 1, with
#                 the fast queries that took 100 ms or more
#   W2            a transaction on a held connection (BEGIN, SELECT,
#                 UPDATE, INSERT, COMMIT): with the statement cache vs
#                 without (-u, every query an unnamed statement)
#   tagging       pgtag W1 (-d 1) with the tag vs without
# plus W3 (a burst of 10,000 requests) on its own.
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
select_sql='SELECT abalance FROM pgbench_accounts WHERE aid = '
printf '\\set aid random(1, 1000000)\n/* requestId=%s */ %s:aid;\n' "$id" "$select_sql" \
  >"$work/select.sql"
printf '\\set aid random(1, 1000000)\n%s:aid;\n' "$select_sql" >"$work/select_plain.sql"
# Each query of a pipeline draws its own aid, as every pgtag request does:
# sixteen reads of one row would be cheaper for the server than sixteen rows.
pipeline_script() { # pipeline_script PREFIX
  for i in $(seq 16); do echo "\\set aid$i random(1, 1000000)"; done
  echo '\startpipeline'
  for i in $(seq 16); do echo "$1$select_sql:aid$i;"; done
  echo '\endpipeline'
}
pipeline_script "/* requestId=$id */ " >"$work/pipeline.sql"
pipeline_script "" >"$work/pipeline_plain.sql"

pgbench_qps() { # pgbench_qps MODE CLIENTS SCRIPT QUERIES_PER_TRANSACTION
  local tps
  tps=$(pgbench -n -M "$1" -c "$2" -j 2 -T "$secs" -f "$3" "$conninfo" 2>/dev/null |
        sed -nE 's/^tps = ([0-9.]+).*/\1/p')
  echo "pgbench -M $1 clients=$2 script=$(basename "$3") tps=$tps qps=$(echo "$tps * $4" | bc)" >&2
  echo "$tps * $4" | bc
}

pgtag_qps() { # pgtag_qps ARGS...: the result line (and any check line) to stderr
  local out
  out=$(./build/pgtag_bench -t "$secs" "$@" "$conninfo")
  echo "$out" >&2
  sed -nE 's/.* qps=([0-9]+) .*/\1/p' <<<"$out"
}

best() { printf '%s\n' "$@" | sort -g | tail -1; }
ratio() { echo "scale=2; $1 / $2" | bc; }
# pair NAME 'A command' 'B command': each twice, A B B A, so that a drift
# of the machine's speed during the pair favours neither side; the best of
# each side in $NAME_a and $NAME_b.
pair() {
  local a1 b1 a2 b2
  a1=$(eval "$2"); b1=$(eval "$3"); b2=$(eval "$3"); a2=$(eval "$2")
  printf -v "${1}_a" '%s' "$(best "$a1" "$a2")"
  printf -v "${1}_b" '%s' "$(best "$b1" "$b2")"
}

pair w1 'pgtag_qps -c 64 -p 8' 'pgbench_qps extended 8 "$work/select.sql" 1'
pair w1d1 'pgtag_qps -c 64 -p 8 -d 1' 'pgbench_qps extended 8 "$work/select.sql" 1'
pair w1prep 'pgtag_qps -c 64 -p 8 -d 1' 'pgbench_qps prepared 8 "$work/select_plain.sql" 1'
pair w1pipe 'pgtag_qps -c 64 -p 2 -d 16' 'pgbench_qps extended 2 "$work/pipeline.sql" 16'
pair w1dflt_prep 'pgtag_qps -c 64 -p 8' 'pgbench_qps prepared 2 "$work/pipeline_plain.sql" 16'
pair hot4 'pgtag_qps -w HOT -c 64 -p 4' 'pgtag_qps -w HOT -c 64 -p 4 -d 1'
pair hot100 'pgtag_qps -w HOT -r 100 -c 64 -p 4' 'pgtag_qps -w HOT -r 100 -c 64 -p 4 -d 1'
pair slow 'pgtag_qps -w SLOW -c 64 -p 4' 'pgtag_qps -w SLOW -c 64 -p 4 -d 1'
pair w2 'pgtag_qps -w W2' 'pgtag_qps -w W2 -u'
pair tag 'pgtag_qps -c 64 -p 8 -d 1' 'pgtag_qps -c 64 -p 8 -d 1 -n'
./build/pgtag_bench -w W3 "$conninfo"
rm -rf "$work"

echo
echo "| workload | pgtag | against | ratio |"
echo "| --- | --- | --- | --- |"
row() { echo "| $1 | $2 | $3: $4 | $(ratio "$2" "$4") |"; }
row "W1, default config" "$w1_a" "pgbench -M extended -c 8, tagged" "$w1_b"
row "W1, depth 1" "$w1d1_a" "pgbench -M extended -c 8, tagged" "$w1d1_b"
row "W1, depth 1" "$w1prep_a" "pgbench -M prepared -c 8, untagged" "$w1prep_b"
row "W1, 16 deep, 2 connections, one loop" "$w1pipe_a" "pgbench -M extended -c 2, 16-deep pipelines, tagged" "$w1pipe_b"
row "W1, default config" "$w1dflt_prep_a" "pgbench -M prepared -c 2, 16-deep pipelines, untagged" "$w1dflt_prep_b"
row "hot rows (4), default config" "$hot4_a" "the same at depth 1" "$hot4_b"
row "hot rows (100), default config" "$hot100_a" "the same at depth 1" "$hot100_b"
row "slow mix, fast queries, default config" "$slow_a" "the same at depth 1" "$slow_b"
row "W2, statement cache" "$w2_a" "W2 without it (-u)" "$w2_b"
row "W1 depth 1, tagged" "$tag_a" "untagged (-n)" "$tag_b"
echo "(deadlocks, exactly-once and fast queries over 100 ms: the 'hot' and 'slow' lines above)"
