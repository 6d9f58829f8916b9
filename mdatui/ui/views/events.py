"""Events: what the kernel reports as it happens, and what the console did, newest last.

The log keeps its lines as plain strings (Textual's Log) and styles the few on screen from their
layout when they are drawn (LineStyles). A RichLog keeps every line as a strip of a dozen
objects that the cyclic GC walks at each full collection (5,000 lines: some 60,000 objects, and
a full collection of the console's 110,000 pauses the UI for about 30 ms).
"""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Group
from rich.highlighter import Highlighter
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Log, Static
from textual.worker import get_current_worker

from ...core import events as ev
from ...core.backend import EventSource, Frame, Unavailable
from .. import format as fmt
from .base import View

MAX_LINES = 5000
POLL_S = 0.25
RETRY_S = 3.0  # between attempts to attach while the accelerator is off or another reader holds it

KIND_STYLES = {"accelerated": "green", "refused": "yellow", "demoted": "magenta", "closed": "dim",
               "redirect_failed": "bold red", "console": "cyan", "warning": "bold yellow",
               "error": "bold red"}
# What the summary counts, in its columns. The kernel counts all but closed since it was enabled
# (mda_stats: snapshot stats by the same names), which the log cannot: it sees only what happens
# while it is open, and loses what its reader falls behind on.
KINDS = ("accelerated", "refused", "demoted", "redirect_failed", "closed")
CLOCK_WIDTH = len("00:00:00.000")
KIND_AT, KIND_WIDTH = CLOCK_WIDTH + 2, 15


def log_line(ts: float, kind: str, what: str) -> str:
    """The time first, so the log reads as a timeline; then the kind, in a column of its own."""
    return f"{fmt.clock(ts)}  {kind.replace('_', ' '):<{KIND_WIDTH}} {what}"


def describe(event: ev.Event) -> str:
    """One line per event."""
    line = log_line(event.ts, event.kind, f"{event.end.local} → {event.end.remote}")
    if isinstance(event, ev.Accelerated):
        return line + f"  pid {fmt.ident(event.owner.pid)} ↔ pid {fmt.ident(event.peer_owner.pid)}"
    if isinstance(event, ev.Refused):
        return line + ("  no ACCEPT rule matched" if event.rule is None else f"  by rule {event.rule}")
    # Closed, RedirectFailed, Demoted: what the end's sends did
    line += (f"  sent {fmt.count(event.msgs)} msgs, {fmt.size(event.bytes)}, "
             f"{fmt.count(event.passed)} through the stack")
    if isinstance(event, ev.RedirectFailed):
        line += "; its peer left the sockhash, later sends go through the stack"
    elif isinstance(event, ev.Demoted):
        line += "; a stream the stack moves faster, handed back to the stack"
    return line


class LineStyles(Highlighter):
    """Styles a log_line by its layout: the time dim, the kind in its colour, and why a
    connection was refused (what follows its addresses) in yellow."""

    def highlight(self, text: Text) -> None:
        plain = text.plain
        text.stylize("dim", 0, CLOCK_WIDTH)
        kind = plain[KIND_AT:KIND_AT + KIND_WIDTH].rstrip().replace(" ", "_")
        if kind in KIND_STYLES:
            text.stylize(KIND_STYLES[kind], KIND_AT, KIND_AT + KIND_WIDTH)
        if kind == "refused":
            why = plain.find("  ", plain.find(" → "))
            if why > 0:
                text.stylize("yellow", why)


def counts_table(since_enable: Mapping[str, int] | None, in_log: Mapping[str, int]) -> Table:
    """The kernel's counts since enable (None: not read yet) over the log's, kind by kind."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    for _ in KINDS:
        table.add_column(justify="right", no_wrap=True)
    table.add_row("", *(Text(k.replace("_", " "), style=KIND_STYLES[k]) for k in KINDS))
    kernel = since_enable or {}
    table.add_row("since enable", *(str(kernel[k]) if k in kernel else "—" for k in KINDS))
    table.add_row("in this log", *(str(in_log.get(k, 0)) for k in KINDS))
    return table


class EventsView(View):
    MAIN = "#events-log"
    BINDINGS = [
        Binding("f", "toggle_follow", "Follow"),
        Binding("c", "clear", "Clear"),
    ]

    class Arrived(Message):
        def __init__(self, events: list[ev.Event], lost: int) -> None:
            super().__init__()
            self.events = events
            self.lost = lost

    class Trouble(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def compose(self) -> ComposeResult:
        yield Static(id="events-summary")
        log = Log(highlight=True, max_lines=MAX_LINES, auto_scroll=True, id="events-log")
        log.highlighter = LineStyles()
        yield log

    def on_mount(self) -> None:
        self._counts: dict[str, int] = {}
        self._lost = 0
        self._trouble: str | None = None
        self._reading: int | None = None  # enabled_at of the accelerator being read
        self._summarize()
        self.watch(self.app, "frame", self._follow_accelerator, init=True)

    def show_frame(self, frame: Frame) -> None:
        self._summarize()  # the kernel's counts since enable

    def _follow_accelerator(self, frame: Frame | None) -> None:
        """One reader per accelerator: a new one after disable + enable, none while it is off
        (an open reader would keep the old perf array alive)."""
        if frame is None:
            return
        running = frame.snapshot.enabled_at if frame.snapshot.enabled else None
        if running == self._reading:
            return
        self._reading = running
        self.workers.cancel_group(self, "events")
        if running is not None:
            self._read_events()

    @property
    def log_widget(self) -> Log:
        return self.query_one("#events-log", Log)

    @work(thread=True, exclusive=True, group="events")
    def _read_events(self) -> None:
        """Owns the event stream from open to close: perf rings are read by one thread."""
        worker = get_current_worker()
        source: EventSource | None = None
        try:
            while not worker.is_cancelled:
                if source is None:
                    try:
                        source = self.app.backend.open_events()
                    except Unavailable as e:
                        self.post_message(self.Trouble(str(e)))
                        worker.cancelled_event.wait(RETRY_S)
                        continue
                    self.post_message(self.Trouble(""))
                got = source.poll(POLL_S)
                if got or source.lost != self._lost:
                    self.post_message(self.Arrived(got, source.lost))
        finally:
            if source is not None:
                source.close()

    def on_events_view_arrived(self, message: Arrived) -> None:
        for event in message.events:
            self._counts[event.kind] = self._counts.get(event.kind, 0) + 1
            self.log_widget.write_line(describe(event))
        self._lost = message.lost
        self.app.events_lost = message.lost
        self._summarize()

    def on_events_view_trouble(self, message: Trouble) -> None:
        if message.text and message.text != self._trouble:
            self.add_note(f"event log unavailable: {message.text}", "warning")
        elif not message.text:
            # Else an empty log reads as broken: what came before is only in the counts.
            self.add_note("reading events from now on; earlier ones are counted above")
        self._trouble = message.text or None
        self._summarize()

    def add_note(self, text: str, severity: str = "console") -> None:
        """A line from the console itself: what an operator did and how it went."""
        self.log_widget.write_line(log_line(self.app.backend.now(), severity, text))

    def _summarize(self) -> None:
        frame = self.app.frame
        running = frame is not None and frame.snapshot.enabled
        counts = counts_table(frame.snapshot.stats if running else None, self._counts)
        notes = [(f"{self._lost} events lost (the reader fell behind)", "bold red")] if self._lost else []
        if self._trouble:
            notes.append(("not attached, retrying", "yellow"))
        if not self.log_widget.auto_scroll:
            notes.append(("paused (f follows again)", "yellow"))
        shown = Group(counts, Text("; ").join(Text(*note) for note in notes)) if notes else counts
        self.query_one("#events-summary", Static).update(shown)

    def action_toggle_follow(self) -> None:
        self.log_widget.auto_scroll = not self.log_widget.auto_scroll
        if self.log_widget.auto_scroll:
            self.log_widget.scroll_end(animate=False)
        self._summarize()

    def action_clear(self) -> None:
        self.log_widget.clear()
        self._counts.clear()
        self._summarize()
