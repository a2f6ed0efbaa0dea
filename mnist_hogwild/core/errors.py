"""The errors a user can cause or meet, and the one helper that makes any
exception's message one line. Torch-free: main.py reports usage errors
before torch is imported.

Every error here ends the run with one `error: ...` line (main.run_command for
the commands, startup.train for training) and a non-zero exit: 2 for usage (as
argparse), 1 for the rest.
"""

import re


class UsageError(Exception):
    """Flags that contradict each other, the checkpoint, or the machine (exit 2)."""


class CheckpointError(Exception):
    """The checkpoint cannot be read, written or used."""


class DataError(Exception):
    """A data file is missing, corrupt or cannot be fetched."""


class InputError(Exception):
    """A file named on the command line cannot be read or written."""


class WorkerDied(Exception):
    """A Hogwild worker process ended before training did."""


class ClusterError(Exception):
    """Another node is gone or unreachable (exit 75)."""


class Diverged(Exception):
    """Training diverged: the loss is no longer finite, or exploded, or the
    accuracy fell to chance."""


def one_line(error, limit=240):
    """The informative first line of ERROR's message, without source paths,
    C++ frame prefixes or the advice that libraries append after the fact;
    past LIMIT characters its first sentence, else cut at a word."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # c10d's "[file.cpp:123] "
    if len(first) > limit:  # whole sentences, or whole words: never cut mid-word
        first = re.split(r"(?<=\w)\. (?=[A-Z])", first, maxsplit=1)[0]
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0] + " ..."
    return first.rstrip(" .") if not first.endswith("...") else first


def cuda_memory_error(error):
    """One line for a GPU allocation failure, with the sizes when torch gives
    them, or None if ERROR is not one. Covers the caching allocator's
    OutOfMemoryError and the plain RuntimeError/AcceleratorError that an
    allocation outside it (the CUDA context, cuBLAS' workspace) raises."""
    text = str(error)
    names = {cls.__name__ for cls in type(error).__mro__}
    if not (
        "OutOfMemoryError" in names
        or "CUDA error: out of memory" in text
        or "ALLOC_FAILED" in text
        or "CUDA out of memory" in text
    ):
        return None
    parts = []
    tried = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", text)
    if tried:
        parts.append(f"tried to allocate {tried.group(1)}")
    free = re.search(
        r"GPU (\d+) has a total capacity of ([\d.]+ [KMGT]?i?B) of which ([\d.]+ [KMGT]?i?B) is free",
        text,
    )
    if free:
        parts.append(f"GPU {free.group(1)} has {free.group(2)}, {free.group(3)} free")
    if "ALLOC_FAILED" in text:
        parts.append("cuBLAS could not allocate its workspace")
    detail = f" ({'; '.join(parts)})" if parts else ""
    return (
        f"CUDA out of memory{detail}: use fewer --num-processes (each holds its own CUDA "
        f"context) or a smaller --batch-size / --test-batch-size"
    )
