"""The soak's scenario: a container memory limit too small for training, and
evaluation under one (tests/soak.py runs it; soak_scenarios/common.py holds
what every scenario shares)."""


def memory_limit(soak):
    # 16 workers cannot fit in 250 MB (each writes some of the trainer's
    # pages it shares, and has a heap of its own), the trainer alone
    # easily does: a worker is killed, and the trainer must say why.
    ckpt = soak.fresh("memory")
    code, out = soak.runner.run(
        [*soak.common, "--checkpoint", soak.runner.path(ckpt), "--num-processes", "16"],
        docker_args=["--memory", "250m", "--memory-swap", "250m"],
    )
    soak.tally["faults"] += 1
    last = out.strip().splitlines()[-2:] if out.strip() else []
    print(f"  memory limit 250m, 16 processes: exit {code}; {' | '.join(last)}", flush=True)
    if code != 1 or "memory limit of 250 MiB" not in out or "Traceback" in out:
        soak.problem(f"memory limit not reported clearly: exit {code}, {last}")
    soak.load(ckpt)


def memory_limited_evaluation(soak):
    """--test-batch-size far beyond what fits: evaluation stays bounded."""
    ckpt = soak.fresh("eval-memory")
    code, out = soak.runner.run(
        [*soak.common, "--checkpoint", soak.runner.path(ckpt), "--test-batch-size", "100000"],
        docker_args=["--memory", "600m", "--memory-swap", "600m"],
    )
    soak.tally["faults"] += 1
    print(f"  --test-batch-size 100000 under --memory 600m: exit {code}", flush=True)
    if code != 0:
        soak.problem(f"memory-limited evaluation: exit {code}, {out[-300:]}")
