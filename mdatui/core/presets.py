"""Rule presets that mdatui ships (etc/NAME.conf), and the diff shown before one replaces a file."""

from __future__ import annotations

import difflib

from . import resources, rules

NAMES = tuple(resources.PRESETS)


def load(name: str) -> rules.Config:
    path = resources.PRESETS[name]
    return rules.load(path)


def diff(old: str, new: str, path: str, name: str) -> str:
    """A unified diff from the file as it is to the preset; "" when they are the same."""
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile=path, tofile=f"{path} (preset {name})")
    # As diff(1) marks it, so that a last line without a newline does not run into the next.
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines)
