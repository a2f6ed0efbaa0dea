"""Resolving the training config from flags and a checkpoint, in process."""

import dataclasses
import re

import pytest
import torch

import main
from mnist_hogwild.commands.flags import settings
from mnist_hogwild.core.config import TrainConfig
from mnist_hogwild.core.errors import CheckpointError, UsageError


def flags(*argv):
    """The ConfigRequest that ARGV makes."""
    return settings(main.build_parser().parse_args(list(argv)))[0]


def options(*argv):
    return settings(main.build_parser().parse_args(list(argv)))[1]


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
        "validation_size": 5000,
    }


def test_given_flags_win_on_a_fresh_run():
    config = TrainConfig.resolve(flags("--batch-size", "128", "--dataset", "fashion-mnist"))
    assert (config.batch_size, config.dataset, config.epochs) == (128, "fashion-mnist", 10)


def test_resume_takes_the_checkpoints_values_for_flags_not_given():
    saved = {"batch_size": 32, "epochs": 3, "lr": 0.05, "momentum": 0.9, "seed": 4}
    config = TrainConfig.resolve(flags("--resume"), {**saved, "dataset": "fashion-mnist"})
    # (a checkpoint without validation_size held none out: TrainConfig.BEFORE)
    assert config == TrainConfig(**saved, dataset="fashion-mnist", validation_size=0)


@pytest.mark.parametrize("name", TrainConfig.MUST_MATCH)
def test_resume_refuses_a_different_value_for_what_defines_an_epoch(name):
    saved = TrainConfig().as_dict()
    other = {"batch_size": "32", "seed": "9", "dataset": "fashion-mnist", "optimizer": "adam",
             "validation_size": "100"}[name]  # fmt: skip
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


def test_config_is_frozen_and_every_optimizer_the_flags_offer_has_its_class():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0
    from mnist_hogwild.core.tables import OPTIMIZERS
    from mnist_hogwild.learn import optimizers

    for name in OPTIMIZERS:
        assert optimizers.optimizer_class(name).name == name
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
    chosen = options("--num-processes", "3", "--target-accuracy", "98")
    assert (chosen.num_processes, chosen.target_accuracy) == (3, 98.0)
    assert chosen.checkpoint == "model_checkpoint.pth" and chosen.threads_per_process == 0


def test_one_field_definition_is_its_flag_its_help_and_its_check_everywhere():
    """Adding a setting is one edit: a field with flag() yields the flag, its
    help with the default, and one range check at parse time and at load."""
    import argparse  # noqa: PLC0415

    from mnist_hogwild.commands.flags import add_field_flag  # noqa: PLC0415
    from mnist_hogwild.core.kinds import Whole, flag  # noqa: PLC0415

    width = flag(50, "hidden units", Whole(1, 4096), metavar="N")
    Wider = dataclasses.make_dataclass(
        "Wider", [("width", int, width)], bases=(TrainConfig,), frozen=True
    )
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_field_flag(parser, Wider, dataclasses.fields(Wider)[-1])
    assert "* hidden units (default: 50)" in parser.format_help()
    assert parser.parse_args(["--width", "64"]).width == 64
    with pytest.raises(argparse.ArgumentError, match=r"must be in \[1, 4096\], got 0"):
        parser.parse_args(["--width", "0"])
    assert list(Wider.invalid({"width": 0, "lr": 0.1})) == [
        ("width", 0, "a whole number in [1, 4096]")
    ]
    assert list(Wider.invalid({"width": 64})) == []
    # The same one field in the settings the train command is built from:
    from mnist_hogwild.commands.flags import SETTINGS, build_parser  # noqa: PLC0415

    train = build_parser((Wider, *SETTINGS[1:]))  # (TrainConfig comes first)
    assert train.parse_args(["--width", "8"]).width == 8
    section = train.format_help().split("training (* saved in the checkpoint):")[1]
    assert "--width N" in section.split("the run:")[0]


@pytest.mark.parametrize("field", dataclasses.fields(TrainConfig), ids=lambda f: f.name)
def test_every_saved_setting_is_checked_at_load_as_its_flag_checks_it(field, tmp_path):
    """A value the flag refuses is refused in a checkpoint too, naming the same range."""
    from helpers import valid_state  # noqa: PLC0415

    from mnist_hogwild.training import checkpoint  # noqa: PLC0415
    from model import Net  # noqa: PLC0415

    bad = {"betas": (0.99, 0.5), "dataset": "cifar", "optimizer": "lbfgs"}.get(field.name, -5)
    bad = {"lr_schedule": "step"}.get(field.name, bad)
    kind = field.metadata["kind"]
    assert not kind.accepts(bad)
    state = valid_state()
    state["config"] = {**state["config"], field.name: bad}
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=re.escape(kind.expected)):
        checkpoint.load(str(path), Net().state_dict())
    with pytest.raises(SystemExit):
        main.build_parser().parse_args([f"--{field.name.replace('_', '-')}", str(bad)])


def test_resume_notes_only_what_changed_and_matters():
    notes = []
    adam = {**TrainConfig(optimizer="adam").as_dict()}
    TrainConfig.resolve(flags("--momentum", "0.1"), adam, log=notes.append)
    sgd = TrainConfig().as_dict()
    TrainConfig.resolve(flags("--betas", "0.5,0.9"), sgd, log=notes.append)
    assert notes == []  # Adam has no momentum, SGD no betas
    TrainConfig.resolve(flags("--betas", "0.5,0.9"), adam, log=notes.append)
    assert notes == ["note: --betas changed from (0.9, 0.999) to (0.5, 0.9) on resume"]
