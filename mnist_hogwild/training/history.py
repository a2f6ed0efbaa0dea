"""The model history: every model trained at --checkpoint PATH, one file each
in STEM.models/, written once (a temp file renamed to a new name) and never
opened for writing again. Nothing in it is renamed over, so no rotation can
lose a model; only pruning removes files, and never the best of a data set.

A file's name says what it holds:
    DATASET_eEPOCH_accACCURACY_RUN_HASH.pth   e.g. mnist_e03_acc98.74_1a2b3c4d_5f3e2a1b.pth
    DATASET_eEPOCHsSTEP_acc..._RUN_HASH.pth   a model stopped STEP batches into an epoch
                                              (ACCURACY is then its last evaluated epoch's)
    unreadable_HASH.pth                       a file found at a run's path that no longer
                                              loads, kept as it was
RUN is the start of the run id; HASH the start of the SHA-256 of the weights
(of the bytes, for an unreadable file), so one model is never kept twice.
ACCURACY is the one a run decides by (checkpoint.decision_accuracy). Each
file is a whole checkpoint (weights, optimizer, settings, metrics): every
command reads it with --checkpoint, and a copy at PATH resumes it.

Per run the history keeps its best model and its latest evaluated one (one
file if they are the same); a run's earlier files are removed as it
improves on them. STEM.best.pth is a copy of the best file of a data set.
"""

import hashlib
import os
import re
import shutil
from dataclasses import dataclass

from mnist_hogwild.training import beside
from mnist_hogwild.training import checkpoint
from mnist_hogwild.core.errors import CheckpointError

NAME = re.compile(
    r"^(?P<dataset>[a-z0-9-]+)_e(?P<epoch>\d+)(?:s(?P<step>\d+))?"
    r"_acc(?P<accuracy>\d+\.\d+)_(?P<run>[0-9a-f]{8}|none)_(?P<hash>[0-9a-f]{8})\.pth$"
)
UNREADABLE = re.compile(r"^unreadable_(?P<hash>[0-9a-f]{8})\.pth$")


@dataclass(frozen=True)
class Entry:
    """One file of the history, as its name describes it."""

    name: str
    dataset: str
    epoch: int
    step: int  # batches into epoch + 1; 0 for a model at an epoch's end
    accuracy: float
    run: str
    hash: str

    @property
    def partial(self):
        return self.step > 0

    @classmethod
    def parse(cls, name):
        m = NAME.match(name)
        if m is None:
            return None
        return cls(
            name,
            m["dataset"],
            int(m["epoch"]),
            int(m["step"] or 0),
            float(m["accuracy"]),
            m["run"],
            m["hash"],
        )


def weights_hash(model_state):
    digest = hashlib.sha256()
    for key in sorted(model_state):
        digest.update(key.encode())
        digest.update(model_state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:8]


def run_tag(run_id):
    """The start of a run id (made by checkpoint.new_run_id); another string's hash."""
    if not run_id:
        return "none"
    if re.fullmatch(r"[0-9a-f]{8,}", run_id):
        return run_id[:8]
    return hashlib.sha256(run_id.encode()).hexdigest()[:8]


def name_for(state):
    """The history name of the checkpoint dict STATE."""
    dataset = state.get("config", {}).get("dataset") or "mnist"
    step = f"s{state['step']}" if state.get("step") else ""
    accuracy = checkpoint.decision_accuracy(state)
    tag, digest = run_tag(state.get("run_id")), weights_hash(state["model_state"])
    return f"{dataset}_e{state['epoch']:02d}{step}_acc{accuracy:.2f}_{tag}_{digest}.pth"


class History:
    """STEM.models/ of checkpoint PATH. SAY hears every file kept or removed."""

    def __init__(self, path, say):
        self.path, self.say = path, say
        self.directory = beside.models(path)

    def entries(self):
        """Every model file, parsed from its name (unreadable ones are not models)."""
        return [e for e in map(Entry.parse, self.listing()) if e is not None]

    def where(self, name):
        return os.path.join(self.directory, name)

    def hashes(self):
        """The hashes of every file kept, models and unreadable files alike."""
        names = self.listing()
        kept = [Entry.parse(n) for n in names]
        unreadable = [UNREADABLE.match(n) for n in names]
        return {e.hash for e in kept if e} | {m["hash"] for m in unreadable if m}

    def listing(self):
        try:
            return sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as e:  # not a folder, or not ours to read
            raise CheckpointError(f"cannot read {self.directory}: {e.strerror or e}") from None

    # ----- writing -------------------------------------------------------
    def add(self, state, payload=None):
        """Keep checkpoint dict STATE (its serialised bytes PAYLOAD, if at hand)
        as a new file unless its weights are kept already; its Entry."""
        entry = Entry.parse(name_for(state))
        if entry.hash not in self.hashes():
            self.write(entry.name, payload if payload is not None else checkpoint.to_bytes(state))
        return next((e for e in self.entries() if e.hash == entry.hash), entry)

    def adopt(self, path, model_state, going_on=False, unreadable=True):
        """Keep the model file PATH (found at the run's path: copied in, written
        by an older version, or a slot of the older layout) unless it is kept
        already; its Entry (None if unreadable: then kept as its bytes if
        UNREADABLE). GOING_ON: PATH is a checkpoint whose run may go on (a
        resume, or a command reading it), kept only if it holds an evaluated
        epoch and its run has no model here (it arrived without its history)."""
        try:
            with open(path, "rb") as f:
                payload = f.read()
        except OSError:
            return
        try:
            state = checkpoint.load(path, model_state)
        except CheckpointError:
            digest = hashlib.sha256(payload).hexdigest()[:8]
            if unreadable and digest not in self.hashes():
                self.write(f"unreadable_{digest}.pth", payload, f" ({path} does not load)")
            return None
        entry = Entry.parse(name_for(state))
        if going_on and (not state["metrics"] or any(e.run == entry.run for e in self.entries())):
            return None  # (its run goes on from it; nothing evaluated yet is no model to keep)
        if entry.hash not in self.hashes():
            self.write(entry.name, payload, f" (found at {path})")
        return entry

    def write(self, name, payload, why=None):
        """Write a new file NAME; a line says so if WHY (adopted files)."""
        target = self.where(name)
        try:
            os.makedirs(self.directory, exist_ok=True)
            checkpoint.atomic_write(target, lambda f: f.write(payload), replace=False)
        except FileExistsError:
            return  # the same model, kept by an earlier save
        except OSError as e:
            raise CheckpointError(f"could not write {target}: {e.strerror or e}") from None
        if why is not None:
            self.say(f"kept {target}{why}")

    def remove(self, entry, why=None):
        """Remove ENTRY's file; a line says so if WHY (pruning)."""
        try:
            os.unlink(self.where(entry.name))
        except FileNotFoundError:
            return
        if why is not None:
            self.say(f"removed {self.where(entry.name)} ({why})")

    # ----- choosing ------------------------------------------------------
    def best(self, dataset):
        """The best evaluated model of DATASET (the earliest of equals), or None."""
        ranked = self.ranked(dataset)
        return ranked[0] if ranked else None

    def ranked(self, dataset):
        """DATASET's models, best first (a model stopped within an epoch last:
        its accuracy is an earlier model's)."""
        mine = [e for e in self.entries() if e.dataset == dataset]
        return sorted(mine, key=lambda e: (e.partial, -e.accuracy, e.epoch, e.name))

    def settle_run(self, run_id, latest):
        """After run RUN_ID kept LATEST (an Entry): remove its other evaluated
        models but its best, so a run leaves its best and its last model."""
        mine = [e for e in self.entries() if e.run == run_tag(run_id) and not e.partial]
        best = min(mine, key=lambda e: (-e.accuracy, e.epoch), default=None)
        for entry in mine:
            if entry.hash not in (latest.hash, best.hash):
                self.remove(entry)  # superseded within its own run

    def prune(self, keep, protected_run):
        """Beyond the KEEP best of each data set, remove models that score below
        them; never the best of a data set, nor one of PROTECTED_RUN (the run
        the checkpoint can still resume)."""
        for dataset in sorted({e.dataset for e in self.entries()}):
            ranked = self.ranked(dataset)
            if len(ranked) <= keep:
                continue
            last_kept = ranked[keep - 1].accuracy
            for entry in ranked[keep:]:
                below = entry.accuracy < last_kept or entry.partial
                if below and entry.run != run_tag(protected_run):
                    self.remove(entry, f"not among the {keep} best of {dataset}")

    def refresh_copy(self, dataset, copy_path):
        """COPY_PATH (STEM.best.pth) becomes a copy of DATASET's best model,
        written only if it differs; the Entry copied, or None."""
        best = self.best(dataset)
        if best is None:
            return None
        source = self.where(best.name)
        if not same_bytes(source, copy_path):
            try:
                checkpoint.atomic_write(copy_path, lambda f: copy_into(source, f))
            except OSError as e:
                raise CheckpointError(
                    f"could not write {copy_path}: {e.strerror or e}; {source} keeps the model"
                ) from None
        return best


def copy_into(source, f):
    with open(source, "rb") as s:
        shutil.copyfileobj(s, f)


def same_bytes(a, b):
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except OSError:
        return False
