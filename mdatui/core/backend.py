"""What the Textual console asks of the accelerator, in one place.

The console (mdatui/ui) never opens a map or a perf ring: it holds a ConsoleBackend. LiveBackend
is the real one, over the pins of a running accelerator; the UI tests hand the console a fake
with fixed data. The pure helpers here (frames, pairs, pcap files; rule previews in verdicts.py) are
used with either, so a fake exercises the same logic the live console runs.

Threads: the console calls snapshot() and attribute() from one worker thread, and owns each
EventSource / DumpSource from the worker thread that opened it (perf rings are not thread-safe);
the other calls come from the UI thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from . import apply, doctor, lifecycle, reader, rules, snapshot
from .dump import DumpRecord, DumpSession, Raw, record  # noqa: F401  (record: for the UI)
from .ends import Endpoint
from .events import Event, EventStream
from .kernel import system
from .kernel.instance import Instance, NotEnabled
from .kernel.perfbuf import ReaderBusy
from .pairing import PairTable
from .pcap import PcapWriter
from .procs import CACHE_SECONDS, ProcessInfo, Processes
from .ring import Handoff, Ring  # noqa: F401  (for the UI, which imports only this module)
from .snapshot import Rates, Snapshot
from .table import Table


class Unavailable(Exception):
    """What the console asked for cannot be had now (no root, not running, a reader already
    attached); the message says why and what to do."""


# Messages the console's dump keeps unless told otherwise (mdatui --dump-keep): at 128 bytes
# a message some 50 MB, for 2 s at 50,000 a second or 5 min at the demo's 300.
DUMP_KEEP = 100_000


# ---------------------------------------------------------------- what the views show

@dataclass(frozen=True)
class Attribution:
    """The process behind each row of a snapshot's table: infos[index[row]], none where the
    index is negative. Rows share a few processes, so each answer is made once."""

    table: Table
    infos: list[ProcessInfo] = field(default_factory=list)
    index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.index is None:
            object.__setattr__(self, "index", np.full(len(self.table), -1, dtype=np.int32))

    @classmethod
    def of(cls, table: Table, by_end: Mapping[Endpoint, ProcessInfo]) -> "Attribution":
        """From answers by end (the console's tests give such)."""
        infos = list(dict.fromkeys(by_end.values()))
        at = {info: i for i, info in enumerate(infos)}
        index = np.full(len(table), -1, dtype=np.int32)
        for end, info in by_end.items():
            row = table.row_of(end)
            if row >= 0:
                index[row] = at[info]
        return cls(table, infos, index)

    def of_row(self, row: int) -> ProcessInfo | None:
        i = self.index[row]
        return self.infos[i] if i >= 0 else None

    def get(self, end: Endpoint) -> ProcessInfo | None:
        row = self.table.row_of(end)
        return self.of_row(row) if row >= 0 else None


@dataclass(frozen=True)
class Frame:
    """One refresh: a snapshot, the rates since the previous one, who owns each end. Per-end
    data are arrays over the rows of snapshot.table."""

    snapshot: Snapshot
    now: float                                  # wall clock (unix seconds) it was taken at
    total: Rates = Rates(0.0, 0.0)
    msgs_rate: np.ndarray | None = None         # None: no earlier frame to compare with
    bytes_rate: np.ndarray | None = None
    processes: Attribution | None = None
    # The snapshot the table was read in: rates count from there, as its counters (closed
    # connections' among them) were read together with that table.
    read_in: Snapshot | None = None
    # Paired here, on the thread that reads the maps: the status line shows how many pairs are
    # accelerated every frame, and pairing a few hundred thousand ends takes tens of ms.
    pairs: PairTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.processes is None:
            object.__setattr__(self, "processes", Attribution(self.snapshot.table))
        if self.read_in is None:
            object.__setattr__(self, "read_in", self.snapshot)
        object.__setattr__(self, "pairs", self.snapshot.pairing)

    @classmethod
    def next(cls, prev: "Frame | None", snap: Snapshot, now: float,
             processes: Attribution | Mapping[Endpoint, ProcessInfo] | None = None) -> "Frame":
        if not isinstance(processes, Attribution):
            processes = Attribution.of(snap.table, processes or {})
        if prev is None or not prev.snapshot.enabled or not snap.enabled:
            return cls(snap, now, processes=processes)
        snap.pair_as(prev.snapshot)
        if snap.table is prev.snapshot.table:  # the ends were not read again (Reader)
            return cls(snap, now, prev.total, prev.msgs_rate, prev.bytes_rate, processes,
                       prev.read_in)
        total, msgs_rate, bytes_rate = snapshot.rates(prev.read_in, snap)
        return cls(snap, now, total, msgs_rate, bytes_rate, processes)

    @property
    def uptime_s(self) -> float:
        return max(0.0, self.now - self.snapshot.enabled_at) if self.snapshot.enabled_at else 0.0

    def row_rate(self, row: int) -> Rates:
        if self.msgs_rate is None or row < 0:
            return Rates(0.0, 0.0)
        return Rates(float(self.msgs_rate[row]), float(self.bytes_rate[row]))

    def rate(self, end: Endpoint) -> Rates:
        return self.row_rate(self.snapshot.table.row_of(end))


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
    def poll_raw(self, timeout_s: float) -> list[Raw]:
        """Messages that arrived, not decoded yet (record() decodes one)."""
    def close(self) -> None: ...


class ConsoleBackend(Protocol):
    pin_dir: str

    def snapshot(self, fresh: bool = False) -> Snapshot:
        """The maps now; snapshot.disabled() when nothing runs. Raises Unavailable. fresh: an
        operator asked for it, so the ends are read even where a refresh would skip them."""

    def attribute(self, snap: Snapshot, now: float) -> Attribution | Mapping[Endpoint, ProcessInfo]:
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


@dataclass(frozen=True)
class _Attributed:
    table: weakref.ref       # of the Table it was made for
    at: float                # time.monotonic() of its full lookup
    infos: list[ProcessInfo]
    index: np.ndarray


# Of one CPU, what reading the ends may take (reader.Reader): with 200,000 ends in the maps
# the console reads them every second refresh at 1 Hz; with fewer, every refresh.
READ_CPU_SHARE = 0.05


def _enable(cgroup: str | None, pin_dir: str, path: str) -> tuple[bool, str]:
    """LiveBackend.enable in its child: whether it worked, and what it did or why not."""
    try:
        config = rules.load(path) if Path(path).exists() else rules.Config()
        res = lifecycle.enable(cgroup=cgroup, pin_dir=pin_dir, config=os.path.abspath(path),
                            ruleset=rules.to_ruleset(config.rules))
    except (system.SetupError, rules.ParseError) as e:
        return False, str(e)
    with res.instance as inst:
        return True, f"enabled on {inst.cgroup} with {len(config.rules)} rules from {path}"


class LiveBackend:
    """The accelerator pinned at pin_dir."""

    def __init__(self, pin_dir: str, config: str | None = None, cgroup: str | None = None):
        self.pin_dir = pin_dir
        self._config = config      # rules file for enable(); a running instance names its own
        self._cgroup = cgroup
        self._inst: Instance | None = None
        self._lock = threading.Lock()
        self._processes = Processes()
        self._reader: reader.Reader | None = None  # of the instance open now, made with it
        self._attributed: _Attributed | None = None  # the last attribute()

    def _instance(self) -> Instance | None:
        with self._lock:
            if self._inst is not None and not Path(self.pin_dir, "sock_ops_map").exists():
                # Disabled behind our back: open fds would go on showing the orphaned maps.
                self._inst.close()
                self._inst = None
            if self._inst is None:
                try:
                    self._inst = Instance(self.pin_dir)
                    self._reader = reader.Reader(cpu_share=READ_CPU_SHARE)
                except NotEnabled:
                    return None
                except PermissionError:
                    raise Unavailable(
                        f"reading the accelerator's maps at {self.pin_dir} needs root "
                        "(CAP_BPF and CAP_SYS_ADMIN): run mdatui with sudo") from None
                except system.SetupError as e:  # one that cannot be read: says what to do
                    raise Unavailable(str(e)) from None
            return self._inst

    def _running(self) -> Instance:
        inst = self._instance()
        if inst is None:
            raise Unavailable(f"mdatui is not enabled at {self.pin_dir}")
        return inst

    def snapshot(self, fresh: bool = False) -> Snapshot:
        inst = self._instance()
        return self._reader.read(inst, fresh) if inst else snapshot.disabled(self.pin_dir)

    def attribute(self, snap: Snapshot, now: float) -> Attribution:
        """Ends already seen in the last read keep what they were attributed to, for as long as
        process lookups are cached anyway (procs.CACHE_SECONDS); only new ends are looked up."""
        table = snap.table
        last = self._attributed
        if last is None or last.table() is None or time.monotonic() - last.at >= CACHE_SECONDS:
            infos, index = self._processes.attribute(table.pid, table.uid, now - table.age_s)
            self._attributed = _Attributed(weakref.ref(table), time.monotonic(), infos, index)
            return Attribution(table, infos, index)
        rows = table.rows_in(last.table())
        index = np.where(rows >= 0, last.index[rows.clip(min=0)], -1).astype(np.int32)
        infos = list(last.infos)
        new = np.flatnonzero(rows < 0)
        if len(new):
            found, at = self._processes.attribute(table.pid[new], table.uid[new],
                                                  now - table.age_s[new])
            known = {info: i for i, info in enumerate(infos)}
            for info in found:
                if info not in known:
                    known[info] = len(infos)
                    infos.append(info)
            remap = np.array([known[info] for info in found] + [-1], dtype=np.int32)
            index[new] = remap[at]  # at -1 (no pid) picks the -1 at the end
        self._attributed = _Attributed(weakref.ref(table), last.at, infos, index)
        return Attribution(table, infos, index)

    def now(self) -> float:
        return time.time()

    def _enable_config(self) -> str:
        return self._config or apply.default_config()

    def enable_offer(self) -> tuple[bool, str]:
        if os.geteuid() != 0:
            return False, ("enabling loads BPF programs and pins maps, which needs root: "
                           "run mdatui with sudo")
        checks = doctor.run(doctor.Host(pin_dir=self.pin_dir))
        failed = "\n".join(c.line() for c in checks if not c.ok)
        if doctor.blocking(checks):
            return False, f"This host cannot run the accelerator:\n{failed}"
        where = self._cgroup or "the root cgroup (every process on this host)"
        # The screen makes the first line a sentence; what failed but does not stop it follows.
        offer = f"attach to {where} with the rules in {self._enable_config()}"
        return True, offer + (f"\n{failed}" if failed else "")

    def enable(self) -> str:
        # In a process of its own: compiling loads BCC's LLVM, some 60 MB that the console
        # would otherwise keep for as long as it runs.
        args = json.dumps([self._cgroup, self.pin_dir, self._enable_config()])
        child = subprocess.run([sys.executable, "-m", __name__], input=args,
                               capture_output=True, text=True)
        if child.returncode != 0:
            last = (child.stderr.strip().splitlines() or ["no output"])[-1]
            raise Unavailable(f"enabling failed: {last}")
        done, text = json.loads(child.stdout)
        if not done:
            raise Unavailable(text)
        return text

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


if __name__ == "__main__":  # LiveBackend.enable's child: (cgroup, pin dir, rules file) on stdin
    print(json.dumps(_enable(*json.load(sys.stdin))))
