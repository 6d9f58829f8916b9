"""What the Textual console asks of the accelerator, in one place.

The console (mdatui/ui) never opens a map or a perf ring: it holds a ConsoleBackend. LiveBackend
is the real one, over the pins of a running accelerator; the UI tests hand the console a fake
with fixed data. The pure helpers here (frames, pairs, rule previews, pcap files) are used with
either, so a fake exercises the same logic the live console runs.

Threads: the console calls snapshot() and attribute() from one worker thread, and owns each
EventSource / DumpSource from the worker thread that opened it (perf rings are not thread-safe);
the other calls come from the UI thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import apply, loader, rules, snapshot, system
from .dump import DumpRecord, DumpSession
from .events import Event, EventStream
from .instance import Instance, NotEnabled
from .pcap import PcapWriter
from .perfbuf import ReaderBusy
from .procs import ProcessInfo, Processes
from .snapshot import Connection, Endpoint, Rates, Snapshot


class Unavailable(Exception):
    """What the console asked for cannot be had now (no root, not running, a reader already
    attached); the message says why and what to do."""


# ---------------------------------------------------------------- what the views show

@dataclass(frozen=True)
class Frame:
    """One refresh: a snapshot, the rates since the previous one, who owns each end."""

    snapshot: Snapshot
    now: float                                  # wall clock (unix seconds) it was taken at
    total: Rates = Rates(0.0, 0.0)
    per_end: dict[Endpoint, Rates] = field(default_factory=dict)
    processes: dict[Endpoint, ProcessInfo] = field(default_factory=dict)

    @classmethod
    def next(cls, prev: "Frame | None", snap: Snapshot, now: float,
             processes: dict[Endpoint, ProcessInfo] | None = None) -> "Frame":
        processes = processes or {}
        if prev is None or not prev.snapshot.enabled or not snap.enabled:
            return cls(snap, now, processes=processes)
        total, per_end = snapshot.rates(prev.snapshot, snap)
        return cls(snap, now, total, per_end, processes)

    @property
    def uptime_s(self) -> float:
        return max(0.0, self.now - self.snapshot.enabled_at) if self.snapshot.enabled_at else 0.0

    def rate(self, end: Endpoint) -> Rates:
        return self.per_end.get(end, Rates(0.0, 0.0))


@dataclass(frozen=True)
class Pair:
    """Two ends that point at each other, or an end whose other half is missing or wrong.

    `a` is the connecting end when the pair has one. health: "ok"; "pending" (the connecting
    end waits for its peer); "one-sided" (the peer's entry is gone from the map); "stale" (the
    peer points elsewhere, or an end has left the sockhash).
    """

    a: Connection
    b: Connection | None
    health: str

    @property
    def key(self) -> str:
        return f"{self.a.end.local}>{self.a.end.remote}@{self.a.end.netns}"

    @property
    def ends(self) -> tuple[Connection, ...]:
        return (self.a,) if self.b is None else (self.a, self.b)


def pairs(snap: Snapshot) -> list[Pair]:
    """Every connection once, its two ends together."""
    by_end = {c.end: c for c in snap.connections}
    seen: set[Endpoint] = set()
    out = []
    # Connecting ends first, so that a complete pair is always told from its connecting side.
    for c in sorted(snap.connections, key=lambda c: not c.active):
        if c.end in seen:
            continue
        seen.add(c.end)
        peer = by_end.get(c.peer) if c.peer is not None else None
        if c.peer is None:
            health = "pending"
        elif peer is None:
            health = "one-sided"
        elif peer.peer == c.end and c.in_sockhash and peer.in_sockhash:
            health = "ok"
        else:
            health = "stale"
        if peer is not None and peer.peer == c.end:
            seen.add(peer.end)
        out.append(Pair(c, peer, health))
    return out


@dataclass(frozen=True)
class RulePreview:
    """What making `edited` live would do to the connections open now."""

    taken_off: list[tuple[apply.Pair, int | None]]  # accelerated, then refused (by rule index)
    put_on: list[apply.Pair]  # on the normal path, accepted: accelerated from their next connection


def preview(snap: Snapshot, edited: Sequence[rules.Rule]) -> RulePreview:
    """rules.judge on each connection, as apply.apply would judge it."""
    by_end = {c.end: c for c in snap.connections}
    put_on = []
    for c in snap.connections:
        peer = by_end.get(c.peer) if c.peer is not None else None
        if c.state == "normal" and c.active and peer is not None:
            pair = apply.Pair(c, peer)
            if rules.judge(edited, pair.view()).accelerate:
                put_on.append(pair)
    return RulePreview(apply.preview(snap, list(edited)).taken_off, put_on)


@dataclass
class RulesDoc:
    """The rules the console edits: the file, and whether the kernel runs what it says."""

    path: str                 # the file they are saved to
    config: rules.Config      # as in the file (empty when there is none yet)
    exists: bool


def write_pcap(records: Iterable[DumpRecord], path: str, snaplen: int) -> int:
    """Writes the records as a pcap file (see mdatui.core.pcap); returns the packets written."""
    with open(path, "wb") as out:
        writer = PcapWriter(out, snaplen)
        for rec in records:
            writer.write(rec)
    return writer.packets


# ---------------------------------------------------------------- the facade

class EventSource(Protocol):
    @property
    def lost(self) -> int: ...
    def poll(self, timeout_s: float) -> list[Event]: ...
    def close(self) -> None: ...


class DumpSource(Protocol):
    snaplen: int

    @property
    def lost(self) -> int: ...
    def poll(self, timeout_s: float) -> list[DumpRecord]: ...
    def close(self) -> None: ...


class ConsoleBackend(Protocol):
    pin_dir: str

    def snapshot(self) -> Snapshot:
        """The maps now; snapshot.disabled() when nothing runs. Raises Unavailable."""

    def attribute(self, snap: Snapshot, now: float) -> dict[Endpoint, ProcessInfo]:
        """The process behind each end that has a known owner pid."""

    def now(self) -> float:
        """Wall clock that ages and uptimes are measured against."""

    def enable_offer(self) -> tuple[bool, str]:
        """Whether enable() may work, and what it would do (or why it cannot)."""

    def enable(self) -> str:
        """Load and attach with the configured rules; says what it did. Raises Unavailable."""

    def open_events(self) -> EventSource:
        """The event log from now on. Raises Unavailable."""

    def start_dump(self, ip: str | None, port: int | None, snaplen: int) -> DumpSource:
        """Dump switched on until the source is closed. ValueError: a bad filter; Unavailable."""

    def load_rules(self) -> RulesDoc: ...

    def apply_rules(self, config: rules.Config) -> apply.Applied:
        """Make config's rules live, taking refused connections off the fast path."""

    def save_rules(self, config: rules.Config, path: str) -> None: ...

    def close(self) -> None: ...


class _OwnInstance:
    """A dump session and the Instance only it uses, closed together."""

    def __init__(self, session: DumpSession, inst: Instance):
        self._session, self._inst = session, inst

    def __getattr__(self, name: str):
        return getattr(self._session, name)

    def close(self) -> None:
        try:
            self._session.close()
        finally:
            self._inst.close()


class LiveBackend:
    """The accelerator pinned at pin_dir."""

    def __init__(self, pin_dir: str, config: str | None = None, cgroup: str | None = None):
        self.pin_dir = pin_dir
        self._config = config      # rules file for enable(); a running instance names its own
        self._cgroup = cgroup
        self._inst: Instance | None = None
        self._lock = threading.Lock()
        self._processes = Processes()

    def _instance(self) -> Instance | None:
        with self._lock:
            if self._inst is not None and not Path(self.pin_dir, "sock_ops_map").exists():
                # Disabled behind our back: open fds would go on showing the orphaned maps.
                self._inst.close()
                self._inst = None
            if self._inst is None:
                try:
                    self._inst = Instance(self.pin_dir)
                except NotEnabled:
                    return None
                except PermissionError:
                    raise Unavailable(
                        f"reading the accelerator's maps at {self.pin_dir} needs root "
                        "(CAP_BPF and CAP_SYS_ADMIN): run mdatui with sudo") from None
            return self._inst

    def _running(self) -> Instance:
        inst = self._instance()
        if inst is None:
            raise Unavailable(f"mdatui is not enabled at {self.pin_dir}")
        return inst

    def snapshot(self) -> Snapshot:
        inst = self._instance()
        return snapshot.read(inst) if inst else snapshot.disabled(self.pin_dir)

    def attribute(self, snap: Snapshot, now: float) -> dict[Endpoint, ProcessInfo]:
        out = {}
        for c in snap.connections:
            info = self._processes.info(c.owner.pid, c.owner.uid, socket_since=now - c.age_s)
            if info is not None:
                out[c.end] = info
        return out

    def now(self) -> float:
        return time.time()

    def _enable_config(self) -> str:
        return self._config or apply.default_config()

    def enable_offer(self) -> tuple[bool, str]:
        if os.geteuid() != 0:
            return False, ("enabling loads BPF programs and pins maps, which needs root: "
                           "run mdatui with sudo")
        where = self._cgroup or "the root cgroup (every process on this host)"
        return True, f"attach to {where} with the rules in {self._enable_config()}"

    def enable(self) -> str:
        path = self._enable_config()
        try:
            config = rules.load(path) if Path(path).exists() else rules.Config()
            res = loader.enable(cgroup=self._cgroup, pin_dir=self.pin_dir,
                                config=os.path.abspath(path), ruleset=rules.to_ruleset(config.rules))
        except (system.SetupError, rules.ParseError) as e:
            raise Unavailable(str(e)) from None
        with res.instance as inst:
            return f"enabled on {inst.cgroup} with {len(config.rules)} rules from {path}"

    def open_events(self) -> EventSource:
        try:
            return EventStream(self._running())
        except ReaderBusy as e:
            raise Unavailable(str(e)) from None

    def start_dump(self, ip: str | None, port: int | None, snaplen: int) -> DumpSource:
        self._running()
        # The session gets an Instance of its own: the shared one is closed by the poll thread
        # when the accelerator goes away, and the session must still switch dump off after that.
        inst = Instance(self.pin_dir)
        try:
            return _OwnInstance(DumpSession(inst, ip=ip, port=port, snaplen=snaplen), inst)
        except ReaderBusy as e:
            inst.close()
            raise Unavailable(str(e)) from None
        except BaseException:
            inst.close()
            raise

    def load_rules(self) -> RulesDoc:
        path = apply.default_config(self._instance())
        exists = Path(path).exists()
        return RulesDoc(path, rules.load(path) if exists else rules.Config(), exists)

    def apply_rules(self, config: rules.Config) -> apply.Applied:
        return apply.apply(self._running(), config, None)

    def save_rules(self, config: rules.Config, path: str) -> None:
        rules.save(config, path)

    def close(self) -> None:
        with self._lock:
            if self._inst is not None:
                self._inst.close()
                self._inst = None

