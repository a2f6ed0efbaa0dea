"""The model a server answers with, and the answer it gives."""

import os
import threading

from mnist_hogwild.core.errors import CheckpointError
from mnist_hogwild.core.tables import DATASETS
from mnist_hogwild.training import checkpoint


def quiet(message):
    """A holder's warnings, where another process says them (serve's workers)."""


class ModelHolder:
    """The checkpoint's model, loaded again whenever its file changes (saves
    are atomic, so a reload never sees half a file). A file that does not load
    is warned about once, until it changes again, and the last model serves on."""

    def __init__(self, path, warn=quiet):
        self.path, self.warn, self.lock = path, warn, threading.Lock()
        self.stamp, self.model, self.state, self.refused = None, None, None, None
        self.current()  # a bad checkpoint is an error at start, not at the first request

    @property
    def dataset(self):
        return dataset_of(self.state)

    def current(self):
        """(model, state) as the file now holds them."""
        with self.lock:
            try:
                info = os.stat(self.path)
            except OSError as e:
                if self.model is None:
                    raise CheckpointError(f"no checkpoint at {self.path} ({e.strerror})") from None
                return self.model, self.state  # (moved away meanwhile: keep serving)
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
            if stamp not in (self.stamp, self.refused):
                self.load(stamp)
            return self.model, self.state

    def load(self, stamp):
        try:
            self.model, self.state = checkpoint.load_model(self.path)
            self.stamp = stamp
        except CheckpointError as e:
            if self.model is None:
                raise
            self.refused = stamp
            self.warn(f"warning: {e}; still serving the model of epoch {self.state['epoch']}")


def dataset_of(state):
    return state["config"].get("dataset", "mnist")


def answer(probabilities, image, state, with_input=False):
    """/predict's answer: the class (a "digit" for a data set of digits) and its
    name, the probabilities, the model's epoch; WITH_INPUT, the 28x28 the model
    saw (784 bytes, light on dark: the page shows it)."""
    kind = DATASETS[dataset_of(state)]
    best = int(probabilities.argmax())
    out = {kind.class_word: best, "name": kind.classes[best]}
    out |= {"probabilities": [round(p, 6) for p in probabilities.tolist()]}
    out["epoch"] = state["epoch"]
    return out | ({"input": list(image)} if with_input else {})
