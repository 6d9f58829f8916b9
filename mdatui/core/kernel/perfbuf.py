"""Read a pinned BPF perf event array from a process that did not load the programs.

`enable` exits long before anyone reads events or dumps, so the array is found through its pin:
for every online CPU a perf ring is opened (perf_event_open, mmap) and its fd stored in the array
at that CPU's index, which is where bpf_perf_event_output() on that CPU writes. The rings are read
here in Python: BCC's perf reader would map its LLVM too, some 60 MB of resident memory.

A slot holds one fd, so an array has one reader at a time; a lock file per array makes a second
reader fail with a clear message instead of silently stealing the rings from the first. The
kernel also empties our slots when the map fd we filled them through is closed, so a reader that
dies leaves no stale slots behind.

Every record of ours starts with its bpf_ktime_get_ns() stamp (struct mda_event and
mda_dump_event). Rings are per CPU, so a sender that migrates between CPUs would be read out of
order; records are therefore released sorted by that stamp, once no earlier one can still arrive.
"""

from __future__ import annotations

import ctypes as ct
import fcntl
import hashlib
import math
import mmap
import os
import struct
import time

from . import bpfsys
from .system import libc, syscall_number

LOCK_DIR = "/run/mdatui"

# Longer than a BPF program can take between reading the clock and submitting the record, so a
# record stamped this long before a drain began was in its ring when the drain read it.
REORDER_WINDOW_NS = 5_000_000


class ReaderBusy(RuntimeError):
    """Another process already reads this perf array."""


def wall_offset_ns() -> int:
    """What to add to a bpf_ktime_get_ns() stamp (CLOCK_MONOTONIC) to get unix time in ns.
    Taken once per batch, so that records of one batch keep their order and spacing."""
    return time.time_ns() - time.monotonic_ns()


def lock_path(path: str) -> str:
    """Where the reader of the array pinned at path keeps its lock."""
    name = hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:16] + ".lock"
    return os.path.join(LOCK_DIR, name)


def lock_reader(path: str) -> tuple[int, str]:
    """An exclusive lock file for the array at path; removed again by unlock_reader."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    _sweep_stale_locks()
    where = lock_path(path)
    for _ in range(3):  # a holder may remove the file between our open and our flock
        fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ReaderBusy(f"{path} is already being read by process {holder}; "
                             "a perf array has one reader at a time: stop that one first") from None
        try:
            current = os.stat(where).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd, where
        os.close(fd)
    raise ReaderBusy(f"{path}: its lock file {where} keeps changing hands; try again")


def _sweep_stale_locks() -> None:
    """Removes the lock files of readers that were killed: the kernel released their locks,
    the files stayed. Removed as unlock_reader does, while holding the lock."""
    for entry in os.scandir(LOCK_DIR):
        if not entry.name.endswith(".lock"):
            continue
        try:
            fd = os.open(entry.path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(entry.path).st_ino == os.fstat(fd).st_ino:
                os.unlink(entry.path)
        except (BlockingIOError, FileNotFoundError):
            pass  # held by a live reader, or removed by another sweep meanwhile
        finally:
            os.close(fd)


def unlock_reader(fd: int, lock_path: str) -> None:
    os.unlink(lock_path)  # while still holding it, so nobody else can be holding this file
    os.close(fd)


_SYS_PERF_EVENT_OPEN = syscall_number("perf_event_open")
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 0x400
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
POLLIN = 1
_DATA_HEAD = 1024  # offsets in struct perf_event_mmap_page
_DATA_TAIL = 1032
_HEADER = struct.Struct("=IHH")  # struct perf_event_header: type, misc, size
_SAMPLE = struct.Struct("=IQ")   # after it in a sample: raw size, then our records' leading stamp
_LOST = struct.Struct("=Q")      # after it and the event id in a drop report: records dropped


class _PerfEventAttr(ct.Structure):
    """The first 64 bytes of struct perf_event_attr (PERF_ATTR_SIZE_VER0): all a ring needs,
    and every kernel takes this size, treating the fields after it as zero."""
    _fields_ = [("type", ct.c_uint32), ("size", ct.c_uint32), ("config", ct.c_uint64),
                ("sample_period", ct.c_uint64), ("sample_type", ct.c_uint64),
                ("read_format", ct.c_uint64), ("flags", ct.c_uint64),
                ("wakeup_events", ct.c_uint32), ("bp_type", ct.c_uint32), ("config1", ct.c_uint64)]


def online_cpus(text: str | None = None) -> list[int]:
    """CPUs as /sys/devices/system/cpu/online lists them, e.g. "0-3,6"."""
    if text is None:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read()
    cpus: list[int] = []
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


class _PollFd(ct.Structure):
    _fields_ = [("fd", ct.c_int), ("events", ct.c_short), ("revents", ct.c_short)]


libc.poll.argtypes = [ct.POINTER(_PollFd), ct.c_ulong, ct.c_int]


def _perf_event_open(attr: _PerfEventAttr, cpu: int) -> int:
    fd = libc.syscall(_SYS_PERF_EVENT_OPEN, ct.byref(attr), -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        err = ct.get_errno()
        raise OSError(err, f"perf_event_open on CPU {cpu}: {os.strerror(err)}")
    return fd


class _Ring:
    """One CPU's ring: a control page, then page_cnt pages of records."""

    def __init__(self, cpu: int, page_cnt: int):
        attr = _PerfEventAttr(type=PERF_TYPE_SOFTWARE, size=ct.sizeof(_PerfEventAttr),
                              config=PERF_COUNT_SW_BPF_OUTPUT, sample_type=PERF_SAMPLE_RAW,
                              sample_period=1, wakeup_events=1)
        self._size = page_cnt * mmap.PAGESIZE
        self._mem: mmap.mmap | None = None
        self._head = self._tail = None
        self.fd = _perf_event_open(attr, cpu)
        try:
            # Writable, so that the kernel honours data_tail and never overwrites unread records.
            self._mem = mmap.mmap(self.fd, mmap.PAGESIZE + self._size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
            self._head = ct.c_uint64.from_buffer(self._mem, _DATA_HEAD)
            self._tail = ct.c_uint64.from_buffer(self._mem, _DATA_TAIL)
            fcntl.ioctl(self.fd, PERF_EVENT_IOC_ENABLE, 0)
        except BaseException:
            self.close()
            raise

    def read(self) -> bytes:
        """Everything written since the last read, with the ring's end spliced out, so that a
        record that straddles it comes back whole. Its space is handed back to the kernel at once,
        before the records are parsed, so that a fast sender finds room sooner.

        The kernel writes records, then data_head; it reads data_tail before it overwrites. On
        x86 (TSO) loads are not reordered with loads, nor stores with earlier loads: reading
        data_head first means the records it covers are complete when we copy them, and
        writing data_tail last means the kernel reuses their space only after the copy."""
        head, tail = self._head.value, self._tail.value
        if head == tail:
            return b""
        start, length = mmap.PAGESIZE + tail % self._size, head - tail
        first = min(length, mmap.PAGESIZE + self._size - start)
        data = self._mem[start:start + first]
        if first < length:
            data += self._mem[mmap.PAGESIZE:mmap.PAGESIZE + length - first]
        self._tail.value = head
        return data

    def close(self) -> None:
        if self._mem is not None:
            self._head = self._tail = None  # mmap refuses to unmap while ctypes views point into it
            self._mem.close()
            self._mem = None
        os.close(self.fd)


class PerfReader:
    """The rings of one pinned perf event array; poll() returns raw records in stamp order."""

    def __init__(self, path: str, page_cnt: int = 64):
        if page_cnt <= 0 or page_cnt & (page_cnt - 1):
            raise ValueError(f"page_cnt must be a power of two, not {page_cnt}")
        self.path = path
        self.lost = 0          # records the kernel dropped because a ring was full
        self._held: list[tuple[int, bytes]] = []
        self._rings: list[_Ring] = []
        self._cpus = online_cpus()
        self._lock = lock_reader(path)
        self._map: bpfsys.Map | None = None
        try:
            self._map = bpfsys.Map.open(path, ct.c_int32, ct.c_int32)
            for cpu in self._cpus:
                ring = _Ring(cpu, page_cnt)
                self._rings.append(ring)
                self._map.update(ct.c_int32(cpu), ct.c_int32(ring.fd))
        except BaseException:
            self.close()
            raise
        self._pollfds = (_PollFd * len(self._rings))(*((r.fd, POLLIN, 0) for r in self._rings))

    def __enter__(self) -> "PerfReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _hold(self, data: bytes) -> None:
        """Hold the samples in what one ring returned, with their stamps; count its drops."""
        at = 0
        while at < len(data):
            kind, _misc, size = _HEADER.unpack_from(data, at)
            if kind == PERF_RECORD_SAMPLE:
                raw_size, stamp = _SAMPLE.unpack_from(data, at + 8)
                self._held.append((stamp, data[at + 12:at + 12 + raw_size]))
            elif kind == PERF_RECORD_LOST:
                self.lost += _LOST.unpack_from(data, at + 16)[0]
            at += size

    def poll(self, timeout_s: float) -> list[bytes]:
        """Wait up to timeout_s for records; return those that can no longer be overtaken."""
        if self._held:
            settle = (self._held[0][0] + REORDER_WINDOW_NS - time.monotonic_ns()) / 1e9
            timeout_s = min(timeout_s, max(settle, 0.0))
        # poll(2) itself, not select.poll: that one sleeps on after a signal handler has run
        # (PEP 475), so a stop flag set by Ctrl-C would wait out the timeout. This returns early
        # (EINTR), the handler runs, and the caller sees its flag before waiting again.
        libc.poll(self._pollfds, len(self._pollfds), math.ceil(timeout_s * 1000))
        drain_started = time.monotonic_ns()
        for data in [ring.read() for ring in self._rings]:  # every ring freed before parsing
            self._hold(data)
        self._held.sort(key=lambda held: held[0])
        cut = drain_started - REORDER_WINDOW_NS
        n = 0
        while n < len(self._held) and self._held[n][0] <= cut:
            n += 1
        ready, self._held = self._held[:n], self._held[n:]
        return [raw for _, raw in ready]

    def close(self) -> None:
        try:
            if self._map is not None:
                for cpu in self._cpus:
                    self._map.delete(ct.c_int32(cpu))
        finally:
            if self._map is not None:
                self._map.close()  # the kernel also empties the slots we filled through this fd
                self._map = None
            for ring in self._rings:
                ring.close()
            self._rings.clear()
            self._held.clear()
            if self._lock:
                unlock_reader(*self._lock)
                self._lock = None
