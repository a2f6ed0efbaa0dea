"""One Hogwild worker: receive the shared model, then claim batches and train
it, without locks, until told to stop.

The trainer imports this module before it forks the workers, so that each
worker starts with torch already imported.
"""

import os
import sys
import traceback
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mnist_hogwild.learn import data
from mnist_hogwild.learn import optimizers
from mnist_hogwild.core.errors import cuda_memory_error
from mnist_hogwild.learn.schedule import derived_seed, epoch_samples, learning_rate


@dataclass(frozen=True)
class WorkerSetup:
    """How a worker runs (not what it trains: that is config.TrainConfig)."""

    threads: int  # torch threads in the worker
    device: str  # "cpu" or "cuda:N"
    deterministic: bool  # torch.use_deterministic_algorithms(True)
    report_every: int  # batches between reports of finished batches (see train_loop)
    micro_batches: int = 1  # updates per batch (hogwild/adapt.py)


def worker_main(rank, counters, setup, errors, parent_alive):
    """The worker process's body: wait for the shared model, train until told
    to stop, report any failure to the parent, and exit."""
    try:
        try:
            payload = setup.recv()
        except EOFError:
            payload = None  # the parent gave up before training (an error, or nothing to do)
        if payload is not None:
            train_loop(counters, parent_alive, **payload)
    except Exception as e:  # noqa: BLE001 - a process boundary: report any failure to the parent
        exit_code = 1
        if parent_alive():
            memory = cuda_memory_error(e)
            errors.put((rank, memory or f"{type(e).__name__}: {e}"))
            if memory is None:
                traceback.print_exc()  # a bug: its traceback is what a bug report needs
        # else orphaned (the parent was killed, say by the OOM killer,
        # mid-hand-over of the model): whatever reports the parent's death
        # names that cause, and this failure is only its consequence.
    else:
        exit_code = 0
    # Skip the interpreter's teardown: with torch loaded it takes most of a
    # second, and a worker holds nothing that needs cleaning up (the parent
    # owns the shared memory and the locks). This keeps docker stop fast.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(exit_code)


def train_batch(model, optimizer, x, y, generator, dropout_seed, micro_batches=1):
    """One batch of Hogwild on the shared weights, as MICRO_BATCHES updates;
    returns the batch's mean loss (a tensor: reading it would wait for the GPU)."""
    # Dropout draws from the device's default generator; seeding it per batch
    # makes a batch's masks depend only on (seed, epoch, batch), so an
    # interrupted and resumed run is bitwise the same as an uninterrupted one.
    generator.manual_seed(dropout_seed)
    micro_batches = min(micro_batches, len(y))  # (an epoch's last batch may be short)
    losses = []  # each update's mean loss, weighted by its samples
    for xs, ys in zip(x.tensor_split(micro_batches), y.tensor_split(micro_batches), strict=True):
        optimizer.zero_grad()
        loss = F.nll_loss(model(xs), ys)
        loss.backward()
        optimizer.step()
        losses.append((loss.detach(), len(ys)))
    if micro_batches == 1:
        return losses[0][0]  # (as it is: a resumed run's losses stay bitwise the same)
    return sum(part * n for part, n in losses) / len(y)


def dropout_generator(device):
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index or 0]
    return torch.default_generator


def train_loop(counters, parent_alive, model, state, train, config, setup, schedule):
    """Claim batches and train until told to stop.

    Finished batches are reported every setup.report_every batches, and always
    before the worker would wait for more. Reading the loss for the report
    waits for this process's queued GPU work, the update of the shared weights
    included: so once the parent sees a batch done, its update is in the
    weights, and a paused run's checkpoint is exact. On the CPU it reports
    every batch (there is nothing to wait for); on a GPU every log interval,
    so that the loop makes no host synchronisation per batch."""
    torch.set_num_threads(setup.threads)
    device = torch.device(setup.device)
    if setup.deterministic:
        torch.use_deterministic_algorithms(True)
    train_set = data.map_split(train) if isinstance(train, data.SplitFiles) else train
    trained = data.hold_out(len(train_set), config.validation_size)[0].to(train_set.labels.device)
    scale, shift = data.normalizer(config.dataset)
    optimizer = optimizers.from_config(config, model.parameters(), state)
    generator = dropout_generator(device)
    model.train()
    order_epoch, order = None, None
    pending, loss_sum, staleness = 0, torch.zeros((), device=device), []
    counters.set_ready(parent_alive)
    local = counters.claim(parent_alive)
    while local is not None:
        read_mark = counters.seen  # the updates in the weights this batch reads
        g = schedule.global_batch(local)
        epoch, k = divmod(g, schedule.per_epoch)
        if epoch != order_epoch:
            order = epoch_samples(config.seed, epoch, trained)
            order_epoch = epoch
        indices = order[k * config.batch_size : (k + 1) * config.batch_size]
        x, y = data.make_batch(train_set, indices, scale, shift)
        optimizer.lr = learning_rate(config, g, schedule.per_epoch)
        seed = derived_seed(config.seed, "dropout", g)
        loss_sum += train_batch(model, optimizer, x, y, generator, seed, setup.micro_batches)
        pending += 1
        local = counters.claim(parent_alive, block=False)
        # Others' updates that landed while this batch was computed. (On a GPU,
        # where a worker reports every log interval, those reported by then.)
        staleness.append(counters.seen - read_mark)
        if local is None or pending >= setup.report_every:
            counters.complete(parent_alive, pending, loss_sum.item(), staleness)
            pending, staleness = 0, []
            loss_sum.zero_()
        if local is None:
            local = counters.claim(parent_alive)
