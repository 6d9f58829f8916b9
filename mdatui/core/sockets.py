"""Find the process that holds a TCP end, and ask the kernel how much of it is unread.

The BPF programs cannot see a receive queue, and on this kernel FIONREAD on a socket in a
sockhash counts its unread redirected bytes as well as its TCP queue. The ioctl needs a file
descriptor: a copy is taken from the holding process with pidfd_getfd(2) and closed at once
(a copy kept open would keep the socket alive past the application's own close()).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
import time
from pathlib import Path

from . import addrs
from .kernel import abi
from .kernel.system import libc, syscall_number

SYS_PIDFD_GETFD = syscall_number("pidfd_getfd")
SO_NETNS_COOKIE = 71
RESCAN_SECONDS = 0.1  # at most this often a walk of every process's fds


def _getfd(pid: int, fd: int) -> int | None:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        copy = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        return None if copy < 0 else int(copy)
    finally:
        os.close(pidfd)


def key_of(fd: int) -> tuple | None:
    """The sock_proxy_map key (as SockKey.ident()) of a connected TCP socket, else None."""
    s = socket.socket(fileno=os.dup(fd))
    try:
        if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
            return None
        local, remote = s.getsockname(), s.getpeername()
        lip, rip = addrs.pack(local[0].partition("%")[0]), addrs.pack(remote[0].partition("%")[0])
        netns = 0
        if addrs.is_loopback(lip) or addrs.is_loopback(rip):
            netns = struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
        return (lip, rip, local[1], remote[1], netns)
    except OSError:
        return None
    finally:
        s.close()


def unread_bytes(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


def unread_at(pid: int, fd: int) -> int | None:
    """Unread bytes of the socket that is fd in pid, or None when it is gone."""
    copy = _getfd(pid, fd)
    if copy is None:
        return None
    try:
        return unread_bytes(copy)
    except OSError:
        return None
    finally:
        os.close(copy)


class SocketFinder:
    """Where each end lives as (pid, fd), found by walking /proc: first the processes of the
    accelerated cgroup, then every process (a socket may have been passed to another one)."""

    def __init__(self, cgroup: str):
        self.cgroup = cgroup
        self._where: dict[tuple, tuple[int, int]] = {}
        self._inode_key: dict[int, tuple | None] = {}
        self._scanned_at = 0.0

    def unread(self, key: abi.SockKey) -> int | None:
        """Unread bytes of this end (redirected and TCP), or None when no process holds it."""
        ident = key.ident()
        place = self._where.get(ident)
        if place is None and self._rescan(ident):
            place = self._where.get(ident)
        if place is None:
            return None
        n = self._ask(place, ident)
        if n is None:
            del self._where[ident]
        return n

    def _ask(self, place: tuple[int, int], ident: tuple) -> int | None:
        copy = _getfd(*place)
        if copy is None:
            return None
        try:
            if key_of(copy) != ident:  # the fd was closed and its number reused
                return None
            return unread_bytes(copy)
        except OSError:
            return None
        finally:
            os.close(copy)

    def _rescan(self, wanted: tuple) -> bool:
        now = time.monotonic()
        if now - self._scanned_at < RESCAN_SECONDS:
            return False
        self._scanned_at = now
        self._where.clear()
        seen_pids: set[int] = set()
        seen_inodes: set[int] = set()
        for pids in (cgroup_pids(self.cgroup), _all_pids()):
            for pid in pids:
                if pid not in seen_pids:
                    seen_pids.add(pid)
                    self._index(pid, seen_inodes)
            if wanted in self._where:
                break
        self._inode_key = {i: k for i, k in self._inode_key.items() if i in seen_inodes}
        return True

    def _index(self, pid: int, seen_inodes: set[int]) -> None:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return
        for name in names:
            ident = self.key_at(pid, int(name), seen_inodes)
            if ident is not None:
                self._where.setdefault(ident, (pid, int(name)))

    def key_at(self, pid: int, fd: int, seen_inodes: set[int] | None = None) -> tuple | None:
        """The key (SockKey.ident()) of the TCP socket that is fd in pid, else None.
        What a socket's inode maps to is kept: its addresses do not change."""
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            return None
        if not target.startswith("socket:["):
            return None
        inode = int(target[8:-1])
        if seen_inodes is not None:
            seen_inodes.add(inode)
        if inode not in self._inode_key:
            copy = _getfd(pid, fd)
            if copy is None:
                return None
            try:
                self._inode_key[inode] = key_of(copy)
            finally:
                os.close(copy)
        return self._inode_key[inode]


def _members(cgroup: str, listing: str) -> list[int]:
    """The ids a cgroup and the cgroups below it list in their `listing` file (cgroup.procs:
    processes, cgroup.threads: threads); a cgroup removed meanwhile lists none."""
    ids = []
    for folder, _, _ in os.walk(cgroup):
        try:
            ids += [int(i) for i in Path(folder, listing).read_text().split()]
        except OSError:
            pass
    return ids


def cgroup_pids(cgroup: str) -> list[int]:
    """The processes of a cgroup and of the cgroups below it."""
    return _members(cgroup, "cgroup.procs")


def cgroup_threads(cgroup: str) -> int:
    """How many threads a cgroup and the cgroups below it hold."""
    return len(_members(cgroup, "cgroup.threads"))


def host_tasks() -> int:
    """How many tasks (threads) the host runs: /proc/loadavg's fourth field, RUNNING/TOTAL."""
    return int(Path("/proc/loadavg").read_text().split()[3].partition("/")[2])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]
