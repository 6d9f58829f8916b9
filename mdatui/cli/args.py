"""Argument types shared by the commands: argparse prints their message with the option's name."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _within(convert: Callable[[str], float], kind: str, unit: str):
    def within(lo: float, hi: float) -> Callable[[str], float]:
        def parse(text: str) -> float:
            try:
                value = convert(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"'{text}' is not {kind}") from None
            if not lo <= value <= hi:
                raise argparse.ArgumentTypeError(f"{text} is out of range {lo:g}-{hi:g}{unit}")
            return value
        return parse
    return within


seconds_within = _within(float, "a number of seconds", " seconds")
whole_within = _within(int, "a whole number", "")
