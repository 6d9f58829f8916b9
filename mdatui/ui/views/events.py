"""Events: what the kernel reports as it happens, and what the console did, newest last."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import RichLog, Static
from textual.worker import get_current_worker

from ...core import events as ev
from ...core.console import EventSource, Frame, Unavailable
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


def describe(event: ev.Event) -> Text:
    """One line per event; the time first, so the log reads as a timeline."""
    line = Text.assemble((fmt.clock(event.ts), "dim"), "  ",
                         (f"{event.kind.replace('_', ' '):<15}", KIND_STYLES.get(event.kind, "")), " ",
                         f"{event.end.local} → {event.end.remote}")
    if isinstance(event, ev.Accelerated):
        line.append(f"  pid {fmt.ident(event.owner.pid)} ↔ pid {fmt.ident(event.peer_owner.pid)}")
    elif isinstance(event, ev.Refused):
        why = "no ACCEPT rule matched" if event.rule is None else f"by rule {event.rule}"
        line.append(f"  {why}", style="yellow")
    else:  # Closed, RedirectFailed, Demoted: what the end's sends did
        line.append(f"  sent {fmt.count(event.msgs)} msgs, {fmt.size(event.bytes)}, "
                    f"{fmt.count(event.passed)} through the stack")
        if isinstance(event, ev.RedirectFailed):
            line.append("; its peer left the sockhash, later sends go through the stack")
        elif isinstance(event, ev.Demoted):
            line.append("; a loopback stream of small writes, handed back to the stack")
    return line


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
        yield RichLog(id="events-log", max_lines=MAX_LINES, wrap=False, auto_scroll=True)

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
    def log_widget(self) -> RichLog:
        return self.query_one("#events-log", RichLog)

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
            self.log_widget.write(describe(event))
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
        self.log_widget.write(Text.assemble((fmt.clock(self.app.backend.now()), "dim"), "  ",
                                            (f"{severity:<15}", KIND_STYLES.get(severity, "")),
                                            " ", text))

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
