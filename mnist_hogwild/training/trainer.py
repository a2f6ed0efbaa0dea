"""The parent's side of a training run: build the shared model, hand it to the
workers, let them train epoch by epoch up to each boundary, evaluate, and
checkpoint; stop cleanly on a signal, a failed worker or a lost node.

Trainer.run() reads as the run's steps. The node (cluster/nodes.py) decides
where the workers pause and combines models across machines; the checkpoint
manager (checkpoint_manager.py) decides when and where to save; health.py
judges each interval and epoch, outcome.py writes the lines; startup.py comes
before it.
"""

import math
import time
from contextlib import suppress
from functools import partial

import torch
import torch.multiprocessing  # noqa: F401 - registers the reductions that send shared tensors by fd

from mnist_hogwild.cluster import launcher
from mnist_hogwild.core import cpus
from mnist_hogwild.core.errors import Diverged, WorkerDied
from mnist_hogwild.core.loglines import ProgressReport, line, progress_display, say
from mnist_hogwild.hogwild.pool import staleness_summary
from mnist_hogwild.hogwild.signals import Stopped
from mnist_hogwild.hogwild.worker import WorkerSetup
from mnist_hogwild.learn import data
from mnist_hogwild.learn.schedule import Schedule, batches_per_epoch
from mnist_hogwild.training import checkpoint
from mnist_hogwild.training.health import HealthWatch
from mnist_hogwild.training.outcome import (
    IntervalRows,
    log_summary,
    log_syncs,
    metrics_row,
    say_done,
    say_epoch,
    say_start,
    say_stopped,
    stopped_before_training,
    warn,
)
from mnist_hogwild.training.shared import SharedModel
from mnist_hogwild.training.splits import evaluate_splits, load_splits
from mnist_hogwild.training.target import TargetReached, target_watch


class Trainer:
    """The parent's side of a run: owns the shared model and the loop, reads the
    workers' SharedCounters, keeps the Record a checkpoint saves (docs/design.md);
    asks the node where to pause and the checkpoint manager when to save."""

    def __init__(self, plan, options, device, node, stop, checkpoints, state, started, pool):
        # PLAN (hogwild/adapt.py) holds the one config this run trains and
        # reports with, and the one its checkpoints record.
        self.plan, self.config, self.options = plan, plan.config, options
        self.device, self.node, self.stop, self.pool = device, node, stop, pool
        self.checkpoints, self.started, self.counters = checkpoints, started, pool.counters
        self.staleness_counts = partial(pool.counters.staleness_counts, pool.check)
        self.splits = load_splits(options.data_dir, self.config, device)
        self.per_epoch = batches_per_epoch(self.splits.trained, self.config.batch_size)
        self.shared = SharedModel.build(plan.saved, device, state, checkpoints, self.per_epoch)
        self.model, self.record = self.shared.model, self.shared.record
        node.begin(self.model.parameters(), self.shared.averaged, self.shared.summed)
        self.first_epoch = self.record.epoch
        self.start_batch = self.record.next_batch(self.per_epoch)
        self.threads, self.eval_threads = thread_counts(
            options.threads_per_process, options.num_processes
        )
        self.schedule = Schedule(self.per_epoch, self.start_batch, node.rank, node.world)
        self.report, self.intervals, self.evaluate_all, self.row = measures(self, options)
        # --dry-run: the same loop, one batch per worker of the first epoch.
        self.batch_limit = options.num_processes if options.dry_run else None
        self.last_epoch = self.first_epoch + 1 if options.dry_run else self.config.epochs
        self.epoch, self.epoch_trained = self.first_epoch, False
        # (The collapse checks name the rate the flags set, before the adaptation.)
        self.health = HealthWatch(plan.saved, options.num_processes, self.per_epoch)
        self.target = target_watch(self, options)
        self.run_started = time.perf_counter()
        self.counters.reset(0)  # the shared counters count this node's batches of this run

    # ----- the run -------------------------------------------------------
    def run(self):
        """The whole run; returns the process exit code."""
        try:
            self.start_workers()
            for epoch in range(self.first_epoch, self.last_epoch):
                self.train_epoch(epoch)
                if self.end_epoch(epoch, self.evaluate_epoch(epoch)):
                    break
        except Stopped as stopped:
            return self.stopped(stopped)
        except WorkerDied as e:
            changed = data.changed_files(self.splits.files)
            raise (WorkerDied(f"{e}; {changed[0]}") if changed else e) from None
        return self.finish()

    def start_workers(self):
        """Hand the workers (forked at start-up, waiting) the shared model and
        wait until they are ready."""
        o = self.options
        say_start(
            self.plan, o.checkpoint, o.num_processes, self.threads, self.record, self.start_batch
        )
        self.stop.unwind = False  # see signals.StopRequest: from here a signal is only noted
        if self.stop.signum is not None and self.node.pauses_anywhere:
            raise Stopped(self.stop.signum, during_start_up=True)
        torch.set_num_threads(self.threads)
        self.run_started = time.perf_counter()
        self.pool.send_setup(worker_payload(self, self.options))
        # One machine stops at once; several stop together, at the first sync.
        give_up = self.stop.requested if self.node.pauses_anywhere else None
        if not self.counters.wait("ready", len(self.pool), self.pool.check, give_up):
            raise Stopped(self.stop.signum, during_start_up=True)
        self.stop.starting = False  # from here a signal means "save, then stop"
        say(line("ready", workers=len(self.pool), seconds=time.monotonic() - self.started))

    def train_epoch(self, epoch):
        """Train this node's batches of EPOCH, pausing at each of the node's
        boundaries (and, on one machine, wherever a save or stop is due)."""
        self.epoch, self.epoch_trained = epoch, False
        end = self.schedule.local_end(epoch)
        if self.batch_limit is not None:
            end = min(end, self.schedule.local_start(epoch) + self.batch_limit)
        self.report.begin_epoch(epoch, self.counters.done.value, self.counters.loss_sum.value)
        staleness = self.staleness_counts()
        with suppress(TargetReached):  # (paused there: the epoch's row judges it again)
            self.train_to(epoch, end)
        self.report.end_epoch(self.counters.done.value)
        self.stale = staleness_summary(staleness, self.staleness_counts())
        self.record.partial_epoch = self.epoch_partial()
        self.epoch_trained = True

    def train_to(self, epoch, end):
        """Train EPOCH's batches up to END, through each of the node's boundaries."""
        for boundary in self.node.boundaries(self.schedule, epoch, self.counters.done.value, end):
            while not self.run_to(boundary):
                self.synchronise_at_boundary(at_end=False)
            self.synchronise_at_boundary(at_end=boundary == end)

    def run_to(self, boundary):
        """Let the workers train up to this node's batch BOUNDARY: True there;
        False if they were paused before it (a save or a stop is due)."""
        shared, check = self.counters, self.pool.check
        if shared.done.value < boundary:
            shared.set_limit(boundary, check)
            if not shared.wait("done", boundary, check, self.between_batches):
                shared.pause(check)
                return False
        return True

    def between_batches(self, done):
        """Called by the wait loop about every 0.1 s: log; True to pause now."""
        loss_sum = self.counters.loss_sum.value
        interval = self.report.tick(done, loss_sum) if math.isfinite(loss_sum) else None
        batch = self.epoch * self.per_epoch + self.schedule.step(self.epoch, done)
        if interval is not None and self.node.leader:
            self.intervals.add(interval)
            self.target.check()
        try:
            self.health.check_interval(
                loss_sum, interval and interval["train_loss"], batch, self.epoch
            )
        except Diverged:
            self.counters.pause(self.pool.check)
            raise
        self.pool.watch_stall(done, warn)
        return self.node.pauses_anywhere and (self.stop.requested() or self.checkpoints.due())

    def synchronise_at_boundary(self, at_end):
        """The workers are paused at a boundary: combine the model with the other
        nodes' (if any) and agree on stopping and saving."""
        signum, save = self.node.synchronise(self.stop.signum, self.checkpoints.due(), at_end)
        if signum:
            raise Stopped(signum, here=self.stop.signum is not None)
        if save and not at_end:  # (an epoch's end saves anyway)
            step = self.schedule.step(self.epoch, self.counters.done.value)
            self.checkpoints.save(self.snapshot(self.epoch, step, self.epoch_partial()))

    def evaluate_epoch(self, epoch):
        """EPOCH's metrics row: the test set and the validation images (if held
        out) evaluated (see evaluate_splits); the first node makes the row."""
        results, seconds, signum = self.evaluate_all()
        row = None
        if None not in results.values() and self.node.leader:
            batches = self.schedule.step(epoch, self.counters.done.value)
            partial_epoch = self.record.partial_epoch
            row = self.row(epoch, batches, results, seconds, partial_epoch, staleness=self.stale)
        row, signum = self.node.share_evaluation(row, signum)
        if row is None:
            raise Stopped(signum or self.stop.signum, here=self.stop.signum is not None)
        return row

    def end_epoch(self, epoch, row):
        """Judge EPOCH's metrics ROW, keep it, save and say so; True: the target is reached."""
        done = self.counters.done.value
        finished = done == self.schedule.local_end(epoch)  # a dry run is not a finished epoch
        self.health.check_epoch(epoch, row, self.record.metrics, whole=finished)
        self.record.metrics.append(row)
        step = self.schedule.step(epoch, done)
        if finished:
            self.record.partial_epoch = checkpoint.empty_partial()
        self.checkpoints.save_epoch(self.snapshot(*((epoch + 1, 0) if finished else (epoch, step))))
        say_epoch(row, self.config.epochs, self.checkpoints.saved_where())
        return self.target.reached(row, epoch + 1 == self.last_epoch, None if finished else step)

    def finish(self):
        self.pool.stop(graceful=True)
        elapsed = time.perf_counter() - self.run_started
        say_done(elapsed, self.counters.done.value, self.record.metrics, self.options.checkpoint)
        log_summary(self.record.metrics, self.checkpoints, self.shared.run_id)
        log_syncs(self.node, self.report.trained_seconds)
        return 0

    def stopped(self, stopped):
        """Graceful stop: the workers are paused (on every node, at the same
        boundary); save, then let them exit."""
        if stopped.during_start_up:
            self.pool.stop(graceful=False)
            return stopped_before_training(stopped)
        step = self.schedule.step(self.epoch, self.counters.done.value)
        partial = self.record.partial_epoch if self.epoch_trained else self.epoch_partial()
        seconds = self.checkpoints.save(self.snapshot(self.epoch, step, partial))
        fields = dict(epoch=self.epoch + 1, step=step, ms=seconds * 1000, per_epoch=self.per_epoch)
        say_stopped(
            stopped, self.checkpoints.saved_where(), batches=self.counters.done.value, **fields
        )
        log_syncs(self.node, self.report.trained_seconds)
        self.pool.stop(graceful=True)
        return 0 if launcher.hand_over_stop(stopped.signum) else 128 + stopped.signum

    # ----- helpers -------------------------------------------------------
    def epoch_partial(self):
        """The unfinished epoch's loss sum and seconds, those of earlier runs
        included; on several machines summed over the nodes (a collective: every
        node calls this at the same points)."""
        loss, seconds = self.report.epoch_totals(self.counters.loss_sum.value)
        loss, seconds = self.node.sum_and_max(loss, seconds)
        base = self.record.partial_epoch
        return {"loss_sum": base["loss_sum"] + loss, "seconds": base["seconds"] + seconds}

    def snapshot(self, epoch, step, partial=None):
        """The checkpoint dict for (EPOCH, STEP); PARTIAL defaults to the run's."""
        partial = partial or self.record.partial_epoch
        return self.shared.snapshot(self.plan.saved, self.options, epoch, step, partial)


def measures(trainer, options):
    """What TRAINER measures its run with: the progress lines, the interval
    rows of the metrics, the evaluation of every split (evaluate_all()), and
    an epoch's metrics row (row(epoch, batches, results, seconds, partial, staleness))."""
    config, trained, per_epoch = trainer.config, trainer.splits.trained, trainer.per_epoch
    display = progress_display(trainer.node.leader)
    report = ProgressReport(options.log_interval, config, trainer.schedule, trained, display)
    rows, counts = trainer.record.intervals, trainer.staleness_counts
    intervals = IntervalRows(rows, config, per_epoch, trained, counts)
    batch, threads = options.test_batch_size, trainer.eval_threads
    parts = (trainer.model, trainer.node, trainer.splits, batch, threads, trainer.stop)
    evaluate_all = partial(evaluate_splits, *parts)
    row = partial(metrics_row, config=config, num_samples=trained, per_epoch=per_epoch)
    return report, intervals, evaluate_all, row


def thread_counts(per_process, processes):
    """(torch threads per worker: PER_PROCESS, or 0 for a share of the usable
    CPUs among PROCESSES; the parent's for evaluation, when the workers are idle)."""
    usable = cpus.usable_cpus()
    threads = per_process or max(1, usable // processes)
    return threads, max(threads, usable)


def worker_payload(trainer, options):
    """What every worker of TRAINER's run gets: the shared tensors, the one
    config, the data and how to run. On the CPU a worker reports every batch
    (there is nothing to wait for), on a GPU every log interval (see the
    worker). On the CPU the data is the files, which the workers map
    themselves (page cache, no copy); on a GPU the split already there."""
    device, splits = trainer.device, trainer.splits
    every = 1 if device.type == "cpu" else options.log_interval
    micro_batches = trainer.plan.micro_batches
    setup = WorkerSetup(trainer.threads, str(device), options.deterministic, every, micro_batches)
    train = splits.files["train"] if device.type == "cpu" else splits.train
    return trainer.shared.payload(trainer.config, trainer.schedule, train, setup)
