"""Whether `mdatui serve` runs for a pin dir: its pid file and the lock it holds on it.

Apart from service.py so that reading a snapshot (reader.py) needs none of the service itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

RUN_DIR = Path("/run/mdatui")


def pidfile(pin_dir: str) -> Path:
    tag = hashlib.sha1(os.path.realpath(pin_dir).encode()).hexdigest()[:12]
    return RUN_DIR / f"serve-{tag}.pid"


def running(pin_dir: str) -> int | None:
    """The pid of the service of this pin dir, if one runs (it holds a lock on its pid file)."""
    path = pidfile(pin_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    else:
        # Left by a service that was killed, or made by one that has not locked it yet: not
        # removed here, since a starting service would then lock a file nobody can find. The
        # next service reuses it.
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Usage:
    """What the service has cost the host: read once a snapshot, for query, the console and
    the metrics alike."""
    cpu_s: float      # user and system CPU time since it started
    cpu_share: float  # that over its lifetime: the share of one CPU it takes
    rss: int          # resident bytes


def usage(pid: int) -> Usage | None:
    """The process's CPU time and memory (None if it has ended)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            cpu, started, rss = proc.cpu_times(), proc.create_time(), proc.memory_info().rss
    except psutil.Error:
        return None
    cpu_s = cpu.user + cpu.system
    return Usage(cpu_s, cpu_s / max(time.time() - started, 1e-3), rss)
