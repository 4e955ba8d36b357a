# Sourced by the scripts in bench/ (after `cd` to the source tree and
# root=$(pwd)): what they all need before measuring.
#
#   bench_build TARGET   build/TARGET, built (RelWithDebInfo) if missing
#   bench_server NAME    sets conninfo: PGTAG_TEST_CONNINFO when set, else a
#                        throwaway server (tests/pgserver.sh); with the
#                        pgbench tables at scale 10 either way
#   bench_server_stop    stops the throwaway server, if any: call it from
#                        the script's EXIT trap
# shellcheck shell=bash

bench_build() {
  if [ ! -x "build/$1" ]; then
    cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build build -j"$(nproc)" --target "$1" >/dev/null
  fi
}

bench_tmp=""
bench_server_stop() {
  if [ -n "$bench_tmp" ]; then
    "$root/tests/pgserver.sh" stop "$bench_tmp/pg" || true
    rm -rf "$bench_tmp"
    bench_tmp=""
  fi
}

bench_server() {
  if [ -z "${PGTAG_TEST_CONNINFO:-}" ]; then
    bench_tmp=$(mktemp -d /tmp/pgtag-bench.XXXXXX)
    chmod 755 "$bench_tmp"
    "$root/tests/pgserver.sh" start "$bench_tmp/pg"
    # shellcheck disable=SC1091
    source "$bench_tmp/pg/env"
  fi
  conninfo=$PGTAG_TEST_CONNINFO
  if ! psql -X -q -At -d "$conninfo" -c "SELECT count(*) FROM pgbench_accounts" 2>/dev/null |
      grep -qx 1000000; then
    echo "$1: pgbench -i -s 10"
    pgbench -i -s 10 -q -d "$conninfo" >/dev/null 2>&1 || pgbench -i -s 10 -q "$conninfo" >/dev/null
  fi
}
