"""Short forms of numbers for table cells and status lines, where every column counts."""

from __future__ import annotations

import time

from ..core import units
from ..core.ends import Owner


def count(n: float) -> str:
    """1234 -> 1.2k: decimal, as counts of messages are."""
    return units.scaled(n, 1000, units.DECIMAL)


def size(n: float) -> str:
    """Bytes in binary units, one decimal: 1.5Mi."""
    return units.scaled(n, 1024, units.BINARY_SHORT)


def rate(bytes_per_s: float) -> str:
    return f"{size(bytes_per_s)}/s"


def duration(seconds: float) -> str:
    """The two largest units: 45s, 3m12s, 2h05m, 4d03h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def clock(unix_s: float) -> str:
    """Time of day with milliseconds, local time."""
    ms = round(unix_s * 1000)
    return time.strftime("%H:%M:%S", time.localtime(ms // 1000)) + f".{ms % 1000:03d}"


def command(cmdline: str) -> str:
    """A command line with its program's directory dropped: /usr/bin/python3 -m x -> python3 -m x."""
    program, sep, args = cmdline.partition(" ")
    if program.startswith("["):  # a kernel thread, [kworker/0:1]
        return cmdline
    return program.rsplit("/", 1)[-1] + sep + args


def ident(v: int | None) -> str:
    return "?" if v is None else str(v)


def owner(o: Owner) -> str:
    return f"pid {ident(o.pid)} uid {ident(o.uid)} gid {ident(o.gid)}"


def netns(cookie: int) -> str:
    """0 means keyed without a namespace (addresses that are not loopback)."""
    return str(cookie) if cookie else "-"
