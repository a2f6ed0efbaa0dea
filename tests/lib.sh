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
# The suites that need the course's layout (train.py writing
# model_checkpoint.pth into the mounted folder, ./data beside compose.yaml)
# run in a scratch copy of the checkout, never in it: a user's trained model,
# data/ and metrics stay as they were. Tracked and untracked files as git
# lists them; the ignored wheels/ (the offline build's) and data/ as hard
# links, so nothing is copied where the file system allows it (the trainer
# only adds files to data/, by rename: a link is never written through).
copy_checkout() { # destination directory
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard \
      | xargs -0 cp --parents -t "$1" 2>/dev/null || true  # (a deleted tracked file: skipped)
  else
    tar -c --exclude=./data --exclude=./wheels --exclude='*.pth' --exclude='*.pt' . | tar -x -C "$1"
  fi
  for d in wheels data; do
    [ -d "$d" ] && { cp -al "$d" "$1/" 2>/dev/null || cp -a "$d" "$1/"; }
  done
  chmod 755 "$1"
}
in_scratch_checkout() { # "$@" of the calling script: re-runs it from a scratch copy, once
  [ -n "${SCRATCH_CHECKOUT:-}" ] && return 0
  local copy rc
  copy=$(mktemp -d /tmp/mnist-hogwild-checkout.XXXXXX)
  copy_checkout "$copy"
  echo "(running in a scratch copy of the checkout: $copy)"
  SCRATCH_CHECKOUT=$copy bash "$copy/tests/$(basename "$0")" "$@"
  rc=$?
  rm -rf "$copy"
  exit "$rc"
}
# GRADING_DATA: "synthetic" (write small IDX files), a data root holding real
# MNIST (MNIST/raw, such as ../shared/data: linked into ./data, as the
# containers see only the mounted folder), or unset (./data as it is).
prepare_grading_data() { # run: the function that runs the image with . at /workspace
  if [ "${GRADING_DATA:-}" = synthetic ]; then
    echo "writing synthetic IDX files into ./data (GRADING_DATA=synthetic)"
    "$1" "$IMAGE" python /workspace/tools/synthetic_data.py /workspace/data --train 19200 \
      --test 1000 >/dev/null || fail "could not write synthetic data"
  elif [ -n "${GRADING_DATA:-}" ]; then
    echo "using MNIST from $GRADING_DATA (linked into ./data/MNIST/raw)"
    rm -rf data/MNIST && mkdir -p data/MNIST/raw
    for f in "$GRADING_DATA"/MNIST/raw/*; do
      cp -l "$f" data/MNIST/raw/ 2>/dev/null || cp "$f" data/MNIST/raw/ || fail "cannot copy $f"
    done
  fi
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
  docker run --rm -v "$work:/w" -v "$PWD/tools:/t:ro" "$IMAGE" python /t/synthetic_data.py /w/data \
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
