"""The soak's scenario: bad inputs: damaged checkpoints and data, wrong flags
(tests/soak.py runs it; soak_scenarios/common.py holds what every scenario
shares)."""

import os
import shutil


from mnist_hogwild.training import checkpoint


def bad_inputs(soak, good_ckpt, data_dir, docker):
    ckpt = soak.fresh("bad-inputs")
    shutil.copy(good_ckpt, ckpt)
    good = open(good_ckpt, "rb").read()

    def evil(path):
        class RunsCode:
            def __reduce__(soak):
                return (os.system, ("touch /workspace/PWNED",))

        import torch

        torch.save({"format_version": 1, "x": RunsCode()}, path)

    def foreign(path):
        import torch

        torch.save(
            {
                **{k: 0 for k in checkpoint.REQUIRED_KEYS},
                "format_version": 1,
                "model_state": torch.nn.Linear(4, 4).state_dict(),
            },
            path,
        )

    def newer(path):
        import torch

        torch.save({"format_version": checkpoint.FORMAT_VERSION + 1}, path)

    checkpoint_cases = {
        "garbage checkpoint": lambda p: open(p, "wb").write(os.urandom(4096)),
        "truncated checkpoint": lambda p: open(p, "wb").write(good[: len(good) // 2]),
        "foreign checkpoint": foreign,
        "newer-format checkpoint": newer,
        "malicious checkpoint": evil,
    }
    for label, make in checkpoint_cases.items():
        make(ckpt)
        before = open(ckpt, "rb").read()
        code, out = soak.runner.run(
            [*soak.common, "--resume", "--checkpoint", soak.runner.path(ckpt)]
        )
        soak.check_clean_failure(label, code, out, ckpt, before, expect_code=1)
    if os.path.exists(os.path.join(soak.work, "PWNED")):
        soak.problem("the malicious checkpoint ran code")

    shutil.copy(good_ckpt, ckpt)
    raw_name = "FashionMNIST" if "fashion" in soak.common[3] else "MNIST"
    data_cases = {
        "truncated data file": ("t10k-images-idx3-ubyte", lambda b: b[: len(b) // 2]),
        "wrong-magic data file": (
            "t10k-labels-idx1-ubyte",
            lambda b: b"\x00\x00\x08\x07" + b[4:],
        ),
        "mismatched-count data file": (
            "t10k-labels-idx1-ubyte",
            lambda b: b[:4] + (int.from_bytes(b[4:8], "big") - 1).to_bytes(4, "big") + b[8:-1],
        ),
    }
    for label, (name, mutate) in data_cases.items():
        bad = os.path.join(soak.work, "bad-data")
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(data_dir, bad, symlinks=False)
        raw = os.path.join(bad, raw_name, "raw")
        for f in os.listdir(raw):
            if f.endswith(".gz") and os.path.exists(os.path.join(raw, f[:-3])):
                os.unlink(os.path.join(raw, f))
        target = os.path.join(raw, name)
        if not os.path.exists(target):
            import gzip

            with gzip.open(target + ".gz") as src:
                payload = src.read()
            os.unlink(target + ".gz")
        else:
            payload = open(target, "rb").read()
        with open(target, "wb") as f:
            f.write(mutate(payload))
        flags = [*soak.common, "--checkpoint", soak.runner.path(ckpt)]
        flags[1] = soak.runner.path(bad)
        code, out = soak.runner.run(flags)
        soak.check_clean_failure(label, code, out, ckpt, good, expect_code=1)
    empty = os.path.join(soak.work, "no-data")
    os.makedirs(empty, exist_ok=True)
    os.chmod(empty, 0o777)
    flags = [*soak.common, "--checkpoint", soak.runner.path(ckpt)]
    flags[1] = soak.runner.path(empty)
    code, out = soak.runner.run(flags, docker_args=["--network", "none"] if docker else [])
    soak.check_clean_failure("missing data, no network", code, out, ckpt, good, expect_code=1)
    for flags in (
        ["--num-processes", "0"],
        ["--lr", "-1"],
        ["--epochs", "many"],
        ["--dataset", "cifar"],
    ):
        code, out = soak.runner.run([*soak.common, "--checkpoint", soak.runner.path(ckpt), *flags])
        soak.check_clean_failure(f"flag {' '.join(flags)}", code, out, ckpt, good, expect_code=2)
