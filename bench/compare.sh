#!/usr/bin/env bash
# pgtag against pgbench, back to back on the same server, in one run: the
# same tagged point select on pgbench_accounts (scale 10).
#
#   bench/compare.sh [SECONDS]        a throwaway server (tests/pgserver.sh)
#   PGTAG_TEST_CONNINFO=... bench/compare.sh [SECONDS]   your own server
#
# Builds build/ if needed.  Prints each run's result line, then the ratios
# (every pair runs ROUNDS times, default 2, A B then B A and so on; the
# best of each side counts, and the median of the rounds' ratios is shown:
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

# shellcheck source=bench/server.sh
source bench/server.sh
trap bench_server_stop EXIT
bench_build pgtag_bench
bench_server compare

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
median() {
  printf '%s\n' "$@" | sort -g |
    awk '{ v[NR] = $1 } END { printf "%.2f\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", a / b }'; }
# pair NAME 'A command' 'B command': ROUNDS rounds (default 2) of one run
# each, A B, then B A, and so on, so that a drift of the machine's speed
# favours neither side.  The best of each side in $NAME_a and $NAME_b; the
# median of the rounds' ratios in $NAME_m.
rounds=${ROUNDS:-2}
pair() {
  local i x y as=() bs=() rs=()
  for ((i = 0; i < rounds; i++)); do
    if ((i % 2 == 0)); then
      x=$(eval "$2"); y=$(eval "$3")
    else
      y=$(eval "$3"); x=$(eval "$2")
    fi
    as+=("$x"); bs+=("$y"); rs+=("$(ratio "$x" "$y")")
  done
  printf -v "${1}_a" '%s' "$(best "${as[@]}")"
  printf -v "${1}_b" '%s' "$(best "${bs[@]}")"
  printf -v "${1}_m" '%s' "$(median "${rs[@]}")"
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
echo "| workload | pgtag (best of $rounds) | against (best of $rounds) | ratio of the bests | median of $rounds rounds' ratios |"
echo "| --- | --- | --- | --- | --- |"
row() { # row WORKLOAD AGAINST NAME
  local a b m
  a=${3}_a b=${3}_b m=${3}_m
  echo "| $1 | ${!a} | $2: ${!b} | $(ratio "${!a}" "${!b}") | ${!m} |"
}
row "W1, default config" "pgbench -M extended -c 8, tagged" w1
row "W1, depth 1" "pgbench -M extended -c 8, tagged" w1d1
row "W1, depth 1" "pgbench -M prepared -c 8, untagged" w1prep
row "W1, 16 deep, 2 connections, one loop" "pgbench -M extended -c 2, 16-deep pipelines, tagged" w1pipe
row "W1, default config" "pgbench -M prepared -c 2, 16-deep pipelines, untagged" w1dflt_prep
row "hot rows (4), default config" "the same at depth 1" hot4
row "hot rows (100), default config" "the same at depth 1" hot100
row "slow mix, fast queries, default config" "the same at depth 1" slow
row "W2, statement cache" "W2 without it (-u)" w2
row "W1 depth 1, tagged" "untagged (-n)" tag
echo "(deadlocks, exactly-once and fast queries over 100 ms: the 'hot' and 'slow' lines above)"
