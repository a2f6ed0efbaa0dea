#!/usr/bin/env bash
# What the container test scripts share (sourced, not run): ✅/❌ counting, a
# scratch directory and a network name, the closing report, and for the
# several-machine scripts their set-up and the waits on a container's log.
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

cluster_setup() { # prefix, training images: scratch, a network, synthetic data; clean-up on exit
  scratch "$1"
  trap cluster_cleanup EXIT
  docker network create "$net" >/dev/null
  docker run --rm -v "$work:/w" -v "$PWD/tests:/t:ro" "$IMAGE" python /t/synthetic_data.py /w/data \
    --train "$2" --test 1000 >/dev/null || { echo "could not write synthetic data"; exit 1; }
}
cluster_cleanup() { # every container named after the network, the network, the scratch directory
  docker ps -aq --filter "name=$net" | xargs -r docker rm -f >/dev/null 2>&1
  docker network rm "$net" >/dev/null 2>&1
  rm -rf "$work"
}
wait_log() { # container (without the "$net-" prefix), text, seconds: 0 once its log has TEXT
  for _ in $(seq $(($3 * 10))); do
    docker logs "$net-$1" 2>&1 | grep -- "$2" >/dev/null && return 0
    sleep 0.1
  done
  return 1
}
field() { # checkpoint path under /workspace (the scratch directory), python expression over s
  docker run --rm -v "$work:/workspace" "$IMAGE" python -c \
    "import torch; s = torch.load('$1', weights_only=True); print($2)" 2>/dev/null
}
