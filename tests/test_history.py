"""The model history (STEM.models/) as a property: random sequences of what
users do at one checkpoint path (train, stop, resume, kills at any file
operation, data-set and split switches, another extension, evaluate --out
anywhere, damaged files, copies in, hard links, reading commands), driving
the real checkpoint manager on real files. After every step each model a
run kept is still a loadable file somewhere beside the checkpoint, with the
accuracy it was kept with (unless the test itself destroyed every copy);
after every training run it is in the history, the best named is the best
comparable one, and STEM.best.pth is its copy.

Hypothesis draws the sequences and shrinks a failing one; its seed is
printed (HISTORY_SEED=N reruns it). HISTORY_STEPS sets the least number of
steps (CI's default; the soak runs a longer one)."""

import os
import random
import shutil
import tempfile

import torch
from hypothesis import seed, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from mnist_hogwild.commands import models as models_command
from mnist_hogwild.commands import output
from mnist_hogwild.core.errors import CheckpointError, InputError, UsageError
from mnist_hogwild.training import beside, checkpoint, history
from mnist_hogwild.training.checkpoint_manager import CheckpointManager
from helpers import valid_state

# Hypothesis keeps a cache in .hypothesis/ of the working directory: not in
# a user's checkout (no test writes there), so in a temp folder of its own.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="hypothesis-"))
STEPS = int(os.environ.get("HISTORY_STEPS", "500"))
PER_SEQUENCE = 25
EXPECTED = valid_state()["model_state"]
SPLITS = [("mnist", 5000), ("mnist", 20), ("mnist", 0), ("fashion-mnist", 5000)]
COUNT = {"steps": 0}


class Killed(BaseException):
    """The process died here (SIGKILL): nothing after it runs."""


class kills:
    """Raise Killed at the Nth file write, rename or removal (None: never)."""

    def __init__(self, after):
        self.after, self.count, self.saved = after, 0, {}

    def __enter__(self):
        if self.after is None:
            return self
        for name in ("replace", "unlink", "open", "rename"):
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


def state_of(dataset, validation, epoch, rows, run_id, step=0):
    """A checkpoint dict of a fresh Net (new weights each time) after ROWS."""
    state = valid_state(epoch=epoch, step=step, metrics=list(rows), run_id=run_id)
    state["config"] = {
        **state["config"],
        "dataset": dataset,
        "validation_size": validation,
        "epochs": 10**6,
    }
    return state


def row(epoch, accuracy, validation):
    key = "validation_accuracy_percent" if validation else "accuracy_percent"
    return {"epoch": epoch, "accuracy_percent": round(accuracy, 2), key: round(accuracy, 2)}


def files_under(root):
    """Every regular file under ROOT (links and folders not followed), but
    the temp files of saves a kill interrupted (never a model's name)."""
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path) and not name.endswith(".tmp"):
                yield path


def models_under(root, skipped=None):
    """{weights hash: {(accuracy, split) of each loadable file holding it}};
    but in SKIPPED (and its hard links)."""
    found, same = {}, os.stat(skipped) if skipped and os.path.isfile(skipped) else None
    for path in files_under(root):
        if same is not None and os.path.samestat(os.stat(path), same):
            continue
        try:
            state = checkpoint.load(path, EXPECTED)
        except CheckpointError:
            continue
        entry = history.facts(state)
        found.setdefault(entry.hash, set()).add((entry.accuracy, entry.split))
    return found


def snapshot(root):
    listing = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            st_ = os.lstat(path)
            listing[path] = (st_.st_mode, st_.st_size, st_.st_mtime_ns, st_.st_uid)
    return listing


class HistoryMachine(RuleBasedStateMachine):
    """One checkpoint folder and what was kept there: KEPT[hash] is the
    (accuracy, split) of each model a run kept (its best and its last)."""

    def __init__(self):
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="history-")
        self.path = os.path.join(self.root, "ck.pth")
        self.runs, self.pruned, self.lost = {}, set(), set()
        self.log, self.trained = [], False

    def teardown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def manager(self, keep, **options):
        return CheckpointManager(
            self.path, self.log.append, self.log.append, keep_models=keep, **options
        )

    # ----- what users do -------------------------------------------------
    @rule(
        split=st.sampled_from(SPLITS),
        epochs=st.integers(0, 3),
        stop=st.booleans(),
        resume=st.booleans(),
        kill=st.one_of(st.none(), st.none(), st.integers(1, 40)),
        keep=st.sampled_from([1, 2, 5]),
        accuracies=st.lists(st.floats(10, 99.9), min_size=3, max_size=3),
    )
    def train(self, split, epochs, stop, resume, kill, keep, accuracies):
        """A run: some evaluated epochs, maybe a stop (Ctrl-C) within an
        epoch, maybe killed at a random file operation."""
        COUNT["train"] = COUNT.get("train", 0) + 1
        m = self.manager(keep, resume=resume)
        done, said, killed = [], len(self.log), False
        with kills(kill):
            try:
                self.run(m, split, epochs, stop, resume, accuracies, done)
                m.close()
            except Killed:
                m.lock.release()  # the kernel's part of a death
                killed = True
        if killed and done and done[-1].hash not in models_under(self.root):
            done.pop()  # (its last save had not reached the disk)
        for entry in done:
            self.runs.setdefault(entry.run, []).append(entry)
        for line in self.log[said:]:
            if line.startswith("removed ") and "(not among the" in line:
                self.pruned.add(line.split(" (")[0][-12:-4])
        self.trained = kill is None

    def run(self, m, split, epochs, stop, resume, accuracies, done):
        m.open()
        (dataset, validation), rows, epoch, run_id = split, [], 0, checkpoint.new_run_id()
        if resume:
            try:
                found = checkpoint.load(self.path, EXPECTED)
            except CheckpointError:
                found = None
            if found is not None and found["metrics"]:
                dataset, rows = found["config"]["dataset"], list(found["metrics"])
                validation = found["config"]["validation_size"]
                epoch, run_id = found["epoch"], found["run_id"]
        for accuracy in accuracies[:epochs]:
            epoch += 1
            rows.append(row(epoch, accuracy, validation))
            state = state_of(dataset, validation, epoch, rows, run_id)
            done.append(history.facts(state))
            m.save_epoch(state)
        if stop:  # Ctrl-C within the next epoch: a saved stop
            m.save(state_of(dataset, validation, epoch, rows, run_id, step=3))

    @property
    def kept(self):
        """{hash: (accuracy, split)} of every model the history promised to
        keep: each run's best and last (a model copied in is its run's); less those pruned
        with a line that says so, and those the test itself destroyed."""
        kept = {}
        for entries in self.runs.values():
            best = min(entries, key=lambda e: (-e.accuracy, e.epoch))
            for entry in (best, entries[-1]):
                kept[entry.hash] = (entry.accuracy, entry.split)
        return {h: f for h, f in kept.items() if h not in self.pruned | self.lost}

    @rule(ext=st.sampled_from([".pt", ""]))
    def another_extension(self, ext):
        """A run on ck.pt (or ck) beside ck.pth: refused while ck.pth is a
        checkpoint, before anything is written."""
        COUNT["another_extension"] = COUNT.get("another_extension", 0) + 1
        before = snapshot(self.root)
        other = os.path.join(self.root, "ck" + ext)
        m = CheckpointManager(other, self.log.append, self.log.append)
        try:
            m.open()
        except CheckpointError as e:
            assert "would share" in str(e), e
            assert snapshot(self.root) == before
            return
        m.close()
        assert not beside.is_saved_checkpoint(self.path), "ran beside a checkpoint of its stem"
        if os.path.exists(other):
            os.unlink(other)

    @rule(where=st.sampled_from(["ck.pth", "ck.best.pth", "history", "ck.metrics.jsonl", "x.json"]))
    def evaluate_out(self, where):
        """evaluate --out WHERE: refused wherever a model is."""
        COUNT["evaluate_out"] = COUNT.get("evaluate_out", 0) + 1
        path = self.pick(where)
        if path is None:
            return
        was_model = os.path.isfile(path) and beside.is_saved_checkpoint(path)
        try:
            output.write_output(path, lambda f: f.write(b"{}\n"), self.path)
        except UsageError:
            return
        assert not was_model, f"evaluate --out replaced the model {path}"

    @rule(
        where=st.sampled_from(["ck.pth", "ck.best.pth", "history"]),
        how=st.sampled_from(["truncate", "flip", "folder", "link"]),
        index=st.integers(0, 3),
    )
    def damage(self, where, how, index):
        """A disk, a user or a tool damages one file (the test accounts for a
        model whose every copy it destroys: that loss is its own)."""
        COUNT["damage"] = COUNT.get("damage", 0) + 1
        path = self.pick(where, index)
        if path is None or not os.path.isfile(path) or os.path.islink(path):
            return
        if how in ("folder", "link") and where != "history":
            how = "truncate"
        self.forget_only_copies(path)
        if how == "truncate":
            os.truncate(path, os.path.getsize(path) // 2)
        elif how == "flip":
            data = bytearray(open(path, "rb").read())
            data[len(data) // 2] ^= 0xFF
            open(path, "wb").write(data)
        else:
            os.unlink(path)
            os.mkdir(path) if how == "folder" else os.symlink("/dev/zero", path)

    @rule(source=st.sampled_from(["history", "ck.best.pth", "foreign"]), link=st.booleans())
    def copy_in(self, source, link):
        """cp (or ln) a model over ck.pth: a history file, the best copy, or a
        model trained elsewhere (then it is a model to keep as well)."""
        COUNT["copy_in"] = COUNT.get("copy_in", 0) + 1
        if source == "foreign":
            state = state_of("mnist", 5000, 2, [row(2, 97.0, 5000)], checkpoint.new_run_id())
            source = os.path.join(self.root, "..", os.path.basename(self.root) + ".foreign.pth")
            torch.save(state, source)
            entry = history.facts(state)
            self.runs.setdefault(entry.run, []).append(entry)  # (a run may go on from it)
        else:
            source = self.pick(source)
            if source is None or not os.path.isfile(source) or os.path.islink(source):
                return
        self.forget_only_copies(self.path)
        if os.path.lexists(self.path):
            os.unlink(self.path)
        (os.link if link and "foreign" not in source else shutil.copyfile)(source, self.path)
        if "foreign" in source:
            os.unlink(source)

    @rule()
    def read(self):
        """What the reading commands do (models, and loading every model they
        list): nothing beside the checkpoint changes, whoever runs them."""
        COUNT["read"] = COUNT.get("read", 0) + 1
        before = snapshot(self.root)
        try:
            models_command.run_command(type("Args", (), {"checkpoint": self.path}))
        except (InputError, CheckpointError):
            pass
        kept = history.History(self.path, self.log.append, writes=False)
        for entry in kept.entries():
            if entry.split:
                checkpoint.load(kept.where(entry.name), EXPECTED)
        assert snapshot(self.root) == before, "a reading command wrote beside the checkpoint"

    # ----- helpers -------------------------------------------------------
    def pick(self, target, index=0):
        """TARGET's path; "history": its INDEXth file, newest first."""
        if target == "history":
            folder = beside.models(self.path)
            names = os.listdir(folder) if os.path.isdir(folder) else []
            paths = [os.path.join(folder, n) for n in names if history.NAME.match(n)]
            paths.sort(key=lambda p: -os.lstat(p).st_mtime_ns)
            return paths[index % len(paths)] if paths else None
        return os.path.join(self.root, target)

    def forget_only_copies(self, path):
        """Before the test destroys PATH: models it alone holds are lost by
        the test's hand."""
        others = models_under(self.root, path)
        self.lost |= {digest for digest in self.kept if digest not in others}

    # ----- the property --------------------------------------------------
    @invariant()
    def nothing_lost(self):
        COUNT["steps"] += 1
        found = models_under(self.root)
        for digest, facts in self.kept.items():
            assert digest in found, f"the kept model {digest} {facts} is gone: {self.log[-5:]}"
            assert facts in found[digest], f"{digest}: kept as {facts}, found {found[digest]}"

    @invariant()
    def the_best_is_the_best_comparable(self):
        if not self.trained:
            return
        self.trained = False
        kept = history.History(self.path, print, writes=False)
        entries = {e.hash: e for e in kept.entries()}
        for digest, (accuracy, split) in self.kept.items():
            assert digest in entries, f"{digest} ({accuracy}, {split}) is not in the history"
        for split in {s for _, s in self.kept.values()}:
            best = kept.best(split)
            top = max(a for a, s in self.kept.values() if s == split)
            assert best is not None and best.comparable and best.split == split
            assert best.accuracy >= top, f"{split}: best {best.accuracy}, kept {top}"


def test_a_random_sequence_of_what_users_do_never_loses_a_kept_model():
    drawn = os.environ.get("HISTORY_SEED") or str(random.randrange(1 << 32))
    print(f"HISTORY_SEED={drawn} (rerun with it; HISTORY_STEPS={STEPS})")
    COUNT["steps"] = 0
    sequences = -(-STEPS // PER_SEQUENCE) + 2
    machine = seed(int(drawn))(type("Seeded", (HistoryMachine,), {}))
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=sequences,
            stateful_step_count=PER_SEQUENCE,
            deadline=None,
            database=None,
            suppress_health_check=list(__import__("hypothesis").HealthCheck),
        ),
        _min_steps=PER_SEQUENCE,
    )
    assert COUNT["steps"] >= STEPS, f"premise: {COUNT['steps']} steps, not {STEPS}"
    ran = {name for name in COUNT if name != "steps"}
    assert ran == {"train", "another_extension", "evaluate_out", "damage", "copy_in", "read"}


def test_pruning_keeps_the_k_best_of_each_split_and_never_the_best(tmp_path):
    kept = history.History(str(tmp_path / "ck.pth"), print)
    runs = [checkpoint.new_run_id() for _ in range(8)]
    for i, run_id in enumerate(runs):
        for dataset, accuracy in (("mnist", 90 + i), ("fashion-mnist", 80 - i)):
            kept.add(state_of(dataset, 5000, 1, [row(1, accuracy, 5000)], run_id))
    said = []
    kept.say = said.append
    kept.prune(3, protected_run=runs[0])  # the worst mnist model's run resumes still
    left = sorted((e.split, e.accuracy) for e in kept.entries())
    assert left == [("fashion-mnist validation 5000", a) for a in (78.0, 79.0, 80.0)] + [
        ("mnist validation 5000", a) for a in (90.0, 95.0, 96.0, 97.0)
    ]
    assert len(said) == 9 and all("not among the 3 best of" in s for s in said)


def test_names_say_what_a_file_holds_but_the_facts_come_from_the_file(tmp_path):
    state = state_of("mnist", 5000, 3, [row(3, 98.744, 5000)], "1a2b3c4d5e6f7a8b")
    name = history.name_for(state)
    assert name.startswith("mnist_e03_acc98.74_1a2b3c4d_") and name.endswith(".pth")
    entry = history.facts(state)
    assert (entry.dataset, entry.epoch, entry.accuracy, entry.run, entry.split) == (
        "mnist", 3, 98.74, "1a2b3c4d", "mnist validation 5000",
    )  # fmt: skip
    assert history.name_for({**state, "step": 7, "metrics": []}).startswith(
        "mnist_e03s7_unevaluated"
    )
    kept = history.History(str(tmp_path / "ck.pth"), print)
    kept.add(state)
    lying = name.replace("acc98.74", "acc99.99")
    os.rename(kept.where(name), kept.where(lying))
    (entry,) = kept.entries()
    assert entry.accuracy == 98.74, "an accuracy read from the name"
