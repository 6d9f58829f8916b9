"""Dump: the messages accelerated connections send, live; paused to scroll back; saved as pcap.

Redirected bytes never reach a network device, so this is the only place to see them. The view
keeps the newest messages in a ring of fixed size (`--dump-keep`) and says how many it dropped:
a capture may bring tens of thousands a second for as long as it runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from rich.text import Text
from textual import work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Input, Label, Static
from textual.worker import Worker, WorkerState, get_current_worker

from ...core.backend import DumpSource, Frame, Handoff, Raw, Ring, Unavailable, write_pcap
from ...core.dump import DEFAULT_SNAPLEN, DumpRecord, decode
from .. import format as fmt
from ..screens.prompt import PromptScreen
from ..widgets.hexview import hexdump, printable
from ..widgets.ring_table import RingColumn, RingTable
from .base import View

POLL_S = 0.2
# The capture thread wakes the UI thread at most this often: each wake-up costs a redraw of the
# table and the hex pane (some 15 ms at 200x50), whatever the number of messages it brings.
BATCH_S = 0.25
PREVIEW_BYTES = 40


def packed(batch: list[Raw]) -> list[bytes]:
    """Messages as the capture thread hands them over and the ring keeps them: each (wall offset,
    record) as one bytes, its offset first. A tuple is an object the cyclic GC counts until it
    dies (bytes are not): at 50,000 a second, kept for seconds in the ring, they started a young
    collection 10 times a second, so that what the UI made in a frame survived into the older
    generations and a full collection (30-80 ms, the UI thread stopped) came every 8 s."""
    out, last, head = [], None, b""
    for offset, raw in batch:
        if offset != last:
            last, head = offset, offset.to_bytes(8, "little", signed=True)
        out.append(head + raw)
    return out


def unpacked(message: bytes) -> DumpRecord:
    return decode(message[8:], int.from_bytes(message[:8], "little", signed=True))


COLUMNS = (
    RingColumn("#", lambda seq, rec: str(seq + 1), numeric=True),
    RingColumn("Time", lambda seq, rec: fmt.clock(rec.ts)),
    RingColumn("From → To", lambda seq, rec: f"{rec.src} → {rec.dst}"),
    RingColumn("Dir", lambda seq, rec: "→srv" if rec.direction == "to-server" else "←srv"),
    RingColumn("Len", lambda seq, rec: str(rec.len), numeric=True),
    RingColumn("Cap", lambda seq, rec: Text(str(len(rec.data)), justify="right",
                                            style="yellow" if rec.truncated else "")),
    RingColumn("Data", lambda seq, rec: printable(rec.data[:PREVIEW_BYTES])),
)


class DumpView(View):
    MAIN = "#dump-table"
    BINDINGS = [
        Binding("s", "toggle_capture", "Start/stop"),
        Binding("space", "toggle_pause", "Pause"),
        Binding("w", "save", "Save pcap"),
        Binding("c", "clear", "Clear"),
        Binding("f", "focus_filter", "Filter"),
    ]

    class Started(Message):
        def __init__(self, snaplen: int) -> None:
            super().__init__()
            self.snaplen = snaplen

    class Stopped(Message):
        """The session is closed: dump is off in the kernel again."""

    class Captured(Message):
        """Messages wait in the handoff (at most one of these is outstanding)."""

        def __init__(self, lost: int) -> None:
            super().__init__()
            self.lost = lost

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        keep = self.app.dump_keep  # for scrolling back and saving; the oldest go first
        # Kept packed (see packed), decoded when drawn, saved or selected: see core.dump.Raw.
        self._ring: Ring[DumpRecord] = Ring(keep, unpacked)
        # The capture thread's messages until the UI thread takes them: bounded like the ring.
        self._inbox: Handoff[bytes] = Handoff(keep)
        self._lost = 0
        self._hex_lines = 0  # of the hex pane: only a new number needs the screen laid out again
        self._snaplen = DEFAULT_SNAPLEN
        self._worker: Worker | None = None
        self._error: str | None = None  # why the last start or save failed
        self.capturing = False
        self.paused = False

    def compose(self) -> ComposeResult:
        with Horizontal(id="dump-controls"):
            yield Label("ip")
            yield Input(placeholder="any", id="dump-ip", compact=True)
            yield Label("port")
            yield Input(placeholder="any", id="dump-port", compact=True, type="integer")
            yield Label("snaplen")
            yield Input(str(DEFAULT_SNAPLEN), id="dump-snaplen", compact=True, type="integer")
            yield Button("Start", id="dump-start", compact=True, variant="success")
        yield Static(id="dump-status")
        with Horizontal(id="dump-body"):
            yield RingTable(self._ring, COLUMNS, id="dump-table")
            with VerticalScroll(id="dump-hex-box"):
                yield Static(id="dump-hex")

    def on_mount(self) -> None:
        self.query_one("#dump-hex-box").border_title = "Message"
        self._summarize()
        self.watch(self.app, "frame", self._stop_when_gone, init=False)

    def _stop_when_gone(self, frame: Frame | None) -> None:
        if frame is not None and not frame.snapshot.enabled and self.capturing:
            self.stop()

    # ------------------------------------------------------------ capture

    def action_toggle_capture(self) -> None:
        if self.capturing:
            self.stop()
        else:
            self.start()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "dump-start":
            self.action_toggle_capture()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not self.capturing:
            self.start()

    def _filter(self) -> tuple[str | None, int | None, int]:
        """The fields as the backend takes them; ValueError says which one is wrong."""
        ip = self.query_one("#dump-ip", Input).value.strip() or None
        port_text = self.query_one("#dump-port", Input).value.strip()
        snap_text = self.query_one("#dump-snaplen", Input).value.strip()
        try:
            port = int(port_text) if port_text else None
            snaplen = int(snap_text) if snap_text else DEFAULT_SNAPLEN
        except ValueError:
            raise ValueError("port and snaplen are whole numbers") from None
        return ip, port, snaplen

    def start(self) -> None:
        try:
            ip, port, snaplen = self._filter()
        except ValueError as e:
            self._complain(str(e))
            return
        self._lost = 0
        self._error = None
        self.capturing = True
        self._worker = self._capture(ip, port, snaplen)
        self._set_button()
        self._summarize()

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()  # the worker closes the session, which switches dump off

    @work(thread=True, exclusive=True, group="dump", exit_on_error=False)
    def _capture(self, ip: str | None, port: int | None, snaplen: int) -> None:
        """Owns the dump session from start to close: perf rings are read by one thread."""
        worker = get_current_worker()
        source: DumpSource = self.app.backend.start_dump(ip, port, snaplen)
        try:
            self.post_message(self.Started(source.snaplen))
            lost, woken = 0, 0.0
            while not worker.is_cancelled:
                self._inbox.put(packed(source.poll_raw(POLL_S)))
                now = time.monotonic()
                if now - woken >= BATCH_S and (self._inbox.claim_wakeup() or source.lost != lost):
                    lost, woken = source.lost, now
                    self.post_message(self.Captured(lost))
        finally:
            source.close()
            self.post_message(self.Stopped())

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is not WorkerState.ERROR:
            if event.worker.group == "pcap" and event.state is WorkerState.SUCCESS:
                self._note(event.worker.result)
            return
        error = event.worker.error
        known = isinstance(error, (ValueError, OSError, Unavailable))
        self._complain(str(error) if known else repr(error))
        if event.worker is self._worker:  # it failed to start: there is no session to stop
            self._stopped()

    def on_dump_view_stopped(self, message: Stopped) -> None:
        self._note(f"dump stopped: {len(self._ring)} messages kept, {self.dropped} dropped, "
                   f"{self._lost} lost")
        self._stopped()

    def _stopped(self) -> None:
        self.capturing = False
        self._worker = None
        self._set_button()
        self._summarize()

    def on_dump_view_started(self, message: Started) -> None:
        self._snaplen = message.snaplen
        ip, port, _ = self._filter()
        self._note(f"dump started: ip {ip or 'any'}, port {port or 'any'}, snaplen {message.snaplen}")

    def on_dump_view_captured(self, message: Captured) -> None:
        self._ring.extend(self._inbox.take(), hold=self.paused)
        self._lost = message.lost
        self._table.advance()
        self._summarize()

    @property
    def dropped(self) -> int:
        """Messages captured but not kept: pushed out of the ring, refused by it while paused,
        or never taken from the capture thread."""
        return self._ring.dropped + self._inbox.dropped

    @property
    def _table(self) -> RingTable:
        return self.query_one("#dump-table", RingTable)

    def on_ring_table_selected(self, event: RingTable.Selected) -> None:
        event.stop()
        rec = event.item
        if rec is None:
            self._show_hex(Text())
            return
        head = Text(f"{rec.src} → {rec.dst}  {rec.direction}\n{rec.len} bytes sent, "
                    f"{len(rec.data)} captured{' (cut at snaplen)' if rec.truncated else ''}\n\n",
                    style="bold")
        self._show_hex(head + hexdump(rec.data))

    def _show_hex(self, text: Text) -> None:
        lines = len(text.plain.splitlines())
        self.query_one("#dump-hex", Static).update(text, layout=lines != self._hex_lines)
        self._hex_lines = lines

    def on_ring_table_follow_stopped(self, event: RingTable.FollowStopped) -> None:
        event.stop()
        self.paused = True
        self._summarize()

    # ------------------------------------------------------------ keys

    def action_toggle_pause(self) -> None:
        """Paused, the table stays where it is and the ring keeps what it holds: arrivals fill
        what room is left and the rest is dropped (counted), rather than push out the
        messages being read."""
        self.paused = not self.paused
        if self.paused:
            self._table.following = False
        else:
            self._table.follow()
        self._summarize()

    def action_clear(self) -> None:
        self._ring.clear()
        self._table.advance()
        self._show_hex(Text())
        self._summarize()

    def action_focus_filter(self) -> None:
        self.query_one("#dump-ip", Input).focus()

    def action_save(self) -> None:
        if not len(self._ring):
            self._complain("nothing captured to save yet")
            return
        default = time.strftime("/tmp/mdatui-%Y%m%d-%H%M%S.pcap", time.localtime(self.app.backend.now()))
        self.app.push_screen(PromptScreen("Save pcap", f"Save {len(self._ring)} messages to:",
                                          default), self._save_to)

    def _save_to(self, path: str | None) -> None:
        if path:
            self._write_pcap(self._ring.items(), len(self._ring), path, self._snaplen)

    @work(thread=True, group="pcap", exit_on_error=False)
    def _write_pcap(self, records: Iterable[DumpRecord], count: int, path: str, snaplen: int) -> str:
        packets = write_pcap(records, path, snaplen)  # decoded here, one at a time
        return f"saved {count} messages ({packets} packets) to {path}"

    def commands(self):
        yield SystemCommand("Dump: start or stop", "Capture what accelerated connections send",
                            self.action_toggle_capture)
        yield SystemCommand("Dump: save as pcap", "Write the captured messages to a pcap file",
                            self.action_save)

    # ------------------------------------------------------------ status

    def _set_button(self) -> None:
        button = self.query_one("#dump-start", Button)
        button.label = "Stop" if self.capturing else "Start"
        button.variant = "error" if self.capturing else "success"
        for field in ("#dump-ip", "#dump-port", "#dump-snaplen"):
            self.query_one(field, Input).disabled = self.capturing

    def _summarize(self) -> None:
        if self.capturing:
            text = Text("● capturing", style="bold green")
        else:
            text = Text("○ stopped", style="dim")
        text.append(f"  {len(self._ring)} kept of {self._ring.capacity}")
        if self.dropped:
            text.append(f"  {self.dropped} dropped", style="yellow")
        if self._lost:
            text.append(f"  {self._lost} lost", style="bold red")
        if self._error:
            text.append(f"  {self._error}", style="bold red")
        if self.paused:
            behind = self._ring.end - self._table.end
            text.append(f"  paused, {behind} not shown (space resumes)", style="yellow")
        self.query_one("#dump-status", Static).update(text, layout=False)  # one line, always

    def _complain(self, text: str) -> None:
        self._error = text
        self._summarize()
        self.app.notify(text, title="Dump", severity="error")
        self._note(f"dump: {text}", "error")

    def _note(self, text: str, severity: str = "console") -> None:
        self.app.note(text, severity)
