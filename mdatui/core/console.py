"""What the Textual console asks of the accelerator, in one place.

The console (mdatui/ui) never opens a map or imports bcc: it holds a ConsoleBackend. LiveBackend
is the real one, over the pinned maps; tests hand the console a fake with fixed data. The pure
helpers below (frames, pairs, rule previews) are shared by both, so a fake exercises the same
logic the live console runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import loader, rules, snapshot, system
from .instance import Instance, NotEnabled
from .snapshot import Connection, Endpoint, Rates, Snapshot


class Unavailable(Exception):
    """The accelerator cannot be read at all (for instance without root); the message says why."""


# ---------------------------------------------------------------- what the views show

@dataclass(frozen=True)
class Frame:
    """One refresh: a snapshot, the rates since the previous one."""

    snapshot: Snapshot
    now: float                     # wall clock (unix seconds) when it was taken
    total: Rates = Rates(0.0, 0.0)
    per_end: dict[Endpoint, Rates] = field(default_factory=dict)

    @classmethod
    def next(cls, prev: "Frame | None", snap: Snapshot, now: float) -> "Frame":
        if prev is None or not prev.snapshot.enabled or not snap.enabled:
            return cls(snap, now)
        total, per_end = snapshot.rates(prev.snapshot, snap)
        return cls(snap, now, total, per_end)

    @property
    def uptime_s(self) -> float:
        return max(0.0, self.now - self.snapshot.enabled_at) if self.snapshot.enabled_at else 0.0

    def rate(self, end: Endpoint) -> Rates:
        return self.per_end.get(end, Rates(0.0, 0.0))


@dataclass(frozen=True)
class Pair:
    """Two ends that point at each other, or an end whose other half is missing or wrong.

    health: "ok"; "pending" (the connecting end waits for its peer); "one-sided" (the peer's
    entry is gone from the map); "stale" (the peer points elsewhere, or an end left the sockhash).
    """

    a: Connection
    b: Connection | None
    health: str

    @property
    def ends(self) -> tuple[Connection, ...]:
        return (self.a,) if self.b is None else (self.a, self.b)


def pairs(snap: Snapshot) -> list[Pair]:
    """Every connection once, its two ends together; ordered by the first end's address."""
    by_end = {c.end: c for c in snap.connections}
    seen: set[Endpoint] = set()
    out = []
    for c in sorted(snap.connections, key=lambda c: (c.end.local, c.end.remote, c.end.netns)):
        if c.end in seen:
            continue
        seen.add(c.end)
        if c.peer is None:
            out.append(Pair(c, None, "pending"))
            continue
        peer = by_end.get(c.peer)
        if peer is None:
            out.append(Pair(c, None, "one-sided"))
            continue
        if peer.peer == c.end:
            seen.add(peer.end)
            health = "ok" if c.in_sockhash and peer.in_sockhash else "stale"
            out.append(Pair(c, peer, health))
        else:
            out.append(Pair(c, peer, "stale"))
    return out


def _ip_port(addr: str) -> tuple[str, int]:
    ip, _, port = addr.rpartition(":")
    return ip, int(port)


def conn_view(pair: Pair) -> rules.ConnView:
    """What a rule sees of a pair. The rules' options match when ANY address, port or owner of
    the connection does, so the order of the ends does not matter, only that all are there."""
    addrs = dict.fromkeys(a for c in pair.ends for a in (c.end.local, c.end.remote))
    ips = tuple(dict.fromkeys(_ip_port(a)[0] for a in addrs))
    ports = tuple(dict.fromkeys(_ip_port(a)[1] for a in addrs))
    owners = [c.owner for c in pair.ends] + [snapshot.Owner(None, None, None)] * (2 - len(pair.ends))
    return rules.ConnView(ips, ports, tuple(o.uid for o in owners), tuple(o.gid for o in owners))


@dataclass(frozen=True)
class Change:
    """A pair whose verdict differs between the rules in force and the edited ones."""

    pair: Pair
    before: rules.Verdict
    after: rules.Verdict

    @property
    def leaves_fast_path(self) -> bool:
        return self.before.accelerate and not self.after.accelerate


def preview(snap: Snapshot, current: Sequence[rules.Rule], edited: Sequence[rules.Rule]) -> list[Change]:
    """rules.judge on every complete pair, before and after an edit; only the pairs that change."""
    out = []
    for pair in pairs(snap):
        if pair.b is None:
            continue
        view = conn_view(pair)
        before, after = rules.judge(current, view), rules.judge(edited, view)
        if before.accelerate != after.accelerate:
            out.append(Change(pair, before, after))
    return out


@dataclass
class RulesDoc:
    """The rules the console edits: the file they come from and what the kernel runs."""

    path: str | None          # None: enabled without a rules file
    config: rules.Config      # as in the file (empty without one)
    applied: list[rules.Rule]  # what the console last loaded into the kernel, or the file's


# ---------------------------------------------------------------- the facade

class ConsoleBackend(Protocol):
    pin_dir: str

    def snapshot(self) -> Snapshot:
        """The maps now; snapshot.disabled() when nothing runs. Raises Unavailable."""

    def now(self) -> float:
        """Wall clock against which ages and uptimes are shown."""

    def can_enable(self) -> str | None:
        """None when enable() may work, else why not (shown before offering it)."""

    def enable(self) -> None:
        """Load and attach with the configured rules. Raises system.SetupError."""

    def load_rules(self) -> RulesDoc: ...

    def apply_rules(self, edited: Sequence[rules.Rule]) -> None:
        """Make these the live rules. Raises ValueError when they do not fit."""

    def save_rules(self, config: rules.Config, path: str) -> None: ...

    def close(self) -> None: ...


class LiveBackend:
    """The running accelerator at pin_dir, through its pins. Safe to call from worker threads."""

    def __init__(self, pin_dir: str, config: str | None = None, cgroup: str | None = None):
        self.pin_dir = pin_dir
        self._config = config      # rules file for enable(); a running instance names its own
        self._cgroup = cgroup
        self._inst: Instance | None = None
        self._lock = threading.Lock()
        self._applied: list[rules.Rule] | None = None

    def _instance(self) -> Instance | None:
        with self._lock:
            if self._inst is not None and not Path(self.pin_dir, "sock_ops_map").exists():
                # Disabled behind our back: open fds would keep showing the orphaned maps.
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

    def snapshot(self) -> Snapshot:
        inst = self._instance()
        return snapshot.read(inst) if inst else snapshot.disabled(self.pin_dir)

    def now(self) -> float:
        return time.time()

    def can_enable(self) -> str | None:
        if os.geteuid() != 0:
            return "enabling loads BPF programs and pins maps: that needs root (run with sudo)"
        return None

    def enable(self) -> None:
        config = rules.load(self._config) if self._config else None
        ruleset = rules.to_ruleset(config.rules) if config else None
        res = loader.enable(cgroup=self._cgroup, pin_dir=self.pin_dir,
                            config=os.path.abspath(self._config) if self._config else "",
                            ruleset=ruleset)
        res.instance.close()

    def load_rules(self) -> RulesDoc:
        inst = self._instance()
        path = (inst.config if inst else "") or self._config
        config = rules.load(path) if path else rules.Config()
        applied = self._applied if self._applied is not None else config.rules
        return RulesDoc(path or None, config, list(applied))

    def apply_rules(self, edited: Sequence[rules.Rule]) -> None:
        inst = self._instance()
        if inst is None:
            raise system.SetupError(f"mdatui is not enabled at {self.pin_dir}")
        inst.load_rules(rules.to_ruleset(edited))
        self._applied = list(edited)

    def save_rules(self, config: rules.Config, path: str) -> None:
        rules.save(config, path)

    def close(self) -> None:
        with self._lock:
            if self._inst is not None:
                self._inst.close()
                self._inst = None
