#!/usr/bin/env bash
# pgtag installed the way a user installs it (into a prefix of its own, as
# the README shows), then used the ways a user links it: find_package
# (shared and static), pkg-config alone, and the static archive.  Each
# consumer, examples/hello.c among them, runs against the server in
# PGTAG_TEST_CONNINFO.  Also: pgtag as a subproject builds the library and
# nothing that needs cmocka; the shared library exports pgtag_* and nothing
# else, and its SONAME carries the major version.
#
#   tests/install.sh BUILD_DIR        prints TAP lines; exits 1 on a failure
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:?usage: install.sh BUILD_DIR}" && pwd)
: "${PGTAG_TEST_CONNINFO:?set PGTAG_TEST_CONNINFO}"
work=$(mktemp -d /tmp/pgtag-install.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
prefix=$work/prefix
# shellcheck source=tests/tap.sh
. "$(dirname "$0")/tap.sh"

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

# Output is captured before it is searched: with pipefail, "cmd | grep -q"
# fails whenever grep stops reading early and cmd dies of SIGPIPE.
run_consumer() { # the consumer prints what the server read from its tag
  local out
  out=$("$@" "$PGTAG_TEST_CONNINFO") || { echo "$* failed: $out"; return 1; }
  grep -q "the server saw request consumer-1" <<<"$out" || { echo "$*: $out"; return 1; }
}

links_pgtag() { # links_pgtag BINARY: its libpgtag is a shared library
  local out
  out=$(ldd "$1") && grep -q 'libpgtag\.so' <<<"$out"
}

# The program loads the installed libpgtag.so.N, wherever its run-time
# path says it lies (pkg-config's libdir is not in canonical form).
uses_installed() {
  local found
  found=$(ldd "$1" | awk '/libpgtag\.so/ {print $3}')
  [ -n "$found" ] && [ "$(realpath "$found")" = "$(realpath "$lib/libpgtag.so.$major")" ]
}

cmake_consumer() {
  cmake -S "$root/tests/consumer" -B "$work/cm" -DCMAKE_PREFIX_PATH="$prefix" &&
    cmake --build "$work/cm" &&
    run_consumer env LD_LIBRARY_PATH="$lib" "$work/cm/consumer_shared" &&
    run_consumer "$work/cm/consumer_static" &&
    # the shared consumer really uses the installed libpgtag.so.N
    uses_installed "$work/cm/consumer_shared" &&
    ! links_pgtag "$work/cm/consumer_static"
}
check "find_package(pgtag): pgtag::pgtag and pgtag::pgtag_static build and run" cmake_consumer

# hello prints what the server saw for each of its three requests, then
# that uv_loop_close returned 0.
run_hello() {
  "$@" "$PGTAG_TEST_CONNINFO" >"$work/hello.out" || { cat "$work/hello.out"; return 1; }
  cat "$work/hello.out"
  # the query as written, or its EXECUTE through the statement cache
  [ "$(grep -cE '^request ([0-9a-f-]{36}): the server saw: /\* requestId=\1 route=hello \*/ (SELECT current_query\(\)|EXECUTE _pgtag_[0-9]+ /\* SELECT current_query\(\) \*/)$' \
       "$work/hello.out")" = 3 ] &&
    [ "$(grep -cE '^request [0-9a-f-]{36}: transaction [0-9]+$' "$work/hello.out")" = 3 ] &&
    grep -qx 'done: 0 failed, uv_loop_close returned 0' "$work/hello.out"
}

pc_consumer() {
  export PKG_CONFIG_PATH=$lib/pkgconfig
  [ "$(pkg-config --modversion pgtag)" = "$version" ] || return 1
  # pgtag alone: pgtag.pc requires libuv and libpq, whose headers pgtag.h
  # includes.  gnu11: uv.h needs POSIX declarations that strict C11 hides.
  # shellcheck disable=SC2046
  cc -std=gnu11 -Wall -Werror -o "$work/pc_shared" "$root/tests/consumer/consumer.c" \
    $(pkg-config --cflags --libs pgtag) &&
    run_consumer env LD_LIBRARY_PATH="$lib" "$work/pc_shared" &&
  # The README's command for the first program, with the run-time path
  # built in instead of LD_LIBRARY_PATH.
  # shellcheck disable=SC2046
  cc "$root/examples/hello.c" $(pkg-config --cflags --libs pgtag) \
    -Wl,-rpath,"$(pkg-config --variable=libdir pgtag)" -o "$work/hello_pc" &&
    run_hello "$work/hello_pc" && uses_installed "$work/hello_pc"
}
check "pkg-config --cflags --libs pgtag alone: the consumer and examples/hello.c build and run" \
  pc_consumer

# libpgtag.a with libuv and libpq linked shared, as the README shows:
# Debian's libpq.pc asks pkg-config --static for libpgcommon, libpgport and
# libgssapi_krb5 archives that no Debian package ships.
static_archive() {
  export PKG_CONFIG_PATH=$lib/pkgconfig
  [ "$(pkg-config --print-requires pgtag | sort | tr '\n' ' ')" = "libpq libuv " ] &&
  # shellcheck disable=SC2046
  cc -std=gnu11 -Wall -Werror -o "$work/pc_static" "$root/tests/consumer/consumer.c" \
    $(pkg-config --cflags pgtag) "$(pkg-config --variable=libdir pgtag)/libpgtag.a" \
    $(pkg-config --libs libuv libpq) -pthread &&
    run_consumer "$work/pc_static" &&
    ! links_pgtag "$work/pc_static"
}
check "libpgtag.a linked by hand with shared libuv and libpq builds and runs" static_archive

find_package_hello() {
  run_hello "$work/cm/hello" && uses_installed "$work/cm/hello"
}
check "find_package(pgtag): examples/hello.c builds and runs (run-time path from CMake)" \
  find_package_hello

# A project that vendors pgtag with add_subdirectory gets the library, and
# none of the tests, benchmark or examples: cmocka is not even looked for.
subproject() {
  mkdir -p "$work/sub" &&
  cat >"$work/sub/CMakeLists.txt" <<CMAKE &&
cmake_minimum_required(VERSION 3.18)
project(vendoring LANGUAGES C)
add_subdirectory("$root" pgtag)
add_executable(hello "$root/examples/hello.c")
target_link_libraries(hello PRIVATE pgtag::pgtag)
CMAKE
  cmake -S "$work/sub" -B "$work/sub/build" &&
    cmake --build "$work/sub/build" -j"$(nproc)" &&
    run_hello "$work/sub/build/hello" &&
    ! grep -q CMOCKA "$work/sub/build/CMakeCache.txt" &&
    for t in test_pool pgtag_bench pgtag_demo pgtag_h2o_service; do
      [ ! -e "$work/sub/build/pgtag/$t" ] || { echo "$t was built"; return 1; }
    done
}
check "as a subproject (add_subdirectory): the library only, no cmocka needed" subproject

tap_end
