"""What a run checks of its checkpoint's folder before it trains: that the
names it will write are valid there and that it may create files, and which
temp files of killed saves it may remove."""

import os
import re
import secrets
import stat

from mnist_hogwild.core import processes
from mnist_hogwild.core.errors import CheckpointError, UsageError
from mnist_hogwild.training import beside, checkpoint

MAX_NAME = 255  # NAME_MAX on Linux file systems, where pathconf cannot tell


def check_writable(path, directory, owned, models):
    """CheckpointError (UsageError for an empty name) unless a run can save
    checkpoint PATH and the files it OWNS in DIRECTORY, and keep models in
    the folder MODELS (None: a dry run, which keeps none)."""
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
    for existing in owned:
        check_replaceable(existing, directory)
    # The probe's own name is as long, with a random part: one left by a
    # killed probe is another name (and a stale temp file, removed later).
    probe = fresh_token(longest)
    if models and os.path.lexists(models) and not os.path.isdir(models):
        raise CheckpointError(f"{beside.not_a_folder(models)}; nothing was written")
    # The history folder is made by its first model: a run that keeps none
    # leaves none behind (the folder itself is checked once it exists).
    folders = (directory, models) if models and os.path.isdir(models) else (directory,)
    for folder in folders:
        try:
            probe_save(os.path.join(folder, probe))
        except OSError as e:
            raise CheckpointError(unwritable(folder, e)) from None


def probe_save(probe):
    """Do what a save does, on a file of the longest name a save writes: create
    it, write and fsync it, rename it over another file, remove that file."""
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(b"probe")
        os.fsync(f.fileno())
    target = fresh_token(probe)  # a stale temp name too, if left
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.replace(probe, target)
    finally:
        for name in (probe, target):
            if os.path.lexists(name):
                os.unlink(name)


def fresh_token(name):
    """NAME (a temp file's) with another random part of the same length."""
    return name[: -len("ffffffff.tmp")] + secrets.token_hex(4) + ".tmp"


def check_replaceable(path, directory):
    """A save renames over PATH: in a sticky-bit folder (such as /tmp, mode
    1777) the kernel lets only PATH's owner, the folder's owner or root do it,
    whatever the file's mode. CheckpointError before training if this run cannot."""
    try:
        found, folder = os.lstat(path), os.stat(directory)
    except FileNotFoundError:
        return
    uid = os.geteuid()
    if folder.st_mode & stat.S_ISVTX and uid not in (0, found.st_uid, folder.st_uid):
        raise CheckpointError(
            f"cannot replace {path}: it belongs to uid {found.st_uid} in a sticky-bit folder "
            f"(mode {stat.S_IMODE(folder.st_mode):o}), and this run is uid {uid}; run as its "
            f"owner, or pass another --checkpoint"
        )


def unwritable(directory, error):
    return (
        f"cannot write checkpoints to {directory}: {error.strerror or error} "
        f"(uid {os.getuid()}); mount a writable volume or pass --checkpoint"
    )


def remove_stale_history_temps(directory):
    """The same for the history folder (its files' names are not known ahead)."""
    here, removed = checkpoint.host(), []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        m = re.search(r"\.(\d+)\.[0-9a-f]{8}\.tmp$", name)
        if not (name.startswith(".") and m and name.endswith(f".{here}{m.group(0)}")):
            continue
        if not processes.pid_alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


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
