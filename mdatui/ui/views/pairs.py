"""Pairs: each connection's two ends side by side, both directions, broken pairs marked."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static
from rich.text import Text

from ...core.console import Frame, Pair, pairs
from ...core.snapshot import Connection, Rates
from .. import format as fmt
from ..widgets.filter_input import FilterInput
from ..widgets.columns import address_key, styled
from ..widgets.sortable_table import Column, SortableTable
from .base import View


def _end(c: Connection | None) -> str:
    return f"{c.end.local} → {c.end.remote}" if c else "—"


def _sent(c: Connection | None, attr: str) -> int | None:
    return getattr(c, attr) if c else None


class PairRow:
    """A pair with the rates of both its ends, from one frame."""

    def __init__(self, pair: Pair, frame: Frame):
        self.pair = pair
        ends = pair.ends
        self.rate = Rates(sum(frame.rate(c.end).msgs_per_s for c in ends),
                          sum(frame.rate(c.end).bytes_per_s for c in ends))


def _count(v: int | None) -> str:
    return "—" if v is None else fmt.count(v)


def _size(v: int | None) -> str:
    return "—" if v is None else fmt.size(v)


# Sorting by health puts what needs a look first.
HEALTH_ORDER = {"one-sided": 0, "stale": 1, "pending": 2, "ok": 3}

COLUMNS: list[Column[PairRow]] = [
    Column("a", "Key (connecting end)", lambda r: address_key(r.pair.a.end.local),
           lambda r: _end(r.pair.a)),
    Column("b", "Peer", lambda r: address_key(r.pair.b.end.local) if r.pair.b else None,
           lambda r: _end(r.pair.b)),
    Column("health", "Health", lambda r: HEALTH_ORDER[r.pair.health], lambda r: styled(r.pair.health)),
    Column("state", "State", lambda r: r.pair.a.state, lambda r: styled(r.pair.a.state)),
    Column("ab_msgs", "→ msgs", lambda r: r.pair.a.msgs, lambda r: fmt.count(r.pair.a.msgs),
           numeric=True),
    Column("ab_bytes", "→ bytes", lambda r: r.pair.a.bytes, lambda r: fmt.size(r.pair.a.bytes),
           numeric=True),
    Column("ba_msgs", "← msgs", lambda r: _sent(r.pair.b, "msgs"),
           lambda r: _count(_sent(r.pair.b, "msgs")), numeric=True),
    Column("ba_bytes", "← bytes", lambda r: _sent(r.pair.b, "bytes"),
           lambda r: _size(_sent(r.pair.b, "bytes")), numeric=True),
    Column("rate", "Rate", lambda r: r.rate.bytes_per_s, lambda r: fmt.rate(r.rate.bytes_per_s),
           numeric=True),
    Column("age", "Age", lambda r: r.pair.a.age_s, lambda r: fmt.duration(r.pair.a.age_s),
           numeric=True),
]


class PairsView(View):
    BINDINGS = [Binding("slash", "focus_filter", "Filter", key_display="/")]

    def compose(self) -> ComposeResult:
        yield FilterInput("pairs-table", id="pairs-filter")
        yield Static(id="pairs-summary")
        yield SortableTable(COLUMNS, lambda r: r.pair.key, sort="health", id="pairs-table")

    @property
    def table(self) -> SortableTable[PairRow]:
        return self.query_one("#pairs-table", SortableTable)

    def show_frame(self, frame: Frame) -> None:
        found = pairs(frame.snapshot)
        self.table.show([PairRow(p, frame) for p in found])
        broken = sum(p.health in ("one-sided", "stale") for p in found)
        summary = Text(f"{len(found)} pairs, {sum(p.health == 'ok' for p in found)} ok, "
                       f"{sum(p.health == 'pending' for p in found)} pending, ")
        summary.append(f"{broken} one-sided or stale", style="bold red" if broken else "")
        self.query_one("#pairs-summary", Static).update(summary)
