#!/usr/bin/env bash
# pgtag installed the way a user installs it, then used the three ways a
# user links it: find_package (shared and static) and pkg-config (shared
# and --static).  Each consumer runs one tagged query against the server in
# PGTAG_TEST_CONNINFO.  Also: the shared library exports pgtag_* and nothing
# else, and its SONAME carries the major version.
#
#   tests/install.sh BUILD_DIR        prints TAP lines; exits 1 on a failure
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:?usage: install.sh BUILD_DIR}" && pwd)
: "${PGTAG_TEST_CONNINFO:?set PGTAG_TEST_CONNINFO}"
work=$(mktemp -d /tmp/pgtag-install.XXXXXX)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
n=0 failed=0

check() { # check NAME COMMAND...: one TAP line; the output shown on failure
  local name=$1; shift
  n=$((n + 1))
  if "$@" >"$work/out" 2>&1; then
    echo "ok $n - $name"
  else
    echo "not ok $n - $name"
    sed 's/^/# /' "$work/out"
    failed=$((failed + 1))
  fi
}

version=$(sed -nE 's/^project\(pgtag VERSION ([0-9.]+).*/\1/p' "$root/CMakeLists.txt")
major=${version%%.*}
libdir() { dirname "$(ls "$prefix"/lib*/libpgtag.a "$prefix"/lib/*/libpgtag.a 2>/dev/null | head -1)"; }

check "cmake --install into a fresh prefix" cmake --install "$build" --prefix "$prefix"
lib=$(libdir)
check "header, libraries, pgtag.pc and CMake package in GNUInstallDirs places" \
  test -f "$prefix/include/pgtag.h" -a -f "$prefix/include/pgtag_version.h" \
    -a -f "$lib/libpgtag.a" -a -f "$lib/libpgtag.so.$version" \
    -a -L "$lib/libpgtag.so.$major" -a -L "$lib/libpgtag.so" \
    -a -f "$lib/pkgconfig/pgtag.pc" -a -f "$lib/cmake/pgtag/pgtagConfig.cmake" \
    -a -f "$lib/cmake/pgtag/pgtagConfigVersion.cmake"
check "SONAME is libpgtag.so.$major" \
  bash -c "objdump -p '$lib/libpgtag.so.$version' | grep -qE 'SONAME +libpgtag\.so\.$major\$'"

exports() {
  local bad
  nm -D --defined-only "$lib/libpgtag.so.$version" | awk '{print $3}' >"$work/syms"
  bad=$(grep -v '^pgtag_' "$work/syms")
  [ -z "$bad" ] || { echo "exported but not pgtag_*:"; echo "$bad"; return 1; }
  grep -qx pgtag_version "$work/syms" && grep -qx pgtag_query "$work/syms"
}
check "only pgtag_* symbols are exported" exports

run_consumer() { # the consumer prints what the server read from its tag
  "$@" "$PGTAG_TEST_CONNINFO" | grep -q "the server saw request consumer-1"
}

cmake_consumer() {
  cmake -S "$root/tests/consumer" -B "$work/cm" -DCMAKE_PREFIX_PATH="$prefix" &&
    cmake --build "$work/cm" &&
    run_consumer env LD_LIBRARY_PATH="$lib" "$work/cm/consumer_shared" &&
    run_consumer "$work/cm/consumer_static" &&
    # the shared consumer really uses the installed libpgtag.so.N (ldd's
    # output goes to files: `ldd | grep -q` under pipefail fails when grep
    # quits before ldd has written its last line)
    env LD_LIBRARY_PATH="$lib" ldd "$work/cm/consumer_shared" >"$work/ldd.shared" &&
    grep -q "$lib/libpgtag.so.$major" "$work/ldd.shared" &&
    ldd "$work/cm/consumer_static" >"$work/ldd.static" &&
    ! grep -q libpgtag "$work/ldd.static"
}
check "find_package(pgtag): pgtag::pgtag and pgtag::pgtag_static build and run" cmake_consumer

pc_consumer() {
  export PKG_CONFIG_PATH=$lib/pkgconfig
  [ "$(pkg-config --modversion pgtag)" = "$version" ] || return 1
  # The consumer calls libuv and libpq itself, so it names them too; gnu11
  # because uv.h needs POSIX declarations that strict C11 hides.
  # shellcheck disable=SC2046
  cc -std=gnu11 -Wall -Werror -o "$work/pc_shared" "$root/tests/consumer/consumer.c" \
    $(pkg-config --cflags --libs pgtag) $(pkg-config --libs libuv libpq) &&
    run_consumer env LD_LIBRARY_PATH="$lib" "$work/pc_shared" &&
  # Static: libpgtag.a, with what Requires.private names linked shared
  # (Debian ships no static libpgcommon, which libpq's --static asks for).
  [ "$(pkg-config --print-requires-private pgtag | sort | tr '\n' ' ')" = "libpq libuv " ] &&
  # shellcheck disable=SC2046
  cc -std=gnu11 -Wall -Werror -o "$work/pc_static" "$root/tests/consumer/consumer.c" \
    $(pkg-config --cflags pgtag) "$lib/libpgtag.a" \
    $(pkg-config --libs $(pkg-config --print-requires-private pgtag)) -pthread &&
    run_consumer "$work/pc_static"
}
check "pkg-config pgtag: shared and --static build and run" pc_consumer

echo "1..$n"
[ "$failed" -eq 0 ]
