"""What the scripts share: starting the trainer (on the host or in a
container), reading its log lines with deadlines, finding its workers, the
data sets, and rewriting sections of the docs.

Log lines are parsed with loglines.parse_line, from the same formats the
trainer prints them with (tests/test_loglines.py), never with regexes here.
"""

import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The scripts run as files (python scripts/NAME.py): the project's modules are
# found from here, the one place that says so.
sys.path.insert(0, REPO)

# (beside and checkpoint: re-exported for the scripts)
from mnist_hogwild.training import beside  # noqa: E402,F401
from mnist_hogwild.training import checkpoint  # noqa: E402,F401
from mnist_hogwild.learn import data  # noqa: E402
from mnist_hogwild.core import loglines  # noqa: E402
import synthetic_data  # noqa: E402
from procs import LineReader, descendants  # noqa: E402,F401 - re-exported for the scripts
from procs import worker_pids as host_worker_pids  # noqa: E402,F401

MAIN = os.path.join(REPO, "main.py")
FASHION = "/usr/share/datasets/fashion-mnist"
# Real MNIST, where the workplace provides it: ../shared/data beside the checkout.
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")

parse_line, parse_lines = loglines.parse_line, loglines.parse_lines


def flags(**options):
    """Command-line flags from keyword arguments: data_dir="x" -> ["--data-dir", "x"],
    resume=True -> ["--resume"] (False or None: left out)."""
    args = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not None and value is not False:
            args += [flag, str(value)]
    return args


def real_mnist_dir():
    """A --data-dir holding the genuine MNIST (60k/10k), or None."""
    for root in (SHARED_DATA, os.path.join(REPO, "data")):
        if is_full_mnist(root):
            return root
    return None


def is_full_mnist(data_dir):
    """DATA_DIR holds MNIST of the real size (60k/10k), not a small synthetic set."""
    if not os.path.isdir(data.raw_dir(data_dir, "mnist")):
        return False  # (prepare would try to download it)
    try:
        files = data.prepare(data_dir, "mnist", log=lambda message: None)
        return (
            len(data.map_split(files["train"])) == 60000
            and len(data.map_split(files["test"])) == 10000
        )
    except data.DataError:
        return False


def link_fashion(data_dir, copy=False):
    """Lay Debian's Fashion-MNIST out under DATA_DIR (symlinks, or copies for a
    container that cannot follow links out of its volume). False if not installed."""
    if not os.path.isdir(FASHION):
        return False
    raw = data.raw_dir(data_dir, "fashion-mnist")
    os.makedirs(raw, exist_ok=True)
    for name in os.listdir(FASHION):
        source, target = os.path.join(FASHION, name), os.path.join(raw, name)
        shutil.copy(source, target) if copy else os.symlink(source, target)
    return True


def write_synthetic(data_dir, train, test):
    synthetic_data.write_files(data_dir, train=train, test=test)


def bench_data(root, dataset="mnist", copy=False):
    """(data dir, --dataset, label) for a benchmark: the genuine MNIST if
    DATASET is mnist and it is here, else Debian's Fashion-MNIST laid out under
    ROOT (copied, with COPY, for containers), else 60k/10k synthetic MNIST."""
    if dataset == "mnist" and real_mnist_dir():
        return real_mnist_dir(), "mnist", "mnist"
    if link_fashion(root, copy=copy):
        return root, "fashion-mnist", "fashion-mnist"
    write_synthetic(root, train=60000, test=10000)
    return root, "mnist", "synthetic"


def epoch_rows(metrics_file):
    """The epoch rows of a metrics file, whole (its interval rows left out)."""
    with open(metrics_file) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r.get("kind", "epoch") == "epoch"]


def remove_run_files(checkpoint_path):
    """Delete a checkpoint and its metrics file, so a benchmark run starts fresh."""
    for path in (checkpoint_path, beside.metrics(checkpoint_path)):
        if os.path.exists(path):
            os.unlink(path)


class TrainerProcess:
    """One trainer process on the host; its output is read as it arrives, and
    every wait has a deadline that holds even when the trainer prints nothing."""

    def __init__(self, args, cwd, env=None):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, MAIN, *map(str, args)],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.reader = LineReader(self.proc.stdout)

    def wait_for(self, *kinds, timeout=600):
        """(seconds since start, kind, fields) of the next line of one of KINDS."""
        found = {}

        def match(line):
            for kind in kinds:
                fields = parse_line(kind, line)
                if fields is not None:
                    found.update(kind=kind, fields=fields, at=time.monotonic() - self.t0)
                    return True
            return False

        try:
            self.reader.wait_for(match, timeout)
        except EOFError:
            raise RuntimeError("trainer ended early:\n" + self.tail()) from None
        except AssertionError:
            self.proc.kill()
            raise RuntimeError(
                f"no {' or '.join(kinds)} line within {timeout} s:\n" + self.tail()
            ) from None
        return found["at"], found["kind"], found["fields"]

    def tail(self, lines=10):
        return "".join(self.reader.lines[-lines:])

    def finish(self, timeout=900, ok=(0, 130)):
        """Wait for the end (killing it past TIMEOUT); all its output."""
        try:
            out = self.reader.rest(timeout)
            self.proc.wait(timeout=max(1, timeout))
        except (AssertionError, subprocess.TimeoutExpired):
            self.proc.kill()
            raise RuntimeError(f"trainer did not end within {timeout} s:\n" + self.tail()) from None
        if self.proc.returncode not in ok:
            raise RuntimeError("trainer failed:\n" + self.tail())
        return out


def docker_run(image, *args, volumes=(), name=None, detach=False, docker_args=()):
    """The `docker run` command line: VOLUMES are (host, container[, mode]) tuples."""
    cmd = ["docker", "run", "-d", "--name", name] if detach else ["docker", "run", "--rm"]
    for volume in volumes:
        cmd += ["-v", ":".join(volume)]
    return [*cmd, *docker_args, image, *map(str, args)]


def docker(*args, check=False, timeout=None):
    """Run a docker subcommand; returns the CompletedProcess (text output)."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


def container_worker_pids(name):
    """The Hogwild workers' host pids inside container NAME."""
    out = docker("top", name, "-eo", "pid,comm").stdout
    return sorted(
        int(pid)
        for pid, comm in (line.split()[:2] for line in out.splitlines()[1:])
        if comm == "hogwild-worker"
    )


def image_exists(image):
    return shutil.which("docker") is not None and docker("image", "inspect", image).returncode == 0


def update_doc(doc, name, md):
    """Replace the text between <!-- NAME:start --> and <!-- NAME:end --> in DOC
    (a path relative to the repository, e.g. docs/performance.md)."""
    path = os.path.join(REPO, doc)
    with open(path) as f:
        text = f.read()
    start_tag, end_tag = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    start, end = text.index(start_tag) + len(start_tag), text.index(end_tag)
    with open(path, "w") as f:
        f.write(text[:start] + md + text[end:])


def torch_version():
    import torch  # noqa: PLC0415 - only for the record

    return torch.__version__
