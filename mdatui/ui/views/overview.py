"""Overview: the accelerator at a glance, with the traffic of the last minutes."""

from __future__ import annotations

from collections import deque

import numpy as np
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.widgets import Label, Sparkline, Static

from ...core.backend import Frame
from ...core.ends import STATES
from ...core.snapshot import nodelay_text
from .. import format as fmt
from .base import View

HISTORY = 300  # frames kept for the sparklines: five minutes at the default 1 Hz

# Counters that mean something fell back to the normal stack or was lost.
FALLBACKS = ("sockhash_full", "proxy_full", "helper_full", "redirect_failed", "tainted",
             "refused", "unpaired_removed", "dump_lost")


def _grid(rows: list[tuple[str, str | Text]]) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, value)
    return table


class PanelScroll(VerticalScroll):
    """What the overview's keys scroll. Textual restyles a widget that gains or loses the focus
    together with everything inside it, for rules on what is inside a focused widget: none of
    the stylesheets has one for this container, and its dozen panels and lines took 3-4 ms of
    every switch to or from this tab."""

    def watch_has_focus(self, _has_focus: bool) -> None:
        self.app.stylesheet.update_nodes([self], animate=True)


class OverviewView(View):
    MAIN = "#ov-scroll"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._msgs: deque[float] = deque(maxlen=HISTORY)
        self._bytes: deque[float] = deque(maxlen=HISTORY)
        self._shown: dict[str, list] = {}  # what each panel shows, by selector

    def compose(self) -> ComposeResult:
        with PanelScroll(id="ov-scroll"), Grid(id="ov-grid"):
            with Vertical(id="ov-traffic", classes="panel"):
                yield Static(id="ov-rates")
                with Horizontal(classes="spark-row"):
                    yield Label("msgs/s")
                    yield Sparkline([], id="ov-msgs-spark")
                with Horizontal(classes="spark-row"):
                    yield Label("bytes/s")
                    yield Sparkline([], id="ov-bytes-spark")
            yield Static(id="ov-accelerator", classes="panel")
            yield Static(id="ov-maps", classes="panel")
            yield Static(id="ov-health", classes="panel")

    def on_mount(self) -> None:
        titles = {"#ov-accelerator": "Accelerator", "#ov-traffic": "Traffic",
                  "#ov-maps": "Maps", "#ov-health": "Fallbacks and losses"}
        for selector, title in titles.items():
            self.query_one(selector).border_title = title

    def record_frame(self, frame: Frame) -> None:
        self._msgs.append(frame.total.msgs_per_s)  # the sparklines' history
        self._bytes.append(frame.total.bytes_per_s)

    def show_frame(self, frame: Frame) -> None:
        snap = frame.snapshot
        dump = snap.dump
        dump_text = "off"
        if dump and dump.on:
            dump_text = (f"on  ip {dump.ip or 'any'}  port {dump.port or 'any'}  "
                         f"snaplen {dump.snaplen}")
        self._panel("#ov-accelerator", [
            ("state", Text("enabled", style="bold green")),
            ("cgroup", snap.cgroup),
            ("pinned at", snap.pin_dir),
            ("uptime", fmt.duration(frame.uptime_s)),
            ("rules", f"{snap.rules_active} active, from {snap.config or '(no file)'}"),
            ("programs", ", ".join(f"{name} #{pid}" for name, pid in snap.programs.items())),
            ("dump", dump_text),
            ("nodelay streams", nodelay_text(snap.nodelay_streams)),
            ("drain service", snap.service_text() or Text(
                "not running: ends that leave the fast path stay in the sockhash (mdatui serve)",
                style="bold yellow")),
        ])
        states = dict(zip(STATES, np.bincount(snap.table.state, minlength=len(STATES)).tolist()))
        self._panel("#ov-rates", [
            ("pairs", Text.assemble((f"{snap.pairs} accelerated", "bold"), f" of {len(frame.pairs)}")),
            ("ends", f"{states['accelerated']} accelerated, {states['pending']} pending, "
                     f"{states['normal']} normal ({int(snap.table.draining.sum())} draining)"),
            ("now", Text(f"{fmt.count(frame.total.msgs_per_s)} msg/s  "
                         f"{fmt.rate(frame.total.bytes_per_s)}", style="bold")),
            ("redirected", f"{fmt.count(snap.redirected_msgs)} msgs, "
                           f"{fmt.size(snap.redirected_bytes)} since enabled"),
            ("left", f"{snap.stats.get('demoted', 0)} streams handed back, "
                     f"{snap.stats.get('blocking', 0)} blocking readers, "
                     f"{snap.stats.get('unread', 0)} slow readers; "
                     f"{snap.stats.get('drained', 0)} ends drained"),
            ("kept off", snap.kept_off()),
        ])
        self.query_one("#ov-msgs-spark", Sparkline).data = list(self._msgs)
        self.query_one("#ov-bytes-spark", Sparkline).data = list(self._bytes)
        self._panel("#ov-maps", [
            (name, f"{m['entries']} / {m['capacity']}") for name, m in snap.maps.items()
        ])
        counts = [(name.replace("_", " "), snap.stats.get(name, 0)) for name in FALLBACKS]
        counts.append(("events lost", self.app.events_lost))  # by this console's event reader
        self._panel("#ov-health", [
            (name, Text(str(n), style="bold red" if n else "")) for name, n in counts
        ])

    def _panel(self, selector: str, rows: list[tuple[str, str | Text]]) -> None:
        """Show rows in a panel unless it shows them already: every update lays the screen out
        again, which costs more than the rest of a refresh of this view."""
        seen = [(name, value.plain, value.style) if isinstance(value, Text) else (name, value)
                for name, value in rows]
        if self._shown.get(selector) != seen:
            self._shown[selector] = seen
            self.query_one(selector, Static).update(_grid(rows))
