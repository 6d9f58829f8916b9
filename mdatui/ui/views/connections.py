"""Connections: every end in sock_proxy_map, who owns it, what it sent; the selected one in detail."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from ...core.backend import Frame
from ...core.ends import STATES, Connection
from ...core.kernel.abi import UNKNOWN_ID
from ...core.pairing import pair_rows_of
from ...core.procs import ProcessInfo
from ...core.snapshot import Rates
from .. import format as fmt
from ..widgets.columns import Addresses, Distinct, Leftover, indexed_order, indexed_search, numbers32, styled
from ..widgets.filter_input import FilterInput
from ..widgets.sortable_table import SortableTable
from ..widgets.table_rows import Column
from .base import EndsView


@dataclass(frozen=True)
class ConnRow:
    row: int              # in the frame's snapshot.table
    conn: Connection
    rate: Rates
    process: ProcessInfo | None

    @property
    def key(self) -> str:
        e = self.conn.end
        return f"{e.local}>{e.remote}@{e.netns}"


def key_order(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ends in the order of their addresses (local ip, port, remote ip, port, netns) as two
    numbers each, least significant first; what rows that tie on a column are ordered by.
    All-IPv4 addresses take no sort (addrs.numbers)."""
    remote = numbers32(keys["remote_ip"])
    high = ((numbers32(keys["local_ip"]) << np.uint64(32))
            | (keys["local_port"].astype(np.uint64) << np.uint64(16)) | (remote >> np.uint64(16)))
    low = (((remote & np.uint64(0xFFFF)) << np.uint64(48))
           | (keys["remote_port"].astype(np.uint64) << np.uint64(32))
           | (keys["netns"] & np.uint64(0xFFFFFFFF)))
    return low, high


# Past this many rows, rows that tie on a column are ordered by each end's rank among all the
# ends, worked out once for a set of ends (some 30 ms at 200,000), rather than by the numbers
# of their addresses each time: a sort by a column in which most rows hold one value (rates of
# 0, one netns) took 25-35 ms a press.
RANKED_PAST = 4096


class EndOrder:
    """The ends of a table in the order of their addresses (key_order)."""

    def __init__(self, keys: np.ndarray):
        self._keys = keys

    @cached_property
    def _rank(self) -> np.ndarray:
        low, high = key_order(self._keys)
        rank = np.empty(len(low), dtype=np.int32)
        rank[np.lexsort((low, high))] = np.arange(len(low), dtype=np.int32)
        return rank

    def of(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Sort keys of these rows, least significant first (Rows.tiebreak)."""
        if len(rows) > RANKED_PAST or "_rank" in self.__dict__:
            return (self._rank[rows],)
        return key_order(self._keys[rows])


class ConnRows:
    """Every end of a frame, as the table sorts and filters them. What earlier rows worked out
    of the same ends is taken over (Leftover)."""

    REUSED = ("local", "remote", "netns", "pid", "end_order")

    def __init__(self, frame: Frame, earlier: Leftover | None = None):
        self.frame = frame
        self.table = frame.snapshot.table
        if earlier is not None:
            earlier.give(self, self.made_of(frame))

    @staticmethod
    def made_of(frame: Frame) -> tuple[np.ndarray, ...]:
        """What the reused columns are made of: the ends with their peers, owners and states."""
        return frame.snapshot.table.keys, frame.snapshot.table.static

    def leftover(self) -> Leftover:
        return Leftover.of(self, self.made_of(self.frame), self.REUSED)

    @cached_property
    def end_order(self) -> EndOrder:
        return EndOrder(self.table.keys)

    @cached_property
    def local(self) -> Addresses:
        return Addresses(self.table.keys["local_ip"], self.table.keys["local_port"])

    @cached_property
    def remote(self) -> Addresses:
        return Addresses(self.table.keys["remote_ip"], self.table.keys["remote_port"])

    @cached_property
    def netns(self) -> Distinct:
        return Distinct(self.table.keys["netns"])

    @cached_property
    def pid(self) -> Distinct:
        return Distinct(self.table.pid)

    def __len__(self) -> int:
        return len(self.table)

    def tiebreak(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.end_order.of(rows)

    def item(self, row: int) -> ConnRow:
        return ConnRow(row, self.table.connection(row), self.frame.row_rate(row),
                       self.frame.processes.of_row(row))

    @cached_property
    def rate(self) -> np.ndarray:
        rate = self.frame.bytes_rate
        return rate if rate is not None else np.zeros(len(self.table))

    @cached_property
    def commands(self) -> list[str | None]:
        return [fmt.command(p.command) if p.command else None for p in self.frame.processes.infos]

    @cached_property
    def users(self) -> list[str | None]:
        return [p.user for p in self.frame.processes.infos]


def _pid(pid: int) -> str:
    return fmt.ident(None if pid == UNKNOWN_ID else pid)


def _owned_search(rows: ConnRows, texts: list[str | None], needle: str) -> np.ndarray:
    return indexed_search(rows.frame.processes.index, [t or "?" for t in texts] + ["?"], needle)


def _command(row: ConnRow) -> str | None:
    return fmt.command(row.process.command) if row.process and row.process.command else None


def _user(row: ConnRow) -> str | None:
    return row.process.user if row.process else None


# The filter looks at the columns of words and names; counters, rates and ages change every
# second and are left to the sort. What the end carries comes right after which end it is: on
# terminals too narrow for every column those are what is seen, and the detail pane shows the
# selected end's owner.
COLUMNS: list[Column[ConnRow]] = [
    Column("local", "Local", text=lambda r: r.conn.end.local, order=lambda rows: rows.local.order,
           search=lambda rows, needle: rows.local.search(needle)),
    Column("remote", "Remote", text=lambda r: r.conn.end.remote,
           order=lambda rows: rows.remote.order,
           search=lambda rows, needle: rows.remote.search(needle)),
    Column("state", "State", text=lambda r: styled(r.conn.state), order=lambda rows: rows.table.state,
           search=lambda rows, needle: indexed_search(rows.table.state, list(STATES), needle)),
    Column("msgs", "Msgs", text=lambda r: fmt.count(r.conn.msgs), order=lambda rows: rows.table.msgs,
           numeric=True),
    Column("bytes", "Bytes", text=lambda r: fmt.size(r.conn.bytes),
           order=lambda rows: rows.table.bytes, numeric=True),
    Column("rate", "Rate", text=lambda r: fmt.rate(r.rate.bytes_per_s), order=lambda rows: rows.rate,
           numeric=True),
    Column("age", "Age", text=lambda r: fmt.duration(r.conn.age_s),
           order=lambda rows: rows.table.age_s, numeric=True),
    Column("pid", "PID", text=lambda r: fmt.ident(r.conn.owner.pid), order=lambda rows: rows.table.pid,
           search=lambda rows, needle: rows.pid.search(_pid, needle), numeric=True),
    Column("command", "Command", text=lambda r: _command(r) or "?",
           order=lambda rows: indexed_order(rows.frame.processes.index, rows.commands),
           search=lambda rows, needle: _owned_search(rows, rows.commands, needle), width=24),
    Column("user", "User", text=lambda r: _user(r) or "?",
           order=lambda rows: indexed_order(rows.frame.processes.index, rows.users),
           search=lambda rows, needle: _owned_search(rows, rows.users, needle)),
    Column("netns", "Netns", text=lambda r: fmt.netns(r.conn.end.netns),
           order=lambda rows: rows.table.keys["netns"],
           search=lambda rows, needle: rows.netns.search(fmt.netns, needle)),
]


def _end_lines(title: str, c: Connection, rate: Rates, process: ProcessInfo | None,
               compact: bool) -> list[Text]:
    """Three lines per end where the pane is wide (under the table, both ends fit at 80x24),
    four where it is narrow (beside the table on the widest terminals)."""
    role = "connecting" if c.active else "accepting"
    command = fmt.command(process.command) if process and process.command else "?"
    user = process.user if process and process.user else fmt.ident(c.owner.uid)
    pad = " " * 9
    where = Text.assemble((f"{title:<9}", "bold"), (c.end.local, "bold"), " → ", c.end.remote)
    state = Text.assemble(styled(c.state), f", {role}")
    now = Text(f"{fmt.count(rate.msgs_per_s)} msg/s {fmt.rate(rate.bytes_per_s)}", style="bold")
    who = Text(f"{pad}age {fmt.duration(c.age_s)} · pid {fmt.ident(c.owner.pid)} ({user}) {command}")
    sent = Text(f"{fmt.count(c.msgs)} msgs {fmt.size(c.bytes)}, {fmt.count(c.passed)} via stack"
                + ("" if c.in_sockhash else " · not in sockhash"))
    if compact:
        return [Text.assemble(where, "  ", state), who, Text.assemble(pad, "sent ", sent, " · ", now)]
    return [where, Text.assemble(pad, state, " · ", now), who, Text.assemble(pad, "sent ", sent)]


def detail(frame: Frame, row: int | None, compact: bool) -> Text:
    """The end at `row` of the frame's table and its peer, in full."""
    if row is None:
        return Text("No connection selected.", style="dim")
    table = frame.snapshot.table
    conn = table.connection(row)
    lines = _end_lines("This end", conn, frame.row_rate(row), frame.processes.of_row(row), compact)
    a, b, health = pair_rows_of(table, row)
    other = b if a == row else a
    if other >= 0:
        lines += _end_lines("Peer", table.connection(other), frame.row_rate(other),
                            frame.processes.of_row(other), compact)
    elif conn.peer is not None:
        lines.append(Text(f"Peer     {conn.peer.local} → {conn.peer.remote} has no entry in the map",
                          style="bold red"))
    else:
        lines.append(Text("Peer     none yet: the accepting end has not paired", style="yellow"))
    lines.append(Text.assemble(("Pair     ", "bold"), styled(health),
                               f"  netns {fmt.netns(conn.end.netns)}"))
    return Text("\n").join(lines)


class ConnectionsView(EndsView):
    ROWS = ConnRows
    TABLE_ID = "conn-table"

    def compose(self) -> ComposeResult:
        yield FilterInput(self.TABLE_ID, id="conn-filter")
        yield Static(id="conn-summary")
        with Vertical(id="conn-body"):
            yield SortableTable(COLUMNS, lambda r: r.key, sort="bytes", id=self.TABLE_ID)
            yield Static(id="conn-detail")

    def on_mount(self) -> None:
        self.query_one("#conn-detail").border_title = "Selected"

    @property
    def _frame(self) -> Frame | None:
        """The frame the table shows."""
        rows = self.table.source
        return rows.frame if rows is not None else None

    def show_frame(self, frame: Frame) -> None:
        self.show_rows(frame)
        self._summarize()

    def _summarize(self) -> None:
        table = self.table
        total = len(self._frame.snapshot.table) if self._frame else 0
        text = f"{table.row_count} of {total} ends"
        if table.hidden_rows:
            text += f" ({table.hidden_rows} more match: narrow the filter)"
        text += f"; sorted by {table.sort_column}{' (reversed)' if table.sort_reverse else ''}"
        # One line, and the pane below has a fixed size: no layout to redo (it costs ~10 ms).
        self.query_one("#conn-summary", Static).update(Text(text, style="dim"), layout=False)

    def on_sortable_table_selected(self, event: SortableTable.Selected) -> None:
        if self._frame is None:
            return
        row: ConnRow | None = event.item
        pane = self.query_one("#conn-detail", Static)
        # The compact form needs about 72 columns; narrower panes get a line more per end.
        pane.update(detail(self._frame, row.row if row else None,
                           compact=pane.content_size.width >= 72), layout=False)
        self._summarize()
