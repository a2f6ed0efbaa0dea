#!/usr/bin/env bash
# Several machines, as containers: two nodes of the image on a network made
# with `docker network create`, --cpus 1 each (DOCKER_CPUS) (main.py --nnodes, which runs
# torchrun's launcher; gloo between the leaders). Checks a whole job (equal
# checkpoints on both nodes, accuracy), docker stop of the node that does not
# host the rendezvous (both exit within 10 s, same checkpoint, --resume on
# both finishes), docker kill of a node (the survivor's one error line, its
# checkpoint intact), the plain torchrun form, compose.cluster.yaml with
# docker-compose, and docs/kubernetes.yaml's command line in containers named
# like its pods, two containers that share the machine's network (the
# second must say that its node id would be the first's), and two nodes
# sharing one folder with README's command and the default --checkpoint. Prints ✅/❌; exits non-zero on any ❌.
#
#   bash tests/cluster_test.sh     # IMAGE (default mnist-hogwild:grading) must be built
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
IMAGE=${IMAGE:-mnist-hogwild:grading}
# shellcheck source=tests/lib.sh
source tests/lib.sh
cluster_setup cluster-test 12800
compose_down() { (cd "$work" && IMAGE=$IMAGE docker-compose -p "$net" down -v >/dev/null 2>&1); }
trap 'compose_down; cluster_cleanup' EXIT

node() { # name, then flags: one node container, detached
  local name=$1
  shift
  docker run -d --name "$net-$name" --hostname "$name" --network "$net" --cpus "${DOCKER_CPUS:-1}" \
    -v "$work:/workspace" "$IMAGE" --nnodes 2 --rdzv-endpoint node0:29400 --rdzv-id test \
    --data-dir /workspace/data --num-processes 1 --sync-every 20 --log-interval 20 \
    --checkpoint "/workspace/$name/model_checkpoint.pth" "$@" >/dev/null
}
exit_code() { docker wait "$net-$1" 2>/dev/null; }
same_model() {
  docker run --rm -v "$work:/workspace" "$IMAGE" python -c "import torch
a, b = (torch.load(f'/workspace/{n}/model_checkpoint.pth', weights_only=True) for n in ('node0', 'node1'))
same = all(torch.equal(a['model_state'][k], b['model_state'][k]) for k in a['model_state'])
print('identical' if same and (a['epoch'], a['step']) == (b['epoch'], b['step']) else 'different')"
}
remove() { docker rm -f "$net-node0" "$net-node1" >/dev/null 2>&1; }

echo "== 1. a whole job: 2 nodes x --cpus ${DOCKER_CPUS:-1}, 2 epochs"
node node0 --epochs 2
node node1 --epochs 2
c0=$(exit_code node0) c1=$(exit_code node1)
docker logs "$net-node0" 2>&1 | grep -E "epoch 2/2:|syncs took" || true
[ "$c0:$c1" = 0:0 ] && pass "both nodes finished" || fail "exit codes $c0 and $c1"
[ "$(same_model)" = identical ] && pass "both nodes' checkpoints hold bitwise the same model" \
  || fail "the nodes' checkpoints differ"
acc=$(field /workspace/node0/model_checkpoint.pth "s['metrics'][-1]['accuracy_percent']")
python3 -c "import sys; sys.exit(not ${acc:-0} >= 90)" && pass "accuracy $acc%" || fail "accuracy ${acc:-none}% < 90%"
docker logs "$net-node0" 2>&1 | grep Traceback >/dev/null && fail "a traceback in node0's log" || true
remove
rm -rf "$work/node0" "$work/node1"

echo "== 2. docker stop of node1 (node0 hosts the rendezvous), then --resume on both"
node node0 --epochs 3 --resume
node node1 --epochs 3 --resume
wait_log node1 "epoch 1/3 \[" 120 || fail "node1 never trained"
start=$(date +%s%N)
docker stop "$net-node1" >/dev/null &
c1=$(exit_code node1) c0=$(exit_code node0)
wait
ms=$((($(date +%s%N) - start) / 1000000))
echo "both nodes exited ${ms} ms after docker stop (exit codes: node0 $c0, node1 $c1)"
[ "$ms" -le 10000 ] && pass "every node exited within 10 s" || fail "took ${ms} ms"
[ "$c1" = 130 ] && [ "$c0" = 130 ] && pass "every node exits 130: stopped, resumable (0 means complete)" \
  || fail "exit codes $c0 and $c1"
docker logs "$net-node0" 2>&1 | grep "stopped by" || true
[ "$(same_model)" = identical ] && pass "both saved the same checkpoint" || fail "checkpoints differ"
if docker logs "$net-node0" 2>&1 | grep Traceback >/dev/null || docker logs "$net-node1" 2>&1 | grep Traceback >/dev/null; then
  fail "a traceback in a node's log"
fi
remove
node node0 --epochs 3 --resume
node node1 --epochs 3 --resume
c0=$(exit_code node0) c1=$(exit_code node1)
docker logs "$net-node1" 2>&1 | grep -E "^resuming" || true
[ "$c0:$c1" = 0:0 ] && [ "$(field /workspace/node1/model_checkpoint.pth "s['epoch']")" = 3 ] \
  && pass "--resume on both nodes finished the job" || fail "resume: exit codes $c0 and $c1"
remove

echo "== 2b. one folder shared by both nodes (an NFS home): README's command, default --checkpoint"
mkdir -p "$work/shared" && cp -r "$work/data" "$work/shared/"
shared_node() { # name, then flags: README's several-machines command on the shared folder
  local name=$1
  shift
  docker run -d --name "$net-$name" --hostname "$name" --network "$net" --cpus "${DOCKER_CPUS:-1}" \
    -v "$work/shared:/workspace" "$IMAGE" --nnodes 2 --rdzv-endpoint node0:29400 --rdzv-id shared \
    --resume --num-processes 1 --sync-every 20 --log-interval 20 "$@" >/dev/null
}
shared_field() { field /workspace/shared/model_checkpoint.pth "$1"; }
shared_node node0 --epochs 1
shared_node node1 --epochs 1
c0=$(exit_code node0) c1=$(exit_code node1)
[ "$c0:$c1" = 0:0 ] && [ "$(shared_field "s['epoch']")" = 1 ] \
  && pass "a whole job on one shared folder: both exit 0, one checkpoint" \
  || { docker logs "$net-node1" 2>&1 | tail -3; fail "shared folder: exit codes $c0 and $c1"; }
docker logs "$net-node1" 2>&1 | grep "writes model_checkpoint.pth (a folder they share)" || true
remove
shared_node node0 --epochs 3
shared_node node1 --epochs 3
wait_log node1 "epoch 2/3 \[" 120 || fail "the shared job never trained its second epoch"
docker stop "$net-node1" >/dev/null &
c1=$(exit_code node1) c0=$(exit_code node0)
wait
[ "$c0:$c1" = 130:130 ] && pass "docker stop of one node sharing the folder: both exit 130" \
  || fail "shared folder, docker stop: exit codes $c0 and $c1"
remove
shared_node node0 --epochs 3
shared_node node1 --epochs 3
c0=$(exit_code node0) c1=$(exit_code node1)
[ "$c0:$c1" = 0:0 ] && [ "$(shared_field "s['epoch']")" = 3 ] \
  && pass "both restarted with --resume on the shared folder finished the job" \
  || fail "shared folder, resume: exit codes $c0 and $c1"
files=$(find "$work/shared" -mindepth 1 -maxdepth 1 ! -name data -printf '%f\n' | LC_ALL=C sort | tr '\n' ' ')
[ "$files" = ".model_checkpoint.lock model_checkpoint.best.pth model_checkpoint.metrics.csv model_checkpoint.metrics.jsonl model_checkpoint.models model_checkpoint.pth " ] \
  && pass "one set of files in the shared folder: $files" || fail "files in the shared folder: $files"
remove

echo "== 3. docker kill of node1: the survivor says so and keeps its checkpoint"
rm -rf "$work/node0" "$work/node1"
node node0 --epochs 3 --sync-timeout 10
node node1 --epochs 3 --sync-timeout 10
wait_log node0 "epoch 1/3: test loss" 120 || fail "node0 never finished an epoch"
wait_log node0 "epoch 2/3 \[" 60
docker kill "$net-node1" >/dev/null
start=$(date +%s)
c0=$(exit_code node0)
echo "node0 exited $c0, $(($(date +%s) - start)) s after the kill"
docker logs "$net-node0" 2>&1 | grep "^error:" || true
[ "$c0" = 75 ] && docker logs "$net-node0" 2>&1 | grep "lost contact with the other nodes" >/dev/null \
  && pass "the survivor exits 75 (a peer was lost) with one clear line" || fail "survivor: exit $c0"
[ "$(field /workspace/node0/model_checkpoint.pth "s['epoch']")" = 1 ] \
  && pass "its checkpoint is intact (epoch 1)" || fail "no intact checkpoint"
remove

echo "== 4. the plain torchrun form, inside the image"
rm -rf "$work/node0" "$work/node1"
for name in node0 node1; do
  docker run -d --name "$net-$name" --hostname "$name" --network "$net" --cpus "${DOCKER_CPUS:-1}" \
    -v "$work:/workspace" "$IMAGE" torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d \
    --rdzv-endpoint node0:29400 --rdzv-id plain /opt/mnist-hogwild/main.py \
    --data-dir /workspace/data --num-processes 1 --epochs 1 \
    --checkpoint "/workspace/$name/model_checkpoint.pth" >/dev/null
done
c0=$(exit_code node0) c1=$(exit_code node1)
[ "$c0:$c1" = 0:0 ] && [ "$(same_model)" = identical ] && pass "torchrun ... main.py: a whole job" \
  || fail "plain torchrun: exit codes $c0 and $c1"
remove

echo "== 5. compose.cluster.yaml with docker-compose"
if command -v docker-compose >/dev/null; then
  cp compose.cluster.yaml "$work/compose.yaml"
  (cd "$work" && IMAGE=$IMAGE EPOCHS=1 SYNC_EVERY=20 timeout 300 docker-compose -p "$net" up \
    --abort-on-container-exit >"$work/compose.log" 2>&1)
  rc=$?
  ok=$(cd "$work" && docker-compose -p "$net" ps -q | xargs -r docker inspect --format '{{.State.ExitCode}}' | sort -u)
  grep -E "epoch 1/1:" "$work/compose.log" | head -2
  [ "$rc" = 0 ] && [ "$ok" = 0 ] && pass "docker-compose up: both nodes finished" \
    || fail "docker-compose up: exit $rc, container exit codes $ok"
else
  fail "docker-compose is not installed"
fi

echo "== 6. docs/kubernetes.yaml's command line, in containers named like its pods (pod 0 last)"
mapfile -t k8s_args < <(python3 - <<'EOF2'
import yaml
job = next(d for d in yaml.safe_load_all(open("docs/kubernetes.yaml")) if d and d["kind"] == "Job")
for arg in job["spec"]["template"]["spec"]["containers"][0]["args"]:
    print(arg.replace("$(RDZV_ID)", "3f2a-job-uid"))
EOF2
)
if [ "${#k8s_args[@]}" -lt 3 ]; then
  fail "could not read the Job's args from docs/kubernetes.yaml (PyYAML: pip install -r requirements-dev.txt)"
else
  mkdir -p "$work/k8s" && chmod 777 "$work/k8s"
  pod() { # index
    local args=("${k8s_args[@]//\$(JOB_COMPLETION_INDEX)/$1}")
    docker run -d --name "$net-pod$1" --hostname "mnist-hogwild-$1" --network "$net" \
      --network-alias "mnist-hogwild-$1.mnist-hogwild" --cpus "${DOCKER_CPUS:-1}" -e "JOB_COMPLETION_INDEX=$1" \
      -v "$work/k8s:/checkpoints" -v "$work/data:/data:ro" "$IMAGE" "${args[@]}" --epochs 1 >/dev/null
  }
  pod 1
  wait_log pod1 "waiting for the rendezvous host" 60 && pass "pod 1 waits aloud for pod 0's name" \
    || fail "pod 1 did not say what it waits for"
  pod 0
  p0=$(docker wait "$net-pod0") p1=$(docker wait "$net-pod1")
  docker logs "$net-pod0" 2>&1 | grep -E "^epoch 1/1:|^error" || true
  [ "$p0:$p1" = 0:0 ] && [ -f "$work/k8s/node-0/model_checkpoint.pth" ] && [ -f "$work/k8s/node-1/model_checkpoint.pth" ] \
    && pass "both pods finished, each with its checkpoint in its own folder" || fail "pods exited $p0 and $p1"
  docker rm -f "$net-pod0" "$net-pod1" >/dev/null 2>&1
fi

echo "== 7. two containers sharing this machine's network (--network host): the second says why it cannot join"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
host_node() { # name, then docker run's mode flags
  local name=$1
  shift
  docker run "$@" --name "$net-$name" --network host -v "$work:/workspace" "$IMAGE" --nnodes 2 \
    --rdzv-endpoint "127.0.0.1:$port" --rdzv-id host-net --data-dir /workspace/data --epochs 1 \
    --checkpoint "/workspace/$name/model_checkpoint.pth"
}
host_node hostA -d >/dev/null
listening=no
for _ in $(seq 600); do # the premise: node A hosts the rendezvous store on the port
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && { listening=yes; break; }
  sleep 0.1
done
if [ "$listening" = yes ]; then
  t0=$(date +%s)
  host_node hostB -d >/dev/null
  rc=$(timeout 120 docker wait "$net-hostB") took=$(($(date +%s) - t0))
  out=$(docker logs "$net-hostB" 2>&1)
  echo "$out" | tail -1
  if [ "$rc" = 2 ] && [ "$took" -le 30 ] && echo "$out" | grep "same node id" >/dev/null; then
    pass "node B exited 2 in ${took} s, naming the shared node id"
  else
    fail "node B: exit ${rc:-none (still running)} after ${took} s, not the one line about the node id"
  fi
else
  fail "node A never hosted the rendezvous on port $port"
fi
docker rm -f "$net-hostA" "$net-hostB" >/dev/null 2>&1

report "cluster"
