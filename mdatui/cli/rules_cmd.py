"""`mdatui rules ...` and the rules `enable --config` loads."""

from __future__ import annotations


def ruleset_for_enable(config: str | None):
    return None, config or ""


def add_parser(sub, pin_arg) -> None:
    pass
