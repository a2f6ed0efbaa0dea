"""processes.py: the private standard-library attribute it relies on
(checked here on whatever Python runs the tests: 3.11 in CI, 3.12 on the
accelerator machine), and dying with the parent, with real processes."""

import atexit
import os
import signal
import subprocess
import sys
import textwrap

from procs import alive, wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_private_attribute_exists_on_this_python():
    assert callable(getattr(atexit, "_run_exitfuncs", None)), sys.version


def run_python(code, **kwargs):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": REPO},
        **kwargs,
    )


def test_exit_now_runs_the_atexit_handlers_and_keeps_the_code():
    proc = run_python("""
        import atexit
        from mnist_hogwild.core import processes
        atexit.register(print, "atexit ran")
        print("flushed before the exit", end="")
        processes.exit_now(3)
        """)
    assert proc.returncode == 3
    assert proc.stdout == "flushed before the exitatexit ran\n"


def test_a_child_that_asked_to_die_with_its_parent_does(tmp_path):
    # parent -> child (die_with_parent) -> we kill the parent: the child goes too.
    code = """
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import os, time; from mnist_hogwild.core import processes; processes.die_with_parent(int(os.environ['P'])); "
            "print('armed', flush=True); time.sleep(60)"],
            env={**os.environ, "P": str(os.getpid())}, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "armed\\n"
        print(child.pid, flush=True)
        time.sleep(60)
    """
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    child = int(parent.stdout.readline())
    assert alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert wait_until(lambda: not alive(child), 5), "the child outlived its parent"


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    proc = run_python(
        "from mnist_hogwild.core import processes; processes.die_with_parent(1); print('still here')"
    )
    assert proc.returncode == 1 and proc.stdout == ""
