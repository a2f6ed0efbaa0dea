"""scripts/device_check.sh, rehearsed on the CPU: every step records its
results as soon as they are known, and a step that hangs still leaves the
others' results and its own last lines."""

import json
import os
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_a_hanging_step_leaves_every_other_result(tmp_path, data_dir):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "STEPS": "env resume cpu-eval",
        "HANG_STEP": "resume",
        "HANG_SECONDS": "10",
    }
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "device_check.sh"), data_dir, out],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert proc.returncode == 1, proc.stdout[-2000:]  # the hang counts as a failure
    assert "env" in steps and "cpu-eval" in steps, proc.stdout[-2000:]
    (hang,) = [r for r in records if r["step"] == "resume"]
    assert hang["ok"] is False and "timed out after 10 s" in hang["what"]
    evaluated = [r for r in records if r["step"] == "cpu-eval"]
    assert evaluated and evaluated[-1]["ok"] is True, evaluated
    assert "| cpu-eval |" in (out / "results.md").read_text()
