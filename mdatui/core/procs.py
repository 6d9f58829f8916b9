"""Who a socket belongs to, by name: the process behind an owner pid the kernel recorded.

The kernel records pid, uid and gid when a socket is created (bpf/sock_owner.c). The command is
looked up now, so it is only shown while that process still runs with the same start time; a pid
that is unknown, gone or reused stays unknown (None) rather than being pinned on a stranger.
"""

from __future__ import annotations

import pwd
import time
from dataclasses import dataclass

import psutil

# Long enough that a console redrawing every second looks each process up rarely; short enough
# that a command that exec()s something else is shown as that soon after.
CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    command: str | None   # None: the process is gone (or was never visible)
    user: str | None      # of the socket's uid as recorded by the kernel; None: not recorded


def user_name(uid: int | None) -> str | None:
    """The login name, or the number as text when the passwd database has none."""
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _command(proc: psutil.Process) -> str:
    cmdline = proc.cmdline()
    return " ".join(cmdline) if cmdline else f"[{proc.name()}]"  # kernel threads have no argv


class Processes:
    """Looks processes up by pid, remembering each answer for CACHE_SECONDS."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._cache: dict[int, tuple[float, str | None]] = {}

    def command(self, pid: int) -> str | None:
        now = self._clock()
        cached = self._cache.get(pid)
        if cached and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        try:
            command = _command(psutil.Process(pid))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            command = None
        self._cache[pid] = (now, command)
        if len(self._cache) > 4096:
            self._cache = {p: c for p, c in self._cache.items() if now - c[0] < CACHE_SECONDS}
        return command

    def info(self, pid: int | None, uid: int | None = None) -> ProcessInfo | None:
        """None when the kernel did not know the pid (socket made before `enable`)."""
        if pid is None:
            return None
        return ProcessInfo(pid, self.command(pid), user_name(uid))
