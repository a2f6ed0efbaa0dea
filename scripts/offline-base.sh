#!/usr/bin/env bash
# Build Python 3.11 base images from Debian packages, for hosts that cannot
# pull python:3.11-slim from a registry, and fill wheels/ so that the image
# build itself needs no network at all.
#
#   scripts/offline-base.sh            # builds both images and wheels/
#   CUDA=1 scripts/offline-base.sh     # also wheels/cuda/ for TORCH_VARIANT=cuda (2.6 GB)
#
# Produces:
#   $BASE_IMAGE     (default mnist-hogwild-base:bookworm)    python3 + venv
#   $BUILDER_IMAGE  (default mnist-hogwild-builder:bookworm) the same + binutils
#                   (the builder stage strips torch's shared libraries)
# Needs: root, debootstrap, docker, pip, and a reachable Debian mirror/PyPI.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-mnist-hogwild-base:bookworm}
BUILDER_IMAGE=${BUILDER_IMAGE:-mnist-hogwild-builder:bookworm}
SUITE=${SUITE:-bookworm}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/offline-base.XXXXXX")
trap 'rm -rf "$work"' EXIT

command -v debootstrap >/dev/null || { echo "offline-base: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

make_image() { # name packages
  local name=$1 packages=$2 rootfs="$work/rootfs-${1//[:\/]/_}"
  if docker image inspect "$name" >/dev/null 2>&1; then
    echo "offline-base: $name exists, keeping it"
    return
  fi
  echo "offline-base: debootstrap $SUITE ($packages) -> $name"
  mkdir -p "$work/cache"
  debootstrap --variant=minbase --cache-dir="$work/cache" --include="$packages" \
    "$SUITE" "$rootfs" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    echo "offline-base: debootstrap failed" >&2
    exit 1
  }
  # What python:3.11-slim also trims: package caches and lists, docs.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$name" >/dev/null
  echo "offline-base: built $name ($(docker image inspect --format '{{.Size}}' "$name") bytes)"
}

make_image "$BASE_IMAGE" python3,python3-venv
make_image "$BUILDER_IMAGE" python3,python3-venv,binutils

echo "offline-base: pip download -r requirements.txt -d wheels/"
# Wheels for the image's Python (3.11) on this machine's architecture.
pip download --quiet --only-binary=:all: --python-version 3.11 \
  -r "$here/requirements.txt" -d "$here/wheels"
ls "$here/wheels"

if [ "${CUDA:-0}" = 1 ]; then
  echo "offline-base: pip download torch (CUDA build) and its nvidia-* packages -d wheels/cuda/"
  # --isolated: ignore pip's configuration, which may point at a local CPU
  # build of torch; PyPI's own torch==X is the CUDA build. --cert: the system's
  # certificate store (isolated mode does not read pip's own setting for it).
  pip download --isolated --cert /etc/ssl/certs/ca-certificates.crt --quiet \
    --only-binary=:all: --python-version 3.11 \
    -r "$here/requirements.txt" -d "$here/wheels/cuda"
  du -sh "$here/wheels/cuda"
fi
