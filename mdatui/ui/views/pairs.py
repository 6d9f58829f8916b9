"""Pairs: each connection's two ends side by side, both directions, broken pairs marked."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from ...core import addrs
from ...core.backend import Frame
from ...core.ends import STATES, Connection
from ...core.pairing import HEALTH, Pair
from ...core.snapshot import Rates
from .. import format as fmt
from ..widgets.columns import Addresses, Leftover, indexed_search, styled
from ..widgets.filter_input import FilterInput
from ..widgets.sortable_table import SortableTable
from ..widgets.table_rows import Column
from .base import EndsView
from .connections import EndOrder


@dataclass(frozen=True)
class PairRow:
    """A pair with the rates of both its ends, from one frame."""

    pair: Pair
    rate: Rates


class PairRows:
    """Every pair of a frame, as the table sorts and filters them: columns of the ends' rows."""

    REUSED = ("a_local", "a_remote", "b_local", "b_remote", "end_order")

    def __init__(self, frame: Frame, earlier: Leftover | None = None):
        self.frame = frame
        self.pairs = frame.pairs
        self.a, self.b = self.pairs.a, self.pairs.b
        self.has_b = self.b >= 0
        self._b = self.b.clip(min=0)  # where there is no b, these rows' values are not used
        self.table = frame.snapshot.table
        if earlier is not None:
            earlier.give(self, self.made_of(frame))

    @staticmethod
    def made_of(frame: Frame) -> tuple[np.ndarray, ...]:
        """What the reused columns are made of: the same ends, paired alike."""
        return frame.snapshot.table.keys, frame.pairs.a, frame.pairs.b

    def leftover(self) -> Leftover:
        return Leftover.of(self, self.made_of(self.frame), self.REUSED)

    def __len__(self) -> int:
        return len(self.a)

    @cached_property
    def _ipv4(self) -> dict[str, np.ndarray | None]:
        """Each side's addresses as addrs.ipv4_words gives them for all the ends: gathered for the
        rows of a column as four bytes each rather than sixteen (4 ms less a column)."""
        return {side: addrs.ipv4_words(self.table.keys[f"{side}_ip"]) for side in ("local", "remote")}

    def _addresses(self, ends: np.ndarray, side: str) -> Addresses:
        keys = self.table.keys
        v4 = self._ipv4[side]
        if v4 is not None:
            return Addresses(None, keys[f"{side}_port"][ends], v4[ends])
        return Addresses(keys[f"{side}_ip"][ends], keys[f"{side}_port"][ends])

    @cached_property
    def a_local(self) -> Addresses:
        return self._addresses(self.a, "local")

    @cached_property
    def a_remote(self) -> Addresses:
        return self._addresses(self.a, "remote")

    @cached_property
    def b_local(self) -> Addresses:
        return self._addresses(self._b, "local")

    @cached_property
    def b_remote(self) -> Addresses:
        return self._addresses(self._b, "remote")

    @cached_property
    def end_order(self) -> EndOrder:
        return EndOrder(self.table.keys)

    def tiebreak(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.end_order.of(self.a[rows])

    def item(self, k: int) -> PairRow:
        pair = self.pairs.pair(k)
        rates = [self.frame.row_rate(int(r)) for r in (self.a[k], self.b[k]) if r >= 0]
        return PairRow(pair, Rates(sum(r.msgs_per_s for r in rates), sum(r.bytes_per_s for r in rates)))

    def of_b(self, values: np.ndarray) -> np.ndarray:
        """A column of the table's rows, of each pair's b end."""
        return self.without_b(values[self._b])

    def without_b(self, values: np.ndarray) -> np.ndarray:
        """A column of the pairs with none (the largest value) where a pair has no b end."""
        return np.where(self.has_b, values, np.iinfo(values.dtype).max)

    @cached_property
    def rate(self) -> np.ndarray:
        rate = self.frame.bytes_rate
        if rate is None:
            return np.zeros(len(self))
        return rate[self.a] + np.where(self.has_b, rate[self._b], 0.0)

    def search_b(self, needle: str) -> np.ndarray:
        found = self.b_local.search(needle) | self.b_remote.search(needle)
        return np.where(self.has_b, found, needle in "—")


def _end(c: Connection | None) -> str:
    return f"{c.end.local} → {c.end.remote}" if c else "—"


def _count(v: int | None) -> str:
    return "—" if v is None else fmt.count(v)


def _size(v: int | None) -> str:
    return "—" if v is None else fmt.size(v)


def _b(row: PairRow, attr: str) -> int | None:
    return getattr(row.pair.b, attr) if row.pair.b else None


# Sorting by health puts what needs a look first.
HEALTH_ORDER = {"one-sided": 0, "stale": 1, "pending": 2, "normal": 3, "ok": 4}
_HEALTH_RANK = np.array([HEALTH_ORDER[h] for h in HEALTH], dtype=np.uint8)

# The filter looks at the ends' addresses (a needle across " → " finds nothing), health and state.
COLUMNS: list[Column[PairRow]] = [
    Column("a", "Key (connecting end)", text=lambda r: _end(r.pair.a),
           order=lambda rows: rows.a_local.order,
           search=lambda rows, needle: rows.a_local.search(needle) | rows.a_remote.search(needle)),
    Column("b", "Peer", text=lambda r: _end(r.pair.b), order=lambda rows: rows.without_b(rows.b_local.order),
           search=lambda rows, needle: rows.search_b(needle)),
    Column("health", "Health", text=lambda r: styled(r.pair.health),
           order=lambda rows: _HEALTH_RANK[rows.pairs.health],
           search=lambda rows, needle: indexed_search(rows.pairs.health, list(HEALTH), needle)),
    Column("state", "State", text=lambda r: styled(r.pair.a.state),
           order=lambda rows: rows.table.state[rows.a],
           search=lambda rows, needle: indexed_search(rows.table.state[rows.a], list(STATES),
                                                      needle)),
    Column("ab_msgs", "→ msgs", text=lambda r: fmt.count(r.pair.a.msgs),
           order=lambda rows: rows.table.msgs[rows.a], numeric=True),
    Column("ab_bytes", "→ bytes", text=lambda r: fmt.size(r.pair.a.bytes),
           order=lambda rows: rows.table.bytes[rows.a], numeric=True),
    Column("ba_msgs", "← msgs", text=lambda r: _count(_b(r, "msgs")),
           order=lambda rows: rows.of_b(rows.table.msgs), numeric=True),
    Column("ba_bytes", "← bytes", text=lambda r: _size(_b(r, "bytes")),
           order=lambda rows: rows.of_b(rows.table.bytes), numeric=True),
    Column("rate", "Rate", text=lambda r: fmt.rate(r.rate.bytes_per_s), order=lambda rows: rows.rate,
           numeric=True),
    Column("age", "Age", text=lambda r: fmt.duration(r.pair.a.age_s),
           order=lambda rows: rows.table.age_s[rows.a], numeric=True),
]


class PairsView(EndsView):
    ROWS = PairRows
    TABLE_ID = "pairs-table"

    def compose(self) -> ComposeResult:
        yield FilterInput(self.TABLE_ID, id="pairs-filter")
        yield Static(id="pairs-summary")
        yield SortableTable(COLUMNS, lambda r: r.pair.key, sort="health", id=self.TABLE_ID)

    def show_frame(self, frame: Frame) -> None:
        self.show_rows(frame)
        counts = frame.pairs.counts()
        broken = counts["one-sided"] + counts["stale"]
        summary = Text(f"{len(frame.pairs)} pairs: {counts['ok']} ok (accelerated), "
                       f"{counts['normal']} on the normal path, {counts['pending']} pending, ")
        # "broken" (one-sided or stale) keeps the line within 80 columns
        summary.append(f"{broken} broken", style="bold red" if broken else "")
        self.query_one("#pairs-summary", Static).update(summary, layout=False)  # one line
