# TAP lines for the shell tests (./run counts every "ok" and "not ok").
# Source it (check needs $work, a scratch directory, set); end with tap_end.

n=0 failed=0

ok() { n=$((n + 1)); echo "ok $n - $1"; }

not_ok() { # not_ok NAME [DETAIL FILE]: its last 30 lines shown
  n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"
  if [ -n "${2:-}" ] && [ -f "$2" ]; then tail -30 "$2" | sed 's/^/# /'; fi
}

check() { # check NAME COMMAND...: one line; the command's output shown on failure
  local name=$1; shift
  if "$@" >"$work/out" 2>&1; then ok "$name"; else not_ok "$name" "$work/out"; fi
}

result() { # result NAME STATUS [DETAIL...]: ok when STATUS is 0, else the details shown
  if [ "$2" = 0 ]; then ok "$1"; else
    not_ok "$1"; shift 2; printf '%s\n' "$@" | head -40 | sed 's/^/# /'; fi
}

tap_end() { echo "1..$n"; [ "$failed" -eq 0 ]; }
