"""The run's settings: TrainConfig (what is trained, saved in the checkpoint and
resolved against it on resume), RunOptions (how this run goes about it),
ConfigRequest (what the train flags ask of the TrainConfig) and
LaunchOptions (main.py --nnodes). Each field is written once, with flag():
its default, help and kind (core/kinds.py).

Torch-free, so that main.py can build its flags (and answer --help) before
torch is imported; the workers receive the resolved TrainConfig as it is.
"""

from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar

from mnist_hogwild.core.errors import UsageError
from mnist_hogwild.core.kinds import (
    UNIT,
    AutoOrWhole,
    Betas,
    OneOf,
    Percent,
    Real,
    Switch,
    Text,
    Whole,
    flag,
)
from mnist_hogwild.core.tables import (
    DATASETS,
    OPTIMIZERS,
    RECIPES,
    SCHEDULES,
    choices_help,
    unused_settings,
)

MNIST, FASHION_MNIST = "mnist", "fashion-mnist"
NODE_UPDATES = ("sum", "average")
DEVICES = ("auto", "cpu", "cuda")
# --rdzv-conf's default: see cluster/launcher.py.
LAST_CALL = "last_call_timeout=5"
MAX_PROCESSES, MAX_THREADS = 512, 1024  # beyond these, thread or process creation fails


@dataclass(frozen=True)
class TrainConfig:
    """What defines the training itself. The flags for these fields default to
    None in argparse, so that --resume can tell "not given" (take the
    checkpoint's value) from "given" (check it, or override it). Each field's
    flag is made from its metadata (commands/flags.py); "{default}" in a help
    text is the field's default."""

    batch_size: int = flag(64, "input batch size for training", Whole(1), metavar="N")
    epochs: int = flag(10, "number of epochs to train in total", Whole(1), metavar="N")
    lr: float = flag(0.01, "learning rate; the peak rate of a schedule", Real(0), metavar="LR")
    momentum: float = flag(0.5, "SGD momentum", UNIT, metavar="M")
    betas: tuple = flag(
        (0.9, 0.999),
        "Adam's decay rates of its two moments",
        Betas(),
        shown="0.9,0.999",
        metavar="B1,B2",
    )
    dropout: float = flag(
        0.5, "dropout rate of the network's two dropout layers", UNIT, metavar="P"
    )
    seed: int = flag(1, "random seed", Whole(0, 2**63 - 1), metavar="S")
    dataset: str = flag(MNIST, lambda: choices_help(DATASETS), OneOf(DATASETS))
    optimizer: str = flag("sgd", lambda: choices_help(OPTIMIZERS), OneOf(OPTIMIZERS))
    lr_schedule: str = flag(
        "constant",
        lambda: "the learning rate over the planned batches: " + choices_help(SCHEDULES),
        OneOf(SCHEDULES),
    )
    # The share of the planned batches with a rising rate (onecycle: up to its peak).
    warmup: float = flag(
        0.0,
        "share of the planned batches over which the rate rises",
        UNIT,
        shown=lambda: ", ".join(f"{s.warmup:g} with {n}" for n, s in SCHEDULES.items() if s.warmup)
        + ", else 0",
        metavar="F",
    )

    validation_size: int = flag(
        5000,
        "training images held out to decide on (the best model, --target-accuracy, the "
        "collapse checks), the same ones for every seed, run and node; 0: decide on the test "
        "set, as the course's sample does",
        Whole(0),
        shown="5000, or a twelfth of a smaller training set",
        metavar="N",
    )

    # These fix which batches make up an epoch and what the optimizer state
    # means, so they must match the checkpoint on resume; lr, momentum, betas,
    # dropout, the schedule and epochs may be changed on purpose.
    MUST_MATCH: ClassVar[tuple] = (
        "batch_size",
        "seed",
        "dataset",
        "optimizer",
        "validation_size",
    )
    # What a checkpoint written before a setting existed trained with.
    BEFORE: ClassVar[dict] = {"validation_size": 0}

    @classmethod
    def names(cls):
        return [f.name for f in fields(cls)]

    @classmethod
    def resolve(cls, request, saved=None, log=print):
        """The config from REQUEST (a ConfigRequest: the flags given and the
        --recipe they name) and SAVED (the checkpoint's config dict, or None
        for a fresh run).

        Raises UsageError when a flag contradicts a MUST_MATCH field."""
        given = request.given
        if saved is None:
            recipe = RECIPES[request.recipe].values
            base = {**cls().as_dict(), **recipe}
            if "warmup" not in recipe:
                base["warmup"] = SCHEDULES[given.get("lr_schedule") or base["lr_schedule"]].warmup
            values = {n: given.get(n, base[n]) for n in cls.names()}
        else:
            optimizer = saved.get("optimizer", cls.optimizer)
            saved = {**cls.BEFORE, **saved}
            values = {
                n: _choose(n, given.get(n), saved.get(n), log, optimizer) for n in cls.names()
            }
            values = {n: cls().as_dict()[n] if v is None else v for n, v in values.items()}
        return replace(cls(), **values)

    @classmethod
    def invalid(cls, values):
        """(name, value, what it should be) of each setting in the dict VALUES
        (a checkpoint's config) that its field's kind refuses."""
        for f in fields(cls):
            if f.name in values and not f.metadata["kind"].accepts(values[f.name]):
                yield f.name, values[f.name], f.metadata["kind"].expected

    def as_dict(self):
        return asdict(self)


def _choose(name, given, saved, log, optimizer):
    flag = "--" + name.replace("_", "-")
    if given is None:
        return saved
    if saved is not None and given != saved:
        if name in TrainConfig.MUST_MATCH:
            raise UsageError(
                f"{flag} {given} differs from the checkpoint's {saved}; resuming needs "
                f"the same {flag} (or start a new run with another --checkpoint)"
            )
        # Raising --epochs to train further is the normal case: no note either.
        if name != "epochs" and name not in unused_settings(optimizer):
            log(f"note: {flag} changed from {saved} to {given} on resume")
    return given


@dataclass(frozen=True)
class RunOptions:
    """How this run trains (none of it changes what is learnt, but for
    target_accuracy, which only ends it sooner). Saved in the checkpoint for
    the record; never resolved against it. The flags default to these values."""

    num_processes: int = flag(
        2, "how many training processes to use", Whole(1, MAX_PROCESSES), metavar="N"
    )
    threads_per_process: int = flag(
        0,  # 0: usable CPUs // processes
        "torch threads in each process",
        Whole(1, MAX_THREADS),
        shown="usable CPUs // processes, at least 1; usable CPUs honour affinity and cgroup quota",
        metavar="N",
    )
    test_batch_size: int = flag(
        500,
        "input batch size for testing; above 1000 it is evaluated 1000 at a time, so memory "
        "stays bounded",
        Whole(1),
        metavar="N",
    )
    micro_batches: int = flag(
        0,  # 0: auto (hogwild/adapt.py)
        "train each batch as K smaller updates; auto: 1 up to 4 processes, beyond that about "
        "processes/4, with the rate and momentum lowered to match (the start line says so)",
        AutoOrWhole(1, 1024),
        shown="auto",
        metavar="K",
    )
    log_interval: int = flag(
        10,
        "how many batches to wait before logging training status",
        Whole(1),
        metavar="N",
    )
    dry_run: bool = flag(
        False,
        "train one batch per worker, then evaluate and checkpoint (smoke test; an existing "
        "checkpoint is never replaced)",
        Switch(),
    )
    resume: bool = flag(
        False,
        "continue from --checkpoint if it exists (else warn and start fresh); without it, an "
        "existing checkpoint's model is kept in STEM.models/ first",
        Switch(),
    )
    checkpoint: str = flag(
        "model_checkpoint.pth",
        "checkpoint file; beside it go STEM.models/ (every model, written once), "
        "STEM.best.pth and STEM.metrics.jsonl",
        Text(),
        metavar="PATH",
    )
    keep_models: int = flag(
        5,
        "models of each split (data set and validation images) kept in STEM.models/: at a "
        "run's end, those scoring below the K best go (never the best, nor the resumable run's)",
        Whole(1),
        metavar="K",
    )
    checkpoint_interval: float = flag(
        30.0,
        "also save every SECONDS while training; 0 disables",
        Real(0, low_ok=True),
        metavar="SECONDS",
    )
    data_dir: str = flag(
        "./data",
        "data root, torchvision layout DIR/MNIST/raw, DIR/FashionMNIST/raw; files may be "
        "gzipped or unpacked",
        Text(),
        metavar="DIR",
    )
    device: str = flag(
        "auto",
        "where to train: auto picks cuda when torch sees a GPU, else cpu; cuda without a "
        "usable GPU is an error",
        OneOf(DEVICES),
    )
    deterministic: bool = flag(
        False,
        "use only deterministic algorithms (torch.use_deterministic_algorithms; on a GPU also "
        "CUBLAS_WORKSPACE_CONFIG=:4096:8), for bitwise-exact resume on a GPU",
        Switch(),
    )
    target_accuracy: float = flag(
        0.0,  # 0: train every epoch
        "stop (saved, exit 0) as soon as the validation accuracy (with --validation-size 0: "
        "test accuracy) reaches PERCENT, a percentage such as 98 (0.98 is refused as a "
        "fraction): judged at each epoch's end and, on one machine, at the progress rows "
        "within it, so where it stops depends on timing",
        Percent(),
        shown="train every epoch",
        metavar="PERCENT",
        group="training",
    )
    sync_every: int = flag(
        0,  # 0: auto (cluster/cadence.py)
        "combine the nodes' models every K batches per node (the sum travels while the "
        "workers train on), and at every epoch end; auto: adapt K at each sync so that syncs "
        "take about 5%% of the training time, never beyond the K measured safe for accuracy at "
        "this node count, nor below 10 unless that K is smaller",
        AutoOrWhole(),
        shown="auto",
        metavar="K",
        group="machines",
    )
    node_updates: str = flag(
        "sum",
        "at a sync, add up what each node changed since the last sync (sum: every update "
        "counts, as in Hogwild; for small K) or take the mean of the models (average: local "
        "SGD, stable for any K, but it divides the step per sample by the node count)",
        OneOf(NODE_UPDATES),
        group="machines",
    )
    sync_timeout: float = flag(
        30.0,
        "how long a sync waits for the other nodes before this node gives up with an error",
        Real(0),
        metavar="SECONDS",
        group="machines",
    )
    start_timeout: float = flag(
        300.0,
        "how long start-up (joining, data download, CUDA start, the checkpoint agreement) "
        "waits for the other nodes",
        Real(0),
        metavar="SECONDS",
        group="machines",
    )

    @classmethod
    def from_flags(cls, given):
        """The options from GIVEN (the parsed flags, a dict), defaults for the rest."""
        return cls(**{f.name: given[f.name] for f in fields(cls) if given.get(f.name) is not None})

    def as_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class ConfigRequest:
    """What the train command's flags ask of the TrainConfig: the fields given
    (a flag not given is absent, so that --resume can take the checkpoint's
    value), the recipe that supplies the other defaults, and --more-epochs.
    resolve() turns it into the TrainConfig, against a checkpoint if any."""

    given: dict = field(default_factory=dict)
    recipe: str = flag(
        "sample",
        lambda: "a named set of the * defaults: " + choices_help(RECIPES) + "; explicit flags "
        "override it",
        OneOf(RECIPES),
    )
    more_epochs: int = flag(
        None,
        "train N epochs beyond what the checkpoint holds (with --resume; from scratch without "
        "one), instead of up to --epochs",
        Whole(1),
        shown="up to --epochs",
        metavar="N",
    )

    @classmethod
    def from_flags(cls, given):
        names = set(TrainConfig.names())
        chosen = {k: v for k, v in given.items() if k in names and v is not None}
        return cls(chosen, given.get("recipe") or "sample", given.get("more_epochs"))

    def resolve(self, saved=None, trained_epochs=0, log=print):
        """The TrainConfig (see TrainConfig.resolve); --more-epochs counts from
        TRAINED_EPOCHS, the epochs the checkpoint holds."""
        request = self
        if self.more_epochs:
            given = {**self.given, "epochs": trained_epochs + self.more_epochs}
            request = replace(self, given=given)
        return TrainConfig.resolve(request, saved, log)


@dataclass(frozen=True)
class LaunchOptions:
    """main.py --nnodes: how this node starts torchrun's elastic launcher.
    None of it reaches the leaders (flags.leader_argv drops these flags).
    A default named ENV comes from that torchrun variable when it is set."""

    nnodes: str = flag(
        None,
        "how many nodes; MIN:MAX lets the job go on with fewer after a node is lost",
        Text(),
        shown="one machine, no torchrun",
        metavar="N|MIN:MAX",
    )
    rdzv_endpoint: str = flag(
        None,
        "where the nodes meet (c10d rendezvous; hosted by the node whose address it is)",
        Text(),
        shown="$PET_RDZV_ENDPOINT",
        env="PET_RDZV_ENDPOINT",
        metavar="HOST:PORT",
    )
    rdzv_id: str = flag(
        "mnist-hogwild",
        "the job's id, the same on every node and new for every job",
        Text(),
        env="PET_RDZV_ID",
        metavar="ID",
    )
    rdzv_conf: str = flag(
        "",
        f"c10d rendezvous settings passed to torchrun after {LAST_CALL}, e.g. " "join_timeout=900",
        Text(),
        shown="nothing more",
        env="PET_RDZV_CONF",
        metavar="K=V,...",
    )
    local_addr: str = flag(
        None,
        "this node's address as the other nodes reach it (torchrun's --local-addr)",
        Text(),
        shown="its host name",
        metavar="ADDR",
    )
    verbose: bool = flag(
        False, "keep torch's own launcher and rendezvous logs (else errors as one line)", Switch()
    )
    max_restarts: int = flag(
        0,
        "restarts of the whole job after a failure, e.g. a lost node; pass --resume too, so "
        "that a restart continues from the checkpoint",
        Whole(0, 1000),
        metavar="M",
    )

    @classmethod
    def from_flags(cls, given):
        return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})
