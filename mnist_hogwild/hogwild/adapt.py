"""What a run changes for its process count: Hogwild's workers compute each
update from weights that the other workers' updates have changed since they
were read (about N-1 of them at N processes: the staleness the epoch lines
report). That acts as extra momentum and stale steps; past a few processes it
slows or kills training. So, beyond ADAPT_ABOVE processes, each batch is
trained as several smaller updates (micro-batches), and the rate and the
momentum of the optimizer shrink with them.

Computed afresh at every start and --resume from the process count of the
run in progress, never saved: the checkpoint keeps the recipe's settings, so
a resume on a machine with another count adapts to that. A flag given
explicitly (--lr, --momentum, --betas, --micro-batches) is used as given.
docs/performance.md has the measurements behind each choice.
"""

import math
from dataclasses import dataclass, field, replace

from mnist_hogwild.core.config import TrainConfig
from mnist_hogwild.core.tables import OPTIMIZERS

# Up to this many processes the recipes run as tuned (measured: --recipe fast
# holds 98% at 1, 2 and 4 processes).
ADAPT_ABOVE = 4


@dataclass(frozen=True)
class Adaptation:
    """The one config a run uses, resolved once at start-up: CONFIG is what
    every part of the run trains and reports with (the flags and the
    checkpoint resolved, then adapted to the process count); SAVED is the
    same before the adaptation, what checkpoints record (so that a resume at
    another count adapts anew); MICRO_BATCHES updates per batch; NOTES say
    what the adaptation changed."""

    config: TrainConfig
    saved: TrainConfig
    micro_batches: int = 1
    notes: list = field(default_factory=list)


def micro_batches_for(processes, batch_size):
    """Updates per batch at PROCESSES: enough that the samples in flight
    (processes x micro-batch) stay near ADAPT_ABOVE whole batches', a power of
    two, and never a micro-batch under 8 samples."""
    if processes <= ADAPT_ABOVE:
        return 1
    k = 2 ** round(math.log2(processes / ADAPT_ABOVE))
    return max(1, min(k, batch_size // 8))


def adapt(config, processes, given, micro_batches=0):
    """The Adaptation for CONFIG at PROCESSES processes; GIVEN: the names of
    the settings given explicitly; MICRO_BATCHES: --micro-batches (0: auto)."""
    k = min(micro_batches or micro_batches_for(processes, config.batch_size), config.batch_size)
    if k == 1 and processes <= ADAPT_ABOVE:
        return Adaptation(config, config)
    changes, notes = {}, []
    if k > 1:
        notes.append(f"{k} updates of {math.ceil(config.batch_size / k)} samples per batch")
    if "lr" not in given and k > 1:
        # Smaller batches, smaller steps: the rate falls with the square root
        # of the micro-batches (docs/performance.md: with and without it).
        changes["lr"] = config.lr / math.sqrt(k)
        notes.append(f"--lr {config.lr:g} -> {changes['lr']:.3g}")
    # The staleness is momentum enough: the optimizer's own is turned off.
    calmed = OPTIMIZERS[config.optimizer].calm(config)
    if calmed and not set(calmed[0]) & set(given):
        changes.update(calmed[0])
        notes.append(calmed[1])
    return Adaptation(replace(config, **changes), config, k, notes)


def describe(adaptation, processes):
    """The start line's note, or None when nothing was adapted."""
    if not adaptation.notes:
        return None
    return (
        f"note: {processes} processes: each update is computed from weights about "
        f"{processes - 1} updates old, so this run trains with "
        + ", ".join(adaptation.notes)
        + " (computed for this process count, not saved; give --lr, --betas, --momentum or "
        "--micro-batches to choose yourself)"
    )
