"""The soak's scenario: docker stop / SIGINT and SIGKILL at random moments,
each followed by --resume (tests/soak.py runs it; soak_scenarios/common.py
holds what every scenario shares)."""

import time

import harness


def interrupt_chain(soak, kind, interval):
    """K stops or SIGKILLs at random moments, each followed by --resume."""
    ckpt = soak.fresh(kind)
    previous = None
    for i in range(soak.k):
        handle = soak.runner.start(
            [
                *soak.common,
                "--resume",
                "--checkpoint",
                soak.runner.path(ckpt),
                "--checkpoint-interval",
                interval,
                "--log-interval",
                "5",
            ]
        )
        time.sleep(soak.rng.uniform(0, soak.max_delay))
        logs = soak.runner.logs(handle)
        phase = "training" if harness.parse_lines("ready", logs) else "start-up"
        if "training already complete" in logs or harness.parse_lines("done", logs):
            phase = "finished"
        soak.tally["phases"][phase] = soak.tally["phases"].get(phase, 0) + 1
        if kind == "stop":
            soak.tally["stop_s"].append(soak.runner.stop(handle))
            code = soak.runner.wait(handle)
            if code not in (0, 130):
                soak.problem(f"stop {i}: exit code {code}")
        else:
            soak.runner.kill(handle)
            soak.runner.wait(handle)
        logs = soak.runner.logs(handle)
        soak.runner.remove(handle)
        soak.tally["faults"] += 1
        progress = soak.load(ckpt)
        if progress is None and phase == "training" and kind == "stop":
            soak.problem(f"stop {i} during training left no checkpoint")
        if progress is not None:
            done = progress[0] * progress[2] + progress[1]
            if previous is not None and done < previous:
                soak.tally["went_back"] += 1
                soak.problem(f"{kind} {i}: progress went back from {previous} to {done} batches")
            previous = done
            if kind == "kill":
                soak.record_lost(logs, progress)
        print(f"  {kind} {i + 1}/{soak.k} during {phase}: checkpoint at {progress}", flush=True)
    return ckpt
