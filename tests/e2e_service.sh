#!/usr/bin/env bash
# examples/h2o-service end to end, over real HTTP (curl, wrk), against the
# throwaway server in PGTAG_TEST_CONNINFO with pgbench tables and every
# statement logged.
#
#   tests/e2e_service.sh BUILD_DIR     prints TAP lines; exits 1 on a failure
#   E2E_ONLY=replica E2E_REPEAT=20 tests/e2e_service.sh BUILD_DIR
#                                      one check, 20 times in a row
# pipefail: never "cmd | grep -q" here, which fails when grep stops reading
# early and cmd dies of SIGPIPE; logs are read into a variable first.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:?usage: e2e_service.sh BUILD_DIR}" && pwd)
: "${PGTAG_TEST_CONNINFO:?set PGTAG_TEST_CONNINFO}"
: "${PGTAG_TEST_PGDATA:?set PGTAG_TEST_PGDATA}"
service=$build/pgtag_h2o_service
work=$(mktemp -d /tmp/pgtag-e2e.XXXXXX)
chmod 755 "$work"
svc_pid=""
cleanup() {
  [ -n "$svc_pid" ] && kill -KILL "$svc_pid" 2>/dev/null
  # a check that failed half-way leaves its standby running
  "$root/tests/pgserver.sh" stop "$work/standby" immediate >/dev/null 2>&1
  psql_q "ALTER SYSTEM RESET log_statement" >/dev/null 2>&1
  psql_q "SELECT pg_reload_conf()" >/dev/null 2>&1
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=tests/tap.sh
. "$(dirname "$0")/tap.sh"
psql_q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$PGTAG_TEST_CONNINFO" -c "$1"; }
server_log=$(dirname "$PGTAG_TEST_PGDATA")/server.log
# The checks search a log slice as a file, not as `tail ... | grep -q`: with
# pipefail (this shell's; not a bash -c's) grep -q, quitting at its first
# match, kills tail with SIGPIPE whenever tail has more than one write
# (8 KB) to make, and a line that is there reads as missing.
log_since() { tail -c +"$2" "$1" >"$3"; } # log_since LOG OFFSET FILE
# wait_for SECONDS COMMAND...: runs COMMAND until it succeeds, 50 ms apart,
# for SECONDS at most; fails if it never did.  Every wait here is on
# something that should happen, never a fixed time.
wait_for() {
  local end=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.05
  done
}
# has_lines N REGEX [LOG [OFFSET]]: the log (the server's, from $log_from)
# has at least N lines matching REGEX.  PostgreSQL logs a statement as it
# begins, but writes its log line on its own schedule.
has_lines() {
  log_since "${3:-$server_log}" "${4:-$log_from}" "$work/lines"
  [ "$(grep -cE "$2" "$work/lines")" -ge "$1" ]
}

[ -x "$service" ] || { not_ok "pgtag_h2o_service was built"; echo "1..$n"; exit 1; }

# ---- the database: pgbench tables, every statement logged ----------------
pgbench -i -s 1 -q "$PGTAG_TEST_CONNINFO" >"$work/pgbench.log" 2>&1 ||
  { not_ok "pgbench -i" "$work/pgbench.log"; echo "1..$n"; exit 1; }
psql_q "ALTER SYSTEM SET log_statement = 'all'" && psql_q "SELECT pg_reload_conf()" >/dev/null
# the postmaster has reloaded once a new session has it; the service's
# sessions are all newer
logs_all() { [ "$(psql_q "SHOW log_statement")" = all ]; }
wait_for 30 logs_all || { not_ok "log_statement = all took effect"; echo "1..$n"; exit 1; }
log_from=$(($(stat -c %s "$server_log") + 1))
new_log() { tail -c +"$log_from" "$server_log"; }

start_service() { # start_service ARGS... CONNINFO: sets svc_pid and url
  # Emptied here, not by the redirection below: that runs in the child,
  # maybe after listening has read the last service's address (a check
  # once sent its requests to a service stopped before it: HTTP 000).
  : >"$work/service.out"
  "$service" --port 0 --threads 2 --pool-size 4 "$@" \
    >"$work/service.out" 2>"$work/service.err" &
  svc_pid=$!
  url=""
  wait_for 60 listening
}
listening() {
  url=$(sed -nE 's|^listening on (http://[0-9.]+:[0-9]+) .*|\1|p' "$work/service.out")
  [ -n "$url" ]
}
# For chasing a flake: E2E_ONLY names the checks to run, by their
# function ("replica hop"), and E2E_REPEAT how many times each runs.
run_check() { # run_check NAME FUNCTION [ARGS...]
  if [ -n "${E2E_ONLY:-}" ] && [[ " $E2E_ONLY " != *" $2 "* ]]; then return 0; fi
  # a name of its own: the checks set i, which bash's dynamic scope would
  # let them set here
  local e2e_round
  for ((e2e_round = 0; e2e_round < ${E2E_REPEAT:-1}; e2e_round++)); do check "$@"; done
}
start_service --demo-leak "$PGTAG_TEST_CONNINFO" || { not_ok "the service starts" "$work/service.err"; echo "1..$n"; exit 1; }
ok "the service starts and says where it listens ($url)"

run_check "GET /healthz answers 200" \
  bash -c "curl -sf '$url/healthz' | jq -e '.status == \"ok\"'"

# ---- 200 concurrent requests, each with its own ID ----------------------
# Odd i: GET /accounts/<7i+1> (one query); even i: GET /branches/1/summary
# (two queries, the second submitted from the first's callback).
mkdir -p "$work/par"
for i in $(seq 1 200); do
  if [ $((i % 2)) = 1 ]; then path="/accounts/$((7 * i + 1))"; else path="/branches/1/summary"; fi
  [ "$i" = 1 ] || echo next
  printf 'url = "%s%s"\nheader = "X-Request-Id: e2e-%d"\noutput = "%s/par/%d.body"\ndump-header = "%s/par/%d.head"\n' \
    "$url" "$path" "$i" "$work" "$i" "$work" "$i"
done >"$work/par.cfg"
curl -s --parallel --parallel-immediate --parallel-max 200 -K "$work/par.cfg" 2>"$work/curl.err"
concurrent_ids() {
  local bad=0
  for i in $(seq 1 200); do
    grep -qi "^x-request-id: e2e-$i"$'\r'"\?$" "$work/par/$i.head" &&
      grep -q "^HTTP/1.1 200" "$work/par/$i.head" &&
      jq -e --arg id "e2e-$i" '.request_id == $id' "$work/par/$i.body" >/dev/null ||
      { echo "request e2e-$i: wrong or missing answer"; bad=1; }
  done
  return $bad
}
run_check "200 concurrent requests: each answer carries its own X-Request-Id" concurrent_ids

# In the server log each query is "execute <unnamed>: /* requestId=... */ ..."
# (in the pipeline) or "statement: /* requestId=... */ ..." (alone, a simple
# query), with its parameters: on the next line (DETAIL) when it went as an
# unnamed statement, in the line itself when the statement cache sent it
# ("EXECUTE _pgtag_3('204') /* SELECT ... */").  Every request's queries
# carry its own ID: the account query's parameter is the account that
# request asked for, and a summary request's two queries both carry its ID.
logged_ids() {
  wait_for 30 has_lines 300 '(execute <unnamed>|statement): /\* requestId=e2e-[0-9]+ '
  new_log >"$work/log1"
  awk '
    match($0, /\[[0-9]+\]/) { pid = substr($0, RSTART, RLENGTH) }
    /(execute <unnamed>|statement): \/\* requestId=e2e-[0-9]+ / {
      match($0, /requestId=e2e-[0-9]+ /); id = substr($0, RSTART + 14, RLENGTH - 15)
      count[id]++; last[pid] = id; acct[pid] = ($0 ~ /FROM pgbench_accounts WHERE aid/)
      if (acct[pid] && match($0, /EXECUTE _pgtag_[0-9]+\('\''[0-9]+'\''\)/)) {
        v = substr($0, RSTART, RLENGTH); sub(/^[^(]*\('\''/, "", v); sub(/'\''\)$/, "", v)
        if (v != 7 * id + 1) { print "request e2e-" id " logged with aid " v; bad = 1 }
        checked++; delete last[pid]
      }
      next }
    /DETAIL:  parameters: \$1 = / {
      if (pid in last && acct[pid]) {
        match($0, /\$1 = '\''[0-9]+'\''/); p = substr($0, RSTART + 6, RLENGTH - 7)
        if (p != 7 * last[pid] + 1) { print "request e2e-" last[pid] " logged with aid " p; bad = 1 }
        checked++
      }
      delete last[pid] }
    END {
      for (i = 1; i <= 200; i++) {
        want = (i % 2) ? 1 : 2
        if (count[i] != want) { print "request e2e-" i ": " count[i] + 0 " tagged queries, want " want; bad = 1 }
      }
      if (checked != 100) { print "checked " checked " account parameters, want 100"; bad = 1 }
      exit bad }' "$work/log1"
}
run_check "server log: every query of the 200 requests carries its own request ID, never another's" logged_ids

# ---- hostile request IDs -----------------------------------------------
accounts_before=$(psql_q "SELECT count(*) FROM pgbench_accounts")
log_from=$(($(stat -c %s "$server_log") + 1))
big=$(head -c 10240 /dev/zero | tr '\0' 'x')
hostile() {
  local i=0 id code bad=0
  for id in '*/ DROP TABLE pgbench_accounts; --' '/*' '*/' "$big" "it's \"quoted\"" \
            '100%25%00%2A%2F' "a'); DROP TABLE pgbench_accounts; --"; do
    i=$((i + 1))
    code=$(curl -s -o "$work/h$i.body" -D "$work/h$i.head" -w '%{http_code}' \
           -H "X-Request-Id: $id" "$url/accounts/$i")
    [ "$code" = 200 ] || { echo "ID #$i: HTTP $code"; bad=1; }
    echoed=$(sed -nE 's/^[Xx]-[Rr]equest-[Ii]d: (.*)\r$/\1/p' "$work/h$i.head")
    # kept when visible ASCII of at most 128 bytes, else replaced by a UUID
    if [ ${#id} -le 128 ] && ! [[ $id =~ [^!-~] ]]; then
      [ "$echoed" = "$id" ] || { echo "ID #$i not echoed: $echoed"; bad=1; }
    else
      [[ $echoed =~ ^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$ ]] ||
        { echo "ID #$i not replaced by a UUID: $echoed"; bad=1; }
    fi
  done
  wait_for 30 has_lines 7 '(execute <unnamed>|statement): /\*'
  [ "$(psql_q "SELECT count(*) FROM pgbench_accounts")" = "$accounts_before" ] ||
    { echo "pgbench_accounts changed"; bad=1; }
  # every statement the service sent starts with the tag and is the SELECT
  # (a simple query is logged whole, a second statement in it too; this
  # script's own psql queries are untagged)
  new_log | grep -E '(execute <unnamed>|statement): /\*' >"$work/hostile.log"
  [ "$(wc -l <"$work/hostile.log")" -ge 7 ] || { echo "statements missing from the log"; bad=1; }
  # (as text, or through the statement cache: its EXECUTE, the statement as
  # a comment)
  if grep -vE '(execute <unnamed>|statement): /\* requestId=[^ ]* route=GET%20%2Faccounts%2F%7Bid%7D \*/ (SELECT aid, bid, abalance FROM pgbench_accounts WHERE aid = \$1|EXECUTE _pgtag_[0-9]+\('"'"'[0-9]+'"'"'\) /\* SELECT aid, bid, abalance FROM pgbench_accounts WHERE aid = \$1 \*/)$' \
       "$work/hostile.log"; then
    echo "a statement above is not the tagged SELECT"; bad=1
  fi
  return $bad
}
run_check "hostile X-Request-Id values are served and nothing else reaches the database" hostile

traceparent() {
  curl -sf -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' \
    -H 'X-Request-Id: tp-good' "$url/accounts/3" >/dev/null &&
    curl -sf -H 'traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01' \
      -H 'X-Request-Id: tp-bad' "$url/accounts/3" >/dev/null || return 1
  wait_for 30 has_lines 1 'requestId=tp-bad '
  new_log >"$work/tp.log"
  grep 'requestId=tp-bad ' "$work/tp.log" >"$work/tp-bad.log"
  grep -q 'requestId=tp-good route=GET%20%2Faccounts%2F%7Bid%7D traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 \*/' "$work/tp.log" &&
    grep -vq traceparent "$work/tp-bad.log"
}
run_check "a valid traceparent goes into the tag; an invalid one does not" traceparent

# ---- transfers ------------------------------------------------------------
psql_q "UPDATE pgbench_accounts SET abalance = 100000 WHERE aid <= 4; TRUNCATE pgbench_history"
sum_before=$(psql_q "SELECT sum(abalance) FROM pgbench_accounts")
transfer() { # transfer BODY: prints the HTTP code
  curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -d "$1" "$url/transfer"
}
run_check "transfer: 400 on bad input, 404 on a missing account" bash -c "
  [ \$(curl -s -o /dev/null -w '%{http_code}' -X POST -d 'not json' '$url/transfer') = 400 ] &&
  [ \$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{\"from\":1,\"to\":1,\"amount\":5}' '$url/transfer') = 400 ] &&
  [ \$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{\"from\":1,\"to\":2,\"amount\":-5}' '$url/transfer') = 400 ] &&
  [ \$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{\"from\":1,\"to\":2}' '$url/transfer') = 400 ] &&
  [ \$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{\"from\":1,\"to\":99999999,\"amount\":5}' '$url/transfer') = 404 ]"

# 120 transfers at once among accounts 1 to 4, both ways, amounts 1..120
for i in $(seq 1 120); do
  [ "$i" = 1 ] || echo next
  printf 'url = "%s/transfer"\nrequest = "POST"\ndata = "{\\"from\\":%d,\\"to\\":%d,\\"amount\\":%d}"\nheader = "X-Request-Id: tr-%d"\noutput = "%s/par/tr%d.body"\nwrite-out = "%%{http_code}\\n"\n' \
    "$url" $(((i % 4) + 1)) $((((i + 1 + i / 4) % 4) + 1)) "$i" "$i" "$work" "$i"
done >"$work/tr.cfg"
# (from and to differ: i%4 and (i+1+i/4)%4 can coincide; those are 400s)
curl -s --parallel --parallel-max 120 -K "$work/tr.cfg" >"$work/tr.codes" 2>"$work/curl.err"
transfers() {
  local n200 want
  n200=$(grep -c '^200$' "$work/tr.codes")
  want=$(for i in $(seq 1 120); do [ $(((i % 4) + 1)) != $((((i + 1 + i / 4) % 4) + 1)) ] && echo; done | wc -l)
  echo "200s: $n200 of $want valid transfers; codes: $(sort "$work/tr.codes" | uniq -c | tr '\n' ' ')"
  [ "$n200" = "$want" ] || return 1
  [ "$(psql_q "SELECT sum(abalance) FROM pgbench_accounts")" = "$sum_before" ] ||
    { echo "the sum of balances changed"; return 1; }
  [ "$(psql_q "SELECT count(*) = $want AND count(DISTINCT delta) = $want FROM pgbench_history")" = t ] ||
    { echo "pgbench_history: $(psql_q "SELECT count(*), count(DISTINCT delta) FROM pgbench_history")"; return 1; }
}
run_check "concurrent transfers: balances sum unchanged, each transfer once in pgbench_history" transfers

# ---- --demo-leak: insufficient funds forgets its connection --------------
# reclaimed: /metrics (a snapshot of each worker's pools, 200 ms apart)
# counts a reclaimed connection
reclaimed() {
  curl -s "$url/metrics" >"$work/metrics.reclaimed" &&
    awk '/^pgtag_reclaimed_total/ {s += $2} END {exit !(s >= 1)}' "$work/metrics.reclaimed"
}
leak() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'X-Request-Id: leaky-1' \
        -d '{"from":5,"to":6,"amount":1}' "$url/transfer")" = 409 ] || return 1
  wait_for 30 grep -qE 'request leaky-1: .*leak' "$work/service.err"
  grep -E 'request leaky-1: .*leak' "$work/service.err" ||
    { echo "no leak report for leaky-1"; cat "$work/service.err"; return 1; }
  grep -E 'request leaky-1: .*routes\.c:[0-9]+' "$work/service.err" >/dev/null &&
    { wait_for 30 reclaimed || { echo "/metrics counts no reclaimed connection"; return 1; }; }
}
run_check "--demo-leak: the forgotten connection is reported with its request ID and acquire site, and reclaimed" leak

# lock_row AID [SECONDS]: a psql session locks the account for SECONDS
# (3), in the background (its pid in locker); returns once the lock is
# held, waiting for the session's sleep, not a fixed time (psql took over
# 0.3 s to get there on a busy machine); fails if it never is.
lock_row() {
  local secs=${2:-3}
  psql -X -q -d "$PGTAG_TEST_CONNINFO" \
    -c "BEGIN; SELECT 1 FROM pgbench_accounts WHERE aid = $1 FOR UPDATE; SELECT pg_sleep($secs); COMMIT" \
    >/dev/null 2>&1 &
  locker=$!
  wait_for 30 row_locked "$1" "$secs" || { echo "account $1 was never locked"; return 1; }
}
row_locked() {
  [ "$(psql_q "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE '%aid = $1 FOR UPDATE; SELECT pg_sleep($2)%'")" = 1 ]
}
# query_gone ID: while the locker still holds its row, waits until no query
# of request ID runs on the server (once it commits, a query that was not
# cancelled goes through); then waits for the locker.  Fails if one still runs.
query_gone() {
  local running=1
  while kill -0 "$locker" 2>/dev/null; do
    running=$(psql_q "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%requestId=$1 %' AND state = 'active' AND pid <> pg_backend_pid()")
    [ "$running" = 0 ] && break
    sleep 0.05
  done
  wait "$locker"
  [ "$running" = 0 ] || { echo "the query of $1 still runs on the server"; return 1; }
}

# ---- a hop through libuv's thread pool ------------------------------------
# GET /accounts/{id}/digest hashes on the thread pool (pgtag_queue_work),
# then queries: the hash reads the request ID current on the worker thread,
# and the query, submitted from the after-work callback, carries the tag.
hop() {
  log_from=$(($(stat -c %s "$server_log") + 1))
  mkdir -p "$work/hop"
  local i bad=0
  for i in $(seq 1 100); do
    [ "$i" = 1 ] || echo next
    printf 'url = "%s/accounts/%d/digest"\nheader = "X-Request-Id: hop-%d"\noutput = "%s/hop/%d.body"\n' \
      "$url" $((3 * i + 1)) "$i" "$work" "$i"
  done >"$work/hop.cfg"
  curl -s --parallel --parallel-immediate --parallel-max 100 -K "$work/hop.cfg" 2>"$work/curl.err"
  for i in $(seq 1 100); do
    jq -e --arg id "hop-$i" --argjson aid $((3 * i + 1)) \
      '.request_id == $id and .hashed_for == $id and .id == $aid and (.digest | test("^[0-9a-f]{16}$"))' \
      "$work/hop/$i.body" >/dev/null || { echo "hop-$i: $(cat "$work/hop/$i.body")"; bad=1; }
  done
  [ "$bad" = 0 ] || return 1
  # the server log: wait for the 100 statements, not a fixed time
  wait_for 30 has_lines 100 '(execute <unnamed>|statement): .*abalance, \$2::text'
  new_log >"$work/log_hop"
  awk '
    /(execute <unnamed>|statement): .*abalance, \$2::text/ {
      if (!match($0, /requestId=hop-[0-9]+ /)) { print "untagged: " $0; bad = 1; next }
      id = substr($0, RSTART + 14, RLENGTH - 15); count[id]++
      if (match($0, /EXECUTE _pgtag_[0-9]+\('\''[0-9]+'\''/)) {
        v = substr($0, RSTART, RLENGTH); sub(/^[^(]*\('\''/, "", v); sub(/'\''$/, "", v)
        if (v != 3 * id + 1) { print "hop-" id " queried aid " v; bad = 1 }
      } }
    END {
      for (i = 1; i <= 100; i++)
        if (count[i] != 1) { print "hop-" i ": " count[i] + 0 " tagged queries, want 1"; bad = 1 }
      exit bad }' "$work/log_hop"
}
run_check "a hop through the thread pool: 100 concurrent requests, each hash and query in its own request's context" hop

# ---- a request's deadline --------------------------------------------------
deadline() {
  # a transfer with a 300 ms budget that waits for a row lock held for 3 s
  lock_row 5 || return 1
  local t0 code ms
  t0=$(date +%s%N)
  code=$(curl -s -o "$work/deadline.body" -w '%{http_code}' -X POST -H 'X-Request-Id: deadline-1' \
    -H 'X-Request-Timeout-Ms: 300' -d '{"from":5,"to":6,"amount":1}' "$url/transfer")
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "answered $code in $ms ms: $(cat "$work/deadline.body")"
  query_gone deadline-1 || return 1
  [ "$code" = 504 ] && [ "$ms" -ge 300 ] && [ "$ms" -lt 2500 ] || return 1
  jq -e '.request_id == "deadline-1" and (.error | test("deadline"))' "$work/deadline.body" >/dev/null || return 1
  [ "$(psql_q "SELECT count(*) FROM pgbench_history WHERE delta = -1 AND aid = 5 AND mtime > now() - interval '10 s'")" = 0 ] &&
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Request-Timeout-Ms: soon' "$url/accounts/1")" = 400 ]
}
run_check "a 300 ms deadline on a transfer stuck behind a lock: 504 in time, its query cancelled on the server, nothing written" deadline

# ---- a client that goes away ----------------------------------------------
gone() {
  # a transfer that waits for a row lock, and a client that gives up
  lock_row 1 || return 1
  curl -s -m 1 -X POST -H 'X-Request-Id: gone-1' -d '{"from":1,"to":2,"amount":1}' \
    "$url/transfer"
  # the cancel, while the locker still holds the row
  query_gone gone-1 || return 1
  grep -q 'request gone-1: client gone, 1 operation(s) canceled' "$work/service.err" ||
    { echo "no cancel"; return 1; }
  if grep -E 'request gone-1: .*leak' "$work/service.err"; then echo "leak reported"; return 1; fi
  [ "$(psql_q "SELECT count(*) FROM pgbench_history WHERE delta = -1 AND aid = 1 AND mtime > now() - interval '10 s'")" = 0 ]
}
run_check "a client that hangs up: its query is cancelled on the server, its connection released, no leak report" gone

metrics() {
  curl -sf "$url/metrics" >"$work/metrics" || return 1
  [ "$(grep -c '^# TYPE pgtag_queries_total counter$' "$work/metrics")" = 1 ] &&
    grep -qE '^pgtag_queries_total\{pool="worker-0"\} [0-9]+$' "$work/metrics" &&
    grep -qE '^pgtag_queries_total\{pool="worker-1"\} [0-9]+$' "$work/metrics" &&
    awk '/^pgtag_queries_total/ {s += $2} END {exit !(s >= 500)}' "$work/metrics" &&
    awk '/^pgtag_canceled_total/ {s += $2} END {exit !(s >= 1)}' "$work/metrics" &&
    awk '/^pgtag_deadlines_total/ {s += $2} END {exit !(s >= 1)}' "$work/metrics"
}
run_check "GET /metrics: one family per metric, a sample per worker's pool, the counts add up" metrics

# ---- SIGTERM under load ---------------------------------------------------
# in_flight N: /metrics shows at least N requests that hold a connection or
# wait for one (the service's pools, snapshots 200 ms apart)
in_flight() {
  curl -s "$url/metrics" >"$work/metrics.inflight" &&
    awk -v n="$1" '/^pgtag_connections\{.*state="held"\}/ || /^pgtag_waiting\{/ {s += $2}
                   END {exit !(s >= n)}' "$work/metrics.inflight"
}
sigterm() {
  # account 3's row is held until after SIGTERM, however long getting there
  # takes: the transfers wait for it, under way
  lock_row 3 60 || return 1
  local i pids=()
  for i in $(seq 1 10); do
    curl -s -o "$work/term$i.body" -w '%{http_code}\n' -X POST \
      -d "{\"from\":3,\"to\":4,\"amount\":$((1000 + i))}" "$url/transfer" >"$work/term$i.code" &
    pids+=($!)
  done
  # each transfer's handler has run: it holds a connection or waits for one
  wait_for 30 in_flight 10 || { echo "the ten transfers are not all under way"; return 1; }
  wrk -t 2 -c 32 -d 3s "$url/accounts/9" >"$work/wrk.out" 2>&1 &
  local wrk_pid=$!
  # and the load with them (the transfers hold all connections of a pool)
  wait_for 30 in_flight 11 || { echo "the load is not under way"; return 1; }
  kill -TERM "$svc_pid"
  # the row goes free: the transfers finish, the service exits
  psql_q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()
          AND query LIKE '%aid = 3 FOR UPDATE; SELECT pg_sleep(60)%'" >/dev/null
  local rc=0
  wait "$svc_pid" || rc=$?
  svc_pid=""
  wait "${pids[@]}"
  wait "$locker" "$wrk_pid"
  echo "exit code $rc; $(tail -1 "$work/service.err")"
  [ "$rc" = 0 ] || return 1
  for i in $(seq 1 10); do
    [ "$(cat "$work/term$i.code")" = 200 ] && jq -e '.amount > 1000' "$work/term$i.body" >/dev/null ||
      { echo "transfer $i: $(cat "$work/term$i.code") $(cat "$work/term$i.body")"; return 1; }
  done
  # every request whose handler ran was answered, or its client had gone
  tail -1 "$work/service.err" |
    awk '/requests accepted/ { a = $5; b = $7; g = $10; gsub(",", "", a); gsub(",", "", b); exit !(a == b + g && a > 100) }'
}
run_check "SIGTERM under load: exit 0, every request accepted was answered" sigterm

run_check "no query outside a request's context, and no context left current (context_check = WARN)" \
  bash -c "! grep -E 'no request context is current|its request has ended|still current as the loop' '$work/service.err'"
run_check "no sanitizer report from the service" \
  bash -c "! grep -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' '$work/service.err'"

# ---- behind PgBouncer in transaction mode --------------------------------
bouncer() {
  "$root/tests/pgbouncer.sh" start "$work/bouncer" "$(dirname "$PGTAG_TEST_PGDATA")" 4 || return 1
  # shellcheck disable=SC1091
  source "$work/bouncer/env"
  start_service --transaction-pooler "$PGTAG_BOUNCER_CONNINFO" || return 1
  log_from=$(($(stat -c %s "$server_log") + 1))
  for i in $(seq 1 50); do
    [ "$i" = 1 ] || echo next
    printf 'url = "%s/accounts/%d"\nheader = "X-Request-Id: pgb-%d"\noutput = "%s/par/pgb%d.body"\n' \
      "$url" "$((7 * i + 1))" "$i" "$work" "$i"
  done >"$work/pgb.cfg"
  curl -s --parallel --parallel-max 50 -K "$work/pgb.cfg" 2>/dev/null
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'X-Request-Id: pgb-tx' \
         -d '{"from":7,"to":8,"amount":1}' "$url/transfer")
  [ "$code" = 409 ] || [ "$code" = 200 ] ||
    { echo "transfer: HTTP $code; the service's last words:"; tail -5 "$work/service.err"; return 1; }
  kill -TERM "$svc_pid"; wait "$svc_pid"; local rc=$?; svc_pid=""
  "$root/tests/pgbouncer.sh" stop "$work/bouncer"
  [ "$rc" = 0 ] || { echo "service exit code $rc"; return 1; }
  wait_for 30 has_lines 50 'requestId=pgb-[0-9]+ route='
  log_since "$server_log" "$log_from" "$work/bouncer.log"
  for i in $(seq 1 50); do
    jq -e --arg id "pgb-$i" '.request_id == $id and .id > 0' "$work/par/pgb$i.body" >/dev/null ||
      { echo "pgb-$i: $(cat "$work/par/pgb$i.body")"; return 1; }
    # the server's log shows the query with its own ID and its own account
    grep -A1 "requestId=pgb-$i route=" "$work/bouncer.log" >"$work/pgb.lines"
    grep -q "parameters: \$1 = '$((7 * i + 1))'" "$work/pgb.lines" ||
      { echo "pgb-$i not in the server log"; return 1; }
  done
  # the transfer's statements all ran in one server process
  [ "$(grep 'requestId=pgb-tx ' "$work/bouncer.log" |
       sed -nE 's/.*\[([0-9]+)\].*/\1/p' | sort -u | wc -l)" = 1 ] ||
    { echo "the transfer's statements ran on several backends"; return 1; }
}
run_check "behind PgBouncer (transaction mode): every query reaches the server with its own ID, a transaction on one backend" bouncer

# ---- a read replica -------------------------------------------------------
# both_healthy: adds the worker that answered GET /healthz to seen when it
# has the replica within the lag limit; true once both workers have
both_healthy() {
  health=$(curl -s "$url/healthz")
  local w
  w=$(jq -r 'select(.replicas[0].lag_ms | . >= 0 and . <= 1000) | .worker' <<<"$health")
  [ -n "$w" ] && [[ " $seen " != *" $w "* ]] && seen="$seen $w"
  [ "$(wc -w <<<"$seen")" = 2 ]
}
replica() {
  # a streaming standby of the test server; it logs every statement too
  # (a fresh one each time the check runs: E2E_REPEAT)
  rm -rf "$work/standby"
  "$root/tests/pgserver.sh" standby "$work/standby" "$(dirname "$PGTAG_TEST_PGDATA")" ||
    return 1
  local standby_conninfo standby_log="$work/standby/server.log"
  standby_conninfo="host=$work/standby port=$(cat "$work/standby/port") user=postgres dbname=postgres"
  start_service --replica "$standby_conninfo" "$PGTAG_TEST_CONNINFO" || return 1
  # both workers have heard from the replica and have it within the lag
  # limit (1000 ms, the service's default), so reads go there; healthz says
  # which worker answered
  local seen="" health=""
  wait_for 30 both_healthy
  [ "$(wc -w <<<"$seen")" = 2 ] || {
    echo "the replica never became healthy for both workers (healthy:$seen); last healthz: $health"
    echo "standby received, replayed, paused: $(psql -X -At -d "$standby_conninfo" -c \
      "SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), pg_is_wal_replay_paused()" 2>&1)"
    echo "primary flushed, inserted: $(psql_q "SELECT pg_current_wal_flush_lsn(), pg_current_wal_insert_lsn()" 2>&1)"
    tail -5 "$work/service.err"
    return 1
  }
  local primary_from standby_from
  primary_from=$(($(stat -c %s "$server_log") + 1))
  standby_from=$(($(stat -c %s "$standby_log") + 1))
  for i in $(seq 1 20); do
    curl -sf -H "X-Request-Id: rep-$i" "$url/accounts/$i" >/dev/null || return 1
  done
  curl -sf -H "X-Request-Id: rep-sum" "$url/branches/1/summary" >/dev/null || return 1
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'X-Request-Id: rep-tx' \
         -d '{"from":1,"to":2,"amount":1}' "$url/transfer")
  [ "$code" = 200 ] || { echo "transfer: HTTP $code"; return 1; }
  kill -TERM "$svc_pid"; wait "$svc_pid"; local rc=$?; svc_pid=""
  wait_for 30 has_lines 22 'requestId=rep-(sum|[0-9]+) route=' "$standby_log" "$standby_from"
  wait_for 30 has_lines 1 'requestId=rep-tx route=.*FOR UPDATE' "$server_log" "$primary_from"
  "$root/tests/pgserver.sh" stop "$work/standby" immediate
  [ "$rc" = 0 ] || { echo "service exit code $rc"; return 1; }
  log_since "$standby_log" "$standby_from" "$work/rep-standby.log"
  log_since "$server_log" "$primary_from" "$work/rep-primary.log"
  for i in $(seq 1 20); do
    grep -q "requestId=rep-$i route=" "$work/rep-standby.log" ||
      { echo "rep-$i is not in the standby's log"; return 1; }
    if grep -q "requestId=rep-$i route=" "$work/rep-primary.log"; then
      echo "rep-$i ran on the primary"; return 1
    fi
  done
  [ "$(grep -c 'requestId=rep-sum route=' "$work/rep-standby.log")" = 2 ] ||
    { echo "the summary's two queries are not both on the standby"; return 1; }
  grep -q 'requestId=rep-tx route=.*FOR UPDATE' "$work/rep-primary.log" ||
    { echo "the transfer is not on the primary"; return 1; }
  if grep -q 'requestId=rep-tx ' "$work/rep-standby.log"; then
    echo "the transfer touched the standby"; return 1
  fi
}
run_check "with --replica: reads run on the standby with their tags, the transfer on the primary" replica

tap_end
