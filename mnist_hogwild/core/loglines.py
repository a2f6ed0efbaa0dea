"""The log lines that users, scripts and tests read: printed from these
formats and parsed back with parse_line(), so a reworded message fails a
test (tests/test_loglines.py) instead of silently breaking a script.
Torch-free, so that the scripts can parse a trainer's output without torch.
"""

import os
import re
import shutil
import string
import sys
import time

LINES = {
    "resuming": "resuming {path} at epoch {epoch}, batch {step}/{per_epoch}",
    "training": "training {dataset} for {epochs} epochs: {processes} processes x {threads} "
    "threads, batch {batch_size}, {optimizer} lr {lr:.3g}, {optimizer_settings}, "
    "schedule {lr_schedule}; decides on {decides}",
    "ready": "{workers} workers ready: first batch {seconds:.1f}s after start",
    "progress": "epoch {epoch}/{epochs} [{samples}/{total} ({percent:.0f}%)] loss {loss:.4f} "
    "{samples_per_s:.0f} samples/s ETA {eta}",
    "epoch": "epoch {epoch}/{epochs}: test loss {test_loss:.4f}, accuracy {accuracy:.2f}%, "
    "validation {validation}, {samples_per_s:.0f} samples/s, {seconds:.1f}s training, staleness {staleness:.1f} "
    "(p99 {staleness_p99}); saved {path}",
    "stopped": "stopped by {signal}: saved {path} at epoch {epoch}, batch {step}/{per_epoch} "
    "in {ms:.0f} ms ({batches} batches this run); continue with --resume",
    "done": "done in {elapsed} ({batches} batches this run): {epochs} epochs in {path}",
    "summary": "final accuracy {final:.2f}%, best {best:.2f}% (epoch {best_epoch}, chosen on "
    "{chosen}); "
    "model {path}, best model {best_path}, every model {models}, metrics {metrics}",
    "target": "reached --target-accuracy {target:.2f}% at epoch {epoch} "
    "({accuracy:.2f}%): {then}",
    "syncs": "node {rank}/{world}: {syncs} syncs took {seconds:.2f}s, {percent:.1f}% of the "
    "training time",
    "cadence": "node {rank}/{world}: --sync-every auto ended at every {k} batches",
}


# The words the lines count, and their singular: "1 epoch", "2 epochs".
PLURALS = {"epochs": "epoch", "processes": "process", "threads": "thread", "batches": "batch"}
PLURALS |= {"workers": "worker"}
_ONE = re.compile(r"(?<![\d.])1 (" + "|".join(PLURALS) + r")\b")


def line(kind, **fields):
    return _ONE.sub(lambda m: "1 " + PLURALS[m.group(1)], LINES[kind].format(**fields))


def _pattern(fmt):
    parts = []
    for literal, name, _, _ in string.Formatter().parse(fmt):
        literal = re.escape(literal)
        for plural, one in PLURALS.items():  # (either number of them)
            literal = re.sub(rf"\b{plural}\b", f"(?:{plural}|{one})", literal)
        parts.append(literal)
        if name is not None:
            parts.append(f"(?P<{name}>.+?)")
    return re.compile("^" + "".join(parts) + "$")


PATTERNS = {kind: _pattern(fmt) for kind, fmt in LINES.items()}


def _number(text):
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return float(text) if re.fullmatch(r"-?\d+\.\d*(e-?\d+)?|nan|inf", text) else text


def parse_line(kind, text):
    """The fields of a KIND line (numbers as int or float), or None if TEXT is not one."""
    match = PATTERNS[kind].match(text.strip())
    return {k: _number(v) for k, v in match.groupdict().items()} if match else None


def parse_lines(kind, output):
    """Every KIND line in OUTPUT, parsed."""
    return [p for p in (parse_line(kind, text) for text in output.splitlines()) if p]


def format_seconds(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


_broken = set()  # id() of the streams whose reader has gone
_bar = None  # the progress bar drawn on the terminal, if any (BarDisplay)


def say(text, stream=None):
    """Print one line and flush it. A reader that went away (`| tee` or `| head`
    ended, a closed terminal) must never cost training or a save: a broken
    stream is pointed at /dev/null (so that nothing fails on it again, at exit
    included), and its lines go to the other stream while that one works. A
    progress bar on the terminal is cleared for the line, then drawn below it."""
    if _bar is not None:
        _bar.clear()
    try:
        _print(text, stream)
    finally:
        if _bar is not None:
            _bar.refresh()


def _print(text, stream):
    first = stream or sys.stdout
    other = sys.stderr if first is sys.stdout else sys.stdout
    for target in (first, other):
        if id(target) in _broken:
            continue
        try:
            print(text, file=target, flush=True)
            return
        except (OSError, ValueError):
            _broken.add(id(target))
            _silence(target)


def _silence(stream):
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class LineDisplay:
    """Progress as lines, one every --log-interval batches: for a pipe, a log
    file, `docker logs` and CI, and for the scripts and tests that parse them."""

    def begin(self, epoch, epochs, total):
        pass

    def advance(self, samples):
        pass

    def report(self, fields):
        say(line("progress", **fields))

    def end(self):
        pass


class BarDisplay(LineDisplay):
    """Progress on a terminal: one bar per epoch, redrawn in place (tqdm: the
    samples, their rate, the epoch's time left; the last interval's loss
    beside it), gone at the epoch's end, where the epoch's line stays."""

    def begin(self, epoch, epochs, total):
        global _bar
        from tqdm import tqdm  # noqa: PLC0415 - only on a terminal

        close_bar()
        # A terminal that reports no size (a pty nobody sized, as `script`
        # makes) would get no bar at all: then COLUMNS and LINES, else 80x24.
        sized = _width(sys.stdout) > 0
        fallback = None if sized else shutil.get_terminal_size()
        _bar = tqdm(
            total=total,
            desc=f"epoch {epoch}/{epochs}",
            unit="sample",
            unit_scale=True,
            leave=False,
            file=sys.stdout,
            mininterval=0.2,
            dynamic_ncols=sized,
            ncols=fallback and fallback.columns,
            nrows=fallback and fallback.lines,
        )

    def advance(self, samples):
        if _bar is not None:
            _bar.update(samples - _bar.n)

    def report(self, fields):
        if _bar is not None:
            _bar.set_postfix_str(f"loss {fields['loss']:.4f}", False)

    def end(self):
        close_bar()


def close_bar():
    """Clear the progress bar from the terminal, if one is drawn."""
    global _bar
    if _bar is not None:
        bar, _bar = _bar, None
        bar.close()


def _width(stream):
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return 0


def progress_display(leader, stream=None):
    """A bar where a person watches (a terminal; on several machines, the
    leader's), else lines. TERM=dumb (a bare console, an editor's shell) gets lines."""
    stream = stream or sys.stdout
    terminal = stream.isatty() and os.environ.get("TERM", "") != "dumb"
    return BarDisplay() if leader and terminal else LineDisplay()


class ProgressReport:
    """The progress of one run, as DISPLAY shows it (lines or a bar): owns the
    counters it is computed from. DONE counts this node's batches (all of
    them on a single machine)."""

    def __init__(self, interval, config, schedule, num_samples, display=None):
        self.interval, self.config = interval, config
        self.schedule, self.num_samples = schedule, num_samples
        self.display = display or LineDisplay()
        self.trained_seconds, self.trained_batches = 0.0, 0
        self.epoch = self.done0 = self.last_done = 0
        self.loss0 = self.last_loss = 0.0
        self.t0 = time.perf_counter()

    def begin_epoch(self, epoch, done, loss_sum):
        self.epoch, self.done0, self.loss0, self.t0 = epoch, done, loss_sum, time.perf_counter()
        self.last_done, self.last_loss, self.last_time = done, loss_sum, self.t0
        self.display.begin(epoch + 1, self.config.epochs, self.num_samples)

    def epoch_totals(self, loss_sum):
        """(training loss summed, seconds) since begin_epoch."""
        return loss_sum - self.loss0, time.perf_counter() - self.t0

    def end_epoch(self, done):
        self.trained_seconds += time.perf_counter() - self.t0
        self.trained_batches += done - self.done0
        self.display.end()

    def tick(self, done, loss_sum):
        """Show the progress; once an interval of batches is done since the
        last, report it (a line, or the bar's loss and ETA) and return it: a
        dict of its epoch, step (batches of the epoch done), samples (of the
        epoch), mean training loss and samples/s (else None)."""
        c, s = self.config, self.schedule
        samples = min(s.step(self.epoch, done) * c.batch_size, self.num_samples)
        self.display.advance(samples)
        if done - self.last_done < self.interval:
            return None
        seconds = self.trained_seconds + time.perf_counter() - self.t0
        rate = (self.trained_batches + done - self.done0) * c.batch_size / max(seconds, 1e-9)
        loss = (loss_sum - self.last_loss) / max(1, done - self.last_done)
        now = time.perf_counter()
        interval_rate = (done - self.last_done) * c.batch_size / max(now - self.last_time, 1e-9)
        self.last_done, self.last_loss, self.last_time = done, loss_sum, now
        remaining = (s.local_start(c.epochs) - done) * c.batch_size
        fields = dict(epoch=self.epoch + 1, epochs=c.epochs, samples=samples, loss=loss)
        fields.update(total=self.num_samples, percent=100 * samples / self.num_samples)
        eta = format_seconds(remaining / max(rate, 1e-9))
        self.display.report(dict(samples_per_s=rate, eta=eta, **fields))
        step = s.step(self.epoch, done)
        return dict(
            epoch=self.epoch + 1,
            step=step,
            samples=samples,
            train_loss=loss,
            samples_per_s=interval_rate,
        )
