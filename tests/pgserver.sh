#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for the tests, the demo and the benchmark.
#
#   tests/pgserver.sh start DIR [bare]
#                                  initdb into DIR, start on a unix socket in DIR
#                                  and a free loopback port; writes DIR/env.
#                                  bare: as initdb left it, without
#                                  pg_stat_statements (for sql/setup.sql's test)
#   tests/pgserver.sh stop DIR [fast|immediate]
#                                  stop it (DIR is left for the caller to remove)
#   tests/pgserver.sh restart DIR [fast|immediate]
#   tests/pgserver.sh up DIR       start the stopped cluster in DIR again
#   tests/pgserver.sh standby DIR PRIMARY_DIR
#                                  a streaming standby of the server in
#                                  PRIMARY_DIR (pg_basebackup -R), started
#                                  on its own socket and free port
#   tests/pgserver.sh promote DIR  promote the standby in DIR
#   tests/pgserver.sh tls DIR NAME TLS for the running server in DIR: a CA
#                                  and a certificate for host name NAME,
#                                  made here (openssl) into DIR/tls
#                                  (ca.crt is the one clients verify
#                                  with), then ssl = on
#
# DIR/env holds PGTAG_TEST_CONNINFO, PGHOST, PGPORT, PGUSER and PGDATABASE.
# As root the server runs as the postgres user, which owns DIR.
#
# With PGTAG_SERVER_OWNER set to a pid, start and standby leave a watcher
# that stops the server and removes DIR once that process has exited: a
# test program that dies before its teardown leaves no server running.
set -euo pipefail

cmd=${1:?usage: pgserver.sh start|stop|restart|up|standby|promote|tls DIR}
dir=${2:?usage: pgserver.sh start|stop|restart|up|standby|promote|tls DIR}
bindir=$(ls -d /usr/lib/postgresql/15/bin 2>/dev/null || true)
[ -n "$bindir" ] || { echo "pgserver.sh: PostgreSQL 15 is not installed" >&2; exit 1; }

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_ctl_run() { as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" "$@"; }

watch_owner() {
  [ -n "${PGTAG_SERVER_OWNER:-}" ] || return 0
  local self
  self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
  # its own session, and none of the caller's descriptors: ctest waits for
  # the test's output to close, and kills the test's process group
  setsid bash -c 'tail --pid="$1" -f /dev/null; "$2" stop "$3" immediate; rm -rf "$3"' \
    watcher "$PGTAG_SERVER_OWNER" "$self" "$dir" </dev/null >/dev/null 2>&1 &
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Start the cluster in $dir on a free port; sets port, writes $dir/port and
# $dir/env.
start_on_free_port() {
  for try in 1 2 3 4 5 6 7 8 9 10; do
    port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    port_in_use "$port" && continue
    if pg_ctl_run -w -t 60 -o "-p $port" start >"$dir/pg_ctl.log" 2>&1; then
      break
    fi
    # pg_ctl has been seen to give up on a server that did start (loaded
    # machine): one that runs and answers on the port is taken; retrying
    # would only find its lock file.
    if pg_ctl_run status >/dev/null 2>&1; then
      for _ in $(seq 1 600); do
        "$bindir/pg_isready" -q -h "$dir" -p "$port" && break 2
        sleep 0.1
      done
    fi
    port=""
  done
  if [ -z "${port:-}" ]; then
    echo "pgserver.sh: the server did not start; its log:" >&2
    cat "$dir/server.log" >&2 || true
    exit 1
  fi
  echo "$port" >"$dir/port"
  # Port in postgresql.conf too, so that restart keeps it.
  echo "port = $port" >>"$dir/data/postgresql.conf"
  cat >"$dir/env" <<ENV
export PGHOST='$dir'
export PGPORT='$port'
export PGUSER=postgres
export PGDATABASE=postgres
export PGTAG_TEST_CONNINFO='host=$dir port=$port user=postgres dbname=postgres'
export PGTAG_TEST_PGDATA='$dir/data'
ENV
  chmod 644 "$dir/env"
}

case "$cmd" in
start)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  chmod 700 "$dir"
  # --no-sync: a throwaway cluster (fsync is off too); it halves the time
  # a test program waits for a server of its own
  as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync \
    --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
  cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
  if [ "${3:-}" = bare ]; then
    start_on_free_port
    watch_owner
    exit 0
  fi
  cat >>"$dir/data/postgresql.conf" <<CONF
shared_preload_libraries = 'pg_stat_statements'
compute_query_id = on
pg_stat_statements.track = all
log_line_prefix = '%m [%p] '
CONF
  start_on_free_port
  watch_owner
  PGHOST=$dir PGPORT=$port psql -X -q -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' >/dev/null
  ;;
stop)
  [ -d "$dir/data" ] && pg_ctl_run -w -t 60 -m "${3:-fast}" stop >/dev/null 2>&1 || true
  ;;
standby)
  primary=${3:?usage: pgserver.sh standby DIR PRIMARY_DIR}
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  chmod 700 "$dir"
  as_owner "$bindir/pg_basebackup" -D "$dir/data" -R -X stream -c fast \
    -h "$primary" -p "$(cat "$primary/port")" -U postgres >"$dir/basebackup.log" 2>&1 ||
    { cat "$dir/basebackup.log" >&2; exit 1; }
  # Its own socket directory and port: later lines win.
  echo "unix_socket_directories = '$dir'" >>"$dir/data/postgresql.conf"
  start_on_free_port
  watch_owner
  ;;
promote)
  as_owner "$bindir/pg_ctl" -D "$dir/data" -w -t 60 promote >/dev/null
  ;;
tls)
  name=${3:?usage: pgserver.sh tls DIR NAME}
  tls=$dir/tls
  mkdir -p "$tls"
  # P-256 keys: made in milliseconds, where RSA takes up to a second.
  key=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  {
    openssl req -x509 "${key[@]}" -days 2 -subj "/CN=pgtag test CA" \
      -keyout "$tls/ca.key" -out "$tls/ca.crt"
    openssl req "${key[@]}" -subj "/CN=$name" -keyout "$tls/server.key" -out "$tls/server.csr"
    printf 'subjectAltName = DNS:%s\n' "$name" >"$tls/server.ext"
    openssl x509 -req -days 2 -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
      -CAcreateserial -extfile "$tls/server.ext" -out "$tls/server.crt"
  } >"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; exit 1; }
  [ "$(id -u)" = 0 ] && chown -R postgres: "$tls"
  chmod 600 "$tls/server.key"
  cat >>"$dir/data/postgresql.conf" <<CONF
ssl = on
ssl_cert_file = '$tls/server.crt'
ssl_key_file = '$tls/server.key'
CONF
  pg_ctl_run reload >/dev/null
  # The reload is asynchronous: back once the server says ssl is on.
  for _ in $(seq 1 100); do
    [ "$(PGHOST=$dir PGPORT=$(cat "$dir/port") psql -X -At -U postgres -d postgres \
         -c 'SHOW ssl')" = on ] && exit 0
    sleep 0.1
  done
  echo "pgserver.sh: ssl is still off after the reload" >&2
  exit 1
  ;;
restart)
  pg_ctl_run -w -t 60 -m "${3:-fast}" restart >/dev/null
  ;;
up)
  pg_ctl_run -w -t 60 start >/dev/null
  ;;
*)
  echo "usage: pgserver.sh start|stop|restart|up|standby|promote|tls DIR" >&2
  exit 2
  ;;
esac
