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

import torch
import torch.nn.functional as F

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
        """The same structure as torch.optim.SGD.state_dict() (tensors cloned)."""
        return {
            "state": {
                i: {"momentum_buffer": buf.clone()} for i, buf in enumerate(self.momentum_buffers)
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


def train_batch(model, optimizer, x, y, dropout_seed):
    # Dropout draws from the global generator; seeding it per batch makes a
    # batch's masks depend only on (seed, epoch, batch), so an interrupted and
    # resumed run is bitwise the same as an uninterrupted one.
    torch.default_generator.manual_seed(dropout_seed)
    optimizer.zero_grad()
    loss = F.nll_loss(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


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


def train_loop(progress, parent_pid, model, momentum_buffers, files, config, threads):
    torch.set_num_threads(threads)
    train_set = data.map_split(files)
    scale, shift = data.normalizer(config.dataset)
    per_epoch = batches_per_epoch(len(train_set), config.batch_size)
    optimizer = MomentumSGD(model.parameters(), config.lr, config.momentum, momentum_buffers)
    model.train()
    order_epoch, order = None, None
    progress.set_ready()
    while True:
        g = progress.claim(parent_pid)
        if g is None:
            return
        epoch, k = divmod(g, per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(config.seed, epoch, len(train_set))
        indices = order[k * config.batch_size : (k + 1) * config.batch_size]
        x, y = data.make_batch(train_set, indices, scale, shift)
        loss = train_batch(model, optimizer, x, y, derived_seed(config.seed, "dropout", g))
        progress.complete(loss)


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

    main.exit_now(main.main())
