"""Read a pinned BPF perf event array from a process that did not load the programs.

`enable` exits long before anyone reads events or dumps, so the array is found through its pin:
for every online CPU a perf ring is opened with libbcc and its fd stored in the array at that
CPU's index, which is where bpf_perf_event_output() on that CPU writes.

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
import os
import struct
import time

from . import bpfsys

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


def _lock(path: str) -> tuple[int, str]:
    """An exclusive lock file for the array at path; removed again by _unlock."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    name = hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:16] + ".lock"
    lock_path = os.path.join(LOCK_DIR, name)
    for _ in range(3):  # a holder may remove the file between our open and our flock
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ReaderBusy(f"{path} is already being read by process {holder}; "
                             "a perf array has one reader at a time: stop that one first") from None
        try:
            current = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd, lock_path
        os.close(fd)
    raise ReaderBusy(f"{path}: its lock file {lock_path} keeps changing hands; try again")


def _unlock(fd: int, lock_path: str) -> None:
    os.unlink(lock_path)  # while still holding it, so nobody else can be holding this file
    os.close(fd)


class PerfReader:
    """The rings of one pinned perf event array; poll() returns raw records in stamp order."""

    def __init__(self, path: str, page_cnt: int = 64):
        if page_cnt <= 0 or page_cnt & (page_cnt - 1):
            raise ValueError(f"page_cnt must be a power of two, not {page_cnt}")
        self.path = path
        self.lost = 0          # records the kernel dropped because a ring was full
        self._batch: list[bytes] = []
        self._held: list[tuple[int, bytes]] = []
        self._readers: list[int] = []
        # Loaded here, not at import: commands that read no perf array start without libbcc.
        from bcc import libbcc
        from bcc.utils import get_online_cpus
        self._lib = libbcc.lib
        self._cpus = get_online_cpus()
        # ctypes callbacks must outlive the readers that call them.
        self._raw_cb = libbcc._RAW_CB_TYPE(self._on_raw)
        self._lost_cb = libbcc._LOST_CB_TYPE(self._on_lost)
        self._lock = _lock(path)
        self._map: bpfsys.Map | None = None
        try:
            self._map = bpfsys.Map.open(path, ct.c_int32, ct.c_int32)
            for cpu in self._cpus:
                reader = self._lib.bpf_open_perf_buffer(self._raw_cb, self._lost_cb, None, -1, cpu,
                                                        page_cnt)
                if not reader:
                    raise OSError(f"could not open a perf ring on CPU {cpu} for {path}")
                self._readers.append(reader)
                self._map.update(ct.c_int32(cpu), ct.c_int32(self._lib.perf_reader_fd(reader)))
        except BaseException:
            self.close()
            raise
        self._array = (ct.c_void_p * len(self._readers))(*self._readers)

    def __enter__(self) -> "PerfReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # The callbacks run inside perf_reader_poll/consume; ctypes would only print their
    # exceptions, so they do nothing that can fail.
    def _on_raw(self, _ctx, data, size) -> None:
        self._batch.append(ct.string_at(data, size))

    def _on_lost(self, _ctx, count) -> None:
        self.lost += count

    def poll(self, timeout_s: float) -> list[bytes]:
        """Wait up to timeout_s for records; return those that can no longer be overtaken."""
        if self._held:
            settle = (self._held[0][0] + REORDER_WINDOW_NS - time.monotonic_ns()) / 1e9
            timeout_s = min(timeout_s, max(settle, 0.0))
        self._lib.perf_reader_poll(len(self._readers), self._array, math.ceil(timeout_s * 1000))
        drain_started = time.monotonic_ns()
        self._lib.perf_reader_consume(len(self._readers), self._array)
        batch, self._batch = self._batch, []
        self._held.extend((struct.unpack_from("=Q", raw)[0], raw) for raw in batch)
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
            for reader in self._readers:
                self._lib.perf_reader_free(reader)
            self._readers.clear()
            self._held.clear()
            if self._lock:
                _unlock(*self._lock)
                self._lock = None
