"""Who a socket belongs to, by name: the process behind an owner pid the kernel recorded.

The kernel records pid, uid and gid when a socket is created (bpf/sock_owner.c); the command is
looked up now. A pid that is unknown or gone stays unknown (None). A pid reused by a process
that started after the socket existed is recognised by its start time and also shown as unknown,
rather than pinning the socket on a stranger.
"""

from __future__ import annotations

import pwd
import time
from dataclasses import dataclass

import numpy as np
import psutil

from .kernel.abi import UNKNOWN_ID

# Long enough that a console redrawing every second looks each process up rarely; short enough
# that a command that exec()s something else is shown as that soon after.
CACHE_SECONDS = 10.0
# psutil derives start times from the boot time, which /proc/stat gives in whole seconds.
START_TIME_SLACK = 2.0


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    command: str | None   # None: the process is gone, or its pid now belongs to another one
    user: str | None      # of the socket's uid as the kernel recorded it; None: not recorded


def user_name(uid: int | None) -> str | None:
    """The login name, or the number as text when the passwd database has none."""
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass(frozen=True)
class _Seen:
    at: float                 # monotonic time of the lookup
    command: str | None
    started: float            # unix time; 0 when gone


def _reused(started, socket_since):
    """Whether a process started after the socket existed, so that its pid was used again;
    for single times or arrays of them."""
    return started > socket_since + START_TIME_SLACK


def _look(pid: int, now: float) -> _Seen:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            cmdline = proc.cmdline()
            command = " ".join(cmdline) if cmdline else f"[{proc.name()}]"  # kernel threads
            return _Seen(now, command, proc.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return _Seen(now, None, 0.0)


class Processes:
    """Looks processes up by pid, remembering each answer for CACHE_SECONDS."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._cache: dict[int, _Seen] = {}

    def _seen(self, pid: int) -> _Seen:
        now = self._clock()
        seen = self._cache.get(pid)
        if seen is None or now - seen.at >= CACHE_SECONDS:
            if len(self._cache) > 4096:
                self._cache = {p: s for p, s in self._cache.items() if now - s.at < CACHE_SECONDS}
            seen = self._cache[pid] = _look(pid, now)
        return seen

    def info(self, pid: int | None, uid: int | None = None,
             socket_since: float | None = None) -> ProcessInfo | None:
        """pid and uid as the kernel recorded them (None: socket made before `enable`);
        socket_since: unix time the socket is known to have existed at, to detect pid reuse."""
        if pid is None:
            return None
        seen = self._seen(pid)
        command = seen.command
        if command and socket_since is not None and _reused(seen.started, socket_since):
            command = None
        return ProcessInfo(pid, command, user_name(uid))

    def attribute(self, pids: np.ndarray, uids: np.ndarray,
                  sockets_since: np.ndarray) -> tuple[list[ProcessInfo], np.ndarray]:
        """info() of many sockets at once, ids as the kernel recorded them (UNKNOWN_ID: not
        recorded): the distinct answers, and for each socket the index of its own (-1: no pid).
        A few processes own most sockets, so each is looked up and described once."""
        distinct = np.unique(pids)
        which = np.searchsorted(distinct, pids)  # much faster than unique's return_inverse
        started = np.full(len(distinct), -np.inf)  # no command: nothing to withhold
        commands: list[str | None] = []
        for i, pid in enumerate(distinct.tolist()):
            seen = self._seen(pid) if pid != UNKNOWN_ID else None
            commands.append(seen.command if seen else None)
            if seen and seen.command:
                started[i] = seen.started
        reused = _reused(started[which], sockets_since)
        combined = (which.astype(np.int64) << 33) | (uids.astype(np.int64) << 1) | reused
        answers = np.unique(combined)
        index = np.searchsorted(answers, combined)
        infos = []
        for code in answers.tolist():
            pid_at, uid, withheld = code >> 33, (code >> 1) & 0xFFFFFFFF, code & 1
            infos.append(ProcessInfo(int(distinct[pid_at]), None if withheld else commands[pid_at],
                                     user_name(None if uid == UNKNOWN_ID else uid)))
        index = index.astype(np.int32)
        index[pids == UNKNOWN_ID] = -1
        return infos, index
