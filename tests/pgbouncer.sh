#!/usr/bin/env bash
# Debian's PgBouncer in transaction mode in front of a server started by
# tests/pgserver.sh, for the tests.
#
#   tests/pgbouncer.sh start DIR SERVER_DIR [POOL_SIZE]
#       listens on a unix socket in DIR and a free loopback port, forwards
#       every database to the server in SERVER_DIR with at most POOL_SIZE
#       (default 4) server connections per database and user; writes
#       DIR/env with PGTAG_BOUNCER_CONNINFO
#   tests/pgbouncer.sh stop DIR
# As root it runs as the postgres user (PgBouncer refuses to run as root).
set -euo pipefail
cmd=${1:?usage: pgbouncer.sh start DIR SERVER_DIR [POOL_SIZE] | stop DIR}
dir=${2:?usage: pgbouncer.sh start DIR SERVER_DIR [POOL_SIZE] | stop DIR}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

case "$cmd" in
start)
  server=${3:?the server directory}
  pool_size=${4:-4}
  command -v pgbouncer >/dev/null || { echo "pgbouncer.sh: pgbouncer is not installed" >&2; exit 1; }
  server_port=$(cat "$server/port")
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  chmod 755 "$dir"
  echo '"postgres" ""' >"$dir/userlist.txt"
  for try in 1 2 3 4 5 6 7 8 9 10; do
    port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    port_in_use "$port" && continue
    cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=$server port=$server_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $pool_size
max_client_conn = 1000
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
admin_users = postgres
ignore_startup_parameters = extra_float_digits
server_reset_query =
INI
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/pgbouncer.ini" "$dir/userlist.txt"
    if as_owner pgbouncer -d "$dir/pgbouncer.ini" >/dev/null 2>&1; then
      # until it listens: 30 s at most, a bound for a loaded machine
      for _ in $(seq 300); do
        port_in_use "$port" && break
        sleep 0.1
      done
      port_in_use "$port" && break
    fi
    port=""
  done
  if [ -z "${port:-}" ]; then
    echo "pgbouncer.sh: pgbouncer did not start; its log:" >&2
    cat "$dir/pgbouncer.log" >&2 || true
    exit 1
  fi
  echo "$port" >"$dir/port"
  cat >"$dir/env" <<ENV
export PGTAG_BOUNCER_CONNINFO='host=$dir port=$port user=postgres dbname=postgres'
export PGTAG_BOUNCER_DIR='$dir'
ENV
  chmod 644 "$dir/env"
  ;;
stop)
  if [ -f "$dir/pgbouncer.pid" ]; then
    pid=$(cat "$dir/pgbouncer.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  ;;
*)
  echo "usage: pgbouncer.sh start DIR SERVER_DIR [POOL_SIZE] | stop DIR" >&2
  exit 2
  ;;
esac
