#!/usr/bin/env bash
# The layout of the sources stays what .clang-format and .editorconfig say:
# clang-format changes nothing in any C file, no C line is longer than 100
# columns (clang-format cannot break a string or a "clang-format off"
# table), and every text file has LF line ends, no trailing whitespace, no
# tab and a final newline.  Takes a second or two.
#
#   tests/format.sh          prints TAP lines; exits 1 on a failure
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
# shellcheck source=tests/tap.sh
source "$root/tests/tap.sh"

# The files git tracks (a fresh clone: exactly those); outside a git
# checkout, what find sees, build directories left out.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files)
else
  mapfile -t files < <(find . -type f -not -path './.git/*' -not -path './build*' | sed 's|^\./||')
fi
c_files=()
for f in "${files[@]}"; do [[ $f == *.[ch] ]] && c_files+=("$f"); done

# Debian 12's clang-format is 14; another major version lays some
# constructs out differently, so 14 is preferred where both are installed.
cf=$(command -v clang-format-14 || command -v clang-format)
if [ -z "$cf" ]; then
  result "clang-format is installed" 1 "install Debian's clang-format"
else
  out=$("$cf" --dry-run --Werror "${c_files[@]}" 2>&1)
  result "$("$cf" --version | grep -oE 'version [0-9.]+' | head -1): ${#c_files[@]} C files" \
    "$([ -z "$out" ] && echo 0 || echo 1)" "$out" "fix: clang-format -i FILE"
fi

out=$(awk 'length($0) > 100 { print FILENAME ":" FNR ": " length($0) " columns" }' "${c_files[@]}")
result "no C line over 100 columns" "$([ -z "$out" ] && echo 0 || echo 1)" "$out"

# .editorconfig's rules for every file, binary ones left out.
bad=()
for f in "${files[@]}"; do
  [ -f "$f" ] && [ -s "$f" ] || continue
  grep -qI . "$f" || continue # binary
  grep -qP '\r' "$f" && bad+=("$f: CR line ends")
  grep -qE '[[:space:]]$' "$f" && bad+=("$f:$(grep -nE '[[:space:]]$' "$f" | head -1 | cut -d: -f1): trailing whitespace")
  grep -qP '\t' "$f" && bad+=("$f:$(grep -nP '\t' "$f" | head -1 | cut -d: -f1): a tab")
  [ "$(tail -c1 "$f" | od -An -tx1 | tr -d ' ')" = 0a ] || bad+=("$f: no final newline")
done
result "${#files[@]} files: LF, no trailing whitespace, no tab, final newline" "${#bad[@]}" \
  "${bad[@]}"

tap_end
