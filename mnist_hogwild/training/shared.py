"""The model and optimizer state that a run's workers train together, in
shared memory (Hogwild), and the checkpoint dict made from them."""

from dataclasses import dataclass

import torch

from mnist_hogwild.learn import optimizers
from mnist_hogwild.learn.device import training_layout
from mnist_hogwild.training import checkpoint
from model import Net


@dataclass
class SharedModel:
    """The model and optimizer state the workers train together (Hogwild:
    without locks, in shared memory on the CPU; on a GPU the workers reach
    these very tensors by CUDA IPC), and where training stands."""

    model: Net
    optimizer: optimizers.SharedStateOptimizer
    record: checkpoint.Record  # where training stands, and its metrics (saved)
    run_id: str
    summed: list  # optimizer state that several machines add up (optimizer.counted)
    averaged: list  # the rest of the optimizer state: several machines average it

    @classmethod
    def build(cls, config, device, state, checkpoints, per_epoch):
        """Fresh (seeded), or restored from STATE, then shared."""
        torch.manual_seed(config.seed)
        model = training_layout(Net(config.dropout).to(device), device)
        params = list(model.parameters())
        optimizer = optimizers.from_config(config, params)
        if state is None:
            record, run_id = checkpoint.Record(0, 0, per_epoch, config.seed), None
        else:
            record = checkpoints.restore(state, model, optimizer, per_epoch)
            run_id = state.get("run_id")
        model.share_memory()
        for tensor in optimizer.tensors():
            tensor.share_memory_()
        summed, averaged = optimizer.counters(), optimizer.moments()
        run_id = run_id or checkpoint.new_run_id()
        return cls(model, optimizer, record, run_id, summed, averaged)

    def payload(self, config, schedule, train, setup):
        """What every worker gets: the shared tensors (by fd, or CUDA IPC), and
        how to train. On the CPU TRAIN is the data files, which the workers map
        themselves (page cache, no copy); on a GPU the split already there."""
        return dict(
            model=self.model,
            state=self.optimizer.state,
            config=config,
            train=train,
            setup=setup,
            schedule=schedule,
        )

    def snapshot(self, config, options, epoch, step, partial):
        """The whole checkpoint dict for (EPOCH, STEP), PARTIAL the unfinished
        epoch's loss and seconds; call only while the workers are paused."""
        record = checkpoint.Record(
            epoch,
            step,
            self.record.batches_per_epoch,
            config.seed,
            list(self.record.metrics),
            dict(partial),
            [list(r) for r in self.record.intervals],
        )
        return checkpoint.make_state(
            self.model,
            self.optimizer.state_dict(),
            record,
            config.as_dict(),
            options.as_dict(),
            self.run_id,
        )
