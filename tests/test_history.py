"""The model history (STEM.models/): a random sequence of what users do at one
checkpoint path, driving the real checkpoint manager on real files, with
kills at any file operation; after every step the best model ever trained
of each data set is on disk, bit for bit, and the manager names it.
HISTORY_STEPS sets the length (the soak runs a longer one)."""

import hashlib
import os
import random
import shutil

import pytest
import torch

from mnist_hogwild.commands import output
from mnist_hogwild.core.errors import CheckpointError
from mnist_hogwild.training import checkpoint, history
from mnist_hogwild.training.checkpoint_manager import CheckpointManager
from helpers import valid_state

STEPS = int(os.environ.get("HISTORY_STEPS", "200"))
DATASETS = ("mnist", "fashion-mnist")


class Killed(BaseException):
    """The process died here (SIGKILL): nothing after it runs."""


class World:
    """One checkpoint path and what the user did there; BEST[dataset] is the
    (accuracy, weights hash) of the first model that reached the best score."""

    def __init__(self, root, rng):
        self.root, self.rng = root, rng
        self.path = str(root / "ck.pth")
        self.best = {}
        self.log = []

    def manager(self, **options):
        options = {"keep_models": self.rng.choice([1, 2, 5]), **options}
        return CheckpointManager(self.path, self.log.append, self.log.append, **options)

    def state(self, dataset, epoch, rows, run_id, step=0):
        state = valid_state(epoch=epoch, step=step, metrics=list(rows), run_id=run_id)
        state["config"] = {**state["config"], "dataset": dataset, "epochs": 10**6}
        return state

    def evaluated(self, state):
        accuracy = state["metrics"][-1]["accuracy_percent"]
        dataset = state["config"]["dataset"]
        if accuracy > self.best.get(dataset, (-1, None))[0]:
            self.best[dataset] = (accuracy, history.weights_hash(state["model_state"]))

    def kept(self, state):
        """An evaluated STATE counts as trained once it reached the disk (a kill
        may land after its save, before the run heard of it)."""
        digest = history.weights_hash(state["model_state"])
        if any(e.hash == digest for e in history.History(self.path, print).entries()):
            self.evaluated(state)

    # ----- what users do -------------------------------------------------
    def run(self, resume=False, dry_run=False):
        """A run: some evaluated epochs, maybe a stop (Ctrl-C) within an epoch,
        maybe killed at a random file operation."""
        m = self.manager(resume=resume, dry_run=dry_run)
        kill_after = self.rng.choice([None, None, self.rng.randrange(1, 40)])
        self.pending = None
        with kills(kill_after):
            try:
                self.train(m, resume)
                m.close()
            except Killed:
                m.lock.release()  # the kernel's part of a death
        if self.pending is not None:
            self.kept(self.pending)

    def train(self, m, resume):
        m.open()
        dataset, rows, epoch, run_id = self.rng.choice(DATASETS), [], 0, checkpoint.new_run_id()
        if resume:
            try:
                found = checkpoint.load(self.path, valid_state()["model_state"])
            except CheckpointError:
                found = None
            if found is not None:
                dataset, rows = found["config"]["dataset"], list(found["metrics"])
                epoch, run_id = found["epoch"], found["run_id"]
        for _ in range(self.rng.randrange(0, 4)):
            epoch += 1
            accuracy = self.rng.choice([50.0, 90.0, 97.5, 98.0, self.rng.uniform(10, 99.5)])
            if m.dry_run:  # one batch per worker: a smoke test's model, never a good one
                accuracy = self.rng.uniform(5, 20)
            rows.append({"epoch": epoch, "accuracy_percent": round(accuracy, 2)})
            state = self.state(dataset, epoch, rows, run_id)
            if not m.dry_run:  # (a dry run's model is at most PATH, never in the history)
                self.pending = state
            m.save_epoch(state)
            if not m.dry_run:
                self.evaluated(state)
                self.pending = None
        if self.rng.random() < 0.4:  # Ctrl-C within the next epoch: a saved stop
            m.save(self.state(dataset, epoch, rows, run_id, step=self.rng.randrange(1, 10)))

    def overwrite_in_place(self):
        """torch.save or cp over STEM.pth, as a user might."""
        how = self.rng.choice(["torch.save", "cp", "garbage"])
        if how == "torch.save":
            torch.save(
                self.state("mnist", 1, [{"epoch": 1, "accuracy_percent": 12.0}], "x"), self.path
            )
        elif how == "cp" and os.path.exists(self.root / "ck.best.pth"):
            shutil.copyfile(self.root / "ck.best.pth", self.path)
        else:
            with open(self.path, "wb") as f:
                f.write(os.urandom(64))

    def command(self):
        """What every command does first: keep a model found at the path that the
        history lacks (maybe killed while it does); then what evaluate, infer
        and export do with the files: read them."""
        with kills(self.rng.choice([None, self.rng.randrange(1, 8)])):
            try:
                output.keep_found_models(self.path)
            except Killed:
                pass
        for entry in history.History(self.path, print).entries():
            checkpoint.load(
                os.path.join(self.root, "ck.models", entry.name), valid_state()["model_state"]
            )

    # ----- the property --------------------------------------------------
    def check(self, step):
        kept = history.History(self.path, print)
        for dataset, (accuracy, digest) in self.best.items():
            entries = {e.hash: e for e in kept.entries()}
            assert digest in entries, f"step {step}: the best {dataset} model is gone"
            entry = entries[digest]
            state = checkpoint.load(kept.where(entry.name), valid_state()["model_state"])
            assert history.weights_hash(state["model_state"]) == digest  # bit for bit
            assert kept.best(dataset).accuracy == accuracy == entry.accuracy, f"step {step}"


class kills:
    """Raise Killed at the Nth file write, rename or removal (None: never)."""

    def __init__(self, after):
        self.after, self.count, self.saved = after, 0, {}

    def __enter__(self):
        if self.after is None:
            return self
        for name in ("replace", "unlink", "open"):
            self.saved[name] = original = getattr(os, name)
            setattr(os, name, self.wrap(original))
        return self

    def wrap(self, original):
        def counted(*args, **kwargs):
            self.count += 1
            if self.count >= self.after:  # and nothing after it either, cleanup included
                raise Killed()
            return original(*args, **kwargs)

        return counted

    def __exit__(self, *exc):
        for name, original in self.saved.items():
            setattr(os, name, original)
        return False


@pytest.mark.parametrize("seed", [0, 1])
def test_a_random_sequence_of_runs_never_loses_the_best_model(tmp_path, seed):
    rng = random.Random(seed)
    world = World(tmp_path, rng)
    actions = [
        (4, lambda: world.run()),
        (4, lambda: world.run(resume=True)),
        (1, lambda: world.run(dry_run=True)),
        (1, lambda: world.run(resume=True, dry_run=True)),
        (1, world.overwrite_in_place),
        (1, world.command),
    ]
    weights = [w for w, _ in actions]
    for step in range(STEPS):
        rng.choices([a for _, a in actions], weights)[0]()
        world.check(step)
    assert len(world.best) == 2, "premise: both data sets were trained"
    assert world.log, "premise: the history kept or removed something"


def test_pruning_keeps_the_k_best_of_each_data_set_and_never_the_best(tmp_path):
    kept = history.History(str(tmp_path / "ck.pth"), print)
    runs = [checkpoint.new_run_id() for _ in range(8)]
    for i, run_id in enumerate(runs):
        for dataset, accuracy in (("mnist", 90 + i), ("fashion-mnist", 80 - i)):
            state = valid_state(metrics=[{"epoch": 1, "accuracy_percent": accuracy}], run_id=run_id)
            state["config"] = {**state["config"], "dataset": dataset}
            kept.add(state)
    said = []
    kept.say = said.append
    kept.prune(3, protected_run=runs[0])  # the worst mnist model's run resumes still
    left = sorted((e.dataset, e.accuracy) for e in kept.entries())
    assert left == [("fashion-mnist", a) for a in (78.0, 79.0, 80.0)] + [
        ("mnist", a) for a in (90.0, 95.0, 96.0, 97.0)
    ]
    assert len(said) == 9 and all("not among the 3 best of" in s for s in said)


def test_names_say_what_a_file_holds_and_parse_back(tmp_path):
    state = valid_state(
        epoch=3, metrics=[{"epoch": 3, "accuracy_percent": 98.744}], run_id="1a2b3c4d5e6f7a8b"
    )
    name = history.name_for(state)
    entry = history.Entry.parse(name)
    assert name.startswith("mnist_e03_acc98.74_1a2b3c4d_") and name.endswith(".pth")
    assert (entry.dataset, entry.epoch, entry.accuracy, entry.run) == (
        "mnist",
        3,
        98.74,
        "1a2b3c4d",
    )
    partial = history.Entry.parse(history.name_for({**state, "step": 7}))
    assert partial.partial and partial.epoch == 3 and partial.step == 7


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()
