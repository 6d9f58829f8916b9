"""Which ends of sock_proxy_map make one connection, and how each pair stands.

Worked out over the columns of a snapshot.Table. Snapshot.pairs (the status line, the overview,
`query`) and the console's Pairs tab count accelerated pairs from this one place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # snapshot imports this module: the types are only named here
    from .ends import Connection
    from .table import Table


@dataclass(frozen=True)
class Pair:
    """Two ends that point at each other, or an end whose other half is missing or wrong.

    `a` is the connecting end when the pair has one. health: "ok" (both ends redirect: an
    accelerated pair); "normal" (a sound pair on the normal path: a rule took it off the fast
    path, or it was handed back to the stack, or an end sent before it was paired; its ends are
    draining, or have left the sockhash); "pending"
    (the connecting end waits for its peer); "one-sided" (the peer's entry is gone from the map);
    "stale" (the peer points elsewhere).
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


HEALTH = ("ok", "normal", "pending", "one-sided", "stale")
OK, NORMAL, PENDING, ONE_SIDED, STALE = range(len(HEALTH))


def _pair_rows(table: Table, rows: np.ndarray, peers: np.ndarray, back: np.ndarray):
    """The pair each of rows is in, given each row's peer row and that one's peer row (-1:
    none): its ends a and b (-1: none), its HEALTH, and whether the row is its pair's b."""
    mutual = (peers >= 0) & (back == rows)
    # A complete pair is told from its connecting end; failing that, from its earlier row.
    def rank(r: np.ndarray) -> np.ndarray:
        return (~table.active[r]).astype(np.int32) * len(table) + r  # maps hold < 2^30 ends
    second = mutual & (rank(peers.clip(min=0)) < rank(rows))
    a, b = np.where(second, peers, rows), np.where(second, rows, peers)
    b_ = b.clip(min=0)
    # An end that stopped redirecting (tainted: the state "normal") or has left the sockhash
    # takes its connection off the fast path, though nothing is broken: ends leave the sockhash
    # once they have drained (core.drain).
    on_fast_path = (table.static["tainted"] == 0) & table.in_sockhash
    stack = ~(on_fast_path[a] & on_fast_path[b_])
    health = np.select(
        [table.static["paired"][a] == 0, b < 0, mutual & stack, mutual],
        [PENDING, ONE_SIDED, NORMAL, OK], STALE).astype(np.uint8)
    return a, b, health, second


@dataclass(frozen=True)
class PairTable:
    """Every connection once, its two ends together: pair k is rows a[k] and b[k] (-1: none)
    of the table, in state HEALTH[health[k]]."""

    table: Table
    a: np.ndarray
    b: np.ndarray
    health: np.ndarray

    @classmethod
    def of(cls, table: Table) -> "PairTable":
        rows = np.arange(len(table), dtype=np.int32)  # as peer_row: half the memory of int64
        peers = table.peer_row
        back = np.where(peers >= 0, peers[peers.clip(min=0)], -1)
        a, b, health, second = _pair_rows(table, rows, peers, back)
        keep = ~second
        return cls(table, a[keep], b[keep], health[keep])

    def of_same_ends(self, table: Table) -> "PairTable":
        """These pairs in another read of the same ends (Table.same_ends)."""
        return self if table is self.table else replace(self, table=table)

    def __len__(self) -> int:
        return len(self.a)

    def pair(self, k: int) -> Pair:
        b = int(self.b[k])
        return Pair(self.table.connection(int(self.a[k])),
                    self.table.connection(b) if b >= 0 else None, HEALTH[self.health[k]])

    def counts(self) -> dict[str, int]:
        return dict(zip(HEALTH, np.bincount(self.health, minlength=len(HEALTH)).tolist()))

    @property
    def accelerated(self) -> int:
        """Pairs whose two ends redirect to each other."""
        return int(np.count_nonzero(self.health == OK))


def pair_rows_of(table: Table, row: int) -> tuple[int, int, str]:
    """The pair a row is in, without pairing every row: its rows a and b (-1: none), its health."""
    rows = np.array([row])
    peers = table.peer_rows(rows)
    back = table.peer_rows(peers) if peers[0] >= 0 else np.array([-1])
    a, b, health, _ = _pair_rows(table, rows, peers, back)
    return int(a[0]), int(b[0]), HEALTH[health[0]]
