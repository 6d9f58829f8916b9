"""Keep blocking full-duplex sockets off the fast path: tcp_bpf cannot serve them.

A thread blocked in recv() on a socket in the sockhash returns EAGAIN when it is woken without
redirected data, and its own socket wakes it so: when the FIN another thread sent is
acknowledged, when that thread's TCP sends free buffer space, at a reset. Plain TCP goes back to
sleep. No BPF program can see a receive or correct its result, but a thread blocked in a read
of a blocking socket (no O_NONBLOCK) with nothing unread, in a process with more threads, can
be seen: bpf/blocked_readers.c lists such threads in one read, or /proc is walked, whichever
costs less (and /proc where the kernel cannot run the iterator). Such a connection is asked to
stop redirecting (abi.Leave.BLOCKING); once drained it is plain TCP, and the blocked read
returns with the first bytes that come over TCP, not with EAGAIN. A read already blocked when
the connection is found stays exposed until those bytes come. Event-driven programs
(non-blocking sockets, poll/epoll, as Envoy), blocking ones that wait in poll/select before
they read, and single-threaded blocking ones keep the fast path.
"""

from __future__ import annotations

import ctypes as ct
import os
import time
from collections.abc import Iterable, Iterator

from .kernel import abi, system
from .kernel.instance import READER_ITER, Instance
from .kernel.system import syscall_number
from .sockets import SocketFinder, cgroup_pids, cgroup_threads, host_tasks, unread_at

READS = {syscall_number(n) for n in abi.READ_CALLS}
PERIOD = 0.1  # seconds between two looks when idle (bench/service.py measures them)
# A reader thread starts its recv() as soon as its connection is up: for this long after new
# connections were accelerated, look sooner, EAGER_GAP after the last look. Under a churn of new
# connections (more than CHURN a second) each such look that finds nothing to stop doubles the
# gap, up to PERIOD, until one finds something, a new process joins the cgroup (with the
# iterator: begins to block in reads) or the churn ends: with wrk > haproxy > nginx opening a
# connection per request, looks at /proc every 5 ms took 12 % of a CPU, a tenth of the requests
# per second, and the iterator's walk of every task of the host grows with the host. A few new
# connections keep the 5 ms: a blocking full-duplex proxy's reader gets EAGAIN if its
# connection is found too late.
EAGER = 0.2
EAGER_GAP = 0.005
CHURN = 200
# What a look costs for each task the iterator walks (every task of the host), and for each
# thread of the cgroup /proc is read for, measured with 5,120 threads (bench/service.py).
ITER_COST_US, PROC_COST_US = 0.4, 4.7
O_NONBLOCK = 0o4000


def blocked_reads(pids: list[int]) -> Iterator[tuple[int, int]]:
    """(pid, fd) of every thread blocked in a read of a blocking fd, in processes that have
    another thread."""
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        if len(tids) < 2:
            continue
        for tid in tids:
            fields = _syscall(pid, tid)
            if len(fields) < 2 or not fields[0].isdigit() or int(fields[0]) not in READS:
                continue
            fd = int(fields[1], 16)
            if _blocking(pid, fd):
                yield pid, fd


def _syscall(pid: int, tid: str) -> list[bytes]:
    """What a thread's syscall file says: "running", or the number, six arguments, stack and
    program counter; nothing if it is gone. os.open and os.read: a third of the CPU of open()
    and its text wrapper, which took 2 ms a look for a process of 256 threads."""
    try:
        f = os.open(f"/proc/{pid}/task/{tid}/syscall", os.O_RDONLY)
    except OSError:
        return []
    try:
        return os.read(f, 256).split()
    except OSError:
        return []
    finally:
        os.close(f)


def _blocking(pid: int, fd: int) -> bool:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return not int(line.split()[1], 8) & O_NONBLOCK
    except OSError:
        pass
    return False


class ReaderIterator:
    """bpf/blocked_readers.c's pinned iterator. Each read of it walks every task of the host in
    the kernel and lists the threads asleep in a read in processes of more than one thread (some
    2.5 ms of kernel time for 5,400 tasks, a tenth of the /proc walk's); of those, the ones in
    the cgroup reading a blocking fd are kept."""

    def __init__(self, path: str, cgroup: str):
        self.path = path
        inside = os.path.relpath(cgroup, system.cgroup2_root())
        self._cgroup = "" if inside == "." else "/" + inside  # as /proc/PID/cgroup names it

    def blocked_reads(self) -> Iterator[tuple[int, int]]:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return  # disable unpinned it: the service drains what is left, and ends
        size = ct.sizeof(abi.BlockedRead)
        for at in range(0, len(data) - size + 1, size):
            r = abi.BlockedRead.from_buffer_copy(data, at)
            if self._in_cgroup(r.pid) and _blocking(r.pid, r.fd):
                yield r.pid, r.fd

    def _in_cgroup(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                for line in f:
                    if line.startswith("0::"):
                        path = line[3:].rstrip("\n")
                        return path == self._cgroup or path.startswith(self._cgroup + "/")
        except OSError:
            pass
        return False


class Guard:
    def __init__(self, inst: Instance, finder: SocketFinder):
        self.inst = inst
        self.finder = finder
        pinned = os.path.join(inst.pin_dir, READER_ITER)
        self.iterator = ReaderIterator(pinned, inst.cgroup) if os.path.exists(pinned) else None
        # Ends asked to stop: one that has left the sockhash still reads as untainted (it
        # never sent a message after the request), and is not asked again.
        self._asked: set[tuple] = set()
        self._pruned_at = 0.0
        self._accelerated = -1  # the ACCELERATED stat at the last tick
        self._eager_until = 0.0
        self._gap = EAGER_GAP
        self._next = 0.0
        self._pids: set[int] = set()  # the cgroup's processes (with the iterator: its blocked
                                      # readers' processes) at the last look
        self._looked = (0.0, 0)  # when, and the ACCELERATED stat then
        self._weighed_at, self._iterate = -1.0, False  # see _by_iterator

    def eager(self) -> bool:
        return time.monotonic() < self._eager_until

    def tick(self) -> int:
        """Look when it is time (see EAGER); how many ends were asked to stop."""
        now = time.monotonic()
        accelerated = self.inst.stat(abi.Stat.ACCELERATED)
        if accelerated != self._accelerated:
            self._accelerated = accelerated
            self._eager_until = now + EAGER
            self._next = min(self._next, now + self._gap)
        if now < self._next:
            return 0
        if self._by_iterator(now):
            found = list(self.iterator.blocked_reads())
            pids = {pid for pid, _ in found}  # new ones: a process began to block in reads
        else:
            pids = set(cgroup_pids(self.inst.cgroup))  # new ones: a process joined
            found = list(blocked_reads(pids))
        joined = not self._pids.issuperset(pids)
        self._pids = pids
        asked = self.check(found)
        churn = accelerated - self._looked[1] > CHURN * (now - self._looked[0])
        self._looked = (now, accelerated)
        self._gap = min(2 * self._gap, PERIOD) if churn and not (asked or joined) else EAGER_GAP
        self._next = now + (self._gap if now < self._eager_until else PERIOD)
        return asked

    def _by_iterator(self, now: float) -> bool:
        """Whether the iterator costs less than /proc, decided again every second: it walks
        every task of the host (some 0.4 µs each in the kernel), /proc is read for each thread
        of the cgroup (some 5 µs each). With a few threads on a busy host, eager looks 200
        times a second would cost more than they did before the iterator."""
        if self.iterator is None:
            return False
        if now >= self._weighed_at + 1.0:
            self._weighed_at = now
            self._iterate = (cgroup_threads(self.inst.cgroup) * PROC_COST_US
                             > host_tasks() * ITER_COST_US)
        return self._iterate

    def check(self, found: Iterable[tuple[int, int]]) -> int:
        """Ask the connections of the blocked reads found, (pid, fd) each, to stop; how many
        ends were asked (the BLOCKING stat counts them)."""
        proxy = self.inst.maps["sock_proxy_map"]
        keys = []
        for pid, fd in found:
            ident = self.finder.key_at(pid, fd)
            if ident is None or ident in self._asked:
                continue
            if unread_at(pid, fd) != 0:
                # Bytes wait: the read sleeps on the socket's lock while a sender holds it
                # (select-then-recv programs get there), not for data.
                continue
            key = abi.SockKey.of(*ident)
            conn = proxy.lookup(key)
            if conn is not None and conn.paired and not conn.tainted:
                keys += [key, conn.peer]
                self._asked.update((ident, conn.peer.ident()))
        self._prune(proxy)
        if not keys:
            return 0
        asked = self.inst.request_stop(keys, abi.Leave.BLOCKING)
        if asked:
            self.inst.add_stat(abi.Stat.BLOCKING, asked)
        return asked

    def _prune(self, proxy) -> None:
        """Forget the ends that closed, once a second."""
        now = time.monotonic()
        if now - self._pruned_at < 1.0:
            return
        self._pruned_at = now
        self._asked = {i for i in self._asked if proxy.lookup(abi.SockKey.of(*i)) is not None}
