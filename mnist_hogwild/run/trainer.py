"""The parent's side of a training run: build the shared model, hand it to the
workers, let them train epoch by epoch up to each boundary, evaluate, and
checkpoint; stop cleanly on a signal, a failed worker or a lost node.

Trainer.run() reads as the run's steps. The node (cluster/nodes.py) decides
where the workers pause and combines models across machines; the checkpoint
manager (checkpoint_manager.py) decides when and where to save.
"""

import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.multiprocessing  # noqa: F401 - registers the reductions that send shared tensors by fd

from mnist_hogwild.run import checkpoint
from mnist_hogwild.core import cpus
from mnist_hogwild.learn import data
from mnist_hogwild.cluster import launcher
from mnist_hogwild.cluster import nodes
from mnist_hogwild.learn import optim
from mnist_hogwild.run.checkpoint_manager import CheckpointManager
from mnist_hogwild.core.config import RunOptions, TrainConfig
from mnist_hogwild.core.errors import (
    CheckpointError,
    ClusterError,
    DataError,
    Diverged,
    UsageError,
    WorkerDied,
    cuda_memory_error,
)
from mnist_hogwild.learn.data import NUM_CLASSES
from mnist_hogwild.learn.evaluation import evaluate
from mnist_hogwild.core.loglines import (
    ProgressLog,
    format_seconds,
    line,
    close_bar,
    progress_display,
    say,
)
from model import Net
from mnist_hogwild.learn.schedule import (
    Schedule,
    batches_per_epoch,
    follows_the_plan,
    learning_rate,
)
from mnist_hogwild.hogwild.signals import Stopped
from mnist_hogwild.hogwild.worker import WorkerSetup

# Divergence that is still finite. A model that guesses uniformly has a loss
# of ln(10), about 2.3, and a healthy run only falls from there; a log
# interval averaging ten times that is confidently wrong on nearly every
# sample: its weights exploded. And an epoch at chance (1.5x a tenth) after a
# learnt one (half right or better) lost what it had learnt.
EXPLODED_LOSS = 10 * math.log(NUM_CLASSES)
CHANCE_PERCENT, LEARNT_PERCENT = 1.5 * 100 / NUM_CLASSES, 50.0
TOO_HIGH = "the learning rate is too high"


def log(message):
    say(message)


def warn(message):
    say(f"warning: {message}", sys.stderr)


def choose_device(requested):
    """(torch.device, why) for --device REQUESTED ("auto", "cpu" or "cuda").

    The model, its optimizer state and both data splits live on this device;
    the checkpoint always holds CPU tensors. UsageError (exit 2, nothing
    written) if "cuda" is asked for without a GPU."""
    if requested == "cpu":
        return torch.device("cpu"), "--device cpu"
    if shareable_cuda_allocations():
        log(
            "note: PYTORCH_CUDA_ALLOC_CONF asks for expandable segments; the shared model is "
            "allocated without them (their CUDA IPC needs pidfd_getfd, which containers "
            "without ptrace rights refuse); the workers keep them"
        )
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return torch.device("cuda", 0), f"{name}; --device {requested}"
    if torch.version.cuda is None:
        why = "this torch is a CPU-only build; the CUDA image has a CUDA build"
    else:
        why = "torch sees no GPU (no NVIDIA driver, or docker run without --gpus all)"
    if requested == "cuda":
        raise UsageError(f"--device cuda: no usable GPU: {why}")
    return torch.device("cpu"), f"auto: {why}"


def shareable_cuda_allocations(environ=os.environ):
    """Turn expandable segments off for this process's CUDA allocations (read
    when CUDA starts, so call this before): the tensors it shares with the
    workers must go through classic CUDA IPC handles. True if it changed."""
    changed = False
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        parts = [p.strip() for p in environ.get(name, "").split(",") if p.strip()]
        kept = [
            p for p in parts if not p.replace(" ", "").lower().startswith("expandable_segments")
        ]
        if any(p.replace(" ", "").lower() == "expandable_segments:true" for p in parts):
            environ[name] = ",".join(kept + ["expandable_segments:False"])
            changed = True
    return changed


@dataclass
class SharedModel:
    """The model and optimizer state the workers train together (Hogwild:
    without locks, in shared memory on the CPU; on a GPU the workers reach
    these very tensors by CUDA IPC), and where training stands."""

    model: Net
    optimizer: optim.SharedStateOptimizer
    record: checkpoint.Progress  # where training stands, and its metrics (saved)
    run_id: str
    counters: list  # optimizer state that several machines add up (optimizer.counted)
    moments: list  # the rest of the optimizer state: several machines average it

    @classmethod
    def build(cls, config, device, state, checkpoints, per_epoch):
        """Fresh (seeded), or restored from STATE, then shared."""
        torch.manual_seed(config.seed)
        model = Net(config.dropout).to(device)
        params = list(model.parameters())
        optimizer = optim.from_config(config, params)
        if state is None:
            record, run_id = checkpoint.Progress(0, 0, per_epoch, config.seed), None
        else:
            record = checkpoints.restore(state, model, optimizer, per_epoch)
            run_id = state.get("run_id")
        model.share_memory()
        for tensor in optimizer.tensors():
            tensor.share_memory_()
        counters, moments = optimizer.counters(), optimizer.moments()
        run_id = run_id or checkpoint.new_run_id()
        return cls(model, optimizer, record, run_id, counters, moments)


class Trainer:
    """The parent's side of a run: owns the shared model, the loop, and two
    kinds of progress: self.shared_progress, the counters the workers update
    (pool.SharedProgress), and self.record, what a checkpoint saves of where
    training stands (checkpoint.Progress). Asks the node where to pause and
    the checkpoint manager when to save."""

    def __init__(self, config, options, device, node, stop, checkpoints, state, started, pool):
        self.config, self.options, self.device, self.node = config, options, device, node
        self.stop, self.checkpoints, self.started, self.pool = stop, checkpoints, started, pool
        self.shared_progress = pool.progress
        self.files = data.prepare(options.data_dir, config.dataset, log=log)
        self.train_set = data.to_device(data.map_split(self.files["train"]), device)
        self.test_set = data.to_device(data.load_split(self.files["test"]), device)
        self.per_epoch = batches_per_epoch(len(self.train_set), config.batch_size)
        self.shared = SharedModel.build(config, device, state, checkpoints, self.per_epoch)
        self.model, self.optimizer, self.record = (
            self.shared.model,
            self.shared.optimizer,
            self.shared.record,
        )
        node.begin(self.model.parameters(), self.shared.moments, self.shared.counters)
        self.first_epoch = self.record.epoch
        # Not divmod(start, per_epoch) later: a checkpoint saved while the last
        # epoch's evaluation was interrupted holds step == per_epoch, and that
        # epoch must still be evaluated on resume.
        self.start = self.first_epoch * self.per_epoch + self.record.step
        self.threads, self.eval_threads = thread_counts(options)
        self.schedule = Schedule(self.per_epoch, self.start, node.rank, node.world)
        display = progress_display(node.leader)
        self.log = ProgressLog(
            options.log_interval, config, self.schedule, len(self.train_set), display
        )
        # --dry-run: the same loop, one batch per worker of the first epoch.
        self.batch_limit = options.num_processes if options.dry_run else None
        self.last_epoch = self.first_epoch + 1 if options.dry_run else config.epochs
        self.epoch, self.epoch_trained = self.first_epoch, False
        self.run_started = time.perf_counter()
        self.shared_progress.reset(0)  # the shared counters count this node's batches of this run

    # ----- the run -------------------------------------------------------
    def run(self):
        """The whole run; returns the process exit code."""
        try:
            self.start_workers()
            for epoch in range(self.first_epoch, self.last_epoch):
                self.train_epoch(epoch)
                row = self.evaluate_epoch(epoch)
                self.end_epoch(epoch, row)
                if reached_target(row, self.options.target_accuracy):
                    break
        except Stopped as stopped:
            return self.stopped(stopped)
        except WorkerDied as e:
            changed = data.changed_files(self.files)
            raise (WorkerDied(f"{e}; {changed[0]}") if changed else e) from None
        return self.finish()

    def start_workers(self):
        """Hand the workers (forked at start-up, waiting) the shared model and
        wait until they are ready."""
        if self.start:
            fields = dict(path=self.options.checkpoint, per_epoch=self.per_epoch)
            log(line("resuming", epoch=self.first_epoch + 1, step=self.record.step, **fields))
        processes = dict(processes=self.options.num_processes, threads=self.threads)
        settings = optim.OPTIMIZERS[self.config.optimizer].settings(self.config)
        log(line("training", **processes, optimizer_settings=settings, **self.config.as_dict()))
        self.stop.unwind = False  # see signals.StopRequest: from here a signal is only noted
        if self.stop.signum is not None and self.node.pauses_anywhere:
            raise Stopped(self.stop.signum, during_start_up=True)
        torch.set_num_threads(self.threads)
        self.run_started = time.perf_counter()
        self.pool.send_setup(self.worker_payload())
        # One machine stops at once; several stop together, at the first sync.
        give_up = self.stop_requested if self.node.pauses_anywhere else None
        if not self.shared_progress.wait("ready", len(self.pool), self.pool.check, give_up):
            raise Stopped(self.stop.signum, during_start_up=True)
        self.stop.starting = False  # from here a signal means "save, then stop"
        log(line("ready", workers=len(self.pool), seconds=time.monotonic() - self.started))

    def worker_payload(self):
        """What every worker gets: the shared tensors (by fd, or CUDA IPC), and
        how to train. On the CPU the workers map the data file themselves (page
        cache, no copy); on a GPU they get the split already there."""
        on_cpu = self.device.type == "cpu"
        every = 1 if on_cpu else self.options.log_interval
        setup = WorkerSetup(self.threads, str(self.device), self.options.deterministic, every)
        train = self.files["train"] if on_cpu else self.train_set
        return dict(model=self.model, state=self.optimizer.state, config=self.config, train=train,
                    setup=setup, schedule=self.schedule)  # fmt: skip

    def train_epoch(self, epoch):
        """Train this node's batches of EPOCH, pausing at each of the node's
        boundaries (and, on one machine, wherever a save or stop is due)."""
        self.epoch, self.epoch_trained = epoch, False
        end = self.schedule.local_end(epoch)
        if self.batch_limit is not None:
            end = min(end, self.schedule.local_start(epoch) + self.batch_limit)
        self.log.begin_epoch(
            epoch, self.shared_progress.done.value, self.shared_progress.loss_sum.value
        )
        for boundary in self.node.boundaries(
            self.schedule, epoch, self.shared_progress.done.value, end
        ):
            while not self.run_to(boundary):
                self.synchronise_at_boundary(at_end=False)
            self.synchronise_at_boundary(at_end=boundary == end)
        self.log.end_epoch(self.shared_progress.done.value)
        self.record.partial_epoch = self.epoch_partial()
        self.epoch_trained = True

    def run_to(self, boundary):
        """Let the workers train up to this node's batch BOUNDARY: True there;
        False if they were paused before it (a save or a stop is due)."""
        shared, check = self.shared_progress, self.pool.check
        if shared.done.value < boundary:
            shared.set_limit(boundary, check)
            if not shared.wait("done", boundary, check, self.between_batches):
                shared.pause(check)
                return False
        return True

    def between_batches(self, done):
        """Called by the wait loop about every 0.1 s: log; True to pause now."""
        loss_sum = self.shared_progress.loss_sum.value
        why = divergence(loss_sum, self.log.tick(done, loss_sum) if math.isfinite(loss_sum) else 0)
        if why:
            self.shared_progress.pause(self.pool.check)
            raise Diverged(f"{why} in epoch {self.epoch + 1}")
        self.pool.watch_stall(done, warn)
        return self.node.pauses_anywhere and (self.stop_requested() or self.checkpoints.due())

    def synchronise_at_boundary(self, at_end):
        """The workers are paused at a boundary: combine the model with the other
        nodes' (if any) and agree on stopping and saving."""
        signum, save = self.node.synchronise(self.stop.signum, self.checkpoints.due(), at_end)
        if signum:
            raise Stopped(signum, here=self.stop.signum is not None)
        if save and not at_end:  # (an epoch's end saves anyway)
            step = self.schedule.step(self.epoch, self.shared_progress.done.value)
            self.checkpoints.save(self.snapshot(self.epoch, step, self.epoch_partial()))

    def evaluate_epoch(self, epoch):
        """EPOCH's metrics row. The workers are idle, so the parent may use
        every core. On several machines each node evaluates its share of the
        test set; the first makes the row from everyone's sums and tells the others."""
        torch.set_num_threads(self.eval_threads)
        started = time.perf_counter()
        try:
            result = evaluate(self.model, self.node.shard(self.test_set), self.config.dataset,
                              self.options.test_batch_size, self.stop_requested)  # fmt: skip
        finally:
            torch.set_num_threads(self.threads)
        result, signum = self.node.combine_evaluation(result, self.stop.signum)
        row = None
        if result is not None and self.node.leader:
            batches = self.schedule.step(epoch, self.shared_progress.done.value)
            row = metrics_row(
                epoch, batches, result, time.perf_counter() - started,
                self.record.partial_epoch, self.config, len(self.train_set), self.per_epoch,
            )  # fmt: skip
        row, signum = self.node.share_evaluation(row, signum)
        if row is None:
            raise Stopped(signum or self.stop.signum, here=self.stop.signum is not None)
        return row

    def end_epoch(self, epoch, row):
        if not (math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"])):
            raise Diverged(
                f"epoch {epoch + 1} ended with losses {row['train_loss']}, {row['test_loss']}"
            )
        before = self.record.metrics[-1]["accuracy_percent"] if self.record.metrics else 0.0
        if row["accuracy_percent"] <= CHANCE_PERCENT < LEARNT_PERCENT <= before:
            raise Diverged(
                f"epoch {epoch + 1}'s accuracy fell to {row['accuracy_percent']:.2f}% (chance) "
                f"from {before:.2f}%: {TOO_HIGH}"
            )
        self.record.metrics.append(row)
        done = self.shared_progress.done.value
        finished = done == self.schedule.local_end(epoch)  # a dry run is not a finished epoch
        step = self.schedule.step(epoch, done)
        if finished:
            self.record.partial_epoch = checkpoint.empty_partial()
        self.checkpoints.save_epoch(self.snapshot(*((epoch + 1, 0) if finished else (epoch, step))))
        fields = {k: row[k] for k in ("test_loss", "samples_per_s", "seconds")}
        fields.update(epoch=epoch + 1, epochs=self.config.epochs)
        path = self.checkpoints.saved_where()
        log(line("epoch", accuracy=row["accuracy_percent"], path=path, **fields))

    def finish(self):
        self.pool.stop(graceful=True)
        total = time.perf_counter() - self.run_started
        fields = dict(epochs=len(self.record.metrics), path=self.options.checkpoint)
        log(
            line(
                "done",
                elapsed=format_seconds(total),
                batches=self.shared_progress.done.value,
                **fields,
            )
        )
        log_summary(self.record.metrics, self.checkpoints, self.shared.run_id)
        log_syncs(self.node, self.log.trained_seconds)
        return 0

    def stopped(self, stopped):
        """Graceful stop: the workers are paused (on every node, at the same
        boundary); save, then let them exit."""
        name = stopped.name()
        if stopped.during_start_up:
            self.pool.stop(graceful=False)
            return stopped_before_training(stopped)
        step = self.schedule.step(self.epoch, self.shared_progress.done.value)
        partial = self.record.partial_epoch if self.epoch_trained else self.epoch_partial()
        seconds = self.checkpoints.save(self.snapshot(self.epoch, step, partial))
        fields = dict(
            path=self.checkpoints.saved_where(), epoch=self.epoch + 1, step=step, ms=seconds * 1000
        )
        fields.update(per_epoch=self.per_epoch, batches=self.shared_progress.done.value)
        log(line("stopped", signal=name if stopped.here else f"{name} on another node", **fields))
        log_syncs(self.node, self.log.trained_seconds)
        self.pool.stop(graceful=True)
        return 0 if launcher.hand_over_stop(stopped.signum) else 128 + stopped.signum

    # ----- helpers -------------------------------------------------------
    def stop_requested(self, *_):
        return self.stop.signum is not None

    def epoch_partial(self):
        """The unfinished epoch's loss sum and seconds, those of earlier runs
        included; on several machines summed over the nodes (a collective: every
        node calls this at the same points)."""
        loss, seconds = self.log.epoch_totals(self.shared_progress.loss_sum.value)
        loss, seconds = self.node.sum_and_max(loss, seconds)
        base = self.record.partial_epoch
        return {"loss_sum": base["loss_sum"] + loss, "seconds": base["seconds"] + seconds}

    def snapshot(self, epoch, step, partial=None):
        """The whole checkpoint dict for (EPOCH, STEP); call only while the
        workers are paused. PARTIAL defaults to the run's current one."""
        metrics, partial = list(self.record.metrics), dict(partial or self.record.partial_epoch)
        progress = checkpoint.Progress(
            epoch, step, self.per_epoch, self.config.seed, metrics, partial
        )
        config, options = self.config.as_dict(), self.options.as_dict()
        optimizer = self.optimizer.state_dict()
        return checkpoint.make_state(
            self.model, optimizer, progress, config, options, self.shared.run_id
        )


def thread_counts(options):
    """(torch threads per worker, the parent's for evaluation, when the workers are idle)."""
    usable = cpus.usable_cpus()
    threads = options.threads_per_process or max(1, usable // options.num_processes)
    return threads, max(threads, usable)


def divergence(loss_sum, interval_loss):
    """Why training diverged, from the summed loss and the last log
    interval's mean loss (None: not known yet), or None if it did not."""
    if not math.isfinite(loss_sum):
        return f"the training loss became {loss_sum}"
    if interval_loss is not None and interval_loss > EXPLODED_LOSS:
        guess = math.log(NUM_CLASSES)
        return (
            f"the training loss exploded to {interval_loss:.3g} (a model that guesses scores "
            f"{guess:.2f}): {TOO_HIGH}"
        )
    return None


def metrics_row(epoch, batches, result, eval_seconds, partial, config, num_samples, per_epoch):
    """EPOCH's row in the metrics (BATCHES of it trained, PARTIAL its loss and seconds)."""
    samples = min(batches * config.batch_size, num_samples)
    return {
        "epoch": epoch + 1,
        "train_loss": partial["loss_sum"] / max(1, batches),
        "test_loss": result.test_loss,
        "accuracy_percent": 100 * result.accuracy,
        "lr": learning_rate(config, epoch * per_epoch + batches - 1, per_epoch),
        "samples_per_s": samples / max(partial["seconds"], 1e-9),
        "seconds": partial["seconds"],
        "eval_seconds": eval_seconds,
    }


def reached_target(row, target):
    """--target-accuracy: True (and one line) once an epoch reaches it."""
    if not target or row["accuracy_percent"] < target:
        return False
    log(line("target", target=target, epoch=row["epoch"], accuracy=row["accuracy_percent"]))
    return True


def log_summary(rows, checkpoints, run_id):
    """The run's last lines: final and best accuracy, and where the files are
    (and, if an earlier run trained a better model here, where it is kept)."""
    if checkpoints.dry_run and not checkpoints.writes:
        log(f"dry run: nothing saved; {checkpoints.path} is as it was")
        return
    if checkpoints.dry_run:
        log(f"dry run: saved {checkpoints.path} only (no metrics, no best model)")
        return
    kept = checkpoints.best_elsewhere(run_id)
    if kept is not None:
        log(
            f"note: {checkpoints.best_path} keeps the best model trained at {checkpoints.path}, "
            f"{kept['accuracy']:.2f}% (epoch {kept['epoch']} of an earlier run); a later "
            f"epoch replaces it only by scoring as well"
        )
    if rows:
        best = max(rows, key=lambda r: r["accuracy_percent"])
        fields = dict(final=rows[-1]["accuracy_percent"], best=best["accuracy_percent"])
        fields.update(best_epoch=best["epoch"], path=checkpoints.path)
        log(
            line(
                "summary",
                best_path=checkpoints.best_path,
                metrics=checkpoints.metrics_path,
                **fields,
            )
        )


def log_syncs(node, trained_seconds):
    if node.syncs:
        percent = 100 * node.sync_seconds / max(trained_seconds, 1e-9)
        fields = dict(rank=node.rank, world=node.world, syncs=node.syncs)
        log(line("syncs", seconds=node.sync_seconds, percent=percent, **fields))
        if node.cadence.auto:
            log(line("cadence", k=node.cadence.k, **fields))


def job_settings(args, options):
    """What every node of a job must agree on before the first collective:
    the flags as given (a checkpoint resolves the rest the same everywhere)."""
    given = {f"--{n.replace('_', '-')}": getattr(args, n, None) for n in TrainConfig.names()}
    given["--recipe"] = getattr(args, "recipe", None)
    given["--resume"] = options.resume
    given["--sync-every"] = options.sync_every or "auto"
    given["--node-updates"] = options.node_updates
    return given


def run(args, stop, started, pool):
    """Run training as the flags say; returns the process exit code. Every
    failure is one `error:` line here.

    STARTED is time.monotonic() at the start of main(), for the start-up time;
    POOL holds the workers, already starting; the caller stops it on every exit.
    """
    options = RunOptions.from_args(args)
    closing = {"node": nodes.LocalNode(), "checkpoints": CheckpointManager(options, log, warn)}
    try:
        return start(args, options, stop, started, pool, closing)
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


def start(args, options, stop, started, pool, closing):
    """The steps before the Trainer: device, node, agreement, checkpoint, config.
    CLOSING holds what run() must close whatever happens."""
    pool.start()  # first: before CUDA, gloo or any thread exists (see pool.WorkerPool)
    checkpoints = closing["checkpoints"]
    device, why = choose_device(options.device)  # a usage error writes nothing
    node = closing["node"] = nodes.from_env(options)
    if options.dry_run and node.world > 1:
        raise UsageError("--dry-run is for one machine, not a torchrun job")
    node.start()
    signum = node.agree_on_job(job_settings(args, options), stop.signum)
    if signum:
        return stopped_before_training(Stopped(signum, here=stop.signum is not None))
    if node.describe():
        log(node.describe())
    for caution in node.cautions():
        warn(caution)
    writer = node.checkpoint_writer(checkpoints.path)
    if writer != node.rank:
        checkpoints.follow(writer)
        log(f"node {node.rank}: node {writer} writes {options.checkpoint} (a folder they share)")
    checkpoints.open()
    state = load_state(options, node)
    if getattr(args, "more_epochs", None):
        args.epochs = (state["epoch"] if state else 0) + args.more_epochs
    config = TrainConfig.resolve(args, state["config"] if state else None, log=log)
    if state is not None:
        note_schedule_change(state, config)
        if state["epoch"] >= config.epochs:
            log(
                f"training already complete: {options.checkpoint} holds {state['epoch']} of "
                f"{config.epochs} epochs; pass a larger --epochs to train further"
            )
            return 0
    log(f"device: {device} ({why})")
    if options.deterministic:
        torch.use_deterministic_algorithms(True)
    return Trainer(config, options, device, node, stop, checkpoints, state, started, pool).run()


def stopped_before_training(stopped):
    log(f"stopped by {stopped.name()} during start-up; nothing to save")
    return 0 if launcher.hand_over_stop(stopped.signum) else 128 + stopped.signum


def note_schedule_change(state, config):
    """A resume with another --epochs (or --lr) replans a schedule: say how, once."""
    saved = TrainConfig(**{**config.as_dict(), **state["config"]})
    if saved == config or not follows_the_plan(config):
        return
    per_epoch = state["batches_per_epoch"]
    batch = state["epoch"] * per_epoch + state["step"]
    was, now = learning_rate(saved, batch, per_epoch), learning_rate(config, batch, per_epoch)
    log(
        f"note: the {config.lr_schedule} schedule is now planned over {config.epochs} epochs "
        f"(was {saved.epochs}) with peak {config.lr}: at batch {batch} the rate is {now:.3g} "
        f"(was {was:.3g}), and it follows the new plan from there"
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
