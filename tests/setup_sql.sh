#!/usr/bin/env bash
# The README's database setup, step by step, on a server of its own that has
# never loaded pg_stat_statements (tests/pgserver.sh start DIR bare), so
# that the server the other tests use is not touched:
#
#   psql -X -v ON_ERROR_STOP=1 -f sql/setup.sql, restart,
#   CREATE EXTENSION pg_stat_statements, psql ... -f sql/pgtag.sql
#
# then every setting is checked, a tagged query shows up in pgtag.statements
# with its request ID, and setup.sql runs again now that the module is
# loaded.
#
#   tests/setup_sql.sh         prints TAP lines; exits 1 on a failure
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/pgtag-setup.XXXXXX)
chmod 755 "$work"
cleanup() {
  "$root/tests/pgserver.sh" stop "$work/pg" immediate >/dev/null 2>&1
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=tests/tap.sh
. "$(dirname "$0")/tap.sh"

if ! "$root/tests/pgserver.sh" start "$work/pg" bare >"$work/start.log" 2>&1; then
  echo "not ok 1 - a bare server starts"; sed 's/^/# /' "$work/start.log"; echo "1..1"; exit 1
fi
# shellcheck disable=SC1091
source "$work/pg/env"
q() { psql -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }

fresh() {
  [ "$(q 'SHOW shared_preload_libraries')" = "" ] &&
    [ -z "$(q "SELECT current_setting('pg_stat_statements.max', true)")" ] &&
    [ "$(q "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'")" = 1 ]
}
check "the server has never loaded pg_stat_statements (it is available)" fresh

run_setup() {
  # The README's command as it stands; any ERROR fails it (ON_ERROR_STOP).
  (cd "$root" && psql -X -v ON_ERROR_STOP=1 -f sql/setup.sql) >"$work/setup.log" 2>&1
  local rc=$?
  cat "$work/setup.log"
  [ "$rc" = 0 ] && ! grep -qE 'ERROR|WARNING' "$work/setup.log"
}
check "psql -f sql/setup.sql succeeds in one pass, no error or warning" run_setup

log_from=$(($(stat -c %s "$work/pg/server.log") + 1))
check "the server restarts" "$root/tests/pgserver.sh" restart "$work/pg"

settings() {
  local bad=0 name want got
  while read -r name want; do
    got=$(q "SHOW $name")
    [ "$got" = "$want" ] || { echo "$name = '$got', want '$want'"; bad=1; }
  done <<'SETTINGS'
shared_preload_libraries pg_stat_statements
compute_query_id on
pg_stat_statements.track_utility off
pg_stat_statements.max 10000
log_min_duration_statement 250ms
log_lock_waits on
track_activity_query_size 4kB
SETTINGS
  got=$(q 'SHOW log_line_prefix')
  [ "$got" = '%m [%p] %q%u@%d app=%a qid=%Q ' ] || { echo "log_line_prefix = '$got'"; bad=1; }
  # nothing in postgresql.auto.conf was refused at start-up
  if tail -c +"$log_from" "$work/pg/server.log" | grep -E 'invalid|unrecognized|ERROR|FATAL'; then
    bad=1
  fi
  return "$bad"
}
check "after the restart every setting of setup.sql is in force" settings

extension_and_views() {
  q 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' &&
    (cd "$root" && psql -X -q -v ON_ERROR_STOP=1 -f sql/pgtag.sql) &&
    q "SELECT pg_stat_statements_reset()" >/dev/null &&
    # a tagged statement, as pgtag sends it, and a tagged utility statement
    q "/* requestId=setup-1 route=GET%20%2Fx */ SELECT 42 AS setup_probe" >/dev/null &&
    q "/* requestId=setup-2 */ SET application_name = 'x'" &&
    [ "$(q "SELECT sample_request_id FROM pgtag.statements
             WHERE query LIKE '%setup_probe%'")" = setup-1 ] &&
    # track_utility = off: the SET left no entry of its own
    [ "$(q "SELECT count(*) FROM pg_stat_statements WHERE query LIKE '%requestId=setup-2%'")" = 0 ]
}
check "CREATE EXTENSION and sql/pgtag.sql: pgtag.statements shows a query's request ID" \
  extension_and_views

check "setup.sql runs again once pg_stat_statements is loaded" run_setup

tap_end
