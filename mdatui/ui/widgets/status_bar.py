"""The line at the top of the main screen: is it running, on what, how busy, how fresh."""

from __future__ import annotations

import math

from rich.text import Text
from textual.widgets import Static

from ...core.backend import Frame
from .. import format as fmt


class StatusBar(Static):
    def on_mount(self) -> None:
        self.watch(self.app, "frame", self._render_status, init=True)
        self.watch(self.app, "interval", lambda _: self._render_status(self.app.frame), init=False)

    def _render_status(self, frame: Frame | None) -> None:
        # One line (app.tcss): no layout to redo every frame.
        self.update(status_line(frame, self.app.interval, self.app.events_lost), layout=False)


def status_line(frame: Frame | None, interval: float, events_lost: int) -> Text:
    """The line; `lost` counts dump copies the kernel could not hand over and events this
    console's reader fell behind on."""
    if frame is None:
        return Text(" reading the maps…", style="dim")
    snap = frame.snapshot
    if not snap.enabled:
        return Text.assemble((" ○ OFF ", "bold reverse red"), f"  nothing pinned at {snap.pin_dir}")
    sep = (" │ ", "dim")
    dump = snap.dump
    line = Text.assemble(
        (" ● ON ", "bold reverse green"), " ", (snap.cgroup, "bold"),
        f"  up {fmt.duration(frame.uptime_s)}", sep,
        f"{snap.pairs} pairs", sep,
        (f"{fmt.count(frame.total.msgs_per_s)} msg/s", "bold"), "  ",
        (fmt.rate(frame.total.bytes_per_s), "bold"), sep,
        ("dump ON" if dump and dump.on else "dump off", "bold yellow" if dump and dump.on else "dim"),
        sep, (f"⟳ {interval:g}s" + _ends_every(snap.ends_every_s, interval), "dim"),
        no_wrap=True, overflow="ellipsis",
    )
    lost = snap.stats.get("dump_lost", 0) + events_lost
    if lost:
        line.append_text(Text.assemble(sep, (f"{lost} lost", "bold red")))
    return line


def _ends_every(every_s: float, interval: float) -> str:
    """How often the ends are read, where that is less often than every refresh."""
    refreshes = math.ceil(every_s / interval - 1e-9) if interval > 0 else 1
    return f", ends every {refreshes * interval:g}s" if refreshes > 1 else ""
