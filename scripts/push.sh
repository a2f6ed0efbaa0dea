#!/usr/bin/env bash
# Tag the local image as REPO:VERSION and REPO:latest and push both.
#
#   docker login                                  # once, as yourself
#   IMAGE_REPO=yourname/mnist-hogwild scripts/push.sh
#
# Environment:
#   IMAGE_REPO  required: repository on the registry, e.g. yourname/mnist-hogwild
#   REGISTRY    registry host (default: docker.io, i.e. Docker Hub)
#   VERSION     tag (default: the version in pyproject.toml)
#   IMAGE       local image to push (default: mnist-hogwild:latest)
set -euo pipefail
cd "$(dirname "$0")/.."

: "${IMAGE_REPO:?set IMAGE_REPO, e.g. IMAGE_REPO=yourname/mnist-hogwild}"
REGISTRY=${REGISTRY:-docker.io}
IMAGE=${IMAGE:-mnist-hogwild:latest}
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}
[ -n "$VERSION" ] || { echo "push: no VERSION and none in pyproject.toml" >&2; exit 1; }
docker image inspect "$IMAGE" >/dev/null 2>&1 || { echo "push: no local image $IMAGE (docker build -t $IMAGE .)" >&2; exit 1; }

target="$REGISTRY/$IMAGE_REPO"
for tag in "$VERSION" latest; do
  docker tag "$IMAGE" "$target:$tag"
  docker push "$target:$tag"
  echo "pushed $target:$tag"
done
