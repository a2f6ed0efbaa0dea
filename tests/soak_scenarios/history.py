"""The soak's scenario: the model history under random runs, kills and
overwrites (tests/soak.py runs it; soak_scenarios/common.py holds what every
scenario shares)."""

import os
import subprocess
import sys


def history_property(soak, steps):
    """The model history's property test (tests/test_history.py), longer than CI's."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_history.py",
            "-k",
            "random_sequence",
            "-s",
        ],
        cwd=repo,
        env={**os.environ, "HISTORY_STEPS": str(steps)},
        capture_output=True,
        text=True,
    )
    lines = proc.stdout.strip().splitlines()
    seed = next((line for line in lines if line.startswith("HISTORY_SEED=")), "no seed printed")
    print(f"  at least {steps} random steps ({seed}): {(lines or ['no output'])[-1]}", flush=True)
    if proc.returncode != 0:
        soak.problem(f"model history property test: {proc.stdout[-1500:]}")
