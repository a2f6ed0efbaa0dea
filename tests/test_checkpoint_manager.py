"""The checkpoint manager: path checks, the lock, stale temp files, the kept
previous and best models, dry runs, in process (and with real processes
where the kernel's part matters)."""

import errno
import os
import subprocess
import sys

import pytest

from mnist_hogwild.training import checkpoint
from mnist_hogwild.training.checkpoint_manager import CheckpointManager
from mnist_hogwild.core.errors import CheckpointError, UsageError
from helpers import valid_state


def manager(path, **options):
    notes = []
    m = CheckpointManager(str(path), notes.append, lambda w: notes.append(f"W {w}"), **options)
    return m, notes


def test_unwritable_directory_fails_fast(tmp_path):
    # A file where the directory should be: unwritable for root too (tests run as root in CI;
    # the container tests cover a read-only volume and a foreign uid).
    (tmp_path / "blocker").write_text("")
    with pytest.raises(CheckpointError, match="cannot write checkpoints"):
        manager(tmp_path / "blocker" / "ck.pth")[0].open()


def test_checkpoint_path_that_is_a_directory_or_a_fifo_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        manager(tmp_path)[0].open()
    os.mkfifo(tmp_path / "fifo.pth")
    with pytest.raises(CheckpointError, match="not a regular file"):
        manager(tmp_path / "fifo.pth")[0].open()


def test_a_name_whose_temp_files_would_be_too_long_is_refused_up_front(tmp_path):
    # 234 characters fit a file name, but not the temp names a save writes beside it.
    path = tmp_path / ("m" * 230 + ".pth")
    with pytest.raises(CheckpointError, match="too long"):
        manager(path)[0].open()
    fits = tmp_path / ("m" * 150 + ".pth")
    m, _ = manager(fits)
    m.open()
    m.save_epoch({**valid_state(), "metrics": [{"epoch": 1, "accuracy_percent": 50.0}]})
    m.close()


def test_a_second_run_on_the_same_path_is_refused_naming_the_holder(tmp_path):
    first, _ = manager(tmp_path / "ck.pth")
    first.open()
    second, _ = manager(tmp_path / "ck.pth")
    with pytest.raises(UsageError, match=f"in use by another run \\(pid {os.getpid()} on host"):
        second.open()
    first.close()
    second.open()  # free again
    second.close()


def test_the_lock_goes_with_a_killed_process_and_the_next_run_says_it_was_killed(tmp_path):
    path = tmp_path / "ck.pth"
    script = (
        "import os, signal, sys\n"
        "from mnist_hogwild.training.checkpoint_manager import CheckpointManager\n"
        "m = CheckpointManager(sys.argv[1], print, print)\n"
        "m.open()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", script, path], env={**os.environ, "PYTHONPATH": repo}
    )
    assert proc.returncode == -9
    m, notes = manager(path)
    m.open()  # the kernel released the dead run's lock
    assert any("did not end: it was killed" in n for n in notes), notes
    m.close()
    m, notes = manager(path)
    m.open()
    assert not any("did not end" in n for n in notes)  # that run ended cleanly
    m.close()


def test_only_temp_files_of_dead_writers_on_this_host_are_removed(tmp_path):
    path = str(tmp_path / "ck.pth")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead_pid = int(dead.stdout)
    stale = checkpoint.temp_name(path, pid=dead_pid)
    live = checkpoint.temp_name(path, pid=os.getpid())
    other_host = f".ck.pth.some-other-host.{dead_pid}.abcd0123.tmp"
    for name in (stale, live, other_host):
        (tmp_path / name).write_bytes(b"partial")
    m, notes = manager(path)
    m.open()
    # (no model was kept: no history folder either)
    assert sorted(os.listdir(tmp_path)) == sorted([live, other_host, ".ck.lock"])
    assert notes == [f"W removed {stale}, left by an interrupted save"]
    m.close()


def test_a_fresh_run_keeps_the_model_it_finds_before_writing_anything(tmp_path):
    path = tmp_path / "ck.pth"
    checkpoint.save(valid_state(epoch=3), str(path))
    old = path.read_bytes()
    m, notes = manager(path)
    m.open()
    (kept,) = (tmp_path / "ck.models").iterdir()
    assert kept.read_bytes() == old and kept.name.startswith("mnist_e03_unevaluated")
    assert notes == [f"kept {kept} (found at {path})"]
    m.save(valid_state(epoch=0))
    m.close()
    m, notes = manager(path, resume=True)  # its run has models here: it goes on from it
    m.open()
    assert notes == [] and len(list((tmp_path / "ck.models").iterdir())) == 1
    m.close()


def test_a_dry_run_never_replaces_an_existing_checkpoint(tmp_path):
    path = tmp_path / "ck.pth"
    checkpoint.save(valid_state(epoch=3), str(path))
    old = path.read_bytes()
    m, notes = manager(path, dry_run=True)
    m.open()
    m.save_epoch({**valid_state(epoch=0), "metrics": [{"epoch": 1, "accuracy_percent": 11.0}]})
    m.close()
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == [".ck.lock", "ck.pth"]
    assert "nothing is saved" in notes[0]


def test_the_best_model_is_kept_beside_the_checkpoint(tmp_path):
    path = tmp_path / "ck.pth"
    m, _ = manager(path)
    m.open()
    rows = []
    for epoch, accuracy in enumerate([90.0, 97.0, 95.0], start=1):
        rows.append({"epoch": epoch, "accuracy_percent": accuracy})
        m.save_epoch(valid_state(epoch=epoch, metrics=list(rows)))
    m.close()
    best = checkpoint.load(str(tmp_path / "ck.best.pth"), valid_state()["model_state"])
    assert best["epoch"] == 2 and best["metrics"][-1]["accuracy_percent"] == 97.0
    # the run keeps its best and its last; the copy is the history's file, byte for byte
    history = sorted(p.name for p in (tmp_path / "ck.models").iterdir())
    assert [n.split("_")[1:3] for n in history] == [["e02", "acc97.00"], ["e03", "acc95.00"]]
    assert (tmp_path / "ck.models" / history[0]).read_bytes() == (
        tmp_path / "ck.best.pth"
    ).read_bytes()
    assert os.stat(tmp_path / "ck.best.pth").st_nlink == 1  # a copy, never a link
    assert checkpoint.load(str(path), valid_state()["model_state"])["epoch"] == 3


def test_the_older_layouts_slots_are_kept_in_the_history_before_anything_is_written(tmp_path):
    """STEM.prev.pth and STEM.prev.best.pth (the four-file layout of earlier
    versions), and a damaged file at the path, each kept once, as they were."""
    path = tmp_path / "ck.pth"
    slots = {
        "ck.prev.pth": valid_state(epoch=2, metrics=[{"epoch": 2, "accuracy_percent": 97.0}]),
        "ck.prev.best.pth": valid_state(epoch=4, metrics=[{"epoch": 4, "accuracy_percent": 99.0}]),
    }
    for name, state in slots.items():
        checkpoint.save(state, str(tmp_path / name))
    path.write_bytes(b"damaged")
    for _ in range(2):  # a second run finds them kept already
        m, notes = manager(path)
        m.open()
        m.close()
    kept = {p.name: p.read_bytes() for p in (tmp_path / "ck.models").iterdir()}
    assert len(kept) == 3 and b"damaged" in kept.values()
    for name in slots:
        assert (tmp_path / name).read_bytes() in kept.values()
    assert any(n.startswith("unreadable_") for n in kept)
    assert any(n.startswith("mnist_e04_acc99.00_") for n in kept)


def test_a_save_that_fails_after_the_checkpoint_changes_nothing_more(tmp_path, monkeypatch):
    """The metrics file cannot be written (a full disk) after the checkpoint
    was: the run's end prunes nothing and copies nothing, so that the save's
    error stays its last line."""
    path = tmp_path / "ck.pth"
    m, _ = manager(path)
    m.open()
    m.save_epoch(valid_state(metrics=[{"epoch": 1, "accuracy_percent": 90.0}], run_id="a" * 16))
    m.close()
    m, notes = manager(path, keep_models=1)  # (would prune the first run's model)
    m.open()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_metrics", full)
    with pytest.raises(OSError):
        m.save_epoch(valid_state(metrics=[{"epoch": 1, "accuracy_percent": 95.0}], run_id="b" * 16))
    files = sorted(os.listdir(tmp_path / "ck.models")), (tmp_path / "ck.best.pth").read_bytes()
    assert len(files[0]) == 2  # the premise: both models are in the history
    m.close()
    assert (
        sorted(os.listdir(tmp_path / "ck.models")),
        (tmp_path / "ck.best.pth").read_bytes(),
    ) == files
    assert notes == [], notes


def test_the_lock_file_is_writable_by_its_owner_only(tmp_path):
    m, _ = manager(tmp_path / "m.pth")
    old = os.umask(0)  # (the mode is the lock's own, whatever the umask)
    try:
        m.open()
    finally:
        os.umask(old)
    try:
        mode = os.stat(tmp_path / ".m.lock").st_mode & 0o777
        assert mode == 0o644, oct(mode)
    finally:
        m.close()
