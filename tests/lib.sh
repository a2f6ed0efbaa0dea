#!/usr/bin/env bash
# What the container test scripts share (sourced, not run): ✅/❌ counting, a
# scratch directory and a network name, and the closing report.
failures=0
pass() { echo "✅ $*"; }
fail() { echo "❌ $*"; failures=$((failures + 1)); }
scratch() { # prefix: sets work (a temp directory any uid may write) and net (a name)
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 777 "$work"
  # shellcheck disable=SC2034 # net is used by the scripts that source this
  net="$1-$$"
}
report() { # what was checked: prints the verdict; non-zero if anything failed
  echo
  if [ "$failures" -eq 0 ]; then
    echo "✅ all $1 checks passed"
  else
    echo "❌ $failures $1 check(s) failed"
    return 1
  fi
}
