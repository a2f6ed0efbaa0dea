"""Stop signals: SIGINT (Ctrl-C, docker stop with STOPSIGNAL SIGINT), SIGTERM
(docker stop's default, Kubernetes) and SIGHUP (a closed terminal or SSH
session) all mean "save a checkpoint, then stop". Torch-free.
"""

import os
import signal

from mnist_hogwild.core.processes import STOP_SIGNALS


class Stopped(Exception):
    """The run stops on SIGNUM: received HERE, or on another node and carried
    by a sync; DURING_START_UP: before the first batch (nothing to save)."""

    def __init__(self, signum, here=True, during_start_up=False):
        super().__init__(signum)
        self.signum, self.here, self.during_start_up = signum, here, during_start_up

    def name(self):
        return signal.Signals(self.signum).name


def _write(text):
    """os.write is safe at any moment, also inside a signal handler; a reader
    that went away (a closed pipe) must not turn a stop into a crash."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


class StopRequest:
    """Records a stop signal; the training loop polls it and shuts down cleanly.

    The handler only sets a field (and writes with os.write): no exception
    can land in the middle of a save. The one exception is early start-up
    (importing torch takes seconds and cannot be interrupted by a flag):
    until the workers are started there is nothing to save, so the handler
    raises SystemExit and the process ends at once.
    """

    def __init__(self):
        self.signum = None
        self.starting = True  # nothing to save yet; the trainer clears it at the first batch
        # Raise SystemExit (unwind at once) rather than set the flag. The trainer
        # clears it before it starts the workers: unwinding the loop that starts
        # them could leave a worker forked but not yet recorded, and so not stopped.
        self.unwind = True

    def requested(self, *_):
        """True once a stop signal has come (any arguments are ignored: a
        callback for waits that pass one)."""
        return self.signum is not None

    def install(self):
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.starting:
            self.signum = self.signum or signum  # if SystemExit is swallowed, the run still stops
            _write(f"received {name} during start-up: nothing to save yet, exiting\n")
            if self.unwind:
                # Unwinds whatever is running (even `import torch`); main()'s
                # `finally` stops the workers and multiprocessing cleans up after itself.
                raise SystemExit(128 + signum)
            return
        if self.signum is None:
            self.signum = signum
            _write(f"received {name}: stopping after the current batches, saving a checkpoint\n")
        else:
            _write(f"received {name} again: still saving the checkpoint, please wait\n")
