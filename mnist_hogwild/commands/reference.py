"""The reference that README and the container's entrypoint carry, made from
the definitions the parsers use (COMMANDS, the settings' fields), so that
neither is copied by hand:

    python -m mnist_hogwild.commands.reference          # rewrite the blocks
    python -m mnist_hogwild.commands.reference --check  # exit 1 if one is stale

Each block sits between a line `BEGIN NAME` and a line `END NAME` (inside
a comment of the file's own kind); tests/test_tables.py fails when one is
stale. Torch-free, like the flags.
"""

import argparse
import os
import re
import sys

from mnist_hogwild.commands.flags import COMMANDS, build_parser, command_parser

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT = re.compile(r"\s*\(default: (.*)\)$", re.S)


def help_text(parser, action):
    """ACTION's help as --help prints it, on one line."""
    return " ".join(parser._get_formatter()._expand_help(action).split())


def flag_cell(action):
    """`--flag VALUE` (and its other names) as a markdown cell."""
    value = ""
    if action.nargs != 0:
        value = (
            " {" + ",".join(action.choices) + "}"
            if action.choices
            else f" {action.metavar or action.dest.upper()}"
        )
    first, *others = action.option_strings
    return ", ".join([f"`{first}{value}`", *(f"`{o}`" for o in others)]).replace("|", "\\|")


def flag_rows(parser):
    """One markdown row per flag of PARSER: flag (* saved in the checkpoint),
    default, meaning."""
    rows = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        text = help_text(parser, action)
        saved = text.startswith("* ")
        found = DEFAULT.search(text)
        default = found.group(1) if found else ("off" if action.nargs == 0 else "")
        meaning = DEFAULT.sub("", text).removeprefix("* ").replace("|", "\\|")
        rows.append(f"| {flag_cell(action)}{' *' if saved else ''} | {default} | {meaning} |")
    return rows


def train_block():
    head = ["| flag | default | meaning |", "| --- | --- | --- |"]
    return head + flag_rows(build_parser())


def commands_block():
    """One row per command: what it does and its flags (main.py COMMAND --help)."""
    rows = ["| command | what it does | flags |", "| --- | --- | --- |"]
    for command in COMMANDS.values():
        if command.name == "train":
            continue
        parser = command_parser(command.name)
        flags = ", ".join(
            flag_cell(a).split(", ")[0] if a.option_strings else f"`[{a.metavar} ...]`"
            for a in parser._actions
            if not isinstance(a, argparse._HelpAction)
        )
        rows.append(f"| `{command.name}` | {command.help} | {flags} |")
    return rows


def entrypoint_block():
    """The entrypoint's case pattern: no arguments, a flag, or a command runs main.py."""
    return ['    "" | -* | ' + " | ".join(COMMANDS) + ")"]


BLOCKS = {
    ("README.md", "flags"): train_block,
    ("README.md", "commands"): commands_block,
    ("docker-entrypoint.sh", "commands"): entrypoint_block,
}


def rewritten(text, name, lines):
    """TEXT with the lines between its BEGIN NAME and END NAME lines replaced by LINES."""
    line = r"^[^\n]*{} {}\b[^\n]*"
    begin, end = line.format("BEGIN", name), line.format("END", name)
    pattern = re.compile(rf"({begin}\n)(.*?)({end}$)", re.S | re.M)
    if not pattern.search(text):
        raise ValueError(f"no BEGIN {name} ... END {name} block")
    return pattern.sub(lambda m: m.group(1) + "".join(f"{x}\n" for x in lines) + m.group(3), text)


def stale(repo=REPO, write=False):
    """The (file, block) pairs whose text differs from what the definitions
    make; WRITE: rewrite them."""
    found = []
    for (path, name), make in BLOCKS.items():
        full = os.path.join(repo, path)
        with open(full) as f:
            text = f.read()
        new = rewritten(text, name, make())
        if new != text:
            found.append((path, name))
            if write:
                with open(full, "w") as f:
                    f.write(new)
    return found


def main(argv=None):
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    changed = stale(write=not check)
    for path, name in changed:
        print(f"{path}: the {name} block {'is stale' if check else 'rewritten'}")
    return 1 if check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
