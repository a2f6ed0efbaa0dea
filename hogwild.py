"""One training run: load or start, hand the workers the shared model, train
epoch by epoch, evaluate, checkpoint, and shut down cleanly on a signal or a
failed worker. Run.run() is the whole run in named steps."""

import os
import re
import signal
import string
import sys
import time

import torch
import torch.multiprocessing  # noqa: F401 - registers the reductions that send shared tensors by fd

import checkpoint
import cluster
import cpus
import data
import shared
import train
from cluster import ClusterError
from config import TrainConfig, UsageError
from model import Net

# The log lines that scripts and tests read. They are printed from these
# formats and parsed back with parse_line(), so a reworded message fails a
# test instead of silently breaking the soak or the benchmark.
LINES = {
    "resuming": "resuming {path} at epoch {epoch}, batch {step}/{per_epoch}",
    "training": "training {dataset} for {epochs} epochs: {processes} processes x {threads} "
    "threads, batch {batch_size}, lr {lr}, momentum {momentum}",
    "ready": "{workers} workers ready: first batch {seconds:.1f}s after start",
    "progress": "epoch {epoch}/{epochs} [{samples}/{total} ({percent:.0f}%)] loss {loss:.4f} "
    "{samples_per_s:.0f} samples/s ETA {eta}",
    "epoch": "epoch {epoch}/{epochs}: test loss {test_loss:.4f}, accuracy {accuracy:.2f}%, "
    "{samples_per_s:.0f} samples/s, {seconds:.1f}s training; saved {path}",
    "stopped": "stopped by {signal}: saved {path} at epoch {epoch}, batch {step}/{per_epoch} "
    "in {ms:.0f} ms ({batches} batches this run); continue with --resume",
    "done": "done in {elapsed} ({batches} batches this run): {epochs} epochs in {path}",
    "syncs": "node {rank}/{world}: {syncs} syncs took {seconds:.2f}s, {percent:.1f}% of the "
    "training time",
}


def line(kind, **fields):
    return LINES[kind].format(**fields)


def _pattern(fmt):
    parts = []
    for literal, name, _, _ in string.Formatter().parse(fmt):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(f"(?P<{name}>.+?)")
    return re.compile("^" + "".join(parts) + "$")


PATTERNS = {kind: _pattern(fmt) for kind, fmt in LINES.items()}


def _number(text):
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return float(text) if re.fullmatch(r"-?\d+\.\d*|nan|inf", text) else text


def parse_line(kind, text):
    """The fields of a KIND line (numbers as int or float), or None if TEXT is not one."""
    match = PATTERNS[kind].match(text.strip())
    return {k: _number(v) for k, v in match.groupdict().items()} if match else None


def parse_lines(kind, output):
    """Every KIND line in OUTPUT, parsed."""
    return [p for p in (parse_line(kind, text) for text in output.splitlines()) if p]


def log(message):
    print(message, flush=True)


def warn(message):
    print(f"warning: {message}", file=sys.stderr, flush=True)


def format_seconds(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def choose_device(requested):
    """(torch.device, why) for --device REQUESTED ("auto", "cpu" or "cuda").

    The device seam: the model, its momentum buffers and both data splits
    live on this device; the checkpoint always holds CPU tensors.
    UsageError (exit 2, nothing written) if "cuda" is asked for without a GPU."""
    if requested == "cpu":
        return torch.device("cpu"), "--device cpu"
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


class ProgressLog:
    """The progress lines of one run: owns the counters they are computed from.
    DONE counts this node's batches (all of them on a single machine)."""

    def __init__(self, interval, config, schedule, num_samples):
        self.interval, self.config = interval, config
        self.schedule, self.num_samples = schedule, num_samples
        self.trained_seconds, self.trained_batches = 0.0, 0

    def begin_epoch(self, epoch, done, loss_sum):
        self.epoch, self.done0, self.loss0, self.t0 = epoch, done, loss_sum, time.perf_counter()
        self.last_done, self.last_loss = done, loss_sum

    def epoch_totals(self, loss_sum):
        """(training loss summed, seconds) since begin_epoch."""
        return loss_sum - self.loss0, time.perf_counter() - self.t0

    def end_epoch(self, done):
        self.trained_seconds += time.perf_counter() - self.t0
        self.trained_batches += done - self.done0

    def tick(self, done, loss_sum):
        if done - self.last_done < self.interval:
            return
        c, s = self.config, self.schedule
        seconds = self.trained_seconds + time.perf_counter() - self.t0
        rate = (self.trained_batches + done - self.done0) * c.batch_size / max(seconds, 1e-9)
        samples = min(s.step(self.epoch, done) * c.batch_size, self.num_samples)
        loss = (loss_sum - self.last_loss) / max(1, done - self.last_done)
        self.last_done, self.last_loss = done, loss_sum
        remaining = (s.local_start(c.epochs) - done) * c.batch_size
        fields = dict(epoch=self.epoch + 1, epochs=c.epochs, samples=samples, loss=loss)
        fields.update(total=self.num_samples, percent=100 * samples / self.num_samples)
        eta = format_seconds(remaining / max(rate, 1e-9))
        log(line("progress", samples_per_s=rate, eta=eta, **fields))


class Run:
    """The parent's side of a run: owns the shared model, the workers and the checkpoint."""

    def __init__(self, args, config, device, cluster, stop, state, started, pool):
        self.args, self.config, self.stop, self.started = args, config, stop, started
        self.pool, self.progress, self.device = pool, pool.progress, device
        self.cluster = cluster  # None on a single machine
        self.files = data.prepare(args.data_dir, config.dataset, log=log)
        self.train_set = data.to_device(data.map_split(self.files["train"]), device)
        self.test_set = data.to_device(data.map_split(self.files["test"]), device)
        self.per_epoch = train.batches_per_epoch(len(self.train_set), config.batch_size)
        torch.manual_seed(config.seed)
        self.model = Net().to(self.device)
        self.optimizer = train.MomentumSGD(self.model.parameters(), config.lr, config.momentum)
        fresh = checkpoint.Progress(0, 0, self.per_epoch, config.seed)
        self.state = self.restore(state) if state is not None else fresh
        self.first_epoch, step = self.state.epoch, self.state.step
        # Not divmod(start, per_epoch) later: a checkpoint saved while the last
        # epoch's evaluation was interrupted holds step == per_epoch, and that
        # epoch must still be evaluated on resume.
        self.start = self.first_epoch * self.per_epoch + step
        # Hogwild: the workers update these very tensors, without locks (in
        # shared memory on the CPU; on a GPU they reach the workers by CUDA IPC).
        self.model.share_memory()
        self.momentum = [buf.share_memory_() for buf in self.optimizer.momentum_buffers]
        usable = cpus.usable_cpus()
        self.threads = args.threads_per_process or max(1, usable // args.num_processes)
        self.eval_threads = max(self.threads, usable)
        rank, world = (cluster.rank, cluster.world) if cluster else (0, 1)
        if cluster is not None:
            cluster.remember(self.model.parameters())
        self.schedule = train.Schedule(self.per_epoch, self.start, rank, world)
        self.log = ProgressLog(args.log_interval, config, self.schedule, len(self.train_set))
        self.last_save = time.monotonic()
        self.stopping = None  # the signal number that stops the run (here or on another node)
        self.progress.reset(0)  # the shared counters count this node's batches of this run

    def restore(self, state):
        """Load the checkpoint's weights and momentum; return its Progress."""
        path, progress = self.args.checkpoint, checkpoint.Progress.from_state(state)
        if progress.batches_per_epoch != self.per_epoch:
            raise checkpoint.CheckpointError(
                f"{path} was saved with {progress.batches_per_epoch} batches per "
                f"epoch, but this data set gives {self.per_epoch}: different training data"
            )
        if not 0 <= progress.step <= self.per_epoch:
            raise checkpoint.CheckpointError(f"{path} has an impossible step {progress.step}")
        self.model.load_state_dict(state["model_state"])
        try:
            self.optimizer.load_momentum(state["optimizer_state"])
        except ValueError as e:
            raise checkpoint.CheckpointError(
                f"{path} has an unusable optimizer state ({e})"
            ) from None
        progress.metrics = list(progress.metrics)
        progress.partial_epoch = dict(progress.partial_epoch or checkpoint.empty_partial())
        return progress

    # ----- the run -------------------------------------------------------
    def run(self):
        """The whole run; returns the process exit code."""
        if not self.start_workers():
            return self.stopped_during_start_up()
        if self.args.dry_run:
            return self.dry_run()
        for epoch in range(self.first_epoch, self.config.epochs):
            if not self.train_until(epoch, self.epoch_end(epoch)):
                return self.stop_and_save(epoch)
            result = self.evaluate()
            if result is None:
                return self.stop_and_save(epoch)
            self.end_epoch(epoch, result)
        return self.finish()

    def dry_run(self):
        """--dry-run: one batch per worker, evaluate, save. It never counts as a
        trained epoch: the checkpoint records the batches it did, so --resume
        continues that epoch."""
        epoch = self.first_epoch
        if not self.train_until(epoch, min(self.epoch_end(epoch), self.args.num_processes)):
            return self.stop_and_save(epoch)
        result = self.evaluate()
        if result is None:
            return self.stop_and_save(epoch)
        row = self.metrics_row(epoch, result)
        self.state.metrics.append(row)
        self.save(self.snapshot(epoch, self.schedule.step(epoch, self.progress.done.value)))
        self.log_epoch(epoch, row)
        return self.finish()

    # ----- steps ---------------------------------------------------------
    def start_workers(self):
        """Hand the workers (started at launch, importing torch meanwhile) the
        shared model and wait until they are ready. False on a stop signal."""
        c = self.config
        if self.start:
            fields = dict(path=self.args.checkpoint, per_epoch=self.per_epoch)
            log(line("resuming", epoch=self.first_epoch + 1, step=self.state.step, **fields))
        log(
            line("training", processes=self.args.num_processes, threads=self.threads, **c.as_dict())
        )
        self.stop.unwind = False  # see main.StopRequest: from here a signal is only noted
        if self.stop.signum is not None:
            return False
        torch.set_num_threads(self.threads)
        self.run_started = time.perf_counter()
        # On the CPU the workers map the file themselves (page cache, no copy);
        # on a GPU they get the split already there (CUDA IPC, no copy either).
        train_data = self.files["train"] if self.device.type == "cpu" else self.train_set
        setup = train.WorkerSetup(
            threads=self.threads,
            device=str(self.device),
            deterministic=self.args.deterministic,
            report_every=1 if self.device.type == "cpu" else self.args.log_interval,
        )
        payload = dict(model=self.model, momentum_buffers=self.momentum, config=self.config)
        payload.update(train=train_data, setup=setup, schedule=self.schedule)
        self.pool.send_setup(payload)
        if not self.progress.wait("ready", len(self.pool), self.pool.check, self.stop_requested):
            return False
        # From here on a signal means "save, then stop" (see main.StopRequest).
        self.stop.starting = False
        seconds = time.monotonic() - self.started
        log(line("ready", workers=len(self.pool), seconds=seconds))
        return True

    def epoch_end(self, epoch):
        """This node's batch count (of this run) at the end of EPOCH."""
        return self.schedule.local_start(epoch) + self.schedule.count(epoch)

    def train_until(self, epoch, end):
        """Let the workers train EPOCH up to this node's batch END, then leave
        them paused. False if the run stops first (the finished batches are
        still a prefix, also across nodes: the checkpoint is exact)."""
        progress, check = self.progress, self.pool.check
        self.epoch = epoch
        self.log.begin_epoch(epoch, progress.done.value, progress.loss_sum.value)
        for boundary in self.boundaries(epoch, end):
            self.boundary = boundary
            if progress.done.value < self.boundary:
                progress.set_limit(self.boundary, check)
                if not progress.wait("done", self.boundary, check, self.between_batches):
                    progress.pause(check)
                    self.stopping = self.stop.signum
                    break
            if self.cluster is not None and not self.synchronise(epoch):
                break
        self.log.end_epoch(progress.done.value)
        self.state.partial_epoch = self.epoch_partial()
        return self.stopping is None

    def boundaries(self, epoch, end):
        """Where the workers pause in EPOCH: at END, and on several machines also
        every --sync-every batches, to average the model (the sync seam). Every
        node gets the same number of boundaries, so their syncs pair up."""
        if self.cluster is None:
            return [end]
        k, first = self.cluster.sync_every, self.schedule.local_start(epoch)
        inner = range(k, self.schedule.common_count(epoch), k)
        return [first + j for j in inner if first + j < end] + [end]

    def synchronise(self, epoch):
        """The workers are paused at a boundary: average the model with the other
        nodes' and learn whether any node was told to stop or it is time to save.
        False if the job stops here."""
        interval = self.args.checkpoint_interval
        due = bool(interval) and time.monotonic() - self.last_save >= interval
        started = time.perf_counter()
        params = list(self.model.parameters())
        signum, save_now = self.cluster.synchronise(params, self.momentum, self.stop.signum, due)
        self.cluster.sync_seconds += time.perf_counter() - started
        self.cluster.syncs += 1
        if signum:
            self.stopping = signum
            return False
        if save_now and self.boundary < self.epoch_end(epoch):  # (an epoch's end saves anyway)
            step = self.schedule.step(epoch, self.progress.done.value)
            self.save(self.snapshot(epoch, step, self.epoch_partial()))
        return True

    def between_batches(self, done):
        """Called by the wait loop about every 0.1 s: log, save now and then;
        True to stop. On several machines saves and stops happen at syncs."""
        self.log.tick(done, self.progress.loss_sum.value)
        if self.cluster is not None:
            return False
        interval = self.args.checkpoint_interval
        if interval and time.monotonic() - self.last_save >= interval:
            self.save_periodic()
        return self.stop_requested()

    def save_periodic(self):
        self.progress.pause(self.pool.check)
        step = self.schedule.step(self.epoch, self.progress.done.value)
        state = self.snapshot(self.epoch, step, self.epoch_partial())
        self.progress.set_limit(self.boundary, self.pool.check)  # the workers go on meanwhile
        self.save(state)

    def evaluate(self):
        """(test loss, accuracy, seconds), or None on a stop signal. The workers
        are idle, so the parent may use every core. On several machines the
        first node evaluates and tells the others."""
        result = None
        if self.cluster is None or self.cluster.leader:
            torch.set_num_threads(self.eval_threads)
            split, batch_size = self.test_set, self.args.test_batch_size
            started = time.perf_counter()
            try:
                result = train.evaluate(
                    self.model, split, self.config.dataset, batch_size, self.stop_requested
                )
            finally:
                torch.set_num_threads(self.threads)
            result = None if result is None else (*result, time.perf_counter() - started)
        if self.cluster is not None:
            result, signum = self.cluster.share_evaluation(result, self.stop.signum)
            self.stopping = None if result is not None else signum
        else:
            self.stopping = None if result is not None else self.stop.signum
        return result

    def end_epoch(self, epoch, result):
        row = self.metrics_row(epoch, result)
        self.state.metrics.append(row)
        self.state.partial_epoch = checkpoint.empty_partial()
        self.save(self.snapshot(epoch + 1, 0))
        self.log_epoch(epoch, row)

    def finish(self):
        self.pool.stop(graceful=True)
        total = time.perf_counter() - self.run_started
        batches = self.progress.done.value
        fields = dict(epochs=len(self.state.metrics), path=self.args.checkpoint)
        log(line("done", elapsed=format_seconds(total), batches=batches, **fields))
        self.log_syncs()
        return 0

    def log_syncs(self):
        if self.cluster is not None and self.cluster.syncs:
            c, trained = self.cluster, max(self.log.trained_seconds, 1e-9)
            percent = 100 * c.sync_seconds / trained
            fields = dict(rank=c.rank, world=c.world, syncs=c.syncs, seconds=c.sync_seconds)
            log(line("syncs", percent=percent, **fields))

    def stopped_during_start_up(self):
        name = signal.Signals(self.stop.signum).name
        log(f"stopped by {name} during start-up; nothing to save")
        self.pool.stop(graceful=False)  # still starting: nothing to finish
        return 128 + self.stop.signum

    def stop_and_save(self, epoch):
        """Graceful stop: the workers are paused (on every node, at the same
        boundary); save, then let them exit."""
        step = self.schedule.step(epoch, self.progress.done.value)
        seconds = self.save(self.snapshot(epoch, step))
        name = signal.Signals(self.stopping).name
        here = self.stop.signum is not None
        fields = dict(path=self.args.checkpoint, epoch=epoch + 1, step=step, ms=seconds * 1000)
        fields.update(per_epoch=self.per_epoch, batches=self.progress.done.value)
        log(line("stopped", signal=name if here else f"{name} on another node", **fields))
        self.log_syncs()
        self.pool.stop(graceful=True)
        return self.stop_exit_code(here)

    def stop_exit_code(self, here):
        """128 + the signal on one machine. Under main.py --nnodes, 0 on every node
        (the launcher itself exits 128 + the signal where it came). Under plain
        torchrun, 128 + the signal on every node: a non-zero exit makes each
        torchrun skip its exit barrier, where it would wait 5 minutes for the
        torchrun that got the signal and has already gone."""
        if self.cluster is None:
            return 128 + self.stop.signum
        if self.cluster.wrapped:
            return 0
        return 128 + (self.stop.signum if here else self.stopping)

    # ----- helpers -------------------------------------------------------
    def stop_requested(self, *_):
        return self.stop.signum is not None

    def epoch_partial(self):
        """The unfinished epoch's loss sum and seconds, those of earlier runs
        included; on several machines summed over the nodes (a collective: every
        node calls this at the same points)."""
        loss, seconds = self.log.epoch_totals(self.progress.loss_sum.value)
        if self.cluster is not None:
            loss, seconds = self.cluster.sum_and_max(loss, seconds)
        base = self.state.partial_epoch
        return {"loss_sum": base["loss_sum"] + loss, "seconds": base["seconds"] + seconds}

    def metrics_row(self, epoch, result):
        test_loss, accuracy, eval_seconds = result
        batches = self.schedule.step(epoch, self.progress.done.value)
        partial = self.state.partial_epoch
        samples = min(batches * self.config.batch_size, len(self.train_set))
        return {
            "epoch": epoch + 1,
            "train_loss": partial["loss_sum"] / max(1, batches),
            "test_loss": test_loss,
            "accuracy": accuracy,
            "samples_per_s": samples / max(partial["seconds"], 1e-9),
            "seconds": partial["seconds"],
            "eval_seconds": eval_seconds,
        }

    def log_epoch(self, epoch, row):
        checkpoint.write_metrics(self.args.checkpoint, self.state.metrics)
        fields = {k: row[k] for k in ("test_loss", "samples_per_s", "seconds")}
        fields.update(epoch=epoch + 1, epochs=self.config.epochs, path=self.args.checkpoint)
        log(line("epoch", accuracy=100 * row["accuracy"], **fields))

    def snapshot(self, epoch, step, partial=None):
        """The whole checkpoint dict for (EPOCH, STEP); call only while the
        workers are paused. PARTIAL defaults to the run's current one."""
        progress = checkpoint.Progress(
            epoch=epoch,
            step=step,
            batches_per_epoch=self.per_epoch,
            seed=self.config.seed,
            metrics=list(self.state.metrics),
            partial_epoch=dict(partial or self.state.partial_epoch),
        )
        args = {**vars(self.args), **self.config.as_dict()}
        return checkpoint.make_state(self.model, self.optimizer.state_dict(), progress, args)

    def save(self, state):
        started = time.perf_counter()
        checkpoint.save(state, self.args.checkpoint)
        self.last_save = time.monotonic()
        return time.perf_counter() - started


def load_state(args, cluster):
    """The checkpoint to resume from, or None for a fresh run. On several
    machines: the newest that any node holds, the same on every node."""
    if not args.resume:
        return None
    if cluster is not None:
        state = cluster.newest_checkpoint(args.checkpoint, Net().state_dict())
    else:
        state = (
            checkpoint.load(args.checkpoint, Net().state_dict())
            if os.path.exists(args.checkpoint)
            else None
        )
    if state is None:
        warn(f"--resume: no checkpoint at {args.checkpoint}; starting fresh")
    return state


def run(args, stop, started, pool):
    """Run training as the flags say; returns the process exit code.

    STARTED is time.monotonic() at the start of main(), for the start-up time;
    POOL holds the workers, already starting; the caller stops it on every exit.
    """
    node = None
    try:
        device, why = choose_device(args.device)  # first: a usage error writes nothing
        node = cluster.from_env(args.sync_every, args.sync_timeout, args.node_updates)
        if node is not None:
            if args.dry_run:
                raise UsageError("--dry-run is for one machine, not a torchrun job")
            node.start()
            log(f"node {node.rank} of {node.world}: syncing every {node.sync_every} batches")
        checkpoint.check_writable(args.checkpoint)
        for name in checkpoint.remove_stale_temps(args.checkpoint, this_host_only=node is not None):
            warn(f"removed {name}, left by an interrupted save")
        state = load_state(args, node)
        config = TrainConfig.resolve(args, state["args"] if state else None, log=log)
        if state is not None and state["epoch"] >= config.epochs:
            log(
                f"training already complete: {args.checkpoint} holds {state['epoch']} of "
                f"{config.epochs} epochs; pass a larger --epochs to train further"
            )
            return 0
        log(f"device: {device} ({why})")
        if args.deterministic:
            torch.use_deterministic_algorithms(True)
        return Run(args, config, device, node, stop, state, started, pool).run()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError as e:
        print(f"error: CUDA out of memory ({train.first_sentence(e)})", file=sys.stderr)
        return 1
    except (checkpoint.CheckpointError, data.DataError, shared.WorkerDied, ClusterError) as e:
        print(f"error: {e}", file=sys.stderr)
        if isinstance(e, (shared.WorkerDied, ClusterError)):
            kept = (
                f"the last good checkpoint {args.checkpoint} is kept"
                if os.path.exists(args.checkpoint)
                else "no checkpoint had been written yet"
            )
            print(f"error: training stopped; {kept}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.close()
