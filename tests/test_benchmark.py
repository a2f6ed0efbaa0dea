"""Smoke runs of the benchmark, so that it cannot rot."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_benchmark_smoke_writes_table_json_and_plot(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "benchmark.py"),
            "--smoke",
            "--out",
            tmp_path,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert [r["processes"] for r in result["throughput"]] == [1, 2]
    for row in result["throughput"]:
        assert row["samples_per_s"] > 0 and row["pss_mb"] > 0 and row["first_batch_s"] > 0
    assert result["stop"]["checkpoint_bytes"] > 0
    assert "| 1 x 1 |" in (tmp_path / "benchmark.md").read_text()
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_time_to_accuracy_smoke_writes_its_table_and_json(tmp_path):
    script = os.path.join(REPO, "scripts", "time_to_accuracy.py")
    argv = [sys.executable, script, "--smoke", "--recipes", "fast", "--processes", "2"]
    proc = subprocess.run([*argv, "--out", tmp_path], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "time_to_accuracy.json").read_text())
    rows = result["time_to_accuracy"]
    assert [(r["recipe"], r["processes"]) for r in rows] == [("fast", 2)]
    assert "| fast | 2 |" in proc.stdout
