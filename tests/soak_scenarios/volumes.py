"""The soak's scenario: a checkpoint volume that is full, or not writable
(tests/soak.py runs it; soak_scenarios/common.py holds what every scenario
shares)."""

import os
import subprocess
import time

import harness


def disk_full(soak):
    if os.geteuid() != 0:
        soak.problem("disk full: needs root to mount a small tmpfs (not run)")
        return
    mount = os.path.join(soak.work, "full")
    os.makedirs(mount, exist_ok=True)
    # Room for one checkpoint (about 180 KB) but not for the next one's temp file.
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k,mode=0777", "tmpfs", mount], check=True
    )
    try:
        ckpt = os.path.join(mount, "model_checkpoint.pth")
        code, out = soak.runner.run(
            [
                *soak.common,
                "--checkpoint",
                soak.runner.path(ckpt),
                "--checkpoint-interval",
                "0",
            ],
            docker_args=["-v", f"{mount}:{soak.runner.path(mount)}"],
        )
        soak.tally["faults"] += 1
        last = out.strip().splitlines()[-1] if out.strip() else ""
        progress = soak.load(ckpt)
        # Room for one model file: the first epoch's goes to the history
        # first (a copy, never a link), so the checkpoint beside it may not fit.
        models = os.path.join(mount, "model_checkpoint.models")
        kept = sorted(os.listdir(models)) if os.path.isdir(models) else []
        print(f"  disk full: exit {code}; {last}; checkpoint {progress}; kept {kept}", flush=True)
        if (
            code != 1
            or "No space left on device" not in last
            or "Traceback" in out
            or (progress is None and not any(n.endswith(".pth") for n in kept))
        ):
            soak.problem(f"disk full not handled: exit {code}, {last}")
    finally:
        subprocess.run(["umount", mount], check=False)


def unwritable(soak, docker):
    cases = []
    ro = os.path.join(soak.work, "readonly")
    os.makedirs(ro, exist_ok=True)
    if docker:
        cases.append(("read-only volume", ["-v", f"{ro}:/out:ro"], "/out/model_checkpoint.pth"))
        owned = os.path.join(soak.work, "root-owned")
        os.makedirs(owned, exist_ok=True)
        os.chmod(owned, 0o755)
        cases.append(
            (
                "volume not writable by uid 12345",
                ["--user", "12345:12345", "-v", f"{owned}:/out"],
                "/out/model_checkpoint.pth",
            )
        )
    else:
        blocker = os.path.join(soak.work, "blocker")
        open(blocker, "w").close()
        cases.append(("unwritable directory", [], os.path.join(blocker, "model_checkpoint.pth")))
    for label, docker_args, path in cases:
        t = time.monotonic()
        code, out = soak.runner.run([*soak.common, "--checkpoint", path], docker_args=docker_args)
        elapsed = time.monotonic() - t
        soak.tally["faults"] += 1
        last = out.strip().splitlines()[-1] if out.strip() else ""
        print(f"  {label}: exit {code} in {elapsed:.1f}s; {last}", flush=True)
        if code != 1 or "cannot write checkpoints" not in last or harness.parse_lines("ready", out):
            soak.problem(f"{label} not reported before training: exit {code}, {last}")
