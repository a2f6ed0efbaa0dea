"""A training run's start-up, before the loop: the device, the node and its
agreement with the others, the checkpoint to resume, the resolved config;
then the Trainer (trainer.py) runs the loop. Every failure, start-up's or
the loop's, becomes one `error:` line and an exit code here."""

import os
import sys
from dataclasses import replace

import torch

from mnist_hogwild.cluster import nodes
from mnist_hogwild.core.config import TrainConfig
from mnist_hogwild.core.errors import (
    CheckpointError,
    ClusterError,
    DataError,
    Diverged,
    UsageError,
    WorkerDied,
    cuda_memory_error,
)
from mnist_hogwild.core.loglines import close_bar, say
from mnist_hogwild.hogwild.adapt import adapt
from mnist_hogwild.hogwild.signals import Stopped
from mnist_hogwild.learn import data
from mnist_hogwild.learn.device import choose_device
from mnist_hogwild.learn.schedule import follows_the_plan, learning_rate
from mnist_hogwild.training import checkpoint
from mnist_hogwild.training.checkpoint_manager import CheckpointManager
from mnist_hogwild.training.outcome import stopped_before_training, warn
from mnist_hogwild.training.trainer import Trainer
from model import Net


def train(request, options, stop, started, pool):
    """Train as REQUEST (the ConfigRequest) and OPTIONS (the RunOptions) say;
    returns the process exit code. Every failure is one `error:` line here.

    STARTED is time.monotonic() at the start of main(), for the start-up time;
    POOL holds the workers, already starting; the caller stops it on every exit.
    """
    o = options
    checkpoints = CheckpointManager(
        o.checkpoint, say, warn, o.checkpoint_interval, o.keep_models, o.dry_run, o.resume
    )
    closing = {"node": nodes.LocalNode(), "checkpoints": checkpoints}
    try:
        return prepare(request, options, stop, started, pool, closing)
    except UsageError as e:
        return fail(e, 2)
    except (CheckpointError, DataError) as e:
        return fail(e, 1)
    except (WorkerDied, ClusterError, Diverged) as e:
        kept = (
            f"the last good checkpoint {options.checkpoint} is kept"
            if os.path.exists(options.checkpoint)
            else "no checkpoint had been written yet"
        )
        code = nodes.EXIT_PEER_LOST if isinstance(e, ClusterError) else 1
        return fail(f"{e}; training stopped, {kept}", code)
    except Exception as e:  # noqa: BLE001 - one line for a GPU out of memory, else re-raised
        memory = cuda_memory_error(e)
        if memory is None:
            raise
        return fail(memory, 1)
    finally:
        close_bar()  # (a progress bar on the terminal, cleared)
        closing["checkpoints"].close()
        closing["node"].close()


def prepare(request, options, stop, started, pool, closing):
    """The steps before the Trainer: device, node, agreement, checkpoint, config.
    CLOSING holds what train() must close whatever happens."""
    pool.start()  # first: before CUDA, gloo or any thread exists (see pool.WorkerPool)
    checkpoints = closing["checkpoints"]
    device, why = choose_device(options.device, say)  # a usage error writes nothing
    node = closing["node"] = nodes.from_env(options)
    if options.dry_run and node.world > 1:
        raise UsageError("--dry-run is for one machine, not a torchrun job")
    node.start()
    signum = node.agree_on_job(job_settings(request, options), stop.signum)
    if signum:
        return stopped_before_training(Stopped(signum, here=stop.signum is not None))
    if node.describe():
        say(node.describe())
    for caution in node.cautions():
        warn(caution)
    writer = node.checkpoint_writer(checkpoints.path)
    if writer != node.rank:
        checkpoints.follow(writer)
        say(f"node {node.rank}: node {writer} writes {options.checkpoint} (a folder they share)")
    checkpoints.open()
    state = load_state(options, node)
    config = request.resolve(
        state["config"] if state else None, state["epoch"] if state else 0, log=say
    )
    if state is not None:
        note_schedule_change(state, config)
        if state["epoch"] >= config.epochs:
            say(
                f"training already complete: {options.checkpoint} holds {state['epoch']} of "
                f"{config.epochs} epochs; pass a larger --epochs to train further"
            )
            return 0
    say(f"device: {device} ({why})")
    if options.deterministic:
        torch.use_deterministic_algorithms(True)
    config = held_out(config, request, options, fresh=state is None)
    # The one config the run uses: the flags and the checkpoint resolved
    # (above), then adapted to this process count.
    plan = adapt(config, options.num_processes, request.given, options.micro_batches)
    trainer = Trainer(plan, options, device, node, stop, checkpoints, state, started, pool)
    return trainer.run()


def held_out(config, request, options, fresh):
    """CONFIG with the validation images a fresh run holds out: --validation-size
    as given, else its default, or a twelfth of a training set too small for it
    (as MNIST's 5,000 of 60,000). Saved as a number: a resume keeps it."""
    if not fresh or "validation_size" in request.given:
        return config
    files = data.prepare(options.data_dir, config.dataset, log=say)
    count = data.read_header(files["train"].labels, data.LABEL_MAGIC)[0]
    return replace(config, validation_size=min(config.validation_size, count // 12))


def job_settings(request, options):
    """What every node of a job must agree on before the first collective:
    the flags as given (a checkpoint resolves the rest the same everywhere)."""
    given = {f"--{n.replace('_', '-')}": request.given.get(n) for n in TrainConfig.names()}
    given["--recipe"] = request.recipe
    given["--more-epochs"] = request.more_epochs
    given["--resume"] = options.resume
    given["--sync-every"] = options.sync_every or "auto"
    given["--node-updates"] = options.node_updates
    return given


def note_schedule_change(state, config):
    """A resume with another --epochs (or --lr) replans a schedule: say how,
    once, naming only what changed."""
    saved = TrainConfig(**{**config.as_dict(), **state["config"]})
    if saved == config or not follows_the_plan(config):
        return
    per_epoch = state["batches_per_epoch"]
    batch = state["epoch"] * per_epoch + state["step"]
    was, now = learning_rate(saved, batch, per_epoch), learning_rate(config, batch, per_epoch)
    if f"{was:.3g}" == f"{now:.3g}" and saved.epochs == config.epochs and saved.lr == config.lr:
        return  # (another setting changed: its own note says so)
    epochs = f" (was {saved.epochs})" if saved.epochs != config.epochs else ""
    peak = f" (was {saved.lr})" if saved.lr != config.lr else ""
    rate = f" (was {was:.3g})" if f"{was:.3g}" != f"{now:.3g}" else ""
    say(
        f"note: the {config.lr_schedule} schedule is now planned over {config.epochs} epochs"
        f"{epochs} with peak {config.lr}{peak}: at batch {batch} the rate is {now:.3g}{rate}, "
        f"and it follows the new plan from there"
    )


def load_state(options, node):
    """The checkpoint to resume from, or None for a fresh run. On several
    machines: the newest that any node holds, the same on every node."""
    if not options.resume:
        return None
    expected = Net().state_dict()
    state = node.newest_checkpoint(
        options.checkpoint, lambda source, name=None: checkpoint.load(source, expected, name), warn
    )
    if state is None:
        warn(f"--resume: no checkpoint at {options.checkpoint}; starting fresh")
    return state


def fail(error, code):
    say(f"error: {error}", sys.stderr)
    return code
