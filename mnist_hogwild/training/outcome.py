"""What the parent says at a run's start, at each epoch's end and at the
run's end: the epoch's metrics row, whether the target is reached, and the
run's lines. (Whether training went wrong is health.py's.)"""

import sys

from mnist_hogwild.cluster import launcher
from mnist_hogwild.core.loglines import format_seconds, line, say
from mnist_hogwild.hogwild.adapt import describe
from mnist_hogwild.hogwild.pool import staleness_summary
from mnist_hogwild.learn.optimizers import optimizer_class
from mnist_hogwild.learn.schedule import learning_rate
from mnist_hogwild.training.checkpoint import decided_by


def warn(message):
    say(f"warning: {message}", sys.stderr)


def say_start(plan, path, processes, threads, record, resuming):
    """The run's first lines: where it resumes (if RESUMING), how it trains
    (PLAN's config, the one the run uses), and what the plan adapted to the
    process count (a note, if anything)."""
    config = plan.config
    if resuming:
        fields = dict(path=path, per_epoch=record.batches_per_epoch)
        say(line("resuming", epoch=record.epoch + 1, step=record.step, **fields))
    counts = dict(processes=processes, threads=threads)
    settings = optimizer_class(config.optimizer).settings(config)
    decides = (
        f"{config.validation_size} validation images"
        if config.validation_size
        else "the test set (--validation-size 0, as the course's sample)"
    )
    say(
        line(
            "training",
            **counts,
            optimizer_settings=settings,
            decides=decides,
            **config.as_dict(),
        )
    )
    adapted = describe(plan, processes)
    if adapted:
        say(adapted)


def say_stopped(stopped, path, **fields):
    """The line of a run stopped by a signal, here or on another node, and saved at PATH."""
    name = stopped.name()
    say(
        line(
            "stopped",
            signal=name if stopped.here else f"{name} on another node",
            path=path,
            **fields,
        )
    )


def say_epoch(row, epochs, path):
    """The line of an epoch evaluated (ROW) and saved at PATH."""
    fields = {k: row.get(k, 0) for k in ("test_loss", "samples_per_s", "seconds")}
    fields.update(staleness=row.get("staleness", 0.0), staleness_p99=row.get("staleness_p99", 0))
    fields.update(epoch=row["epoch"], epochs=epochs)
    validation = row.get("validation_accuracy_percent")
    fields.update(validation="none" if validation is None else f"{validation:.2f}%")
    say(line("epoch", accuracy=row["accuracy_percent"], path=path, **fields))


def say_done(elapsed, batches, rows, path):
    """The line of a run that trained all its epochs (ROWS) in ELAPSED seconds."""
    say(line("done", elapsed=format_seconds(elapsed), batches=batches, epochs=len(rows), path=path))


def metrics_row(
    epoch, batches, results, eval_seconds, partial, config, num_samples, per_epoch, staleness=(0, 0)
):
    """EPOCH's row in the metrics (BATCHES of it trained, RESULTS the test and,
    if held out, the validation Evaluation, PARTIAL its loss and seconds,
    STALENESS the mean and 99th percentile of its updates')."""
    samples = min(batches * config.batch_size, num_samples)
    row = {
        "epoch": epoch + 1,
        "train_loss": partial["loss_sum"] / max(1, batches),
        "test_loss": results["test"].test_loss,
        "accuracy_percent": 100 * results["test"].accuracy,
        "lr": learning_rate(config, epoch * per_epoch + batches - 1, per_epoch),
        "samples_per_s": samples / max(partial["seconds"], 1e-9),
        "seconds": partial["seconds"],
        "eval_seconds": eval_seconds,
        "staleness": staleness[0],
        "staleness_p99": staleness[1],
        "samples": epoch * num_samples + samples,
    }
    if "validation" in results:
        row["validation_loss"] = results["validation"].test_loss
        row["validation_accuracy_percent"] = 100 * results["validation"].accuracy
    return row


class IntervalRows:
    """The rows within epochs (checkpoint.INTERVAL_COLUMNS), one per interval
    the progress report returns, appended to ROWS (the Record's, saved)."""

    def __init__(self, rows, config, per_epoch, num_samples, staleness_counts):
        self.rows, self.config, self.per_epoch = rows, config, per_epoch
        self.num_samples, self.staleness_counts = num_samples, staleness_counts
        self.counts = staleness_counts()

    def add(self, interval):
        counts = self.staleness_counts()
        staleness = staleness_summary(self.counts, counts)[0]
        self.counts = counts
        epoch, step = interval["epoch"], interval["step"]
        lr = learning_rate(self.config, (epoch - 1) * self.per_epoch + step - 1, self.per_epoch)
        samples = (epoch - 1) * self.num_samples + interval["samples"]
        loss, rate = interval["train_loss"], interval["samples_per_s"]
        self.rows.append(
            [epoch, (epoch - 1) * self.per_epoch + step, samples, loss, lr, rate, staleness]
        )


def reached_target(row, target, then):
    """--target-accuracy: True (and one line, ending THEN: what happens now)
    once a metrics ROW reaches it (on the validation images, where held out)."""
    accuracy = decided_by(row)
    if not target or accuracy < target:
        return False
    say(line("target", target=target, epoch=row["epoch"], accuracy=accuracy, then=then))
    return True


def log_summary(rows, checkpoints, run_id):
    """The run's last lines: final and best accuracy, and where the files are
    (and, if an earlier run trained a better model here, where it is kept)."""
    if checkpoints.dry_run and not checkpoints.writes:
        say(f"dry run: nothing saved; {checkpoints.path} is as it was")
        return
    if checkpoints.dry_run:
        say(f"dry run: saved {checkpoints.path} only (no metrics, no best model)")
        return
    kept = checkpoints.best_elsewhere(run_id)
    if kept is not None:
        say(
            f"note: {checkpoints.best_path} is the best model trained at "
            f"{checkpoints.path}, scoring {kept.accuracy:.2f}% on {kept.split} (epoch {kept.epoch} of an earlier run, "
            f"{checkpoints.history.where(kept.name)}); this run's models are in "
            f"{checkpoints.history.directory} too"
        )
    if rows:
        best = max(rows, key=decided_by)  # (the first of equals)
        fields = dict(final=rows[-1]["accuracy_percent"], best=best["accuracy_percent"])
        chosen = best.get("validation_accuracy_percent")
        chosen = "the test set" if chosen is None else f"validation {chosen:.2f}%"
        fields.update(best_epoch=best["epoch"], chosen=chosen, path=checkpoints.path)
        say(
            line(
                "summary",
                best_path=checkpoints.best_path,
                models=checkpoints.history.directory + "/",
                metrics=checkpoints.metrics_path,
                **fields,
            )
        )


def log_syncs(node, trained_seconds):
    if node.syncs:
        percent = 100 * node.sync_seconds / max(trained_seconds, 1e-9)
        fields = dict(rank=node.rank, world=node.world, syncs=node.syncs)
        say(line("syncs", seconds=node.sync_seconds, percent=percent, **fields))
        if node.cadence.auto:
            say(line("cadence", k=node.cadence.k, **fields))


def stopped_before_training(stopped):
    say(f"stopped by {stopped.name()} during start-up; nothing to save")
    return 0 if launcher.hand_over_stop(stopped.signum) else 128 + stopped.signum
