#!/usr/bin/env bash
# The whole test suite: unit and trainer tests (pytest), the image and
# container checks (tests/grading.sh), the course's Compose services
# (tests/compose_test.sh), several nodes as containers (tests/cluster_test.sh,
# and under network faults tests/cluster_faults.sh), the registry push test,
# and the quick fault-injection soak (tests/soak.py --quick).
# Needs a running Docker engine; see README "Tests".
#
#   bash tests/run.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export IMAGE=${IMAGE:-mnist-hogwild:grading}
status=0
# SLOW=1: the same suite on a slower machine: pytest on one core, containers
# with half a CPU (tests must hold at any speed; see docs/development.md).
prefix=()
if [ "${SLOW:-0}" = 1 ]; then
  prefix=(taskset -c 0)
  export DOCKER_CPUS=${DOCKER_CPUS:-0.5}
  echo "=== SLOW=1: pytest under taskset -c 0, containers with --cpus $DOCKER_CPUS"
fi

# No suite may touch the user's files: everything in the checkout (a trained
# model_checkpoint.pth, data/, metrics included; caches of compiled Python
# aside) and git's view of it must be the same after the run as before.
checkout_state() {
  git status --porcelain --ignored --untracked-files=all 2>/dev/null | grep -v __pycache__
  find . -path ./.git -prune -o -name __pycache__ -prune -o -type f -print0 \
    | sort -z | xargs -0 sha1sum
}
checkout_before=$(checkout_state)

echo "=== pytest"
"${prefix[@]}" python3 -m pytest -v -p no:cacheprovider tests || status=1
echo "=== tests/grading.sh"
bash tests/grading.sh || status=1
echo "=== tests/compose_test.sh (the course's train/evaluate/infer services)"
bash tests/compose_test.sh || status=1
echo "=== tests/cluster_test.sh (several machines, as containers)"
bash tests/cluster_test.sh || status=1
echo "=== tests/cluster_faults.sh (three nodes: stops, a partition, a slow link, bad volumes)"
bash tests/cluster_faults.sh || status=1
echo "=== tests/registry_test.sh"
SKIP_BUILD=1 bash tests/registry_test.sh || status=1
echo "=== tests/soak.py --quick (fault injection, the CI subset)"
python3 tests/soak.py --quick --image "$IMAGE" --out "${SOAK_OUT:-/tmp/mnist-hogwild-soak}" || status=1

echo "=== the checkout is as it was before the tests"
if [ "$(checkout_state)" = "$checkout_before" ]; then
  echo "✅ no file in the checkout changed"
else
  diff <(echo "$checkout_before") <(checkout_state) | head -20
  echo "❌ the tests changed files in the checkout"
  status=1
fi

[ "$status" -eq 0 ] && echo "=== all test suites passed" || echo "=== some test suites FAILED"
exit "$status"
