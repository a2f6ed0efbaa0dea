"""One training run: load or start, spawn the Hogwild workers, evaluate,
checkpoint, and shut down cleanly on a signal or a failed worker."""

import json
import os
import signal
import sys
import time

import torch
import torch.multiprocessing  # noqa: F401 - registers the reductions that send shared tensors by fd

import checkpoint
import cpus
import data
import shared
import train
from model import Net

# Training flags that fix which batches make up an epoch: they must match the
# checkpoint when resuming (lr and momentum may be changed on purpose).
MUST_MATCH = ("batch_size", "seed", "dataset")
POLL_SECONDS = 0.1  # how often the parent looks at signals and workers


def log(message):
    print(message, flush=True)


def warn(message):
    print(f"warning: {message}", file=sys.stderr, flush=True)


class UsageError(Exception):
    """Flags that contradict the checkpoint (exit 2, like argparse)."""


def resolve_training_args(args, defaults, saved_args):
    """Fill unset training flags: from the checkpoint when resuming, else defaults."""
    resolved = {}
    for key, default in defaults.items():
        given = getattr(args, key)
        saved = saved_args.get(key) if saved_args else None
        if given is None:
            resolved[key] = saved if saved is not None else default
        elif saved is not None and given != saved and key in MUST_MATCH:
            flag = "--" + key.replace("_", "-")
            raise UsageError(
                f"{flag} {given} differs from the checkpoint's {saved}; resuming needs "
                f"the same {flag} (or start a new run with another --checkpoint)"
            )
        else:
            if saved is not None and given != saved and key != "epochs":
                log(f"note: --{key.replace('_', '-')} changed from {saved} to {given} on resume")
            resolved[key] = given
    return resolved


def metrics_path(checkpoint_path):
    return os.path.splitext(checkpoint_path)[0] + ".metrics.jsonl"


def write_metrics(path, metrics):
    """Rewrite the JSON-lines file from the checkpoint's list, atomically: it
    then always agrees with the checkpoint, even after a crash between the two."""
    lines = "".join(json.dumps(row) + "\n" for row in metrics).encode()
    try:
        checkpoint.atomic_write(path, lambda f: f.write(lines))
    except OSError as e:
        raise checkpoint.CheckpointError(f"could not write {path}: {e.strerror or e}") from None


def format_seconds(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Run:
    """The parent's side of a run: owns the shared model, the workers and the checkpoint."""

    def __init__(self, args, hp, stop, state, started, pool):
        self.args, self.hp, self.stop, self.started = args, hp, stop, started
        self.files = data.prepare(args.data_dir, hp["dataset"], log=log)
        self.train_set = data.map_split(self.files["train"])
        self.test_set = data.map_split(self.files["test"])
        self.per_epoch = train.batches_per_epoch(len(self.train_set), hp["batch_size"])
        if state is not None and state["batches_per_epoch"] != self.per_epoch:
            raise checkpoint.CheckpointError(
                f"{args.checkpoint} was saved with {state['batches_per_epoch']} batches per "
                f"epoch, but this data set gives {self.per_epoch}: different training data"
            )

        torch.manual_seed(hp["seed"])
        self.model = Net()
        self.optimizer = train.MomentumSGD(self.model.parameters(), hp["lr"], hp["momentum"])
        self.metrics, self.partial = [], {"loss_sum": 0.0, "seconds": 0.0}
        epoch, step = 0, 0
        if state is not None:
            epoch, step = state["epoch"], state["step"]
            self.metrics = list(state["metrics"])
            self.partial = dict(state.get("partial_epoch") or self.partial)
            self.model.load_state_dict(state["model_state"])
            try:
                self.optimizer.load_momentum(state["optimizer_state"])
            except ValueError as e:
                raise checkpoint.CheckpointError(
                    f"{args.checkpoint} has an unusable optimizer state ({e})"
                ) from None
        if not 0 <= step <= self.per_epoch:
            raise checkpoint.CheckpointError(f"{args.checkpoint} has an impossible step {step}")
        # Not divmod(start, per_epoch) later: a checkpoint saved while the last
        # epoch's evaluation was interrupted holds step == per_epoch, and that
        # epoch must still be evaluated on resume.
        self.start_epoch = epoch
        self.start = epoch * self.per_epoch + step
        # Hogwild: the workers update these very tensors, without locks.
        self.model.share_memory()
        self.momentum = [buf.share_memory_() for buf in self.optimizer.momentum_buffers]

        usable = cpus.usable_cpus()
        self.threads = args.threads_per_process or max(1, usable // args.num_processes)
        self.eval_threads = max(self.threads, usable)
        self.pool, self.progress = pool, pool.progress
        self.progress.reset(self.start)

    # ----- workers -------------------------------------------------------
    def send_setup(self):
        """Hand the workers (started at launch, importing torch meanwhile) the
        shared model, the momentum buffers and their settings."""
        hparams = {k: self.hp[k] for k in ("batch_size", "lr", "momentum", "seed", "dataset")}
        self.pool.send_setup(
            {
                "model": self.model,
                "momentum_buffers": self.momentum,
                "files": self.files["train"],
                "hparams": hparams,
                "threads": self.threads,
            }
        )

    def check_workers(self):
        self.pool.check()

    def _locked(self):
        """Acquire the shared lock, but notice a worker that died holding it."""
        while not self.progress.cond.acquire(timeout=0.5):
            self.check_workers()

    def set_limit(self, limit):
        self._locked()
        try:
            self.progress.limit.value = limit
            self.progress.cond.notify_all()
        finally:
            self.progress.cond.release()

    def pause(self):
        """Stop handing out batches and wait for the ones in flight: afterwards
        the finished batches are exactly 0..done-1 and the weights are still."""
        self._locked()
        try:
            self.progress.limit.value = self.progress.claimed.value
            target = self.progress.claimed.value
        finally:
            self.progress.cond.release()
        self.wait_for(target, interruptible=False)

    def wait_ready(self):
        """Wait until every worker has imported torch and mapped the data, so
        epoch timings measure training, not start-up. False on a stop signal."""
        while True:
            self._locked()
            try:
                if self.progress.ready.value < len(self.pool):
                    self.progress.cond.wait(POLL_SECONDS)
                ready = self.progress.ready.value
            finally:
                self.progress.cond.release()
            if ready >= len(self.pool):
                return True
            self.check_workers()
            if self.stop.signum is not None:
                return False

    def wait_for(self, target, interruptible=True, on_tick=None):
        """Wait until `target` batches are done; False if a stop signal came first."""
        while True:
            self._locked()
            try:
                if self.progress.done.value < target:
                    self.progress.cond.wait(POLL_SECONDS)
                done = self.progress.done.value
            finally:
                self.progress.cond.release()
            if done >= target:
                return True
            self.check_workers()
            if interruptible and self.stop.signum is not None:
                return False
            if on_tick is not None:
                on_tick(done)

    # ----- checkpoints ---------------------------------------------------
    def snapshot(self, epoch, step):
        """The checkpoint dict; call only while the workers are paused."""
        return {
            "format_version": checkpoint.FORMAT_VERSION,
            "model": type(self.model).__name__,
            "model_state": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer_state": self.optimizer.state_dict(),
            "epoch": epoch,
            "step": step,
            "batches_per_epoch": self.per_epoch,
            "seed": self.hp["seed"],
            "args": {**vars(self.args), **self.hp},
            "metrics": list(self.metrics),
            "partial_epoch": dict(self.partial),
        }

    def save(self, state):
        started = time.perf_counter()
        checkpoint.save(state, self.args.checkpoint)
        return time.perf_counter() - started

    # ----- the run -------------------------------------------------------
    def run(self):
        args, hp = self.args, self.hp
        first_epoch, step = self.start_epoch, self.start - self.start_epoch * self.per_epoch
        if self.start:
            log(
                f"resuming {args.checkpoint} at epoch {first_epoch + 1}, batch {step}/{self.per_epoch}"
            )
        log(
            f"training {hp['dataset']} for {hp['epochs']} epochs: {args.num_processes} processes x "
            f"{self.threads} threads, batch {hp['batch_size']}, lr {hp['lr']}, momentum {hp['momentum']}"
        )
        if self.stop.signum is not None:
            return 128 + self.stop.signum
        torch.set_num_threads(self.threads)
        run_started = time.perf_counter()
        self.send_setup()
        if not self.wait_ready():
            log(
                f"stopped by {signal.Signals(self.stop.signum).name} during start-up; nothing to save"
            )
            self.pool.stop(graceful=False)  # still starting: nothing to finish
            return 128 + self.stop.signum
        # From here on a signal means "save, then stop" (see main.StopRequest).
        self.stop.starting = False
        log(
            f"{len(self.pool)} workers ready: first batch {time.monotonic() - self.started:.1f}s "
            f"after start"
        )
        trained_seconds, trained_batches = 0.0, 0
        for epoch in range(first_epoch, hp["epochs"]):
            epoch_start = epoch * self.per_epoch
            epoch_end = epoch_start + self.per_epoch
            if args.dry_run:
                epoch_end = min(epoch_end, self.progress.done.value + args.num_processes)
            done0, loss0, t0 = (
                self.progress.done.value,
                self.progress.loss_sum.value,
                time.perf_counter(),
            )
            last_log = {"done": done0, "loss": loss0}
            last_save = time.monotonic()

            def tick(done):
                nonlocal last_save
                if done - last_log["done"] >= args.log_interval:
                    self.log_progress(
                        epoch,
                        done,
                        last_log,
                        trained_seconds + time.perf_counter() - t0,
                        trained_batches + done - done0,
                    )
                if (
                    args.checkpoint_interval
                    and time.monotonic() - last_save >= args.checkpoint_interval
                ):
                    self.pause()
                    paused_done = self.progress.done.value
                    state = self.snapshot(epoch, paused_done - epoch_start)
                    state["partial_epoch"] = self.partial_with(
                        self.progress.loss_sum.value - loss0, time.perf_counter() - t0
                    )
                    self.set_limit(epoch_end)
                    self.save(state)
                    last_save = time.monotonic()

            self.set_limit(epoch_end)
            finished = self.wait_for(epoch_end, on_tick=tick)
            if not finished:
                self.pause()
            done = self.progress.done.value
            seconds = time.perf_counter() - t0
            trained_seconds += seconds
            trained_batches += done - done0
            partial = self.partial_with(self.progress.loss_sum.value - loss0, seconds)
            if not finished:
                return self.stop_and_save(epoch, done - epoch_start, partial, done - self.start)

            # Evaluation: the workers are idle, so the parent may use every core.
            torch.set_num_threads(self.eval_threads)
            result = train.evaluate(
                self.model,
                self.test_set,
                hp["dataset"],
                args.test_batch_size,
                lambda: self.stop.signum is not None,
            )
            torch.set_num_threads(self.threads)
            if result is None:
                return self.stop_and_save(epoch, done - epoch_start, partial, done - self.start)
            test_loss, accuracy = result
            batches = done - epoch_start
            row = {
                "epoch": epoch + 1,
                "train_loss": partial["loss_sum"] / max(1, batches),
                "test_loss": test_loss,
                "accuracy": accuracy,
                "samples_per_s": min(batches * hp["batch_size"], len(self.train_set))
                / max(partial["seconds"], 1e-9),
                "seconds": partial["seconds"],
            }
            self.metrics.append(row)
            self.partial = {"loss_sum": 0.0, "seconds": 0.0}
            next_epoch = epoch + 1
            if args.dry_run:
                # A dry run never counts as a trained epoch: its checkpoint records
                # the batches it did, so --resume continues that epoch.
                next_epoch, batches = epoch, done - epoch_start
                self.partial = partial
            self.save(self.snapshot(next_epoch, 0 if next_epoch > epoch else batches))
            write_metrics(metrics_path(args.checkpoint), self.metrics)
            log(
                f"epoch {epoch + 1}/{hp['epochs']}: test loss {test_loss:.4f}, accuracy "
                f"{100 * accuracy:.2f}%, {row['samples_per_s']:.0f} samples/s, "
                f"{row['seconds']:.1f}s training; saved {args.checkpoint}"
            )
            if args.dry_run:
                break
        self.pool.stop(graceful=True)
        total = time.perf_counter() - run_started
        log(
            f"done in {format_seconds(total)} ({self.progress.done.value - self.start} batches "
            f"this run): {len(self.metrics)} epochs in {args.checkpoint}"
        )
        return 0

    def partial_with(self, loss_sum, seconds):
        return {
            "loss_sum": self.partial["loss_sum"] + loss_sum,
            "seconds": self.partial["seconds"] + seconds,
        }

    def stop_and_save(self, epoch, step, partial, batches_this_run):
        """Graceful stop: the workers are paused; save, then let them exit."""
        state = self.snapshot(epoch, step)
        state["partial_epoch"] = partial
        seconds = self.save(state)
        log(
            f"stopped by {signal.Signals(self.stop.signum).name}: saved {self.args.checkpoint} "
            f"at epoch {epoch + 1}, batch {step}/{self.per_epoch} in {seconds * 1000:.0f} ms "
            f"({batches_this_run} batches this run); continue with --resume"
        )
        self.pool.stop(graceful=True)
        return 128 + self.stop.signum

    def log_progress(self, epoch, done, last, seconds, batches):
        hp = self.hp
        samples = min((done - epoch * self.per_epoch) * hp["batch_size"], len(self.train_set))
        loss_sum = self.progress.loss_sum.value
        loss = (loss_sum - last["loss"]) / max(1, done - last["done"])
        last["done"], last["loss"] = done, loss_sum
        rate = batches * hp["batch_size"] / max(seconds, 1e-9)
        remaining = (hp["epochs"] * self.per_epoch - done) * hp["batch_size"]
        log(
            f"epoch {epoch + 1}/{hp['epochs']} [{samples}/{len(self.train_set)} "
            f"({100 * samples / len(self.train_set):.0f}%)] loss {loss:.4f} "
            f"{rate:.0f} samples/s ETA {format_seconds(remaining / max(rate, 1e-9))}"
        )


def run(args, defaults, stop, started, pool):
    """Run training as the flags say; returns the process exit code.

    STARTED is time.monotonic() at the start of main(), for the start-up time;
    POOL holds the workers, already starting; the caller stops it on every exit.
    """
    try:
        checkpoint.check_writable(args.checkpoint)
        for name in checkpoint.remove_stale_temps(args.checkpoint):
            warn(f"removed {name}, left by an interrupted save")
        state = None
        if args.resume:
            if os.path.exists(args.checkpoint):
                state = checkpoint.load(args.checkpoint, Net().state_dict())
            else:
                warn(f"--resume: no checkpoint at {args.checkpoint}; starting fresh")
        hp = resolve_training_args(args, defaults, state["args"] if state else None)
        if state is not None and state["epoch"] >= hp["epochs"]:
            log(
                f"training already complete: {args.checkpoint} holds {state['epoch']} of "
                f"{hp['epochs']} epochs; pass a larger --epochs to train further"
            )
            return 0
        return Run(args, hp, stop, state, started, pool).run()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (checkpoint.CheckpointError, data.DataError, shared.WorkerDied) as e:
        print(f"error: {e}", file=sys.stderr)
        if isinstance(e, shared.WorkerDied):
            kept = (
                f"the last good checkpoint {args.checkpoint} is kept"
                if os.path.exists(args.checkpoint)
                else "no checkpoint had been written yet"
            )
            print(f"error: training stopped; {kept}", file=sys.stderr)
        return 1
