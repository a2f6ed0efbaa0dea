#!/usr/bin/env bash
# Push to a real registry on localhost (Debian's docker-registry package), drop
# the local tags, pull the image back and run it.
#
#   IMAGE=mnist-hogwild:grading bash tests/registry_test.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
IMAGE=${IMAGE:-mnist-hogwild:grading}
PORT=${REGISTRY_PORT:-5000}
REGISTRY="127.0.0.1:$PORT"
REPO=test/mnist-hogwild
VERSION=0.0.0-test$$

command -v docker-registry >/dev/null || { echo "❌ docker-registry is not installed (apt-get install docker-registry)"; exit 1; }
work=$(mktemp -d)
cat >"$work/config.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/storage
  delete:
    enabled: true
http:
  addr: $REGISTRY
YAML
docker-registry serve "$work/config.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
cleanup() {
  kill "$registry_pid" 2>/dev/null
  wait "$registry_pid" 2>/dev/null
  docker rmi "$REGISTRY/$REPO:$VERSION" "$REGISTRY/$REPO:latest" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 50); do
  curl -fs "http://$REGISTRY/v2/" >/dev/null 2>&1 && break
  sleep 0.2
done

failures=0
if REGISTRY=$REGISTRY IMAGE_REPO=$REPO VERSION=$VERSION IMAGE=$IMAGE scripts/push.sh >"$work/push.log" 2>&1; then
  echo "✅ pushed $REGISTRY/$REPO:$VERSION and :latest"
else
  tail -5 "$work/push.log"; echo "❌ push failed"; exit 1
fi
tags=$(curl -fs "http://$REGISTRY/v2/$REPO/tags/list")
echo "registry lists: $tags"
echo "$tags" | grep "\"$VERSION\"" >/dev/null && echo "$tags" | grep '"latest"' >/dev/null \
  && echo "✅ both tags are in the registry" || { echo "❌ tags missing"; failures=$((failures + 1)); }
docker rmi "$REGISTRY/$REPO:$VERSION" "$REGISTRY/$REPO:latest" >/dev/null
if docker pull -q "$REGISTRY/$REPO:$VERSION" >/dev/null && docker run --rm "$REGISTRY/$REPO:$VERSION" --help | grep -- "--resume" >/dev/null; then
  echo "✅ pulled back and ran --help"
else
  echo "❌ pull or run of the pushed image failed"; failures=$((failures + 1))
fi
[ "$failures" -eq 0 ] && echo "✅ registry push test passed" || { echo "❌ registry push test failed"; exit 1; }
