"""What values a setting takes, written once per setting (core/config.py):
each kind parses the flag (argparse's type, or its choices) and checks a
checkpoint's copy of the setting, with the same words for both. Torch-free."""

import argparse
import math
from dataclasses import field


class Kind:
    """What values a setting takes, written once: argparse parses a flag with
    it (parse_flag, through argparse_options) and a checkpoint's copy of the
    setting is checked with it (accepts), both against the same words
    (expected)."""

    expected = "a value"

    def accepts(self, value):
        raise NotImplementedError

    def convert(self, text):
        raise NotImplementedError

    def parse_flag(self, text):
        try:
            value = self.convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.expected}, got {text!r}") from None
        if not self.accepts(value):
            must = getattr(self, "range_text", self.expected)
            raise argparse.ArgumentTypeError(f"must be {must}, got {text}")
        return value

    def argparse_options(self):
        return {"type": self.parse_flag}


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Whole(Kind):
    """A whole number in [LOW, HIGH]."""

    def __init__(self, low, high=2**31 - 1):
        self.low, self.high = low, high
        self.range_text = f"in [{low}, {high}]"
        self.expected = f"a whole number {self.range_text}"

    def convert(self, text):
        return int(text)

    def accepts(self, value):
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
        )


class Real(Kind):
    """A finite number above LOW (or LOW itself, if LOW_OK) and below HIGH."""

    def __init__(self, low, high=math.inf, low_ok=False, expected=None):
        self.low, self.high, self.low_ok = low, high, low_ok
        self.expected = expected or (f"{low} or more" if low_ok else f"more than {low}")

    def convert(self, text):
        return float(text)

    def accepts(self, value):
        return (
            _number(value)
            and (self.low <= value if self.low_ok else self.low < value)
            and (value < self.high)
        )


class OneOf(Kind):
    """One of NAMES, a tuple or a table keyed by name (read when asked, so that
    an entry added to the table is a choice too; argparse lists them itself)."""

    def __init__(self, names):
        self.table = names

    @property
    def names(self):
        return tuple(self.table)

    @property
    def expected(self):
        return f"one of {', '.join(self.names)}"

    def accepts(self, value):
        return value in self.names

    def argparse_options(self):
        return {"choices": self.names}


class Betas(Kind):
    """Adam's two decay rates B1,B2, with 0 <= B1 < 1, 0 < B2 < 1 and B1^2 <
    B2 (the bound learn/optimizers.py's racy-step floor is made from)."""

    expected = "two numbers B1,B2 with 0 <= B1 < 1, 0 < B2 < 1 and B1^2 < B2"

    def convert(self, text):
        b1, b2 = (float(part) for part in text.split(","))
        return (b1, b2)

    def accepts(self, value):
        if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(map(_number, value)):
            return False
        b1, b2 = value
        return 0 <= b1 < 1 and 0 < b2 < 1 and b1 * b1 < b2


class Percent(Kind):
    """--target-accuracy: a percentage in (1, 100]. A fraction such as 0.98
    (as many libraries write accuracy) is refused, naming the percentage
    meant: read as a percentage it would end a run at under 1%."""

    expected = "a percentage in (1, 100]"

    def convert(self, text):
        return float(text)

    def accepts(self, value):
        return _number(value) and 1 < value <= 100

    def parse_flag(self, text):
        value = super().parse_flag(text) if not _fraction(text) else float(text)
        if value <= 1:
            raise argparse.ArgumentTypeError(
                f"is a percentage, and {text} looks like a fraction: for {100 * value:g}% pass "
                f"{100 * value:g}"
            )
        return value


def _fraction(text):
    try:
        return 0 < float(text) <= 1
    except ValueError:
        return False


class AutoOrWhole(Whole):
    """A whole number in [LOW, HIGH], or "auto" (stored as 0)."""

    def __init__(self, low=1, high=2**31 - 1):
        super().__init__(low, high)
        self.expected = f"auto or {self.expected}"

    def parse_flag(self, text):
        return 0 if text == "auto" else Whole(self.low, self.high).parse_flag(text)

    def accepts(self, value):
        return value == 0 or super().accepts(value)


class Text(Kind):
    """Any text (a path, an address): argparse passes it on as it is."""

    expected = "text"

    def accepts(self, value):
        return isinstance(value, str)

    def argparse_options(self):
        return {}


class Switch(Kind):
    """A flag without a value: given or not."""

    expected = "true or false"

    def accepts(self, value):
        return isinstance(value, bool)

    def argparse_options(self):
        return {"action": "store_true"}


UNIT = Real(0, 1, low_ok=True, expected="in [0, 1)")


def flag(default, help, kind, shown=None, env=None, group=None, **argparse_options):
    """A dataclass field that is also a command-line flag: its default, its
    help text (or a function that makes it, when --help is built), its KIND (which values it takes, for the flag and for a saved
    copy alike), what "(default: ...)" shows (SHOWN, else DEFAULT), the
    environment variable that supplies a default before DEFAULT (ENV, as
    torchrun's PET_ variables do), the --help GROUP it is listed in (else its
    class's), and argparse's other options (metavar)."""
    meta = dict(help=help, kind=kind, shown=shown, env=env, group=group, options=argparse_options)
    return field(default=default, metadata=meta)
