# TAP lines for the shell tests (./run counts every "ok" and "not ok").
# Source it once $work, a scratch directory, is set; end with tap_end.

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

tap_end() { echo "1..$n"; [ "$failed" -eq 0 ]; }
