"""Command-line behaviour, through real processes."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import MAIN, REPO, TRAIN, load_checkpoint, run_trainer


@pytest.mark.parametrize(
    "flags",
    [
        ["--batch-size", "0"],
        ["--batch-size", "-3"],
        ["--epochs", "0"],
        ["--num-processes", "0"],
        ["--num-processes", "two"],
        ["--threads-per-process", "0"],
        ["--test-batch-size", "0"],
        ["--lr", "0"],
        ["--lr", "nan"],
        ["--momentum", "1.5"],
        ["--betas", "0.9"],
        ["--betas", "0.99,0.9"],  # beta1^2 >= beta2: Adam's moments lose their bound
        ["--betas", "a,b"],
        ["--dropout", "1"],
        ["--log-interval", "0"],
        ["--checkpoint-interval", "-1"],
        ["--dataset", "cifar10"],
        ["--no-such-flag"],
        ["--seed", "99999999999999999999999"],
        ["--seed", "-1"],
        ["--threads-per-process", "100000"],
        ["--num-processes", "100000"],
        ["--optimizer", "rmsprop"],
        ["--warmup", "1.5"],
        ["--target-accuracy", "101"],
        ["--sync-every", "0"],
        ["--sync-every", "often"],
        ["--nn", "2"],  # no abbreviations: --nn is not --nnodes
        ["--epochs", "1", "--nnodes", "2"],  # --nnodes needs --rdzv-endpoint
    ],
)
def test_invalid_values_exit_2_with_one_error_line(tmp_path, flags):
    proc = run_trainer(*flags, cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_every_flag_with_its_default(tmp_path):
    out = run_trainer("--help", cwd=tmp_path).stdout
    for flag, default in [
        ("--batch-size", "64"),
        ("--test-batch-size", "500"),
        ("--epochs", "10"),
        ("--lr", "0.01"),
        ("--momentum", "0.5"),
        ("--betas", "0.9,0.999"),
        ("--dropout", "0.5"),
        ("--seed", "1"),
        ("--log-interval", "10"),
        ("--num-processes", "2"),
        ("--checkpoint", "model_checkpoint.pth"),
        ("--checkpoint-interval", "30"),
        ("--data-dir", "./data"),
        ("--dataset", "mnist"),
        ("--optimizer", "sgd"),
        ("--lr-schedule", "constant"),
        ("--warmup", "0.3 with onecycle"),
        ("--recipe", "sample"),
        ("--target-accuracy", "train every epoch"),
        ("--device", "auto"),
        ("--sync-every", "10"),
        ("--sync-timeout", "30"),
        ("--start-timeout", "300"),
    ]:
        assert flag in out
        assert f"(default: {default}" in " ".join(out.split()), flag
    for flag in ("--resume", "--dry-run", "--threads-per-process"):
        assert flag in out


@pytest.mark.slow
def test_train_py_is_the_same_program_as_main_py(tmp_path, data_dir):
    def words(text):
        return " ".join(text.replace("train.py", "main.py").split())

    help_main = run_trainer("--help", cwd=tmp_path).stdout
    assert words(run_trainer("--help", cwd=tmp_path, entry=TRAIN).stdout) == words(help_main)
    for entry in (MAIN, TRAIN):
        out = tmp_path / os.path.basename(entry)
        out.mkdir()
        proc = run_trainer(
            "--data-dir", data_dir, "--epochs", "1", "--num-processes", "1", cwd=out, entry=entry
        )
        assert proc.returncode == 0, proc.stderr
    a = load_checkpoint(tmp_path / "main.py" / "model_checkpoint.pth")
    b = load_checkpoint(tmp_path / "train.py" / "model_checkpoint.pth")
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key


@pytest.mark.slow
def test_missing_data_without_network_is_one_clear_error(tmp_path):
    proc = run_trainer("--data-dir", tmp_path / "nothing", cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: mnist files missing from")
    assert "train-images-idx3-ubyte" in last and "--data-dir" in last
    assert not (tmp_path / "model_checkpoint.pth").exists()


@pytest.mark.slow
def test_corrupt_data_is_one_clear_error(tmp_path, data_dir):
    import shutil

    shutil.copytree(data_dir, tmp_path / "d")
    images = tmp_path / "d" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    proc = run_trainer("--data-dir", tmp_path / "d", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "t10k-images-idx3-ubyte is corrupt" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_modules_in_the_working_directory_do_not_shadow_the_trainers(tmp_path, data_dir):
    # In the image the working directory is /workspace, often a mounted checkout
    # of another version: the workers must still run this version's modules.
    (tmp_path / "train.py").write_text("raise SystemExit('the shadowing train.py was imported')\n")
    (tmp_path / "data.py").write_text("raise SystemExit('the shadowing data.py was imported')\n")
    proc = run_trainer("--data-dir", data_dir, "--epochs", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "shadowing" not in proc.stderr


@pytest.mark.slow
def test_device_cuda_without_a_gpu_is_one_error_and_writes_nothing(tmp_path, data_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    for flag in (["--device", "cuda"], ["--cuda"]):
        ckpt = tmp_path / "out" / "ck.pth"
        proc = run_trainer("--data-dir", data_dir, *flag, "--checkpoint", ckpt, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --device cuda: no usable GPU: ")
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "env, flags, message",
    [
        (
            {"TORCHELASTIC_RUN_ID": "x"},
            ["--nnodes", "2", "--rdzv-endpoint", "h:1"],
            "--nnodes inside torchrun",
        ),
        ({"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}, [], "one leader per node"),
        ({}, ["--nnodes", "2", "--rdzv-endpoint", "nohost"], "expected HOST:PORT"),
    ],
)
def test_launch_mistakes_are_one_line(tmp_path, env, flags, message):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, MAIN, *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


def test_evaluate_and_infer_flags_say_what_they_mean_and_keep_their_old_names():
    from mnist_hogwild.commands.flags import command_parser  # noqa: PLC0415

    evaluate = command_parser("evaluate")
    assert evaluate.parse_args(["--test-batch-size", "7"]).test_batch_size == 7
    assert evaluate.parse_args(["--batch-size", "7"]).test_batch_size == 7
    infer = command_parser("infer")
    assert infer.parse_args(["--sample-seed", "3"]).sample_seed == 3
    assert infer.parse_args(["--seed", "3"]).sample_seed == 3
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--test-batch-size", "0"])


def test_command_help_answers_without_importing_torch():
    for name in ("evaluate", "infer", "export", "plot", "serve"):
        code = (
            "import sys, main\n"
            f"try: main.main(['{name}', '--help'])\n"
            "except SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True
        )
        assert proc.returncode == 0, (name, proc.stderr[-500:])
