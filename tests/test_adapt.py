"""Hogwild at many processes: the adaptation to the process count, the
staleness it is measured by, and the checks that stop a collapsed run."""

import pytest

from conftest import load_checkpoint, run_trainer
from harness import epoch_rows
from mnist_hogwild.core.config import RECIPES, ConfigRequest, RunOptions, TrainConfig
from mnist_hogwild.core.errors import Diverged
from mnist_hogwild.hogwild.adapt import adapt, describe, micro_batches_for
from mnist_hogwild.hogwild.pool import staleness_summary
from mnist_hogwild.training.health import CHANCE_LOSS, HealthWatch

FAST = ConfigRequest(recipe="fast").resolve()


@pytest.mark.parametrize(
    "processes, expected", [(1, 1), (2, 1), (4, 1), (6, 2), (8, 2), (16, 4), (32, 8), (64, 16)]
)
def test_micro_batches_grow_with_the_process_count(processes, expected):
    assert micro_batches_for(processes, 128) == expected
    assert micro_batches_for(512, 64) == 8  # never a micro-batch under 8 samples


def test_up_to_four_processes_nothing_changes():
    for processes in (1, 2, 4):
        adapted = adapt(FAST, processes, given={})
        assert adapted.config == FAST and adapted.micro_batches == 1
        assert describe(adapted, processes) is None


def test_sixteen_processes_adapt_the_rate_the_momentum_and_the_updates():
    adapted = adapt(FAST, 16, given={})
    assert adapted.micro_batches == 4
    assert adapted.config.lr == pytest.approx(RECIPES["fast"].values["lr"] / 2)
    assert adapted.config.betas == (0.0, 0.9)
    assert adapted.config.batch_size == 128  # an epoch's batches, and the checkpoint, unchanged
    note = describe(adapted, 16)
    assert note.startswith("note: 16 processes: each update is computed from weights about 15")
    assert "4 updates of 32 samples per batch" in note and "beta1 0.7 -> 0" in note
    sgd = adapt(TrainConfig(), 16, given={}).config
    assert sgd.momentum == 0.0 and sgd.lr == pytest.approx(0.005)


def test_an_explicit_flag_wins():
    adapted = adapt(FAST, 16, given={"lr": 0.004, "betas": (0.5, 0.9)})
    assert adapted.config.lr == FAST.lr and adapted.config.betas == FAST.betas
    assert adapted.micro_batches == 4
    assert adapt(FAST, 2, given={}, micro_batches=1000).micro_batches == 128  # one sample each
    off = adapt(FAST, 16, given={}, micro_batches=1)
    assert (
        off.micro_batches == 1 and off.config.lr == FAST.lr
    )  # no smaller updates, no smaller rate


def test_staleness_summary_is_the_mean_and_99th_percentile_of_an_epochs_updates():
    before = [0] * 8
    after = [0, 10, 80, 9, 0, 0, 0, 1]  # 100 updates
    mean, p99 = staleness_summary(before, after)
    assert mean == pytest.approx((10 + 160 + 27 + 7) / 100) and p99 == 3
    assert staleness_summary(after, after) == (0.0, 0)


def watch(**options):
    return HealthWatch(FAST, RunOptions(**options).num_processes, per_epoch=469)


def test_a_loss_at_chance_after_warm_up_stops_the_run_and_names_the_cause():
    w = watch(num_processes=16)
    for batch in range(10, 150, 10):  # the warm-up: not judged
        w.check_interval(10.0, 1.0 if batch == 20 else CHANCE_LOSS, batch, 0)
    with pytest.raises(Diverged, match="the model collapsed: its training loss stayed at chance"):
        for batch in range(150, 469, 10):
            w.check_interval(10.0, CHANCE_LOSS + 0.01, batch, 0)
    with pytest.raises(Diverged, match="16 processes are too many for this rate"):
        w.check_epoch(0, {"accuracy_percent": 11.35, "train_loss": 2.3, "test_loss": 2.3}, [], True)


def test_a_slow_learner_near_chance_is_not_stopped():
    # SGD at --lr 0.001 on MNIST, every 20 batches (measured): it is learning.
    losses = [2.3375, 2.3409, 2.3285, 2.3140, 2.3127, 2.3115, 2.3025, 2.3023, 2.2926, 2.2942]
    losses += [2.2950, 2.2878, 2.2822, 2.2812, 2.2744, 2.2691, 2.2724] + [2.26] * 20
    w = HealthWatch(TrainConfig(lr=0.001), RunOptions().num_processes, per_epoch=938)
    for i, loss in enumerate(losses):
        w.check_interval(10.0, loss, 20 * (i + 1), 0)


def test_an_epoch_at_chance_stops_the_run_unless_it_was_a_dry_runs_batches():
    w = watch()
    row = {"accuracy_percent": 12.0, "train_loss": 2.3, "test_loss": 2.3}
    w.check_epoch(0, row, [], whole=False)
    with pytest.raises(Diverged, match="epoch 1 ended at 12.00% test accuracy, chance level"):
        w.check_epoch(0, row, [], whole=True)


@pytest.mark.slow
def test_eight_processes_adapt_measure_staleness_and_resume_at_another_count(tmp_path, data_dir):
    common = ["--data-dir", data_dir, "--recipe", "fast", "--epochs", "2"]
    proc = run_trainer(*common, "--num-processes", "8", "--epochs", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "note: 8 processes: each update is computed from weights about 7" in proc.stdout
    # One config: the start line reports the rate and betas the run trains with.
    (start,) = [line for line in proc.stdout.splitlines() if line.startswith("training ")]
    assert f"adam lr {FAST.lr / 2**0.5:.3g}, betas 0.0/{FAST.betas[1]}" in start, start
    (row,) = epoch_rows(tmp_path / "model_checkpoint.metrics.jsonl")
    assert row["staleness"] > 0 and row["staleness_p99"] >= 1, row
    saved = load_checkpoint(tmp_path / "model_checkpoint.pth")["config"]
    assert saved["lr"] == FAST.lr and tuple(saved["betas"]) == FAST.betas  # the recipe's, not saved
    resumed = run_trainer(*common, "--resume", "--num-processes", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "processes: each update" not in resumed.stdout and "staleness " in resumed.stdout


def test_a_short_batch_is_split_into_no_more_updates_than_it_has_samples():
    import torch  # noqa: PLC0415

    from mnist_hogwild.hogwild.worker import train_batch  # noqa: PLC0415
    from mnist_hogwild.learn import optimizers  # noqa: PLC0415
    from model import Net  # noqa: PLC0415

    net = Net()
    optimizer = optimizers.make("sgd", net.parameters(), 0.01, 0.0)
    x, y = torch.randn(3, 1, 28, 28), torch.tensor([1, 2, 3])
    loss = train_batch(net, optimizer, x, y, torch.default_generator, 7, micro_batches=8)
    assert torch.isfinite(loss) and 0 < loss.item() < 10


def test_the_collapse_checks_name_the_rate_a_resume_set():
    """After --resume --lr X, the one config the run uses has X: the collapse
    message names it, not the checkpoint's rate."""
    saved = TrainConfig.resolve(ConfigRequest({}, "fast")).as_dict()
    config = ConfigRequest({"lr": 0.2}, "fast").resolve(saved, trained_epochs=1, log=print)
    plan = adapt(config, 2, {"lr"})
    assert plan.config.lr == plan.saved.lr == 0.2
    assert "--lr 0.2;" in HealthWatch(plan.saved, 2, per_epoch=469).cause()
