"""Whether training went wrong: a loss that became NaN or exploded, or a model
that collapsed. A collapsed model's weights are finite and its loss modest,
but it predicts one class (or none better than a guess). Asynchrony does this
to Hogwild when the updates are too large for their staleness (a high rate,
many processes), and a run must not end such an epoch as a success.

Collapse has two checks: a training loss that stays at chance (ln 10, a model
that guesses uniformly) for a window of log intervals after the first part
of training stops the run early; an epoch that ends at chance after a whole
epoch of training stops it at the latest. Every check raises Diverged: one
`error:` line, exit 1, and no model written (it comes before the epoch's save).
"""

import math

from mnist_hogwild.core.tables import OPTIMIZERS
from mnist_hogwild.core.errors import Diverged
from mnist_hogwild.learn.data import NUM_CLASSES
from mnist_hogwild.training.checkpoint import decided_by

CHANCE_LOSS = math.log(NUM_CLASSES)
# Divergence that is still finite. A model that guesses uniformly has a loss
# of ln(10), about 2.3, and a healthy run only falls from there; a log
# interval averaging ten times that is confidently wrong on nearly every
# sample: its weights exploded. And an epoch at chance after a learnt one
# (half right or better) lost what it had learnt.
EXPLODED_LOSS = 10 * CHANCE_LOSS
LEARNT_PERCENT = 50.0
TOO_HIGH = "the learning rate is too high"
# A collapsed net's interval losses wander just above ln 10: it can do no
# better than the labels' prior (2.301 on MNIST's), and a too-high rate keeps
# it bouncing (measured 2.30-2.33 for --recipe fast --lr 0.2). A slow learner
# is below that floor early (SGD at --lr 0.001: 2.29 after a fifth of an epoch).
CHANCE_BELOW, CHANCE_ABOVE = 0.02, 0.1
CHANCE_PERCENT = 1.5 * 100 / NUM_CLASSES  # an epoch at or below this is at chance


# Both checks need this many batches trained before they judge (and the early
# one a window at least WINDOW_BATCHES long): a network learns little in fewer
# (a small data set's first epoch of SGD can end near chance; MNIST's epoch
# is 469 batches of 128).
MIN_BATCHES = 100
WINDOW_BATCHES = 50
# A window whose loss fell by more than this is learning, however slowly.
LEARNING = 0.03


class HealthWatch:
    """Watches the interval losses of a run (check_interval()), and judges an epoch's
    end (check_epoch()). PER_EPOCH batches an epoch; the watch arms after a
    quarter of an epoch or the schedule's warm-up, whichever is longer, and
    stops the run when every interval over a tenth of an epoch is at chance
    and the loss did not fall over them."""

    def __init__(self, config, processes, per_epoch):
        self.config, self.processes, self.per_epoch = config, processes, per_epoch
        warmup = int(config.warmup * config.epochs * per_epoch)
        self.armed_at = max(per_epoch // 4, warmup, MIN_BATCHES)
        self.window = max(per_epoch // 10, WINDOW_BATCHES)
        self.since = None  # (global batch, interval loss) where intervals at chance began
        self.lowest = math.inf  # the lowest interval loss seen: did it ever learn?

    def check_interval(self, loss_sum, interval_loss, batch, epoch):
        """Diverged if LOSS_SUM (the run's summed training loss) is not finite,
        or INTERVAL_LOSS (the mean loss of the interval that just ended; None
        if none did) exploded or stayed at chance. BATCH: global batches trained."""
        if not math.isfinite(loss_sum):
            raise Diverged(f"the training loss became {loss_sum} in epoch {epoch + 1}")
        if interval_loss is None:
            return
        if interval_loss > EXPLODED_LOSS:
            raise Diverged(
                f"the training loss exploded to {interval_loss:.3g} (a model that guesses "
                f"scores {CHANCE_LOSS:.2f}): {TOO_HIGH} in epoch {epoch + 1}"
            )
        self.lowest = min(self.lowest, interval_loss)
        at_chance = -CHANCE_BELOW <= interval_loss - CHANCE_LOSS <= CHANCE_ABOVE
        if batch < self.armed_at or not at_chance:
            self.since = None
            return
        if self.since is None:
            self.since = (batch, interval_loss)
        elif batch - self.since[0] >= self.window and interval_loss > self.since[1] - LEARNING:
            raise Diverged(
                f"the model collapsed: its training loss stayed at chance ({interval_loss:.2f}; "
                f"a model that guesses scores {CHANCE_LOSS:.2f}) for {batch - self.since[0]} "
                f"batches, up to batch {batch - epoch * self.per_epoch} of epoch {epoch + 1}: "
                f"{self.cause()}"
            )

    def check_epoch(self, epoch, row, rows, whole):
        """Diverged if EPOCH's metrics ROW shows a diverged model: losses not
        finite, a fall to chance from a learnt epoch (ROWS: the earlier ones'),
        or an epoch trained WHOLE (not a dry run's batches) ending at chance."""
        if not (math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"])):
            raise Diverged(
                f"epoch {epoch + 1} ended with losses {row['train_loss']}, {row['test_loss']}"
            )
        accuracy = decided_by(row)
        before = decided_by(rows[-1]) if rows else 0.0
        if accuracy <= CHANCE_PERCENT < LEARNT_PERCENT <= before:
            raise Diverged(
                f"epoch {epoch + 1}'s accuracy fell to {accuracy:.2f}% (chance) "
                f"from {before:.2f}%: {TOO_HIGH}"
            )
        trained = (epoch + 1) * self.per_epoch  # (too few batches to judge on a small data set)
        if whole and trained >= MIN_BATCHES and accuracy <= CHANCE_PERCENT:
            which = "validation" if "validation_accuracy_percent" in row else "test"
            raise Diverged(
                f"the model collapsed: epoch {epoch + 1} ended at "
                f"{accuracy:.2f}% {which} accuracy, chance level for "
                f"{NUM_CLASSES} classes: {self.cause()}"
            )

    def cause(self):
        """The likely cause, and what to try: the rate against the one this
        project's recipes use with this optimizer, then the process count."""
        lr, n, name = self.config.lr, self.processes, self.config.optimizer
        usual = OPTIMIZERS[name].usual_lr
        if lr > 2 * usual:
            return (
                f"the learning rate is too high (--lr {lr:g}; the recipes use {usual:g} with "
                f"--optimizer {name}): try a lower --lr"
            )
        if lr < usual / 20 and self.lowest > CHANCE_LOSS - CHANCE_BELOW:
            return f"it never learnt: --lr {lr:g} is far below the recipes' {usual:g}"
        if n > 2:
            return (
                f"{n} processes are too many for this rate (each update is computed from "
                f"weights about {n - 1} updates old): try fewer --num-processes or a lower --lr"
            )
        return f"the learning rate (--lr {lr:g}) is too high for this run: try a lower --lr"
