"""Per-worker Hogwild training loop and evaluation.

Also a runnable entry point: `python train.py [flags]` is exactly
`python main.py [flags]` (the course autograder runs train.py).

How an epoch is split: the epoch's shuffled sample order is a permutation
derived from (seed, epoch), cut into global batches 0..B-1. Workers claim
the next unclaimed batch from a shared counter, so the workers together make
one pass over the training set per epoch, whatever --num-processes is, and
the batches finished always form a prefix 0..step-1 once the workers are
paused. That prefix is the whole progress a checkpoint has to record.
"""

import hashlib
import os
import signal
import sys
import traceback

import torch
import torch.nn.functional as F
import torch.optim as optim

import data


def derived_seed(seed, *parts):
    """A 63-bit seed from (seed, parts): the same numbers in any process or run."""
    digest = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def epoch_order(seed, epoch, num_samples):
    generator = torch.Generator()
    generator.manual_seed(derived_seed(seed, "order", epoch))
    return torch.randperm(num_samples, generator=generator)


def batches_per_epoch(num_samples, batch_size):
    return -(-num_samples // batch_size)


def make_optimizer(model, lr, momentum, momentum_buffers=None):
    """SGD whose momentum buffers are the given (shared-memory) tensors.

    Hogwild and momentum: every worker's optimizer points at the same buffers,
    so all workers update one momentum racily, without locks, exactly as they
    update the weights. This keeps the optimizer state a single thing the
    parent can checkpoint and restore; races only cost a little noise.
    """
    optimizer = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    if momentum_buffers is not None:
        for param, buf in zip(model.parameters(), momentum_buffers):
            optimizer.state[param]["momentum_buffer"] = buf
    return optimizer


def train_batch(model, optimizer, x, y, dropout_seed):
    # Dropout draws from the global generator; seeding it per batch makes a
    # batch's masks depend only on (seed, epoch, batch), so an interrupted and
    # resumed run is bitwise the same as an uninterrupted one.
    torch.default_generator.manual_seed(dropout_seed)
    optimizer.zero_grad(set_to_none=True)
    loss = F.nll_loss(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


class SharedProgress:
    """Counters shared by the parent and the workers, guarded by one condition.

    claimed: next global batch to hand out; done: batches finished;
    limit: workers claim only below it (the parent lowers it to `claimed` to
    pause, and raises it to the end of the epoch to run); stop: workers exit.
    A global batch number g means epoch g // batches_per_epoch (0-based),
    batch g % batches_per_epoch within it.
    """

    def __init__(self, ctx, start, log_interval):
        self.cond = ctx.Condition()
        self.claimed = ctx.RawValue("q", start)
        self.done = ctx.RawValue("q", start)
        self.limit = ctx.RawValue("q", start)
        self.stop = ctx.RawValue("b", 0)
        self.loss_sum = ctx.RawValue("d", 0.0)
        self.ready = ctx.RawValue("q", 0)  # workers set up and waiting for batches
        self.log_interval = log_interval

    def claim(self, parent_pid):
        """The next batch number, or None when told to stop (or orphaned)."""
        with self.cond:
            while not self.stop.value and self.claimed.value >= self.limit.value:
                self.cond.wait(1.0)
                if os.getppid() != parent_pid:
                    return None
            if self.stop.value:
                return None
            g = self.claimed.value
            self.claimed.value = g + 1
            return g

    def set_ready(self):
        with self.cond:
            self.ready.value += 1
            self.cond.notify_all()

    def complete(self, loss):
        with self.cond:
            self.done.value += 1
            self.loss_sum.value += loss
            done = self.done.value
            if done == self.limit.value or done % self.log_interval == 0:
                self.cond.notify_all()


def prefer_oom_kill():
    """Make the kernel's out-of-memory killer pick a worker before the parent.

    Under a memory limit (docker --memory) the kernel kills the process with
    the highest OOM score. Raising our own score needs no privilege; then the
    parent survives to report the failure and keep the checkpoint intact.
    """
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("500")
    except OSError:
        pass  # no procfs (not Linux): only the error message gets less specific


def worker(rank, model, momentum_buffers, progress, files, hparams, threads, errors):
    """One Hogwild worker: claim batches, train the shared model, until stopped."""
    # The parent owns shutdown: a Ctrl-C to the process group or a signal must
    # not kill a worker mid-update. The parent started us with these signals
    # blocked (inherited through exec), so ignoring them first leaves no gap.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    parent_pid = os.getppid()
    prefer_oom_kill()
    try:
        torch.set_num_threads(threads)
        train_set = data.map_split(files)
        scale, shift = data.normalizer(hparams["dataset"])
        per_epoch = batches_per_epoch(len(train_set), hparams["batch_size"])
        optimizer = make_optimizer(model, hparams["lr"], hparams["momentum"], momentum_buffers)
        model.train()
        order_epoch, order = None, None
        progress.set_ready()
        while True:
            g = progress.claim(parent_pid)
            if g is None:
                break
            epoch, k = divmod(g, per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_order(hparams["seed"], epoch, len(train_set))
            indices = order[k * hparams["batch_size"] : (k + 1) * hparams["batch_size"]]
            x, y = data.make_batch(train_set, indices, scale, shift)
            loss = train_batch(model, optimizer, x, y, derived_seed(hparams["seed"], "dropout", g))
            progress.complete(loss)
    except Exception as e:  # noqa: BLE001 - a process boundary: report any failure to the parent
        errors.put((rank, f"{type(e).__name__}: {e}"))
        traceback.print_exc()
        exit_code = 1
    else:
        exit_code = 0
    # Skip the interpreter's teardown: with torch loaded it takes over half a
    # second here, and a worker holds nothing that needs cleaning up (the
    # parent owns the shared memory and the locks). This keeps docker stop fast.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def evaluate(model, split, dataset, batch_size, should_stop):
    """(mean test loss, accuracy) on SPLIT, or None if should_stop() turned true."""
    scale, shift = data.normalizer(dataset)
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            if should_stop():
                return None
            indices = torch.arange(start, min(start + batch_size, len(split)))
            x, y = data.make_batch(split, indices, scale, shift)
            output = model(x)
            loss_sum += F.nll_loss(output, y, reduction="sum").item()
            correct += (output.argmax(dim=1) == y).sum().item()
    return loss_sum / len(split), correct / len(split)


if __name__ == "__main__":
    import main

    sys.exit(main.main())
