"""What the accelerator looks like at one instant, read from its pinned maps.

Both the CLI (`query`) and the console read these objects; rates come from two of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import abi
from .instance import Instance


@dataclass(frozen=True)
class Endpoint:
    """One end of a TCP connection as that end sees it; netns is 0 unless an address is loopback."""

    local: str
    remote: str
    netns: int = 0

    @classmethod
    def of(cls, key: abi.SockKey) -> "Endpoint":
        return cls(key.local, key.remote, key.netns)


@dataclass(frozen=True)
class Owner:
    pid: int | None
    uid: int | None
    gid: int | None

    @classmethod
    def of(cls, o: abi.Owner) -> "Owner":
        def known(v: int) -> int | None:
            return None if v == abi.UNKNOWN_ID else v
        return cls(known(o.pid), known(o.uid), known(o.gid))


@dataclass(slots=True)  # not frozen: frozen dataclasses are slow to build 100,000 times a second
class Connection:
    """An end in sock_proxy_map: its peer and what its sends did."""

    end: Endpoint
    peer: Endpoint | None       # None while the connecting end waits for its peer
    state: str                  # "accelerated", "pending", "normal" (sends go through the stack)
    msgs: int
    bytes: int
    passed: int
    age_s: float
    owner: Owner
    in_sockhash: bool
    active: bool = False        # True for the end that called connect()

    def to_json(self) -> dict:
        return {
            "local": self.end.local,
            "remote": self.end.remote,
            "netns": self.end.netns,
            "peer": {"local": self.peer.local, "remote": self.peer.remote} if self.peer else None,
            "state": self.state,
            "role": "connecting" if self.active else "accepting",
            "msgs": self.msgs,
            "bytes": self.bytes,
            "passed": self.passed,
            "age_s": round(self.age_s, 3),
            "owner": {"pid": self.owner.pid, "uid": self.owner.uid, "gid": self.owner.gid},
        }


@dataclass(frozen=True)
class DumpState:
    on: bool
    ip: str | None      # CIDR, or None for any
    port: int | None
    snaplen: int


@dataclass
class Snapshot:
    taken_at: float                       # time.monotonic()
    enabled: bool
    pin_dir: str
    cgroup: str = ""
    config: str = ""
    enabled_at: int = 0                   # unix seconds
    programs: dict[str, int] = field(default_factory=dict)
    maps: dict[str, dict[str, int]] = field(default_factory=dict)
    connections: list[Connection] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    dump: DumpState | None = None
    rules_active: int = 0

    @property
    def redirected_msgs(self) -> int:
        return self.stats.get("closed_msgs", 0) + sum(c.msgs for c in self.connections)

    @property
    def redirected_bytes(self) -> int:
        return self.stats.get("closed_bytes", 0) + sum(c.bytes for c in self.connections)

    @property
    def pairs(self) -> int:
        return sum(1 for c in self.connections if c.state == "accelerated") // 2

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
            totals={"redirected_msgs": self.redirected_msgs,
                    "redirected_bytes": self.redirected_bytes,
                    "pairs": self.pairs},
        )
        if connections:
            out["connections"] = [c.to_json() for c in self.connections]
        return out


# Decoding addresses dominates a 100,000-entry read; ends and owners repeat from one refresh to
# the next, so they are decoded once and found again by their raw bytes.
_decoded: dict[bytes, Endpoint | Owner] = {}


def _cached(raw_struct, decode):
    raw = bytes(raw_struct)
    found = _decoded.get(raw)
    if found is None:
        if len(_decoded) > 4 * abi.MAX_SOCKS:
            _decoded.clear()
        found = _decoded[raw] = decode(raw_struct)
    return found


def _ktime_now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _state(conn: abi.Conn) -> str:
    if conn.tainted:
        return "normal"
    return "accelerated" if conn.paired else "pending"


def _dump_state(ctl: abi.Control) -> DumpState:
    ip = None
    if ctl.dump_mask:
        prefix = bin(abi.ip_be("255.255.255.255") & ctl.dump_mask).count("1")
        ip = f"{abi.ip_str(ctl.dump_ip)}/{prefix}"
    return DumpState(bool(ctl.dump_on), ip, ctl.dump_port or None, ctl.snaplen)


def read(inst: Instance) -> Snapshot:
    """One pass over the maps. Entries that change meanwhile are read as they are found."""
    now = _ktime_now_ns()
    in_hash = {k.ident() for k in inst.maps["sock_ops_map"].keys()}
    conns = []
    for key, c in inst.maps["sock_proxy_map"].items_batch():
        conns.append(Connection(
            end=_cached(key, Endpoint.of),
            peer=_cached(c.peer, Endpoint.of) if c.paired else None,
            state=_state(c),
            msgs=c.msgs, bytes=c.bytes, passed=c.passed,
            age_s=max(0, now - c.since_ns) / 1e9,
            owner=_cached(c.owner, Owner.of),
            in_sockhash=key.ident() in in_hash,
            active=bool(c.active),
        ))
    names = ("sock_ops_map", "sock_proxy_map", "sock_helper_map")
    counts = {"sock_ops_map": len(in_hash), "sock_proxy_map": len(conns),
              "sock_helper_map": inst.maps["sock_helper_map"].count()}
    meta = inst.meta
    rules = inst.active_rules()
    return Snapshot(
        taken_at=time.monotonic(),
        enabled=True,
        pin_dir=inst.pin_dir,
        cgroup=meta.cgroup.decode(),
        config=meta.config.decode(),
        enabled_at=meta.enabled_at,
        programs=inst.program_ids(),
        maps={n: {"entries": counts[n], "capacity": inst.map_capacity(n)} for n in names},
        connections=conns,
        stats=inst.stats(),
        dump=_dump_state(inst.control()),
        rules_active=rules.count if rules else 0,
    )


def disabled(pin_dir: str) -> Snapshot:
    return Snapshot(taken_at=time.monotonic(), enabled=False, pin_dir=pin_dir)


@dataclass(frozen=True)
class Rates:
    msgs_per_s: float
    bytes_per_s: float


def rates(prev: Snapshot, cur: Snapshot) -> tuple[Rates, dict[Endpoint, Rates]]:
    """Totals and per-end rates between two snapshots; ends new in cur count from zero."""
    dt = cur.taken_at - prev.taken_at
    if dt <= 0:
        return Rates(0.0, 0.0), {}
    before = {c.end: c for c in prev.connections}
    per = {}
    for c in cur.connections:
        p = before.get(c.end)
        dm = c.msgs - (p.msgs if p else 0)
        db = c.bytes - (p.bytes if p else 0)
        per[c.end] = Rates(max(dm, 0) / dt, max(db, 0) / dt)
    total = Rates(max(cur.redirected_msgs - prev.redirected_msgs, 0) / dt,
                  max(cur.redirected_bytes - prev.redirected_bytes, 0) / dt)
    return total, per
