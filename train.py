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
import sys
import traceback
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import data


@dataclass(frozen=True)
class WorkerSetup:
    """How a worker runs (not what it trains: that is config.TrainConfig)."""

    threads: int  # torch threads in the worker
    device: str  # "cpu" or "cuda:N"
    deterministic: bool  # torch.use_deterministic_algorithms(True)
    report_every: int  # batches between reports of finished batches (see train_loop)


@dataclass(frozen=True)
class Schedule:
    """Which global batches this node trains, in which order: its local batch L
    (0, 1, ... from the start of this run) -> global batch g.

    A run starts at global batch START (a checkpoint's epoch * PER_EPOCH + step).
    Each epoch's remaining batches are dealt round-robin to the WORLD nodes, so
    together they make exactly one pass per epoch, and when every node has
    trained the same number j of its batches of an epoch, the finished batches
    are the epoch's prefix of j * WORLD: a checkpoint there is exact. With one
    node, g = START + L, as on a single machine."""

    per_epoch: int
    start: int
    rank: int = 0
    world: int = 1

    def epoch_start(self, epoch):
        """Global batch where this run's part of EPOCH starts."""
        return max(epoch * self.per_epoch, self.start)

    def count(self, epoch):
        """How many batches of EPOCH this node trains in this run."""
        remaining = (epoch + 1) * self.per_epoch - self.epoch_start(epoch) - self.rank
        return max(0, -(-remaining // self.world))

    def local_start(self, epoch):
        """Local index of this node's first batch of EPOCH."""
        first = self.start // self.per_epoch
        return sum(self.count(e) for e in range(first, epoch))

    def global_batch(self, local):
        epoch = self.start // self.per_epoch
        while local >= self.count(epoch):
            local -= self.count(epoch)
            epoch += 1
        return self.epoch_start(epoch) + self.rank + local * self.world

    def step(self, epoch, local_done):
        """Batches of EPOCH finished by all nodes together, when every node has
        finished LOCAL_DONE - local_start(EPOCH) of its own (the same number)."""
        done = self.epoch_start(epoch) + (local_done - self.local_start(epoch)) * self.world
        return min(done, (epoch + 1) * self.per_epoch) - epoch * self.per_epoch

    def common_count(self, epoch):
        """The number of EPOCH's batches every node has (sync points lie below it)."""
        return ((epoch + 1) * self.per_epoch - self.epoch_start(epoch)) // self.world


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


class MomentumSGD:
    """SGD with momentum, with exactly torch.optim.SGD's arithmetic and state format.

    buf = momentum * buf + grad; param -= lr * buf (dampening 0, no Nesterov, no
    weight decay: the settings this project uses). Not torch.optim.SGD itself:
    its first call imports torch._dynamo, which took 2.1 s per process here, on
    every worker's path to its first batch. tests/test_train.py checks that the
    weights after several steps are bitwise those of torch.optim.SGD, and that
    torch.optim.SGD loads state_dict()'s output.

    Hogwild and momentum: every worker's optimizer points at the same buffers
    in shared memory, so all workers update one momentum racily, without
    locks, exactly as they update the weights. This keeps the optimizer state a
    single thing the parent can checkpoint and restore; races only cost noise.
    """

    def __init__(self, params, lr, momentum, momentum_buffers=None):
        self.params = list(params)
        self.lr, self.momentum = lr, momentum
        if momentum_buffers is None:
            momentum_buffers = [torch.zeros_like(p) for p in self.params]
        self.momentum_buffers = list(momentum_buffers)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        for p, buf in zip(self.params, self.momentum_buffers, strict=True):
            if p.grad is not None:
                buf.mul_(self.momentum).add_(p.grad)
                p.add_(buf, alpha=-self.lr)

    def state_dict(self):
        """The same structure as torch.optim.SGD.state_dict() (tensors cloned to the CPU,
        so that a checkpoint loads on either device)."""
        return {
            "state": {
                i: {"momentum_buffer": buf.detach().to("cpu", copy=True)}
                for i, buf in enumerate(self.momentum_buffers)
            },
            "param_groups": [
                {
                    "lr": self.lr,
                    "momentum": self.momentum,
                    "dampening": 0,
                    "weight_decay": 0,
                    "nesterov": False,
                    "maximize": False,
                    "foreach": None,
                    "differentiable": False,
                    "fused": None,
                    "params": list(range(len(self.params))),
                }
            ],
        }

    def load_momentum(self, state_dict):
        """Copy the momentum buffers of an SGD state dict into ours (in place:
        they may already be shared with workers). ValueError if they do not fit."""
        try:
            state = state_dict["state"]
            saved = [
                state[i]["momentum_buffer"] if i in state else None for i in range(len(self.params))
            ]
        except (KeyError, TypeError) as e:
            raise ValueError(f"no SGD state ({e!r})") from None
        for i, (buf, value) in enumerate(zip(self.momentum_buffers, saved, strict=True)):
            if value is None:
                buf.zero_()  # a parameter that never had a gradient
            elif not isinstance(value, torch.Tensor) or value.shape != buf.shape:
                raise ValueError(f"momentum buffer {i} does not match parameter {i}")
            else:
                buf.copy_(value)


def train_batch(model, optimizer, x, y, generator, dropout_seed):
    """One Hogwild step on the shared weights; returns the loss (a tensor: reading
    it would wait for the GPU)."""
    # Dropout draws from the device's default generator; seeding it per batch
    # makes a batch's masks depend only on (seed, epoch, batch), so an
    # interrupted and resumed run is bitwise the same as an uninterrupted one.
    generator.manual_seed(dropout_seed)
    optimizer.zero_grad()
    loss = F.nll_loss(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def worker(rank, progress, setup, errors):
    """One Hogwild worker: wait for the shared model, then claim batches and
    train it until stopped. Started by shared.worker_entry (signals ignored)."""
    parent_pid = os.getppid()
    try:
        try:
            payload = setup.recv()
        except EOFError:
            payload = None  # the parent gave up before training (an error, or nothing to do)
        if payload is not None:
            train_loop(progress, parent_pid, **payload)
    except torch.cuda.OutOfMemoryError as e:
        errors.put((rank, f"CUDA out of memory ({first_sentence(e)})"))
        exit_code = 1
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


def first_sentence(error):
    return str(error).strip().split(". ")[0].splitlines()[0][:200]


def dropout_generator(device):
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index or 0]
    return torch.default_generator


def train_loop(progress, parent_pid, model, momentum_buffers, train, config, setup, schedule):
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
    scale, shift = data.normalizer(config.dataset)
    optimizer = MomentumSGD(model.parameters(), config.lr, config.momentum, momentum_buffers)
    generator = dropout_generator(device)
    model.train()
    order_epoch, order = None, None
    pending, loss_sum = 0, torch.zeros((), device=device)
    progress.set_ready(parent_pid)
    local = progress.claim(parent_pid)
    while local is not None:
        g = schedule.global_batch(local)
        epoch, k = divmod(g, schedule.per_epoch)
        if epoch != order_epoch:
            order = epoch_order(config.seed, epoch, len(train_set)).to(device)
            order_epoch = epoch
        indices = order[k * config.batch_size : (k + 1) * config.batch_size]
        x, y = data.make_batch(train_set, indices, scale, shift)
        loss_sum += train_batch(
            model, optimizer, x, y, generator, derived_seed(config.seed, "dropout", g)
        )
        pending += 1
        local = progress.claim(parent_pid, block=False)
        if local is None or pending >= setup.report_every:
            progress.complete(parent_pid, pending, loss_sum.item())
            pending = 0
            loss_sum.zero_()
        if local is None:
            local = progress.claim(parent_pid)


def evaluate(model, split, dataset, batch_size, should_stop):
    """(mean test loss, accuracy) on SPLIT, or None if should_stop() turned true.
    SPLIT lives where the model does; the sums stay there until the end."""
    scale, shift = data.normalizer(dataset)
    device = split.images.device
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            if should_stop():
                return None
            indices = torch.arange(start, min(start + batch_size, len(split)), device=device)
            x, y = data.make_batch(split, indices, scale, shift)
            output = model(x)
            loss_sum += F.nll_loss(output, y, reduction="sum")
            correct += (output.argmax(dim=1) == y).sum()
    return loss_sum.item() / len(split), correct.item() / len(split)


if __name__ == "__main__":
    import main

    main.exit_now(main.main())
