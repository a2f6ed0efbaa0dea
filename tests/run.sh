#!/usr/bin/env bash
# The test suite, in stages that each say when they start and end, with their
# time, and a table of the times at the end (docs/development.md has them).
#
#   bash tests/run.sh          # everything: needs a running Docker engine (README "Tests")
#   bash tests/run.sh --quick  # lint and the in-process tests: no Docker, minutes
#
# The full run: pytest, the image and container checks (tests/grading.sh), the
# course's Compose services (tests/compose_test.sh), several nodes as
# containers (tests/cluster_test.sh, and under network faults
# tests/cluster_faults.sh), the registry push, the build through a package
# mirror (tests/mirror_test.sh), and the quick fault-injection soak.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
quick=0
[ "${1:-}" = --quick ] && quick=1
# The image the container suites build and test: named after this checkout, so
# that no image of the user's (mnist-hogwild:grading, say) is replaced.
checkout_id=$(pwd -P | cksum | cut -d' ' -f1)
export IMAGE=${IMAGE:-mnist-hogwild-test:$checkout_id}
status=0
timings=()
# SLOW=1: the same suite on a slower machine: pytest on one core, containers
# with half a CPU (tests must hold at any speed; see docs/development.md).
prefix=()
if [ "${SLOW:-0}" = 1 ]; then
  prefix=(taskset -c 0)
  export DOCKER_CPUS=${DOCKER_CPUS:-0.5}
  echo "=== SLOW=1: pytest under taskset -c 0, containers with --cpus $DOCKER_CPUS"
fi

stage() { # title, command...: run it as one stage of the suite
  local title=$1 started result seconds
  shift
  started=$(date +%s)
  echo "=== [$(date +%H:%M:%S)] start: $title"
  if "$@"; then result=passed; else result=FAILED; status=1; fi
  seconds=$(($(date +%s) - started))
  echo "=== [$(date +%H:%M:%S)] $result in ${seconds} s: $title"
  timings+=("$(printf '%6d s  %-6s  %s' "$seconds" "$result" "$title")")
}

lint() {
  black --check -q . && ruff check -q . && lint-imports >/dev/null \
    && python3 -m mnist_hogwild.commands.reference --check
}

# No suite may touch the user's files: everything in the checkout (a trained
# model_checkpoint.pth, data/, metrics included; caches of compiled Python
# aside) and git's view of it must be the same after the run as before.
# (The linters' own caches are theirs, as __pycache__ is Python's.)
caches='__pycache__|\.ruff_cache|\.import_linter_cache|\.pytest_cache'
checkout_state() {
  git status --porcelain --ignored --untracked-files=all 2>/dev/null | grep -Ev "$caches"
  find . -path ./.git -prune -o -type d \( -name __pycache__ -o -name .ruff_cache \
    -o -name .import_linter_cache -o -name .pytest_cache \) -prune -o -type f -print0 \
    | sort -z | xargs -0 sha1sum
}
checkout_unchanged() {
  if [ "$(checkout_state)" = "$checkout_before" ]; then
    echo "✅ no file in the checkout changed"
  else
    diff <(echo "$checkout_before") <(checkout_state) | head -20
    echo "❌ the tests changed files in the checkout"
    return 1
  fi
}
checkout_before=$(checkout_state)
started=$(date +%s)

stage "lint: black, ruff, import layers, README's generated reference" lint
if [ "$quick" = 1 ]; then
  stage "pytest -m 'not slow' (in-process tests, serve's included)" \
    "${prefix[@]}" python3 -m pytest -q -p no:cacheprovider -m "not slow" tests
else
  stage "pytest (every Python test, real trainers included)" \
    "${prefix[@]}" python3 -m pytest -v -p no:cacheprovider tests
  stage "tests/grading.sh (the image, the autograder's flow, the runtime contract)" \
    bash tests/grading.sh
  stage "tests/compose_test.sh (the course's train/evaluate/infer services)" \
    bash tests/compose_test.sh
  stage "tests/cluster_test.sh (several machines, as containers)" bash tests/cluster_test.sh
  stage "tests/cluster_faults.sh (three nodes: stops, a partition, a slow link, bad volumes)" \
    bash tests/cluster_faults.sh
  stage "tests/registry_test.sh (push to a local registry, pull, run)" \
    env SKIP_BUILD=1 bash tests/registry_test.sh
  stage "tests/mirror_test.sh (the build through a package mirror with its own CA)" \
    bash tests/mirror_test.sh
  stage "tests/soak.py --quick (fault injection, the CI subset)" \
    python3 tests/soak.py --quick --image "$IMAGE" --out "${SOAK_OUT:-/tmp/mnist-hogwild-soak}"
fi
stage "the checkout is as it was before the tests" checkout_unchanged

echo
echo "=== stages (seconds, result, what), $(($(date +%s) - started)) s in all:"
printf '%s\n' "${timings[@]}"
[ "$status" -eq 0 ] && echo "=== all test suites passed" || echo "=== some test suites FAILED"
exit "$status"
