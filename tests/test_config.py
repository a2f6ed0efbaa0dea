"""Resolving the training config from flags and a checkpoint, in process."""

import dataclasses

import pytest

import main
from mnist_hogwild.core.config import DATASETS, RunOptions, TrainConfig
from mnist_hogwild.core.errors import UsageError


def flags(*argv):
    return main.build_parser().parse_args(list(argv))


def test_fresh_run_takes_the_defaults():
    assert TrainConfig.resolve(flags()) == TrainConfig()
    assert TrainConfig().as_dict() == {
        "batch_size": 64,
        "epochs": 10,
        "lr": 0.01,
        "momentum": 0.5,
        "betas": (0.9, 0.999),
        "dropout": 0.5,
        "seed": 1,
        "dataset": "mnist",
        "optimizer": "sgd",
        "lr_schedule": "constant",
        "warmup": 0.0,
    }


def test_given_flags_win_on_a_fresh_run():
    config = TrainConfig.resolve(flags("--batch-size", "128", "--dataset", "fashion-mnist"))
    assert (config.batch_size, config.dataset, config.epochs) == (128, "fashion-mnist", 10)


def test_resume_takes_the_checkpoints_values_for_flags_not_given():
    saved = {"batch_size": 32, "epochs": 3, "lr": 0.05, "momentum": 0.9, "seed": 4}
    config = TrainConfig.resolve(flags("--resume"), {**saved, "dataset": "fashion-mnist"})
    assert config == TrainConfig(**saved, dataset="fashion-mnist")


@pytest.mark.parametrize("name", TrainConfig.MUST_MATCH)
def test_resume_refuses_a_different_value_for_what_defines_an_epoch(name):
    saved = TrainConfig().as_dict()
    other = {"batch_size": "32", "seed": "9", "dataset": "fashion-mnist", "optimizer": "adam"}[name]
    flag = "--" + name.replace("_", "-")
    with pytest.raises(UsageError, match=f"{flag} {other} differs from the checkpoint's"):
        TrainConfig.resolve(flags(flag, other), saved)


def test_resume_may_change_lr_and_says_so():
    notes = []
    saved = TrainConfig().as_dict()
    config = TrainConfig.resolve(flags("--lr", "0.02", "--epochs", "20"), saved, log=notes.append)
    assert (config.lr, config.epochs) == (0.02, 20)
    assert notes == ["note: --lr changed from 0.01 to 0.02 on resume"]  # --epochs: no note


def test_a_checkpoint_without_some_fields_falls_back_to_the_defaults():
    assert TrainConfig.resolve(flags(), {"batch_size": 128}).lr == TrainConfig.lr


def test_config_is_frozen_and_every_name_the_flags_offer_has_its_implementation():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0
    from mnist_hogwild.core import config
    from mnist_hogwild.learn import data, optim, schedule

    assert set(DATASETS) == set(data.DATASET_INFO)
    assert list(config.OPTIMIZERS) == list(optim.OPTIMIZERS)
    assert list(config.LR_SCHEDULES) == list(schedule.SHAPES)
    assert main.build_parser().get_default("dataset") is None  # None means "not given"


def test_a_recipe_sets_defaults_and_explicit_flags_still_win():
    fast = TrainConfig.resolve(flags("--recipe", "fast"))
    assert (fast.optimizer, fast.lr_schedule, fast.warmup) == ("adam", "onecycle", 0.3)
    mine = TrainConfig.resolve(flags("--recipe", "fast", "--epochs", "5", "--warmup", "0.1"))
    assert (mine.optimizer, mine.epochs, mine.warmup) == ("adam", 5, 0.1)
    assert TrainConfig.resolve(flags("--lr-schedule", "onecycle")).warmup == 0.3


def test_the_fast_recipe_and_a_checkpoint_without_betas_or_dropout():
    fast = TrainConfig.resolve(flags("--recipe", "fast"))
    assert (fast.betas, fast.dropout, fast.epochs) == ((0.7, 0.9), 0.1, 1)
    # A checkpoint written before --betas and --dropout existed trained with
    # torch's betas and the network's dropout: a resume keeps them.
    saved = {k: v for k, v in TrainConfig().as_dict().items() if k not in ("betas", "dropout")}
    resumed = TrainConfig.resolve(flags(), saved)
    assert (resumed.betas, resumed.dropout) == ((0.9, 0.999), 0.5)


def test_on_resume_the_checkpoint_wins_over_the_recipe():
    saved = TrainConfig(epochs=4).as_dict()
    assert TrainConfig.resolve(flags("--recipe", "fast"), saved) == TrainConfig(epochs=4)


def test_run_options_take_the_flags_and_their_defaults():
    options = RunOptions.from_args(flags("--num-processes", "3", "--target-accuracy", "98"))
    assert (options.num_processes, options.target_accuracy) == (3, 98.0)
    assert options.checkpoint == "model_checkpoint.pth" and options.threads_per_process == 0
