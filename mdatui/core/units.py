"""Numbers with units, for people: one scaling rule for the CLI and the console."""

from __future__ import annotations

BINARY_LONG = ("B", "KiB", "MiB", "GiB", "TiB")
BINARY_SHORT = ("B", "Ki", "Mi", "Gi", "Ti")
DECIMAL = ("", "k", "M", "G", "T")


def scaled(n: float, base: int, units: tuple[str, ...], sep: str = "") -> str:
    """n in the largest unit that keeps it under base: whole in the first unit, else one decimal."""
    for unit in units:
        if abs(n) < base or unit == units[-1]:
            return f"{n:.0f}{sep}{unit}" if unit == units[0] else f"{n:.1f}{sep}{unit}"
        n /= base
    raise AssertionError("unreachable")


def size(n: float) -> str:
    """Bytes for command output: 1.5 MiB."""
    return scaled(n, 1024, BINARY_LONG, sep=" ")
