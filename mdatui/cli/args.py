"""Argument types shared by the commands: argparse prints their message with the option's name."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def seconds_within(lo: float, hi: float) -> Callable[[str], float]:
    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range {lo:g}-{hi:g} seconds")
        return value
    return seconds


def whole_within(lo: int, hi: int) -> Callable[[str], int]:
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range {lo}-{hi}")
        return value
    return whole
