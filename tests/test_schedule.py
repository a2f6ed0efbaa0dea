"""schedule.py: which batches, in what order, who trains them, at what rate."""

import dataclasses

import pytest
import torch

from mnist_hogwild.core.config import TrainConfig
from mnist_hogwild.learn.schedule import Schedule, batches_per_epoch, epoch_order, learning_rate


@pytest.mark.parametrize("per_epoch", [7, 40, 41])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("start", [0, 5, 40, 83])
def test_the_nodes_together_train_every_batch_once_per_epoch(per_epoch, world, start):
    schedules = [Schedule(per_epoch, start, rank, world) for rank in range(world)]
    epochs = 3
    seen = []
    for s in schedules:
        total = s.local_start(epochs)
        seen += [s.global_batch(local) for local in range(total)]
    assert sorted(seen) == list(range(start, epochs * per_epoch))


def test_one_node_is_the_single_machine_numbering():
    s = Schedule(per_epoch=10, start=13)
    assert [s.global_batch(i) for i in range(10)] == list(range(13, 23))
    assert s.step(1, 4) == 7 and s.step(2, 7) == 0 and s.local_start(2) == 7
    assert s.local_end(1) == 7


def test_at_a_common_count_the_finished_batches_are_a_prefix():
    per_epoch, world = 41, 2
    schedules = [Schedule(per_epoch, 0, rank, world) for rank in range(world)]
    for j in range(1, schedules[0].common_count(0) + 1):
        done = {s.global_batch(i) for s in schedules for i in range(j)}
        assert done == set(range(j * world))
        assert schedules[0].step(0, j) == schedules[1].step(0, j) == j * world


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = epoch_order(1, 3, 1000)
    assert torch.equal(a, epoch_order(1, 3, 1000))
    assert not torch.equal(a, epoch_order(1, 4, 1000))
    assert not torch.equal(a, epoch_order(2, 3, 1000))
    assert sorted(a.tolist()) == list(range(1000))
    assert batches_per_epoch(60000, 64) == 938


def rates(config, per_epoch=10):
    return [learning_rate(config, b, per_epoch) for b in range(config.epochs * per_epoch)]


def test_constant_is_the_rate_after_its_warm_up():
    assert set(rates(TrainConfig(lr=0.03))) == {0.03}
    warm = rates(TrainConfig(lr=0.03, warmup=0.1, epochs=2))
    assert warm[:2] == pytest.approx([0.015, 0.03]) and set(warm[2:]) == {0.03}


def test_onecycle_rises_to_the_peak_then_falls_to_almost_nothing():
    config = TrainConfig(lr=0.01, lr_schedule="onecycle", warmup=0.3, epochs=3)
    r = rates(config)
    peak = max(range(len(r)), key=r.__getitem__)
    assert r[peak] == pytest.approx(0.01) and peak == 9  # 30% of 30 batches
    assert r[0] == pytest.approx(0.01 / 25)
    assert all(a <= b for a, b in zip(r[:peak], r[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(r[peak:], r[peak + 1 :], strict=False))
    assert r[-1] < 0.01 / 25


def test_cosine_falls_from_the_rate_to_zero():
    r = rates(TrainConfig(lr=0.1, lr_schedule="cosine", epochs=2))
    assert r[0] == pytest.approx(0.1) and r[-1] < 0.01
    assert all(a >= b for a, b in zip(r, r[1:], strict=False))


def test_a_batch_rate_depends_only_on_its_index_and_the_plan():
    config = TrainConfig(lr=0.01, lr_schedule="onecycle", warmup=0.3, epochs=4)
    # The same batch, asked in any order (any worker, any node, after a resume).
    forward = rates(config)
    assert [learning_rate(config, b, 10) for b in reversed(range(40))][::-1] == forward
    longer = dataclasses.replace(config, epochs=5)
    assert learning_rate(longer, 20, 10) != learning_rate(config, 20, 10)  # the plan changed
