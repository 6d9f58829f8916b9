"""Capture what accelerated connections send: the first snaplen bytes of each redirected message.

Redirected bytes never reach a network device, so tcpdump sees nothing of them; sk_msg copies
them to the perf array `mda_dump` while an operator has dump switched on in mda_control.

    with DumpSession(inst, ip="10.0.0.0/8", port=80, snaplen=256) as dump:
        for rec in dump.poll(0.5):
            ...

The session switches dump on once its rings are ready and off again when closed, which `with`
also does on an exception or Ctrl-C. Copying costs every accelerated message while dump is on,
so a guardian process (core.guardian) switches it off when the session's process dies without
closing it (SIGKILL): once no live reader holds the array's lock.
"""

from __future__ import annotations

import ctypes as ct
import enum
import ipaddress
import os
import sys
from typing import NamedTuple

from . import addrs, guardian
from .kernel import abi
from .kernel.instance import Instance, NotEnabled
from .kernel.perfbuf import PerfReader, ReaderBusy, lock_reader, unlock_reader, wall_offset_ns

DEFAULT_SNAPLEN = 128
MAX_SNAPLEN = abi.MAX_SNAPLEN


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(value: str | Network) -> Network:
    """An IPv4 or IPv6 address or CIDR; host bits are dropped (10.1.2.3/8 is 10.0.0.0/8). An
    IPv4 one selects IPv4 connections only, an IPv6 one the addresses in it, an IPv4 address
    counting as ::ffff:a.b.c.d (so ::/0 selects every connection), as with rules' --ip."""
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address or CIDR such as 10.0.0.0/8 "
                         "or fd00::/8") from None
    if getattr(net.network_address, "scope_id", None):
        raise ValueError(f"{value!r} names a zone; the filter matches addresses only")
    return addrs.from_network(*addrs.network(net))  # an IPv4-mapped CIDR in its IPv4 form


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    return port


def check_snaplen(snaplen: int) -> int:
    if not 1 <= snaplen <= MAX_SNAPLEN:
        raise ValueError(f"snaplen {snaplen} is outside 1-{MAX_SNAPLEN} bytes")
    return snaplen


class Direction(enum.StrEnum):
    TO_SERVER = "to-server"   # sent by the end that called connect()
    TO_CLIENT = "to-client"


class DumpRecord(NamedTuple):
    """One message as its sender sent it: src is the sending end, dst its peer's address."""

    ts_ns: int                # unix time of the send
    src: str                  # ip:port, [ipv6]:port
    dst: str
    netns: int                # namespace cookie when an address is loopback, else 0
    len: int                  # bytes of the whole message
    data: bytes               # its first snaplen bytes
    direction: str            # a Direction's value

    @property
    def ts(self) -> float:
        return self.ts_ns / 1e9

    @property
    def truncated(self) -> bool:
        return len(self.data) < self.len

    def to_json(self) -> dict:
        return {"ts": round(self.ts, 6), "src": self.src, "dst": self.dst, "netns": self.netns,
                "len": self.len, "caplen": len(self.data), "direction": str(self.direction),
                "data": self.data.hex()}


# A message as it came from the ring, not decoded yet: (wall offset, perf record). A reader that
# keeps many decodes only those it shows, and keeps them as tuples of plain values, which
# Python's cyclic GC stops tracking once it has seen them: 100,000 DumpRecords cost a console
# 20 MB more and a 250 ms pause at each full collection, and decoding 50,000 a second 15 % of
# a CPU.
Raw = tuple[int, bytes]


def record(message: Raw) -> DumpRecord:
    return decode(message[1], message[0])


def decode(raw: bytes, wall_offset: int | None = None) -> DumpRecord:
    """One perf record; wall_offset as perfbuf.wall_offset_ns() gives it (taken now if None)."""
    head = abi.DumpEvent.from_buffer_copy(raw.ljust(ct.sizeof(abi.DumpEvent), b"\0"))
    start = abi.DUMP_HEADER_SIZE
    if len(raw) < start + head.caplen:
        raise ValueError(f"dump record of {len(raw)} bytes is shorter than its caplen {head.caplen}")
    if wall_offset is None:
        wall_offset = wall_offset_ns()
    return DumpRecord(
        ts_ns=head.ts_ns + wall_offset, src=head.key.local, dst=head.key.remote,
        netns=head.key.netns, len=head.len, data=raw[start:start + head.caplen],
        direction=(Direction.TO_SERVER if head.active else Direction.TO_CLIENT).value)


class DumpSession:
    """Dump switched on with one filter, and the records it yields. One session at a time."""

    def __init__(self, inst: Instance, ip: str | Network | None = None,
                 port: int | None = None, snaplen: int = DEFAULT_SNAPLEN, page_cnt: int = 256):
        self.ip = parse_ip(ip) if ip is not None else None
        self.port = check_port(port) if port is not None else None
        self.snaplen = check_snaplen(snaplen)
        self._inst = inst
        self._reader = PerfReader(os.path.join(inst.pin_dir, "mda_dump"), page_cnt)
        self._on = False
        self._guardian = guardian.start(__name__, inst.pin_dir)  # before dump is on
        try:
            self._failed_before = inst.stats()["dump_lost"]
            self._switch(on=True)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "DumpSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _switch(self, on: bool) -> None:
        if on:
            _set(self._inst, True, self.ip, self.port, self.snaplen)
        else:
            _set(self._inst, False)
        self._on = on

    @property
    def lost_in_ring(self) -> int:
        """Records dropped because this reader fell behind and a ring filled up. The ring
        reports a drop only along with its next record, so this can lag failed_submits."""
        return self._reader.lost

    @property
    def failed_submits(self) -> int:
        """Copies sk_msg could not hand over since the session began (mda_stats DUMP_LOST)."""
        return self._inst.stats()["dump_lost"] - self._failed_before

    @property
    def lost(self) -> int:
        """Messages that matched but were not captured: a full ring counts on both sides, a
        CPU without a ring only in failed_submits."""
        return max(self.lost_in_ring, self.failed_submits)

    def poll(self, timeout_s: float) -> list[DumpRecord]:
        """Records that arrived, in time order; waits at most timeout_s for the first one."""
        return [record(message) for message in self.poll_raw(timeout_s)]

    def poll_raw(self, timeout_s: float) -> list[Raw]:
        """What poll() returns, not decoded yet (record() decodes one)."""
        raws = self._reader.poll(timeout_s)
        offset = wall_offset_ns()
        return [(offset, raw) for raw in raws]

    def close(self) -> None:
        """Switch dump off first, so that nothing is copied for a reader that is gone."""
        try:
            if self._on:
                self._switch(on=False)
        finally:
            self._reader.close()
            guardian.release(self._guardian, 0)  # it finds dump off, or a new session's reader


def _set(inst: Instance, on: bool, ip: Network | None = None,
         port: int | None = None, snaplen: int = 0) -> None:
    ctl = inst.control()
    ctl.dump_on = int(on)
    # No filter: a mask of zeros. ::/0 is one too, and selects every address as it should.
    address, mask = addrs.network(ip) if ip else (bytes(16), bytes(16))
    ct.memmove(ctl.dump_ip, address, 16)
    ct.memmove(ctl.dump_mask, mask, 16)
    ctl.dump_port = port or 0
    if on:
        ctl.snaplen = snaplen
    inst.set_control(ctl)


def switch_off_orphaned(pin_dir: str) -> bool:
    """Switch dump off unless a live reader holds the array (a session of its own, started
    since); whether it was on. Holding the lock meanwhile, so that no session starts between
    the look and the switch."""
    try:
        lock = lock_reader(os.path.join(pin_dir, "mda_dump"))
    except ReaderBusy:
        return False
    try:
        with Instance(pin_dir) as inst:
            was_on = bool(inst.control().dump_on)
            if was_on:
                _set(inst, False)
            return was_on
    except NotEnabled:
        return False
    finally:
        unlock_reader(*lock)


if __name__ == "__main__" and sys.argv[1:2] == ["--guard"]:
    guardian.wait_for_owner()
    switch_off_orphaned(sys.argv[2])
