"""What sock_ops and sk_msg report as it happens (perf array `mda_events`), as typed events.

    with EventStream(inst) as stream:
        for ev in stream.poll(0.5):
            ...

ACCELERATED and REFUSED describe a connection: `end` is its connecting end, `peer` its accepting
end. CLOSED and REDIRECT_FAILED describe one end, with what its sends did until then.
"""

from __future__ import annotations

import ctypes as ct
import os
from dataclasses import dataclass, fields
from typing import ClassVar

from .ends import Endpoint, Owner
from .kernel import abi
from .kernel.instance import Instance
from .kernel.perfbuf import PerfReader, wall_offset_ns


@dataclass(frozen=True)
class Event:
    ts_ns: int                  # unix time
    end: Endpoint
    peer: Endpoint | None       # None: the end closed before a peer paired with it
    owner: Owner
    kind: ClassVar[str]

    @property
    def ts(self) -> float:
        return self.ts_ns / 1e9

    def to_json(self) -> dict:
        out = {"ts": round(self.ts, 6), "kind": self.kind, "local": self.end.local,
               "remote": self.end.remote, "netns": self.end.netns,
               "peer": {"local": self.peer.local, "remote": self.peer.remote} if self.peer else None,
               "owner": _owner_json(self.owner)}
        for f in fields(self)[4:]:  # what the subclass adds
            value = getattr(self, f.name)
            out[f.name] = _owner_json(value) if isinstance(value, Owner) else value
        return out


@dataclass(frozen=True)
class Accelerated(Event):
    peer_owner: Owner
    kind: ClassVar[str] = "accelerated"


@dataclass(frozen=True)
class Refused(Event):
    peer_owner: Owner
    rule: int | None            # index in the live rule set; None: no ACCEPT rule matched
    kind: ClassVar[str] = "refused"


@dataclass(frozen=True)
class Closed(Event):
    msgs: int                   # final counts of this end's sends
    bytes: int
    passed: int
    kind: ClassVar[str] = "closed"


@dataclass(frozen=True)
class RedirectFailed(Event):
    msgs: int                   # counts up to the failure; later sends go through the stack
    bytes: int
    passed: int
    kind: ClassVar[str] = "redirect_failed"


@dataclass(frozen=True)
class Demoted(Event):
    msgs: int                   # counts when a stream went back to the stack
    bytes: int
    passed: int
    kind: ClassVar[str] = "demoted"


def _owner_json(o: Owner) -> dict:
    return {"pid": o.pid, "uid": o.uid, "gid": o.gid}


def _peer(key: abi.SockKey) -> Endpoint | None:
    return Endpoint.of(key) if key.local_port or key.remote_port else None


def decode(raw: bytes, wall_offset: int | None = None) -> Event | None:
    """One perf record; None for a type this version does not know (newer BPF programs).
    wall_offset as perfbuf.wall_offset_ns() gives it; taken now if None."""
    if len(raw) < ct.sizeof(abi.Event):
        raise ValueError(f"event record of {len(raw)} bytes, expected {ct.sizeof(abi.Event)}")
    ev = abi.Event.from_buffer_copy(raw[: ct.sizeof(abi.Event)])
    if wall_offset is None:
        wall_offset = wall_offset_ns()
    common = dict(ts_ns=ev.ts_ns + wall_offset, end=Endpoint.of(ev.key), peer=_peer(ev.peer),
                  owner=Owner.of(ev.owner))
    if ev.type == abi.EventType.ACCELERATED:
        return Accelerated(**common, peer_owner=Owner.of(ev.peer_owner))
    if ev.type == abi.EventType.REFUSED:
        return Refused(**common, peer_owner=Owner.of(ev.peer_owner),
                       rule=None if ev.rule == abi.NO_RULE else ev.rule)
    counts = dict(msgs=ev.msgs, bytes=ev.bytes, passed=ev.passed)
    if ev.type == abi.EventType.CLOSED:
        return Closed(**common, **counts)
    if ev.type == abi.EventType.REDIRECT_FAILED:
        return RedirectFailed(**common, **counts)
    if ev.type == abi.EventType.DEMOTED:
        return Demoted(**common, **counts)
    return None


class EventStream:
    """The event log of a running accelerator. One stream per accelerator at a time."""

    def __init__(self, inst: Instance, page_cnt: int = 64):
        self._reader = PerfReader(os.path.join(inst.pin_dir, "mda_events"), page_cnt)

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def lost(self) -> int:
        """Events dropped because this reader fell behind."""
        return self._reader.lost

    def poll(self, timeout_s: float) -> list[Event]:
        """Events that arrived, in time order; waits at most timeout_s for the first one."""
        raws = self._reader.poll(timeout_s)
        offset = wall_offset_ns()
        return [ev for raw in raws if (ev := decode(raw, offset)) is not None]

    def close(self) -> None:
        self._reader.close()
