"""One table per extension point (core/tables.py, commands/flags.py's
COMMANDS): a made-up entry of each kind, registered in its table alone,
reaches --help, the dispatch, the container's entrypoint, the plots, the
run's arithmetic and README's reference; and README's generated blocks are
those the definitions make."""

import dataclasses
import subprocess

import pytest

import main
from conftest import REPO
from mnist_hogwild.commands import figures, flags, reference
from mnist_hogwild.core import tables
from mnist_hogwild.core.config import ConfigRequest, TrainConfig
from mnist_hogwild.hogwild.adapt import adapt
from mnist_hogwild.learn.schedule import learning_rate
from mnist_hogwild.training.health import HealthWatch


def test_readme_and_the_entrypoint_carry_the_reference_the_definitions_make():
    assert reference.stale() == [], "run: python -m mnist_hogwild.commands.reference"


def blocks():
    """Every generated block, joined."""
    return "\n".join("\n".join(make()) for make in reference.BLOCKS.values())


def said(capsys):
    out, err = capsys.readouterr()
    return out + err


def hello(args):
    """The made-up command's function (found by COMMANDS' "module:function")."""
    print(f"hello, {args.name} ({args.checkpoint})")
    return 7


def test_a_made_up_command_is_one_entry(monkeypatch, capsys, tmp_path):
    command = flags.Command(
        "hello",
        "say hello",
        lambda p: p.add_argument("--name", default="world", help="whom (default: %(default)s)"),
        "test_tables:hello",
    )
    monkeypatch.setitem(flags.COMMANDS, "hello", command)
    assert "hello: say hello" in " ".join(flags.build_parser().format_help().split())
    with pytest.raises(SystemExit):
        main.main(["hello", "--help"])
    assert "--name NAME whom (default: world)" in " ".join(said(capsys).split())
    checkpoint = str(tmp_path / "m.pth")
    assert main.main(["hello", "--name", "you", "--checkpoint", checkpoint]) == 7
    assert f"hello, you ({checkpoint})" in said(capsys)
    assert "| `hello` | say hello | `--checkpoint PATH`, `--name NAME` |" in blocks()
    case = reference.entrypoint_block()[0]
    assert "| hello)" in case
    # The entrypoint's pattern routes it to main.py, and nothing else.
    script = f'case "$1" in\n{case}\n echo main ;;\n *) echo other ;;\nesac'
    for word, where in (("hello", "main"), ("-x", "main"), ("", "main"), ("ls", "other")):
        out = subprocess.run(["sh", "-c", script, "sh", word], capture_output=True, text=True)
        assert out.stdout.strip() == where, word


def test_an_unknown_command_is_one_error_line_and_exit_2(capsys):
    assert main.main(["evalute"]) == 2
    out = said(capsys)
    assert out.strip().splitlines() == [
        "error: unknown command 'evalute' (the commands: " + ", ".join(flags.COMMANDS) + ")"
    ]


def test_a_made_up_data_set_is_one_entry(monkeypatch):
    toy = dataclasses.replace(
        tables.DATASETS["fashion-mnist"],
        name="toy-shapes",
        help="made-up shapes",
        classes=tuple(f"shape {i}" for i in range(10)),
        class_word="shape",
    )
    monkeypatch.setitem(tables.DATASETS, "toy-shapes", toy)
    assert "{mnist,fashion-mnist,toy-shapes}" in flags.build_parser().format_help()
    assert "toy-shapes (made-up shapes)" in blocks()
    assert "toy-shapes" in flags.command_parser("evaluate").format_help()
    assert figures.class_names("toy-shapes") == ("shape", list(toy.classes))
    fig = figures.confusion_figure(__import__("torch").eye(10, dtype=int), "toy-shapes", "toy")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == list(toy.classes)
    assert TrainConfig.resolve(request(dataset="toy-shapes")).dataset == "toy-shapes"


def request(recipe="sample", **given):
    return ConfigRequest(given, recipe)


def test_a_made_up_optimizer_is_one_entry(monkeypatch):
    def calm(config):
        return {"momentum": 0.25}, "calmed"

    toy = tables.Optimizer(
        "toy", "a made-up one", "mnist_hogwild.learn.optimizers:MomentumSGD", (), 0.5, calm
    )
    monkeypatch.setitem(tables.OPTIMIZERS, "toy", toy)
    assert "{sgd,adam,toy}" in flags.build_parser().format_help()
    assert "toy (a made-up one)" in blocks()
    config = TrainConfig.resolve(request(optimizer="toy", lr=0.5))
    plan = adapt(config, 16, given={"optimizer", "lr"})
    assert plan.config.momentum == 0.25 and "calmed" in plan.notes
    assert plan.saved.momentum == config.momentum  # what a checkpoint records is not adapted
    watch = HealthWatch(replace_lr(config, 2.0), processes=2, per_epoch=100)
    assert "the recipes use 0.5 with --optimizer toy" in watch.cause()
    # A change of a setting it does not read is no news on resume.
    notes = []
    TrainConfig.resolve(request(betas=(0.5, 0.9)), config.as_dict(), log=notes.append)
    assert notes == []


def replace_lr(config, lr):
    return dataclasses.replace(config, lr=lr)


def test_a_made_up_schedule_and_recipe_are_one_entry_each(monkeypatch):
    half = tables.Schedule("half", "half the rate", lambda peak, w, p, b, t: peak / 2, 0.1)
    monkeypatch.setitem(tables.SCHEDULES, "half", half)
    tiny = tables.Recipe("tiny", "two epochs of halves", {"epochs": 2, "lr_schedule": "half"})
    monkeypatch.setitem(tables.RECIPES, "tiny", tiny)
    text = flags.build_parser().format_help()
    assert "{constant,onecycle,cosine,half}" in text and "{sample,fast,tiny}" in text
    assert "half (half the rate)" in blocks() and "tiny (two epochs of halves)" in blocks()
    assert "0.1 with half" in blocks()  # --warmup's default, from the table
    config = TrainConfig.resolve(request("tiny"))
    assert (config.epochs, config.lr_schedule, config.warmup) == (2, "half", 0.1)
    assert learning_rate(config, 5, per_epoch=10) == config.lr / 2


def test_the_target_and_the_best_are_said_to_be_judged_on_the_validation_split():
    text = " ".join(flags.build_parser().format_help().split())
    said = "as soon as the validation accuracy (with --validation-size 0: test accuracy)"
    assert said in text
    with open(f"{REPO}/README.md") as f:
        readme = " ".join(f.read().split())
    assert said in readme


def test_predict_names_a_class_by_the_data_sets_entry():
    import torch  # noqa: PLC0415

    from mnist_hogwild.serving.holder import answer  # noqa: PLC0415

    probabilities = torch.full((10,), 0.01).index_fill_(0, torch.tensor([3]), 0.91)
    state = {"config": {"dataset": "fashion-mnist"}, "epoch": 2}
    said = answer(probabilities, bytes(784), state)
    assert (said["class"], said["name"], said["epoch"]) == (3, "Dress", 2) and "input" not in said
    digits = answer(probabilities, bytes(784), {"config": {"dataset": "mnist"}, "epoch": 1}, True)
    assert (digits["digit"], digits["name"], len(digits["input"])) == (3, "3", 784)
