"""The log lines that users, scripts and tests read: printed and parsed from one
definition; and printing that survives a reader that went away."""

import pytest

from mnist_hogwild.core import loglines

SAMPLES = {
    "resuming": dict(path="ck.pth", epoch=2, step=17, per_epoch=938),
    "training": dict(
        dataset="mnist",
        epochs=10,
        processes=2,
        threads=1,
        batch_size=64,
        optimizer="sgd",
        lr=0.01,
        optimizer_settings="momentum 0.5",
        lr_schedule="constant",
        decides="5000 validation images",
    ),
    "ready": dict(workers=2, seconds=1.94),
    "progress": dict(
        epoch=1,
        epochs=10,
        samples=640,
        total=60000,
        percent=1.07,
        loss=2.3,
        samples_per_s=5731.2,
        eta="1m40s",
    ),
    "epoch": dict(
        epoch=3,
        epochs=10,
        test_loss=0.05,
        accuracy=98.28,
        validation="98.12%",
        samples_per_s=13900.4,
        seconds=4.3,
        staleness=14.7,
        staleness_p99=22,
        path="/ckpt/model checkpoint.pth",
    ),
    "stopped": dict(
        signal="SIGINT", path="ck.pth", epoch=1, step=5, per_epoch=40, ms=4.9, batches=5
    ),
    "done": dict(elapsed="0m44s", batches=9380, epochs=10, path="ck.pth"),
    "summary": dict(
        final=98.31,
        best=98.4,
        best_epoch=9,
        chosen="validation 98.36%",
        path="ck.pth",
        best_path="ck.best.pth",
        models="ck.models/",
        metrics="ck.metrics.jsonl",
    ),
    "target": dict(target=98.0, epoch=2, accuracy=98.12, then="stopping early"),
    "syncs": dict(rank=1, world=2, syncs=19, seconds=0.21, percent=1.7),
    "cadence": dict(rank=0, world=3, k=38),
}


def test_every_line_has_a_sample():
    assert set(SAMPLES) == set(loglines.LINES)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_a_printed_line_parses_back_to_its_fields(kind):
    text = loglines.line(kind, **SAMPLES[kind])
    parsed = loglines.parse_line(kind, text)
    assert parsed is not None, text
    assert set(parsed) == set(SAMPLES[kind])
    for name, value in SAMPLES[kind].items():
        if isinstance(value, float):
            assert parsed[name] == pytest.approx(value, abs=0.51), name  # printed rounded
        else:
            assert parsed[name] == value, name


def test_the_ready_line_keeps_the_wording_scripts_and_users_rely_on():
    # Issue 11: "Keep the log line `N workers ready: first batch X s after start`".
    assert (
        loglines.line("ready", workers=2, seconds=1.5)
        == "2 workers ready: first batch 1.5s after start"
    )


def test_other_lines_do_not_parse():
    assert loglines.parse_line("ready", "epoch 1/2: something else") is None
    assert loglines.parse_lines("epoch", "noise\nmore noise\n") == []


def test_a_closed_stdout_sends_the_lines_to_stderr_and_never_raises(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from mnist_hogwild.core import loglines\n"
        "for i in range(3):\n"
        "    loglines.say(f'line {i}')\n"
        "    if i == 0: sys.stdin.read(1)\n"
        "print('survived', file=sys.stderr)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={"PYTHONPATH": loglines.__file__.rsplit("/", 3)[0]},  # the repository
    )
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()  # the reader (tee, head) goes away
    proc.stdin.write(b"x")
    proc.stdin.close()
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 0, err
    assert err.splitlines() == ["line 1", "line 2", "survived"]
