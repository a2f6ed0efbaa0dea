# mnist-hogwild: a small CPU-only training image.
#
#   docker build -t mnist-hogwild .
#   docker run --rm -v "$PWD:/workspace" mnist-hogwild --num-processes 2
#
# Air-gapped hosts: scripts/offline-base.sh builds Debian-based Python 3.11
# base images and fills wheels/, then
#   docker build --build-arg BASE_IMAGE=mnist-hogwild-base:bookworm \
#                --build-arg BUILDER_IMAGE=mnist-hogwild-builder:bookworm -t mnist-hogwild .
# (works with the classic builder and with BuildKit).

ARG BASE_IMAGE=python:3.11-slim
ARG BUILDER_IMAGE=${BASE_IMAGE}

# ---------------------------------------------------------------- builder
FROM ${BUILDER_IMAGE} AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# strip(1) shrinks torch's libraries; the offline builder image already has it.
# Not pinned (DL3008): the version is whatever the base image's Debian ships,
# and it only runs at build time.
# hadolint ignore=DL3008
RUN command -v strip >/dev/null \
    || (apt-get update && apt-get install -y --no-install-recommends binutils \
        && rm -rf /var/lib/apt/lists/*)
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/build/requirements.txt
COPY wheels/ /tmp/build/wheels/
# wheels/ holding wheels means "no network": install only from it.
RUN if ls /tmp/build/wheels/*.whl >/dev/null 2>&1; then \
        /opt/venv/bin/pip install --no-index --find-links /tmp/build/wheels \
            -r /tmp/build/requirements.txt; \
    else \
        /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" \
            --extra-index-url https://pypi.org/simple -r /tmp/build/requirements.txt; \
    fi
# Trim what import and training never load (measured: 588 MB -> see README):
# - torch's C++ headers, CMake files, test libraries and build tools
#   (torch_shm_manager stays: torch looks for it at import);
# - every package's own tests/ and benchmarks/ folders (46 MB in sympy and
#   networkx), type stubs (*.pyi) and C headers (*.h);
# - pip and setuptools (installers, not run time); networkx (only torch.compile's
#   graph partitioners use it; this image trains eagerly);
# - the symbol tables of the shared libraries (about 90 MB of libtorch_cpu.so).
# The .pyc files stay: without them every start compiles torch again, and
# importing torch took 3.4 s instead of 2.1 s here.
RUN set -eu; \
    site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    rm -rf "$site/torch/test" "$site/torch/include" "$site/torch/share" \
        "$site/torchgen/packaged" "$site"/torch/lib/*test*.so \
        "$site"/torch/lib/libbackend_with_compiler.so "$site"/torch/lib/libaoti_custom_ops.so \
        "$site"/pip "$site"/pip-* "$site"/setuptools "$site"/setuptools-* \
        "$site"/_distutils_hack "$site"/distutils-precedence.pth \
        "$site"/networkx "$site"/networkx-* /opt/venv/bin/pip*; \
    find "$site" -depth -type d \( -name tests -o -name benchmarks \) -exec rm -rf {} +; \
    find "$site" -type f \( -name '*.pyi' -o -name '*.h' \) -delete; \
    find "$site/torch/bin" -type f ! -name torch_shm_manager -delete; \
    find /opt/venv -name '*.so*' -type f -exec strip --strip-unneeded {} +; \
    /opt/venv/bin/python -c 'import torch; m = torch.nn.Conv2d(1, 2, 3); \
        o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.5); \
        m(torch.zeros(1, 1, 5, 5)).sum().backward(); o.step()'

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mnist-hogwild" \
      org.opencontainers.image.description="Hogwild multiprocess MNIST training on CPU with checkpoints that survive docker stop and exact --resume" \
      org.opencontainers.image.source="https://github.com/mnist-hogwild/mnist-hogwild" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="BSD-3-Clause"
# numpy is not installed (nothing here needs it); torch warns about that at
# every import, so that one warning is silenced.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONWARNINGS="ignore:Failed to initialize NumPy"
COPY --from=builder /opt/venv /opt/venv
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# The code lives in /opt/mnist-hogwild (the default command), and also in
# /workspace so that `docker run IMAGE python /workspace/train.py` works with
# or without a volume there (the course autograder mounts the repository).
# Every top-level *.py is a module (.dockerignore keeps the rest out).
COPY *.py /opt/mnist-hogwild/
COPY *.py /workspace/
# Any uid may write here when no volume is mounted (docker run --user).
RUN chmod 1777 /workspace
WORKDIR /workspace
# Python gets SIGINT (exec'd by the entrypoint, PID 1): it saves a checkpoint.
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["python", "/opt/mnist-hogwild/main.py"]
