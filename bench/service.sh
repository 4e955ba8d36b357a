#!/usr/bin/env bash
# examples/h2o-service under wrk: GET /accounts/{random id}, each request
# with its own X-Request-Id, with tagging on and off and with the pool size
# varied, one run after another on the same server.
#
#   bench/service.sh [SECONDS]                      a throwaway server
#   PGTAG_TEST_CONNINFO=... bench/service.sh [SECONDS]   your own
#
# Needs wrk and the service built (build/pgtag_h2o_service).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-10}
threads=${THREADS:-2}
conns=${CONNECTIONS:-64}

# shellcheck source=bench/server.sh
source bench/server.sh
bench_build pgtag_h2o_service
svc=""
cleanup() {
  [ -n "$svc" ] && kill "$svc" 2>/dev/null && wait "$svc" 2>/dev/null
  bench_server_stop
  rm -f "$lua"
}
lua=$(mktemp /tmp/pgtag-wrk.XXXXXX.lua)
trap cleanup EXIT
bench_server service.sh

# Each request: a random account and an X-Request-Id of its own.
cat >"$lua" <<'LUA'
local n = 0
local thread_id = tostring(math.random(1, 1e9))
request = function()
  n = n + 1
  wrk.headers["X-Request-Id"] = "wrk-" .. thread_id .. "-" .. n
  return wrk.format("GET", "/accounts/" .. math.random(1, 1000000))
end
LUA

run() { # run LABEL SERVICE_ARGS...
  local label=$1 url out; shift
  "$root/build/pgtag_h2o_service" --port 0 "$@" "$conninfo" >"$lua.out" 2>"$lua.err" &
  svc=$!
  for _ in $(seq 100); do
    url=$(sed -nE 's|^listening on (http://[0-9.]+:[0-9]+) .*|\1|p' "$lua.out")
    [ -n "$url" ] && break
    sleep 0.05
  done
  curl -sf "$url/accounts/1" >/dev/null # connections open before the clock starts
  out=$(wrk -t "$threads" -c "$conns" -d "${secs}s" --latency -s "$lua" "$url")
  kill "$svc"; wait "$svc" || true; svc=""
  local rps p99 non2xx
  rps=$(sed -nE 's/^Requests\/sec: +([0-9.]+)/\1/p' <<<"$out")
  p99=$(sed -nE 's/^ +99% +([0-9.]+[a-z]+)/\1/p' <<<"$out")
  non2xx=$(sed -nE 's/^ +Non-2xx or 3xx responses: ([0-9]+)/\1/p' <<<"$out")
  printf '%-44s %10s req/s   p99 %8s   non-2xx %s\n' "$label" "$rps" "$p99" "${non2xx:-0}"
}

echo "wrk -t $threads -c $conns -d ${secs}s, GET /accounts/{random}, service with 2 worker threads"
run "tagged, pool 4 per worker (8 connections)" --threads 2 --pool-size 4
run "untagged (--no-tag), pool 4 per worker" --threads 2 --pool-size 4 --no-tag
run "tagged, pool 1 per worker (2 connections)" --threads 2 --pool-size 1
run "tagged, pool 2 per worker (4 connections)" --threads 2 --pool-size 2
run "tagged, pool 8 per worker (16 connections)" --threads 2 --pool-size 8
