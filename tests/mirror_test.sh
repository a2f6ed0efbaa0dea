#!/usr/bin/env bash
# The image builds behind a package mirror whose TLS certificate is signed by
# its own certificate authority, as a company's proxy is: a local HTTPS index
# (PEP 503 pages over the wheels of requirements.txt) given to `docker build`
# as --build-arg PIP_INDEX_URL and --build-arg CA_CERT, from a scratch copy of
# the checkout whose wheels/ is empty (so the build must use the index).
# Without CA_CERT the same build must fail on the certificate.
#
#   IMAGE=mnist-hogwild:grading bash tests/mirror_test.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
# shellcheck source=tests/lib.sh
. tests/lib.sh
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
BUILDER_IMAGE=${BUILDER_IMAGE:-$BASE_IMAGE}
tag="mnist-hogwild-mirror-test:$$"
work=$(mktemp -d /tmp/mnist-hogwild-mirror.XXXXXX)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  docker rmi -f "$tag" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

# The index: each wheel in simple/NAME/ (NAME normalised as PEP 503 says);
# the server's folder listing is the page of links pip reads.
mkdir -p "$work/wheels" "$work/simple"
if ls wheels/*.whl >/dev/null 2>&1; then
  cp -l wheels/*.whl "$work/wheels/" 2>/dev/null || cp wheels/*.whl "$work/wheels/"
else
  pip download --quiet --only-binary=:all: --python-version 3.11 -r requirements.txt \
    -d "$work/wheels" || { fail "no wheels for the index (pip download failed)"; report mirror; exit 1; }
fi
for whl in "$work"/wheels/*.whl; do
  name=$(basename "$whl" | cut -d- -f1 | tr '[:upper:]_.' '[:lower:]--')
  mkdir -p "$work/simple/$name"
  mv "$whl" "$work/simple/$name/"
done

# A certificate authority of the test's own, and the index's certificate signed by it.
(
  cd "$work" || exit 1
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=mirror test CA" \
    -keyout ca.key -out ca.pem
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >ext.cnf
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
    -extfile ext.cnf -out server.pem
) >"$work/openssl.log" 2>&1 || { cat "$work/openssl.log"; fail "openssl"; report mirror; exit 1; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 - "$work" "$port" >"$work/server.log" 2>&1 <<'PY' &
import functools, http.server, ssl, sys
work, port = sys.argv[1], int(sys.argv[2])
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=work)
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(f"{work}/server.pem", f"{work}/server.key")
server.socket = context.wrap_socket(server.socket, server_side=True)
print("serving", flush=True)
server.serve_forever()
PY
server_pid=$!
for _ in $(seq 100); do
  curl -fs --cacert "$work/ca.pem" "https://127.0.0.1:$port/simple/" >/dev/null && break
  sleep 0.1
done
curl -fs --cacert "$work/ca.pem" "https://127.0.0.1:$port/simple/torch/" | grep -q 'torch-' \
  && pass "a local HTTPS index with its own CA serves the wheels" \
  || { fail "the local index does not answer"; cat "$work/server.log"; report mirror; exit 1; }

# The checkout without its wheels: the build has nowhere else to go.
mkdir "$work/checkout"
copy_checkout "$work/checkout"
rm -rf "$work/checkout/wheels" && mkdir "$work/checkout/wheels"
cp wheels/README.md "$work/checkout/wheels/" 2>/dev/null || true
build() { # extra build arguments...
  docker build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg BUILDER_IMAGE="$BUILDER_IMAGE" \
    --build-arg PIP_INDEX_URL="https://127.0.0.1:$port/simple" "$@" -t "$tag" "$work/checkout"
}

if build >"$work/untrusted.log" 2>&1; then
  fail "the build went through an index whose certificate nothing vouches for"
else
  grep -q "CERTIFICATE_VERIFY_FAILED" "$work/untrusted.log" \
    && pass "without CA_CERT the build fails on the mirror's certificate" \
    || { tail -5 "$work/untrusted.log"; fail "without CA_CERT: failed, but not on the certificate"; }
fi
if build --build-arg CA_CERT="$(cat "$work/ca.pem")" >"$work/build.log" 2>&1; then
  pass "docker build --build-arg PIP_INDEX_URL=... --build-arg CA_CERT=... built the image"
else
  tail -15 "$work/build.log"; fail "the build through the mirror failed"
fi
grep -q '"GET /simple/torch/torch-[^ ]*\.whl HTTP/1.1" 200' "$work/server.log" \
  && pass "torch came from the mirror" || fail "the mirror served no torch wheel"
if docker image inspect "$tag" >/dev/null 2>&1; then
  out=$(docker run --rm "$tag" python -c 'import torch; print(torch.__version__)' 2>&1)
  echo "$out" | grep -q '+cpu' && pass "the image runs torch $out" || fail "the image's torch: $out"
fi
report mirror
