"""Connections: every end in sock_proxy_map, who owns it, what it sent; the selected one in detail."""

from __future__ import annotations

from dataclasses import dataclass

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
    return fmt.command(row.process.command) if row.process and row.process.command else None


def _user(row: ConnRow) -> str | None:
    return row.process.user if row.process else None


COLUMNS: list[Column[ConnRow]] = [
    Column("local", "Local", lambda r: address_key(r.conn.end.local), lambda r: r.conn.end.local),
    Column("remote", "Remote", lambda r: address_key(r.conn.end.remote), lambda r: r.conn.end.remote),
    Column("netns", "Netns", lambda r: r.conn.end.netns, lambda r: fmt.netns(r.conn.end.netns)),
    Column("state", "State", lambda r: r.conn.state, lambda r: styled(r.conn.state)),
    Column("pid", "PID", lambda r: r.conn.owner.pid, lambda r: fmt.ident(r.conn.owner.pid),
           numeric=True),
    Column("command", "Command", _command, lambda r: _command(r) or "?", width=24),
    Column("user", "User", _user, lambda r: _user(r) or "?"),
    Column("msgs", "Msgs", lambda r: r.conn.msgs, lambda r: fmt.count(r.conn.msgs), numeric=True),
    Column("bytes", "Bytes", lambda r: r.conn.bytes, lambda r: fmt.size(r.conn.bytes), numeric=True),
    Column("rate", "Rate", lambda r: r.rate.bytes_per_s, lambda r: fmt.rate(r.rate.bytes_per_s),
           numeric=True),
    Column("age", "Age", lambda r: r.conn.age_s, lambda r: fmt.duration(r.conn.age_s), numeric=True),
]


def _end_lines(title: str, c: Connection, rate: Rates, process: ProcessInfo | None,
               compact: bool) -> list[Text]:
    """Three lines per end where the pane is wide (under the table, both ends fit at 80x24),
    four where it is narrow (beside the table on wide terminals)."""
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


def detail(frame: Frame, pair: Pair | None, conn: Connection | None, compact: bool) -> Text:
    if conn is None:
        return Text("No connection selected.", style="dim")
    lines = _end_lines("This end", conn, frame.rate(conn.end), frame.processes.get(conn.end), compact)
    peer = None
    if pair is not None and pair.b is not None:
        peer = pair.b if pair.a.end == conn.end else pair.a
    if peer is not None:
        lines += _end_lines("Peer", peer, frame.rate(peer.end), frame.processes.get(peer.end), compact)
    elif conn.peer is not None:
        lines.append(Text(f"Peer     {conn.peer.local} → {conn.peer.remote} has no entry in the map",
                          style="bold red"))
    else:
        lines.append(Text("Peer     none yet: the accepting end has not paired", style="yellow"))
    if pair is not None:
        lines.append(Text.assemble(("Pair     ", "bold"), styled(pair.health),
                                   f"  netns {fmt.netns(conn.end.netns)}"))
    return Text("\n").join(lines)


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
        # The compact form needs about 72 columns; narrower panes get a line more per end.
        pane.update(detail(self._frame, self._pair_of.get(conn.end) if conn else None, conn,
                           compact=pane.content_size.width >= 72))
        self._summarize()
