#!/usr/bin/env bash
# docker/ checked without a container engine (none runs on these machines):
# the compose file is valid YAML by yamllint's strict defaults, every path
# the Dockerfile copies and the compose file builds from or mounts exists,
# the Dockerfile's build and test commands are the ones the README gives,
# every Debian package it installs exists in Debian 12, and the program it
# runs is one CMake builds.
#
#   tests/docker_check.sh          prints TAP lines; exits 1 on a failure
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
dockerfile=docker/Dockerfile compose=docker/compose.yaml
n=0 failed=0
result() { # result NAME STATUS [DETAIL...]
  n=$((n + 1))
  if [ "$2" = 0 ]; then echo "ok $n - $1"; else
    echo "not ok $n - $1"; shift 2; printf '# %s\n' "$@"; failed=$((failed + 1)); fi
}

out=$(yamllint -s "$compose" 2>&1); result "yamllint -s $compose" $? "$out"

# COPY sources (not --from a stage) are relative to the context, the root.
missing=()
while read -r -a words; do
  [[ ${words[1]} == --from=* ]] && continue
  for src in "${words[@]:1:${#words[@]}-2}"; do
    [[ $src == --* ]] && continue
    [ -e "$src" ] || missing+=("COPY $src")
  done
done < <(grep -E '^COPY ' "$dockerfile")
# compose: build contexts, Dockerfiles and mounted host paths, relative to docker/.
while read -r path; do
  [ -e "docker/$path" ] || missing+=("compose: $path")
done < <(sed -nE 's/^ +context: (.*)$/\1/p; s/^ +- (\.{1,2}\/[^:]+):.*/\1/p' "$compose")
while read -r path; do
  [ -e "$path" ] || missing+=("compose dockerfile: $path")
done < <(sed -nE 's/^ +dockerfile: (.*)$/\1/p' "$compose")
mounts=$(grep -cE '^ +- \.{1,2}/' "$compose")
result "every path copied, built from or mounted exists ($mounts mounts)" \
  "${#missing[@]}" "${missing[@]}"

# Every stage the compose file builds is in the Dockerfile.
bad=()
for t in $(sed -nE 's/^ +target: (.*)$/\1/p' "$compose"); do
  grep -qE "^FROM .* AS $t\$" "$dockerfile" || bad+=("target $t")
done
result "every target compose.yaml builds is a stage of the Dockerfile" "${#bad[@]}" "${bad[@]}"

# The Dockerfile builds and tests with the README's Quick start commands.
quick=$(sed -n '/^## Quick start/,/^## /p' README.md | sed -n '/^```sh/,/^```/p' |
        sed -nE 's/^(\.\/run [a-z]+).*/\1/p')
bad=()
grep -qE '^RUN \./run test$' "$dockerfile" || bad+=("the Dockerfile does not RUN ./run test")
while read -r cmd; do
  grep -qxF "$cmd" <<<"$quick" || bad+=("RUN $cmd is not a Quick start command")
done < <(sed -nE 's/^RUN (\.\/run .*)$/\1/p' "$dockerfile")
result "the Dockerfile's build and test commands are the README's ($(echo $quick))" \
  "${#bad[@]}" "${bad[@]}"

# Debian 12 packages named in apt-get install lines exist.
pkgs=$(sed -n '/apt-get install/,/rm -rf/p' "$dockerfile" | tr ' \\' '\n\n' |
       grep -E '^[a-z0-9][a-z0-9.+-]+$' | grep -vxE 'apt-get|install|rm|y|lists' | sort -u)
bad=()
for p in $pkgs; do
  apt-cache show "$p" >/dev/null 2>&1 || bad+=("no Debian package $p")
done
result "the runtime images' Debian packages exist ($(echo $pkgs))" "${#bad[@]}" "${bad[@]}"

# The service image runs a program CMake builds, from the path it is built at.
bin=$(sed -nE 's|^COPY --from=build /src/build/([a-z0-9_]+) .*|\1|p' "$dockerfile")
entry=$(sed -nE 's/^ENTRYPOINT \["([a-z0-9_]+)".*/\1/p' "$dockerfile" | head -1)
ok=1
[ -n "$bin" ] && [ "$bin" = "$entry" ] && grep -q "add_executable($bin " CMakeLists.txt && ok=0
result "the service image runs $entry, which CMakeLists.txt builds" $ok

echo "1..$n"
[ "$failed" -eq 0 ]
