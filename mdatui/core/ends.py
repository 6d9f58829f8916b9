"""The ends of accelerated connections as values: what the CLI, the tests and a view of a few rows
hold. The console works on columns of them instead (table.Table).
"""

from __future__ import annotations

from dataclasses import dataclass

from .kernel import abi

# Row states as small integers; in this order they sort as their names do.
STATES = ("accelerated", "normal", "pending")
ACCELERATED, NORMAL, PENDING = range(len(STATES))


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
        return cls.of_ids(o.pid, o.uid, o.gid)

    @classmethod
    def of_ids(cls, pid: int, uid: int, gid: int) -> "Owner":
        def known(v: int) -> int | None:
            return None if v == abi.UNKNOWN_ID else v
        return cls(known(pid), known(uid), known(gid))


@dataclass(slots=True)
class Connection:
    """An end in sock_proxy_map: its peer and what its sends did."""

    end: Endpoint
    peer: Endpoint | None       # None while the connecting end waits for its peer
    state: str                  # "accelerated", "pending", "draining" (stopped redirecting, still
                                # in the sockhash until its reader has taken all), "normal" (TCP)
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

