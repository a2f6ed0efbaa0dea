"""What a run checks of its checkpoint's folder before it trains: that the
names it will write are valid there and that it may create files, and which
temp files of killed saves it may remove."""

import os

from mnist_hogwild.core import processes
from mnist_hogwild.core.errors import CheckpointError, UsageError
from mnist_hogwild.training import checkpoint

MAX_NAME = 255  # NAME_MAX on Linux file systems, where pathconf cannot tell


def check_writable(path, directory, owned):
    """CheckpointError (UsageError for an empty name) unless a run can save
    checkpoint PATH and the files it OWNS in DIRECTORY."""
    if not path.strip():
        raise UsageError(
            "--checkpoint is empty (an unset variable?): name the file, e.g. "
            "--checkpoint model_checkpoint.pth"
        )
    if os.path.isdir(path):
        raise CheckpointError(f"--checkpoint {path} is a directory")
    if os.path.exists(path) and not os.path.isfile(path):
        raise CheckpointError(f"--checkpoint {path} is not a regular file")
    try:
        os.makedirs(directory, exist_ok=True)
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except OSError as e:
        raise CheckpointError(unwritable(directory, e)) from None
    # The longest names a save will write: temp files carry host, pid and
    # a random part; check them, not a shorter stand-in.
    longest = max((checkpoint.temp_name(p, pid=4194304, token="f" * 8) for p in owned), key=len)
    if len(longest) > min(limit, MAX_NAME):
        raise CheckpointError(
            f"--checkpoint {os.path.basename(path)!r} is too long: its saves write "
            f"temp files of {len(longest)} characters, over this file system's {limit}"
        )
    probe = os.path.join(directory, longest)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(unwritable(directory, e)) from None


def unwritable(directory, error):
    return (
        f"cannot write checkpoints to {directory}: {error.strerror or error} "
        f"(uid {os.getuid()}); mount a writable volume or pass --checkpoint"
    )


def remove_stale_temps(directory, owned):
    """Remove the temp files of the saves of the paths OWNED whose writer is
    provably gone (its pid is not alive on this host; another host's are left
    alone); their names."""
    removed = []
    here = checkpoint.host()
    for path in owned:
        for name in os.listdir(directory):
            owner = checkpoint.parse_temp_name(path, name)
            if owner is None or owner[0] != here or processes.pid_alive(owner[1]):
                continue
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except FileNotFoundError:
                pass  # its owner finished or another run removed it meanwhile
    return removed
