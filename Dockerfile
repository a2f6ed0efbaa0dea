# mnist-hogwild: a small CPU-only training image, or (TORCH_VARIANT=cuda) a GPU one.
#
#   docker build -t mnist-hogwild .
#   docker run --rm -v "$PWD:/workspace" mnist-hogwild --num-processes 2
#   docker build --build-arg TORCH_VARIANT=cuda -t mnist-hogwild:cuda .
#   docker run --rm --gpus all -v "$PWD:/workspace" mnist-hogwild:cuda --num-processes 8
#
# Behind a package mirror or a proxy that re-signs TLS with its own CA:
#   docker build --build-arg PIP_INDEX_URL=https://mirror.example/simple \
#                --build-arg CA_CERT="$(cat company-ca.pem)" -t mnist-hogwild .
# (PIP_EXTRA_INDEX_URL too; the mirror must hold torch's CPU build, or the
# build takes PyPI's default CUDA one.)
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
# cpu: torch's CPU build from its own index. cuda: PyPI's default Linux wheel,
# which is the CUDA build and brings the CUDA runtime as nvidia-* packages, so
# no NVIDIA base image is needed (the host's driver comes in with --gpus).
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# A package mirror (pip reads these two from the environment) and the PEM text
# of a CA certificate that pip trusts besides the ones it ships
# (tests/mirror_test.sh builds through such a mirror).
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG CA_CERT=""
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
# Wheels in wheels/ (cpu) or wheels/cuda/ (cuda) mean "no network": install
# only from them (scripts/offline-base.sh fills them). $index is a list of options.
# hadolint ignore=SC2086
RUN set -eu; \
    case "$TORCH_VARIANT" in \
        cpu) wheels=/tmp/build/wheels; index="--index-url $TORCH_INDEX_URL --extra-index-url https://pypi.org/simple" ;; \
        cuda) wheels=/tmp/build/wheels/cuda; index="" ;; \
        *) echo "TORCH_VARIANT must be cpu or cuda, not $TORCH_VARIANT" >&2; exit 1 ;; \
    esac; \
    if [ -n "$PIP_INDEX_URL" ]; then index=""; fi; \
    [ -n "$PIP_INDEX_URL" ] || unset PIP_INDEX_URL; \
    [ -n "$PIP_EXTRA_INDEX_URL" ] || unset PIP_EXTRA_INDEX_URL; \
    if [ -n "$CA_CERT" ]; then \
        /opt/venv/bin/python -c 'import os; from pip._vendor import certifi as c; \
            p = c.where(); print(open(p).read() if os.path.exists(p) else "")' > /tmp/build/ca.pem; \
        printf '%s\n' "$CA_CERT" >> /tmp/build/ca.pem; \
        export PIP_CERT=/tmp/build/ca.pem; \
    fi; \
    if ls "$wheels"/*.whl >/dev/null 2>&1; then \
        /opt/venv/bin/pip install --no-index --find-links "$wheels" -r /tmp/build/requirements.txt; \
    else \
        /opt/venv/bin/pip install $index -r /tmp/build/requirements.txt; \
    fi; \
    rm -rf /tmp/build/wheels /tmp/build/ca.pem
# Trim what import and training never load (measured: 588 MB -> see README):
# - torch's C++ headers, CMake files, test libraries and build tools
#   (torch_shm_manager stays: torch looks for it at import);
# - every package's own tests/ and benchmarks/ folders (46 MB in sympy and
#   networkx), type stubs (*.pyi) and C headers (*.h);
# - pip and setuptools (installers, not run time); networkx stays: torch.export
#   (the export command's default format) imports it;
# - Pillow's AVIF codec and Tk bridge (the commands read PNG, JPEG and the like;
#   Pillow imports each codec only when a file needs it);
# - matplotlib (evaluate --plot and plot draw PNG with Agg, in DejaVu Sans):
#   its other fonts (STIX, Computer Modern, Serif, Mono), the fontTools
#   subpackages that only font editing and PDF/PS output use (Agg loads
#   fontTools.agl and fontTools.misc), and numpy's f2py and distutils (build
#   tools); mpl_toolkits stays: matplotlib warns at every figure without it;
# - the symbol tables of the shared libraries (about 90 MB of libtorch_cpu.so),
#   but numpy's OpenBLAS, which no longer loads once stripped;
#   cpu only: the CUDA variant's libraries are left as NVIDIA and PyPI ship them.
# The .pyc files stay: without them every start compiles torch again, and
# importing torch took 3.4 s instead of 2.1 s here.
RUN set -eu; \
    site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    rm -rf "$site/torch/test" "$site/torch/include" "$site/torch/share" \
        "$site/torchgen/packaged" "$site"/torch/lib/*test*.so \
        "$site"/torch/lib/libbackend_with_compiler.so "$site"/torch/lib/libaoti_custom_ops.so \
        "$site"/pip "$site"/pip-* "$site"/setuptools "$site"/setuptools-* \
        "$site"/_distutils_hack "$site"/distutils-precedence.pth /opt/venv/bin/pip* \
        "$site"/PIL/_avif.* "$site"/PIL/_imagingtk.* "$site"/pillow.libs/libavif-* \
        "$site"/numpy/f2py "$site"/numpy/distutils /opt/venv/bin/f2py; \
    find "$site/matplotlib/mpl-data/fonts" -type f ! -name 'DejaVuSans.ttf' \
        ! -name 'DejaVuSans-*.ttf' ! -name 'LastResort*' ! -name 'LICENSE*' -delete; \
    find "$site/fontTools" -mindepth 1 -maxdepth 1 ! -name __init__.py ! -name agl.py \
        ! -name misc ! -name __pycache__ -exec rm -rf {} +; \
    find "$site" -depth -type d \( -name tests -o -name benchmarks \) -exec rm -rf {} +; \
    find "$site" -type f \( -name '*.pyi' -o -name '*.h' \) -delete; \
    find "$site/torch/bin" -type f ! -name torch_shm_manager -delete; \
    if [ "$TORCH_VARIANT" = cpu ]; then \
        find /opt/venv -name '*.so*' -type f ! -path '*/numpy.libs/*' \
            -exec strip --strip-unneeded {} +; \
    fi; \
    MPLCONFIGDIR=/opt/venv/mplconfig /opt/venv/bin/python -c 'import torch; m = torch.nn.Conv2d(1, 2, 3); \
        o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.5); \
        m(torch.zeros(1, 1, 5, 5)).sum().backward(); o.step(); \
        torch.export.export(m.eval(), (torch.zeros(1, 1, 5, 5),)); \
        from PIL import Image, ImageDraw; i = Image.new("L", (9, 9)); \
        ImageDraw.Draw(i).text((0, 0), "1"); import io; i.save(io.BytesIO(), "PNG"); \
        i.convert("RGB").save(io.BytesIO(), "JPEG"); \
        from matplotlib.figure import Figure; f = Figure(); a = f.add_subplot(); \
        a.imshow([[0, 1], [1, 0]]); a.plot([1, 2], [3, 4], "o-"); a.set_xlabel("x"); \
        a.text(0, 0, "7", weight="bold"); f.savefig(io.BytesIO(), format="png")'

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="mnist-hogwild" \
      org.opencontainers.image.description="Hogwild multiprocess MNIST training (torch: ${TORCH_VARIANT}) with checkpoints that survive docker stop and exact --resume" \
      org.opencontainers.image.source="https://github.com/mnist-hogwild/mnist-hogwild" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="BSD-3-Clause"
# MPLCONFIGDIR: matplotlib's font list, made once at build time (the sanity
# check draws a figure) instead of at every picture; writable by any uid
# (docker run --user), since matplotlib warns where it cannot write there.
# NVIDIA_DRIVER_CAPABILITIES: what the NVIDIA Container Toolkit mounts from the
# host's driver under --gpus (compute: CUDA; utility: nvidia-smi). Inert without it.
# MNIST_HOGWILD_IMAGE: `serve` listens on 0.0.0.0 here (docker run -p reaches it),
# on 127.0.0.1 outside the image.
# TORCH_DISABLE_SHARE_RDZV_TCP_STORE: plain torchrun in this image restarts
# leaders as main.py --nnodes does, in a fresh store each round (launcher.py).
ENV PATH=/opt/venv/bin:$PATH \
    MNIST_HOGWILD_IMAGE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/opt/venv/mplconfig
COPY --from=builder /opt/venv /opt/venv
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# The code lives in /opt/mnist-hogwild (the default command), and also in
# /workspace so that `docker run IMAGE python /workspace/train.py` works with
# or without a volume there (the course autograder mounts the repository).
# The entry points (main.py, train.py) and the network (model.py) at the top,
# the rest in the mnist_hogwild package (.dockerignore keeps the rest out).
COPY *.py /opt/mnist-hogwild/
COPY mnist_hogwild/ /opt/mnist-hogwild/mnist_hogwild/
# Compiled once here: PYTHONDONTWRITEBYTECODE keeps every process (a node's
# launcher and its leader, both) from caching what it compiles at start.
RUN python -m compileall -q /opt/mnist-hogwild
COPY *.py /workspace/
COPY mnist_hogwild/ /workspace/mnist_hogwild/
# Any uid may write here when no volume is mounted (docker run --user).
RUN chmod 1777 /workspace /opt/venv/mplconfig
WORKDIR /workspace
# Python gets SIGINT (exec'd by the entrypoint, PID 1): it saves a checkpoint.
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["python", "/opt/mnist-hogwild/main.py"]
