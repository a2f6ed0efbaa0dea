#!/usr/bin/env bash
# The checks that need the accelerator machine (a GPU, 16 CPU cores, torch
# preinstalled, no Docker, no network), as one command that installs nothing:
#
#   bash scripts/device_check.sh DATA_DIR OUT_DIR     # DATA_DIR holds MNIST/raw
#
# Each step has its own timeout (their sum bounds the whole) and log; each
# result goes to OUT_DIR/results.jsonl and results.md the moment it is known,
# and a step that fails or hangs adds its exit code and last lines. Environment
# (docs/development.md): DEVICE=cpu rehearses on the CPU; SCALE=F stretches the
# timeouts; HANG_STEP=NAME [HANG_SECONDS=N] makes a step hang; STEPS="a b" runs
# only those.
set -uo pipefail
data=$(cd "${1:?usage: device_check.sh DATA_DIR OUT_DIR}" && pwd)
out=${2:?usage: device_check.sh DATA_DIR OUT_DIR}
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
device=${DEVICE:-cuda}
scale=${SCALE:-1}
started=$(date +%s)
status=0

record() { # step, what, value, ok (true/false/null)
  python3 - "$out/results.jsonl" "$@" <<'EOF'
import json, sys, time
path, step, what, value, ok = sys.argv[1:6]
with open(path, "a") as f:
    f.write(json.dumps({"step": step, "what": what, "value": value,
                        "ok": {"true": True, "false": False}.get(ok), "at": time.time()}) + "\n")
EOF
}

step() { # name, timeout in seconds, command...
  local name=$1 limit
  limit=$(python3 -c "print(max(1, round($2 * $scale)))")
  shift 2
  case " ${STEPS:-$name} " in *" $name "*) ;; *) return 0 ;; esac
  echo "== $name (at most ${limit} s)"
  local t0 rc
  t0=$(date +%s)
  if [ "${HANG_STEP:-}" = "$name" ]; then
    limit=${HANG_SECONDS:-$limit}
    timeout "$limit" sleep 100000 >"$out/$name.log" 2>&1
  else
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
  fi
  rc=$?
  tail -3 "$out/$name.log"
  if [ "$rc" -ne 0 ]; then
    status=1
    local why="exit $rc"
    [ "$rc" -eq 124 ] && why="timed out after ${limit} s"
    record "$name" "step failed: $why; last lines: $(tail -5 "$out/$name.log" | tr '\n' '|' | cut -c1-600)" "$rc" false
  fi
  echo "   $name: rc $rc in $(($(date +%s) - t0)) s"
}

# (timeout runs programs, not shell functions: the steps name the program)
check=(python3 tools/gpu_check.py)
on=(--data-dir "$data" --out "$out" --device "$device")

: >"$out/results.jsonl"
step env 15 python3 -c 'import os, torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", os.cpu_count(), "CPUs")'
record env "torch, GPU, CPUs" "$(head -1 "$out/env.log")" null
step pytest-cuda 40 python3 -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_processes.py
record pytest-cuda "pytest tests/test_device.py tests/test_processes.py (cuda tests run here)" "$(tail -1 "$out/pytest-cuda.log")" null
step throughput 50 "${check[@]}" throughput "${on[@]}"
step accuracy 80 "${check[@]}" accuracy "${on[@]}"
step resume 35 "${check[@]}" resume "${on[@]}"
step bitwise 45 "${check[@]}" bitwise "${on[@]}"
step cpu-eval 20 "${check[@]}" cpu-eval "${on[@]}"
step oom 30 "${check[@]}" oom "${on[@]}"
step expandable 25 "${check[@]}" expandable "${on[@]}"
step breakdown 60 python3 scripts/benchmark.py --breakdown 1,4,16 --breakdown-epochs 2 \
  --data-dir "$data" --out "$out"
step time-to-accuracy 80 "${check[@]}" time-to-accuracy "${on[@]}"
step cores-16 40 "${check[@]}" cores-16 "${on[@]}"
python3 -c "import sys; sys.path[:0] = ['tools']; import gpu_check; gpu_check.write_markdown('$out')" || true
echo "== device check: $(($(date +%s) - started)) s in all; results in $out/results.md"
cat "$out/results.md"
exit "$status"
