"""The model history: every model trained at --checkpoint PATH, one file each
in STEM.models/, written once (a temp file renamed to a new name) and never
opened for writing again. Nothing in it is renamed over, so no rotation can
lose a model; only pruning removes files, and never the best of a split.

A file counts only for what it proves. Its name is for people:
    DATASET_eEPOCH_accACCURACY_RUN_HASH.pth   e.g. mnist_e03_acc98.74_1a2b3c4d_5f3e2a1b.pth
    DATASET_eEPOCHsSTEP_acc..._RUN_HASH.pth   a model stopped STEP batches into an epoch
                                              (ACCURACY is then its last evaluated epoch's)
    DATASET_eEPOCHsSTEP_unevaluated_RUN_HASH.pth  stopped before any evaluation
    unreadable_HASH.pth                       a file found at a run's path that no longer
                                              loads, kept as it was
RUN is the start of the run id; HASH the start of the SHA-256 of the weights
(of the bytes, for an unreadable file). What the history believes of a file
(data set, epoch, accuracy, the split it was judged on) is read from the
file itself, which must be a regular file that loads, whose weights hash to
the HASH of its name. A file that fails is not counted; training sets it
aside under NAME.damaged (NAME.not-a-file for a folder or a link) and says
so once, and writes the model again if it has a good copy of it.

Models are compared only with models judged on the same split (the data set
and how many validation images, or its test set): each run's best is the
best of its split, and a model never evaluated (or stopped within an epoch,
whose accuracy is an earlier model's) is never the best. Per run the
history keeps its best model and its latest evaluated one; a run's earlier
files are removed as it improves on them. STEM.best.pth is a copy of the
best file of a split.
"""

import hashlib
import io
import os
import re
import stat
from dataclasses import dataclass

from mnist_hogwild.training import beside
from mnist_hogwild.training import checkpoint
from mnist_hogwild.core.errors import CheckpointError
from model import Net

NAME = re.compile(
    r"^(?P<dataset>[a-z0-9-]+)_e(?P<epoch>\d+)(?:s(?P<step>\d+))?"
    r"_(?:acc(?P<accuracy>\d+\.\d+)|unevaluated)"
    r"_(?P<run>[0-9a-f]{8}|none)_(?P<hash>[0-9a-f]{8})\.pth$"
)
UNREADABLE = re.compile(r"^unreadable_(?P<hash>[0-9a-f]{8})\.pth$")
SET_ASIDE = (".damaged", ".not-a-file")


@dataclass(frozen=True)
class Entry:
    """One file of the history, as its contents describe it."""

    name: str
    dataset: str
    epoch: int
    step: int  # batches into epoch + 1; 0 for a model at an epoch's end
    accuracy: float | None  # None: never evaluated
    split: str  # what the accuracy was judged on, e.g. "mnist validation 5000"
    run: str
    hash: str

    @property
    def partial(self):
        return self.step > 0

    @property
    def comparable(self):
        """Whether its accuracy is its own weights' (evaluated at an epoch's end)."""
        return self.accuracy is not None and not self.partial

    def why_not_comparable(self):
        if self.accuracy is None:
            return "never evaluated"
        return f"stopped within epoch {self.epoch + 1}: its accuracy is epoch {self.epoch}'s"


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


def split_of(state):
    """What the checkpoint dict STATE's last accuracy was judged on."""
    config = state.get("config", {})
    dataset = config.get("dataset") or "mnist"
    rows = state.get("metrics") or [{}]
    if "validation_accuracy_percent" in rows[-1]:
        return f"{dataset} validation {config.get('validation_size', 0)}"
    if rows[-1] or not config.get("validation_size"):
        return f"{dataset} test"
    return f"{dataset} validation {config['validation_size']}"


def facts(state, name=None):
    """The Entry of the checkpoint dict STATE (NAME: its file's, else its own)."""
    accuracy = checkpoint.decision_accuracy(state) if state.get("metrics") else None
    dataset = state.get("config", {}).get("dataset") or "mnist"
    tag, digest = run_tag(state.get("run_id")), weights_hash(state["model_state"])
    step, epoch = state.get("step") or 0, state["epoch"]
    if name is None:
        score = "unevaluated" if accuracy is None else f"acc{accuracy:.2f}"
        name = f"{dataset}_e{epoch:02d}{f's{step}' if step else ''}_{score}_{tag}_{digest}.pth"
    return Entry(name, dataset, epoch, step, accuracy, split_of(state), tag, digest)


def name_for(state):
    """The history name of the checkpoint dict STATE."""
    return facts(state).name


# What a file (by name, device, inode, size and time) was found to be: files
# are written once, so a scan reads each only once per process.
_PROVEN = {}


def prove(path, found, expected):
    """PATH's Entry if the file (lstat FOUND) proves what its name claims:
    a regular file that loads against EXPECTED (a state_dict) and whose
    weights hash to its name's HASH (its bytes, for an unreadable file's);
    else why not."""
    name = os.path.basename(path)
    if not stat.S_ISREG(found.st_mode):
        return "not a regular file"
    claimed = (NAME.match(name) or UNREADABLE.match(name))["hash"]
    try:
        payload = checkpoint.read_file(path)
    except CheckpointError as e:
        return str(e)
    if UNREADABLE.match(name):
        digest = hashlib.sha256(payload).hexdigest()[:8]
        return Entry(name, "", 0, 0, None, "", "none", digest) if digest == claimed else "damaged"
    try:
        state = checkpoint.load(io.BytesIO(payload), expected, name)
    except CheckpointError as e:
        return str(e)
    entry = facts(state, name)
    if entry.hash != claimed:
        return f"its weights hash to {entry.hash}, not the {claimed} its name records"
    return entry


def aside_name(path, found):
    """A new name for PATH that says why it is set aside (never an existing one)."""
    suffix = SET_ASIDE[0] if stat.S_ISREG(found.st_mode) else SET_ASIDE[1]
    return next(
        f"{path}{suffix}{n or ''}"
        for n in range(10**6)
        if not os.path.lexists(f"{path}{suffix}{n or ''}")
    )


class History:
    """STEM.models/ of checkpoint PATH. SAY hears every file kept, removed or
    set aside. WRITES: False for the commands that only read (they set
    nothing aside and write nothing)."""

    def __init__(self, path, say, writes=True):
        self.path, self.say, self.writes = path, say, writes
        self.directory = beside.models(path)
        self.expected = Net().state_dict()
        self.warned = set()

    def where(self, name):
        return os.path.join(self.directory, name)

    def listing(self):
        try:
            return sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise CheckpointError(beside.not_a_folder(self.directory)) from None
        except OSError as e:  # not ours to read
            raise CheckpointError(f"cannot read {self.directory}: {e.strerror or e}") from None

    # ----- what the files prove ------------------------------------------
    def entries(self):
        """Every model file that proves what it holds (others set aside or noted)."""
        found = []
        for name in self.listing():
            if NAME.match(name) or UNREADABLE.match(name):
                entry = self.proven(name)
                if isinstance(entry, Entry):
                    found.append(entry)
        return found

    def hashes(self):
        """The hashes of every file kept, models and unreadable files alike."""
        return {e.hash for e in self.entries()}

    def proven(self, name):
        """NAME's Entry if its file proves it; else it is set aside (or, for a
        reading command, noted once) and the reason is returned."""
        path = self.where(name)
        try:
            found = os.lstat(path)
        except FileNotFoundError:
            return "gone"
        key = (path, found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)
        if key not in _PROVEN:
            if len(_PROVEN) > 4096:  # (a long-lived process: only the files of now matter)
                _PROVEN.clear()
            _PROVEN[key] = prove(path, found, self.expected)
        result = _PROVEN[key]
        if not isinstance(result, Entry):
            self.set_aside(name, result, found)
        return result

    def set_aside(self, name, reason, found):
        """Move NAME out of the way (never over another file), or note it."""
        if not self.writes:
            if name not in self.warned:
                self.warned.add(name)
                self.say(f"note: {self.where(name)} is not counted: {reason}")
            return
        target = aside_name(self.where(name), found)
        try:
            os.rename(self.where(name), target)
        except OSError as e:
            raise CheckpointError(f"could not set aside {self.where(name)}: {e.strerror}") from None
        self.say(f"warning: set aside {self.where(name)} as {target}: {reason}")

    # ----- writing -------------------------------------------------------
    def add(self, state, payload=None):
        """Keep checkpoint dict STATE (its serialised bytes PAYLOAD, if at hand)
        as a new file unless a proven file holds its weights; its Entry."""
        entry = facts(state)
        kept = next((e for e in self.entries() if e.hash == entry.hash), None)
        if kept is not None:
            return kept
        self.write(entry.name, payload if payload is not None else checkpoint.to_bytes(state))
        return entry

    def adopt(self, path, going_on=False, unreadable=True):
        """Keep the model file PATH (found at the run's path: copied in, written
        by an older version, or a slot of the older layout) unless a proven
        file holds it; its Entry (None if unreadable: then kept as its bytes
        if UNREADABLE). GOING_ON: PATH is a checkpoint whose run may go on (a
        resume), kept only if it holds an evaluated epoch and its run has no
        model here (it arrived without its history)."""
        try:
            payload = checkpoint.read_file(path)
        except CheckpointError:
            return None
        try:
            state = checkpoint.load(io.BytesIO(payload), self.expected, path)
        except CheckpointError:
            digest = hashlib.sha256(payload).hexdigest()[:8]
            if unreadable and digest not in self.hashes():
                self.write(f"unreadable_{digest}.pth", payload, f" ({path} does not load)")
            return None
        entry = facts(state)
        entries = self.entries()
        ours = any(e.run == entry.run for e in entries)
        if going_on and (not state["metrics"] or (entry.partial and ours)):
            return None  # (its run goes on from it: a stop's weights are no model to keep)
        kept = next((e for e in entries if e.hash == entry.hash), None)
        if kept is not None:
            return kept
        self.write(entry.name, payload, f" (found at {path})")
        return entry

    def write(self, name, payload, why=None):
        """Write a new file NAME; a line says so if WHY (adopted files). A file
        already of that name that does not prove itself is set aside first."""
        target = self.where(name)
        for _ in range(2):
            try:
                os.makedirs(self.directory, exist_ok=True)
                checkpoint.atomic_write(target, lambda f: f.write(payload), replace=False)
                break
            except FileExistsError:
                if isinstance(self.proven(name), Entry):
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
    def best(self, split):
        """The best evaluated model judged on SPLIT (the earliest of equals), or None."""
        ranked = [e for e in self.ranked(split) if e.comparable]
        return ranked[0] if ranked else None

    def ranked(self, split):
        """SPLIT's models, best first; those whose accuracy is not their own last."""
        mine = [e for e in self.entries() if e.split == split]
        return sorted(mine, key=lambda e: (not e.comparable, -(e.accuracy or 0), e.epoch, e.name))

    def splits(self):
        return sorted({e.split for e in self.entries() if e.split})

    def settle_run(self, run_id, latest):
        """After run RUN_ID kept LATEST (an Entry): remove its other evaluated
        models but its best, so a run leaves its best and its last model."""
        mine = [e for e in self.entries() if e.run == run_tag(run_id) and e.comparable]
        mine = [e for e in mine if e.split == latest.split]
        best = min(mine, key=lambda e: (-e.accuracy, e.epoch), default=latest)
        for entry in mine:
            if entry.hash not in (latest.hash, best.hash):
                self.remove(entry)  # superseded within its own run

    def prune(self, keep, protected_run):
        """Beyond the KEEP best of each split, remove models that score below
        them; never the best of a split, nor one of PROTECTED_RUN (the run the
        checkpoint can still resume)."""
        for split in self.splits():
            ranked = self.ranked(split)
            if len(ranked) <= keep:
                continue
            last_kept = ranked[keep - 1].accuracy or 0
            for entry in ranked[keep:]:
                below = not entry.comparable or entry.accuracy < last_kept
                if below and entry.run != run_tag(protected_run):
                    self.remove(entry, f"not among the {keep} best of {split}")

    def refresh_copy(self, split, copy_path):
        """COPY_PATH (STEM.best.pth) becomes a copy of SPLIT's best model,
        written only if it differs, and only once the model it held is kept
        here too; the Entry copied, or None."""
        best = self.best(split)
        if best is None:
            return None
        source = self.where(best.name)
        if not same_bytes(source, copy_path):
            self.adopt(copy_path, unreadable=False)  # (never the only copy of a model)
            try:
                checkpoint.atomic_write(copy_path, lambda f: copy_into(source, f))
            except OSError as e:
                raise CheckpointError(
                    f"could not write {copy_path}: {e.strerror or e}; {source} keeps the model"
                ) from None
        return best


def copy_into(source, f):
    f.write(checkpoint.read_file(source))  # (bounded, whatever took its name meanwhile)


def same_bytes(a, b):
    try:
        return checkpoint.read_file(a) == checkpoint.read_file(b)
    except CheckpointError:
        return False
