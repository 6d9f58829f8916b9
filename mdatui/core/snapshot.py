"""What the accelerator looks like at one instant; rates come from two of them.

Both the CLI (`query`) and the console hold these; reader.py makes them from the pinned maps.
The ends are a table.Table of columns, and `Snapshot.connections` makes Connection objects from
its rows as they are read, for the CLI, the tests and whatever shows a handful of rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import rules
from .ends import Connection
from .pairing import PairTable
from .service_status import Usage
from .table import Connections, Table


@dataclass(frozen=True)
class DumpState:
    on: bool
    ip: str | None      # CIDR, or None for any
    port: int | None
    snaplen: int


@dataclass(frozen=True)
class ShortLived:
    """A destination whose new connections stay on the stack: its connections carry too few
    messages to gain from the fast path (abi.SHORT_MSGS)."""
    destination: str        # address:port its connecting ends connect to
    netns: int              # netns cookie where the address is loopback, else 0
    msgs_per_conn: float    # both ways, over its last connections that were accelerated


@dataclass
class Snapshot:
    """Give either connections (objects) or table (columns); the other is made from it."""

    taken_at: float                       # time.monotonic()
    enabled: bool
    pin_dir: str
    cgroup: str = ""
    config: str = ""
    enabled_at: int = 0                   # unix seconds
    programs: dict[str, int] = field(default_factory=dict)
    maps: dict[str, dict[str, int]] = field(default_factory=dict)
    connections: Sequence[Connection] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    dump: DumpState | None = None
    active_rules: list[rules.Rule] = field(default_factory=list)  # the live set, read back
    table: Table | None = field(default=None, repr=False, compare=False)
    ends_every_s: float = 0.0             # the ends are read at most this often (Reader)
    service: int | None = None            # pid of `mdatui serve`, None when it does not run
    service_usage: Usage | None = None    # what it has cost since it started
    short_lived: list[ShortLived] = field(default_factory=list)
    nodelay_streams: str = "stack"        # abi.NODELAY_STREAMS: where TCP_NODELAY streams go

    def __post_init__(self) -> None:
        if self.table is None:
            self.table = Table.of(self.connections)
        elif not self.connections:
            self.connections = Connections(self.table)

    @cached_property
    def redirected_msgs(self) -> int:
        return self.stats.get("closed_msgs", 0) + int(self.table.msgs.sum())

    @cached_property
    def redirected_bytes(self) -> int:
        return self.stats.get("closed_bytes", 0) + int(self.table.bytes.sum())

    @property
    def rules_active(self) -> int:
        return len(self.active_rules)

    @cached_property
    def pairing(self) -> PairTable:
        """Kept here, not on the table: a table holding its pairs would be a reference cycle,
        and tables are large."""
        return PairTable.of(self.table)

    def pair_as(self, earlier: "Snapshot") -> None:
        """Take the pairs earlier worked out, if its table holds the same ends (Table.same_ends):
        pairing 200,000 ends takes tens of ms."""
        if ("pairing" not in self.__dict__ and "pairing" in earlier.__dict__
                and self.table.same_ends(earlier.table)):
            self.__dict__["pairing"] = earlier.pairing.of_same_ends(self.table)

    @cached_property
    def pairs(self) -> int:
        """Connections whose two ends redirect to each other (pairing's "ok")."""
        return self.pairing.accelerated

    def kept_off(self, shown: int = 3) -> str:
        """The short-lived connections left to the stack, and to where, for people."""
        text = f"{self.stats.get('short', 0)} short-lived connections"
        if self.short_lived:
            named = [f"{s.destination} ({s.msgs_per_conn:.1f} msgs each)"
                     for s in self.short_lived[:shown]]
            more = len(self.short_lived) - shown
            text += "; now to " + ", ".join(named) + (f" and {more} more" if more > 0 else "")
        return text

    def service_text(self) -> str | None:
        """`mdatui serve` as query and the Overview say it, if it runs."""
        if self.service is None:
            return None
        cost = ("" if self.service_usage is None
                else f", {100 * self.service_usage.cpu_share:.1f} % of a CPU since it started")
        return f"running (pid {self.service}{cost})"

    def to_json(self, connections: bool = False) -> dict:
        out = {
            "enabled": self.enabled,
            "pin_dir": self.pin_dir,
            "cgroup": self.cgroup,
        }
        if not self.enabled:
            return out
        out.update(
            config=self.config,
            enabled_at=self.enabled_at,
            programs=self.programs,
            maps=self.maps,
            stats=self.stats,
            dump={"on": self.dump.on, "ip": self.dump.ip, "port": self.dump.port,
                  "snaplen": self.dump.snaplen} if self.dump else None,
            rules_active=self.rules_active,
            nodelay_streams=self.nodelay_streams,
            service={"running": self.service is not None, "pid": self.service,
                     "cpu_share": (None if self.service_usage is None
                                   else round(self.service_usage.cpu_share, 4))},
            short_lived=[{"destination": s.destination, "netns": s.netns,
                          "msgs_per_connection": round(s.msgs_per_conn, 2)}
                         for s in self.short_lived],
            totals={"redirected_msgs": self.redirected_msgs,
                    "redirected_bytes": self.redirected_bytes,
                    "pairs": self.pairs},
        )
        if connections:
            out["connections"] = [c.to_json() for c in self.connections]
        return out


def nodelay_text(policy: str) -> str:
    """What becomes of a TCP_NODELAY stream whose ends are not on one CPU (abi.NODELAY_STREAMS),
    as enable, query and the Overview say it."""
    where = "kept on the fast path" if policy == "fast" else "handed back to the stack"
    return f"{where} (--nodelay-streams {policy})"


def disabled(pin_dir: str) -> Snapshot:
    return Snapshot(taken_at=time.monotonic(), enabled=False, pin_dir=pin_dir)


@dataclass(frozen=True)
class Rates:
    msgs_per_s: float
    bytes_per_s: float


def rates(prev: Snapshot, cur: Snapshot) -> tuple[Rates, np.ndarray, np.ndarray]:
    """Totals, and msgs/s and bytes/s of each row of cur.table; ends new in cur count from zero."""
    n = len(cur.table)
    dt = cur.taken_at - prev.taken_at
    if dt <= 0:
        return Rates(0.0, 0.0), np.zeros(n, np.float32), np.zeros(n, np.float32)
    rows = cur.table.rows_in(prev.table)
    per = []
    for column in ("msgs", "bytes"):
        now = cur.table.counters[column]
        before = prev.table.counters[column][rows.clip(min=0)] if len(prev.table) else 0
        before = np.where(rows >= 0, before, 0)
        # Counters only grow while an end lives; `where` keeps u64 from wrapping all the same.
        per.append((np.where(now > before, now - before, 0) / dt).astype(np.float32))
    total = Rates(max(cur.redirected_msgs - prev.redirected_msgs, 0) / dt,
                  max(cur.redirected_bytes - prev.redirected_bytes, 0) / dt)
    return total, per[0], per[1]
