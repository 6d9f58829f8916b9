"""Connections: every end in sock_proxy_map, who owns it, what it sent; the selected one in detail."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Static

from ...core.console import Frame, Pair, pairs
from ...core.procs import ProcessInfo
from ...core.snapshot import Connection, Rates
from .. import format as fmt
from ..widgets.filter_input import FilterInput
from ..widgets.columns import address_key, styled
from ..widgets.sortable_table import Column, SortableTable
from .base import View


@dataclass(frozen=True)
class ConnRow:
    conn: Connection
    rate: Rates
    process: ProcessInfo | None

    @property
    def key(self) -> str:
        e = self.conn.end
        return f"{e.local}>{e.remote}@{e.netns}"


def _command(row: ConnRow) -> str | None:
    return row.process.command if row.process else None


def _user(row: ConnRow) -> str | None:
    return row.process.user if row.process else None


COLUMNS: list[Column[ConnRow]] = [
    Column("local", "Local", lambda r: address_key(r.conn.end.local), lambda r: r.conn.end.local),
    Column("remote", "Remote", lambda r: address_key(r.conn.end.remote), lambda r: r.conn.end.remote),
    Column("netns", "Netns", lambda r: r.conn.end.netns, lambda r: fmt.netns(r.conn.end.netns)),
    Column("state", "State", lambda r: r.conn.state, lambda r: styled(r.conn.state)),
    Column("pid", "PID", lambda r: r.conn.owner.pid, lambda r: fmt.ident(r.conn.owner.pid),
           numeric=True),
    Column("command", "Command", _command, lambda r: _command(r) or "?", width=28),
    Column("user", "User", _user, lambda r: _user(r) or "?"),
    Column("msgs", "Msgs", lambda r: r.conn.msgs, lambda r: fmt.count(r.conn.msgs), numeric=True),
    Column("bytes", "Bytes", lambda r: r.conn.bytes, lambda r: fmt.size(r.conn.bytes), numeric=True),
    Column("rate", "Rate", lambda r: r.rate.bytes_per_s, lambda r: fmt.rate(r.rate.bytes_per_s),
           numeric=True),
    Column("age", "Age", lambda r: r.conn.age_s, lambda r: fmt.duration(r.conn.age_s), numeric=True),
]


def _end_lines(title: str, c: Connection, rate: Rates, process: ProcessInfo | None) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True, width=9)
    grid.add_column(overflow="fold")
    role = "connecting" if c.active else "accepting"
    where = "in sockhash" if c.in_sockhash else "not in sockhash"
    grid.add_row(title, Text.assemble((c.end.local, "bold"), " → ", c.end.remote))
    grid.add_row("", Text.assemble(styled(c.state), f", {role}, {where}, netns {fmt.netns(c.end.netns)}"))
    command = process.command if process and process.command else "?"
    user = process.user if process and process.user else fmt.ident(c.owner.uid)
    grid.add_row("", f"pid {fmt.ident(c.owner.pid)} ({command}), user {user}, gid {fmt.ident(c.owner.gid)}")
    grid.add_row("", f"sent {fmt.count(c.msgs)} msgs, {fmt.size(c.bytes)} redirected; "
                     f"{fmt.count(c.passed)} msgs through the stack")
    grid.add_row("", Text(f"now {fmt.count(rate.msgs_per_s)} msg/s, {fmt.rate(rate.bytes_per_s)}",
                          style="bold"))
    grid.add_row("", f"age {fmt.duration(c.age_s)}")
    return grid


def detail(frame: Frame, pair: Pair | None, conn: Connection | None) -> Table | Text:
    if conn is None:
        return Text("No connection selected.", style="dim")
    out = Table.grid()
    out.add_column()
    out.add_row(_end_lines("This end", conn, frame.rate(conn.end), frame.processes.get(conn.end)))
    peer = None
    if pair is not None:
        peer = pair.b if pair.a.end == conn.end else pair.a
    if peer is not None:
        out.add_row("")
        out.add_row(_end_lines("Peer", peer, frame.rate(peer.end), frame.processes.get(peer.end)))
    elif conn.peer is not None:
        out.add_row(Text(f"\nPeer {conn.peer.local} → {conn.peer.remote} has no entry in the map.",
                         style="bold red"))
    else:
        out.add_row(Text("\nNo peer yet: the accepting end has not paired.", style="yellow"))
    if pair is not None:
        out.add_row(Text.assemble("\nPair: ", styled(pair.health)))
    return out


class ConnectionsView(View):
    BINDINGS = [
        Binding("slash", "focus_filter", "Filter", key_display="/"),
    ]

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._frame: Frame | None = None
        self._pair_of: dict = {}

    def compose(self) -> ComposeResult:
        yield FilterInput("conn-table", id="conn-filter")
        yield Static(id="conn-summary")
        with Horizontal(id="conn-body"):
            yield SortableTable(COLUMNS, lambda r: r.key, sort="bytes", id="conn-table")
            yield Static(id="conn-detail")

    def on_mount(self) -> None:
        self.query_one("#conn-detail").border_title = "Selected"
        super().on_mount()

    @property
    def table(self) -> SortableTable[ConnRow]:
        return self.query_one("#conn-table", SortableTable)

    def show_frame(self, frame: Frame) -> None:
        self._frame = frame
        self._pair_of = {c.end: p for p in pairs(frame.snapshot) for c in p.ends}
        self.table.show([ConnRow(c, frame.rate(c.end), frame.processes.get(c.end))
                         for c in frame.snapshot.connections])
        self._summarize()

    def _summarize(self) -> None:
        table = self.table
        total = len(self._frame.snapshot.connections) if self._frame else 0
        text = f"{table.shown_count} of {total} ends"
        if table.hidden_rows:
            text += f" ({table.hidden_rows} more match: narrow the filter)"
        text += f"; sorted by {table.sort_column}{' (reversed)' if table.sort_reverse else ''}"
        self.query_one("#conn-summary", Static).update(Text(text, style="dim"))

    def on_sortable_table_selected(self, event: SortableTable.Selected) -> None:
        if self._frame is None:
            return
        row: ConnRow | None = event.item
        conn = row.conn if row else None
        pane = self.query_one("#conn-detail", Static)
        pane.update(detail(self._frame, self._pair_of.get(conn.end) if conn else None, conn))
        self._summarize()
