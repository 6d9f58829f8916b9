"""The console App: one backend, the refresh loop off the UI thread, the screens over them.

Views never poll: a thread worker reads a snapshot every `interval` seconds and sets
`MdaConsole.frame`; every view watches that attribute and renders what it needs from it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
from collections.abc import Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.reactive import var
from textual.screen import Screen
from textual.worker import get_current_worker

from ..core.backend import DUMP_KEEP, ConsoleBackend, Frame, LiveBackend, Unavailable
from ..core.kernel import system
from .key_order import KeysInOrder
from .screens.help import HelpScreen
from .screens.main import TABS, MainScreen
from .screens.not_running import NotRunningScreen


class Polled(Message):
    """A refresh from the poll worker: a frame, or why there is none."""

    def __init__(self, frame: Frame | None, problem: str | None) -> None:
        super().__init__()
        self.frame = frame
        self.problem = problem


# Refresh periods the +/- keys step through, in seconds.
INTERVALS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
YOUNG_OBJECTS_PER_GC = 5000
# The cyclic GC collects between keys, not in them. Left to itself, Python collects in whatever
# allocation crosses a threshold: mostly one of a key press or a redraw, the UI thread's busiest
# allocators, and the key waited for it: a young collection 2-10 ms, a middle one 10-50, a full
# one 30-80 ms (100-180 on a busy host), bench/dump.py's slowest presses. So the console turns the
# automatic collections off and runs the same ones (same thresholds) from a timer, when no key is
# under way, held back or has just been handled; a UI thread never idle that long (a paste that
# goes on) still collects the young objects past GC_FORCED_AT.
GC_EVERY_S = 0.1
GC_AFTER_KEY_S = 0.05
GC_FORCED_AT = 20 * YOUNG_OBJECTS_PER_GC
OLDER_GCS_PER_COLLECTION = 10  # Python's default: a generation is collected every 10 of the one below
# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). The
# dump's capture thread decodes tens of thousands of messages a second; the UI thread gives the
# GIL up at every turn of its event loop and waited up to this long each time to get it back: a
# key press takes a few dozen turns (bench/dump.py: median 243 ms at 5 ms, 95 ms at 1 ms).
GIL_SWITCH_S = 0.001
# SIGTERM, SIGHUP and SIGINT end the console as q does (the terminal restored, a dump switched
# off). If it has not ended this long after (a UI thread that does not get to it, a terminal
# that is gone), the process ends anyway: a dump left on is switched off by the session's guardian
# (core.dump), a demo is removed by its guardian (core.demo).
EXIT_GRACE_S = 2.0
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class MdaConsole(KeysInOrder, App[int]):
    TITLE = "mdatui"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        # A terminal hands ctrl+c to the console as a key (no SIGINT); Textual's own binding only
        # tells to press ctrl+q, and a field's would copy. Users end a console with it.
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("plus,equals_sign", "refresh_interval(-1)", "Faster", key_display="+", show=False),
        Binding("minus", "refresh_interval(1)", "Slower", key_display="-", show=False),
        Binding("ctrl+r", "refresh_now", "Refresh now", show=False),
    ]

    frame: var[Frame | None] = var(None, always_update=True)
    interval: var[float] = var(1.0)
    problem: var[str | None] = var(None)  # why the accelerator cannot be read at all
    events_lost: var[int] = var(0)        # events the event log's reader fell behind on

    def __init__(self, backend: ConsoleBackend, interval: float = 1.0, dump_keep: int = DUMP_KEEP):
        super().__init__()
        self.dump_keep = dump_keep  # messages the Dump tab keeps
        # Tabs switch and tables scroll at once: sliding underlines and smooth scrolls only add
        # repaints to a screen that already redraws every refresh (no gain that bench/console.py
        # could tell from its noise, here).
        self.animation_level = "none"
        self.backend = backend
        self.set_reactive(MdaConsole.interval, interval)
        self.frames = 0  # frames shown so far; tests wait on it
        self._wake = threading.Event()
        self._fresh = False  # the next read is one somebody asked for (refresh_now)
        self._running_loop: asyncio.AbstractEventLoop | None = None  # for signal handlers
        self._forced_end: threading.Timer | None = None

    # ------------------------------------------------------------ lifecycle

    def on_mount(self) -> None:
        self._running_loop = asyncio.get_running_loop()
        sys.setswitchinterval(GIL_SWITCH_S)
        self.main_screen = MainScreen()
        self.push_screen(self.main_screen)
        self._poll()

    def note(self, text: str, severity: str = "console") -> None:
        """Log what the console did in the Events tab ("console", "warning" or "error")."""
        self.main_screen.view("events").add_note(text, severity)

    def on_unmount(self) -> None:
        gc.enable()  # the process may go on (tests run many apps)
        self.workers.cancel_all()
        self._wake.set()
        self.backend.close()

    @work(thread=True, exclusive=True, group="poll")
    def _poll(self) -> None:
        """Reads a snapshot and who owns its ends, hands them over, sleeps; until the app exits.

        It posts messages rather than call_from_thread: a worker must never wait on a UI thread
        that may be shutting down."""
        worker = get_current_worker()
        prev: Frame | None = None
        while not worker.is_cancelled:
            fresh, self._fresh = self._fresh, False
            try:
                snap = self.backend.snapshot(fresh)
            except Unavailable as e:
                self.post_message(Polled(None, str(e)))
            else:
                now = self.backend.now()
                prev = Frame.next(prev, snap, now, self.backend.attribute(snap, now))
                self.post_message(Polled(prev, None))
            self._wake.wait(self.interval)
            self._wake.clear()

    def on_polled(self, message: Polled) -> None:
        self.problem = message.problem
        if message.frame is not None:
            self.frame = message.frame
            self.frames += 1
            if self.frames == 1:
                # The widgets live as long as the app: keep them out of the cyclic GC's full
                # collections, which a refresh of many rows triggers every few seconds and
                # which then took 80 ms, pausing the UI. Textual's drawing makes and drops
                # objects by the thousand: collected every 700 new objects (Python's default),
                # enough of them outlived the youngest generation to start a full collection
                # every 2 s at 200,000 ends, each a 30-70 ms pause; every 5,000, a collection
                # takes a few ms and a full one comes once in some 20 s (bench/console.py).
                gc.freeze()
                gc.disable()
                self.set_interval(GC_EVERY_S, self._collect)
        self._sync_not_running(message.frame is not None and message.frame.snapshot.enabled)

    def _collect(self) -> None:
        """What the cyclic GC would have collected by now, if no key is under way."""
        young, middle, old = gc.get_count()
        if young < YOUNG_OBJECTS_PER_GC:
            return
        if not self.keys_idle(GC_AFTER_KEY_S) and young < GC_FORCED_AT:
            return
        if old >= OLDER_GCS_PER_COLLECTION:
            gc.collect(2)
        elif middle >= OLDER_GCS_PER_COLLECTION:
            gc.collect(1)
        else:
            gc.collect(0)

    def end_on_signal(self, signum: int, frame) -> None:
        """A signal handler: end as on q, and for certain EXIT_GRACE_S later; a second signal
        ends the process at once."""
        code = 128 + signum
        if self._forced_end is not None:
            os._exit(code)
        self._forced_end = threading.Timer(EXIT_GRACE_S, os._exit, [code])
        self._forced_end.daemon = True
        self._forced_end.start()
        if self._running_loop is not None:  # handlers run between bytecodes: post to the loop safely
            self._running_loop.call_soon_threadsafe(self.exit, code, code)

    def ended(self) -> None:
        """The app has ended: nothing is left to force."""
        if self._forced_end is not None:
            self._forced_end.cancel()

    def _sync_not_running(self, enabled: bool) -> None:
        if not self.screen_stack:
            return  # the app is ending: the poll worker's last frame came after its screens went
        showing = isinstance(self.screen, NotRunningScreen)
        if not enabled and not showing:
            self.push_screen(NotRunningScreen())
        elif enabled and showing:
            self.pop_screen()

    # ------------------------------------------------------------ actions

    def action_refresh_now(self) -> None:
        self._fresh = True
        self._wake.set()

    def action_refresh_interval(self, step: int) -> None:
        index = min(range(len(INTERVALS)), key=lambda i: abs(INTERVALS[i] - self.interval))
        self.interval = INTERVALS[max(0, min(len(INTERVALS) - 1, index + step))]
        self.notify(f"refreshing every {self.interval:g}s", timeout=2)

    def watch_interval(self) -> None:
        self._wake.set()  # the new period starts now, not after the old one ends

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, MainScreen):
            for tab_id, title in TABS:
                yield SystemCommand(f"Show {title}", f"Switch to the {title} tab",
                                    lambda tab_id=tab_id: screen.action_show_tab(tab_id))
            yield from screen.commands()
        yield SystemCommand("Refresh now", "Read the maps again at once", self.action_refresh_now)
        for seconds in INTERVALS:
            yield SystemCommand(f"Refresh every {seconds:g}s", "Change how often the maps are read",
                                lambda seconds=seconds: setattr(self, "interval", seconds))


def run_console(pin_dir: str, interval: float = 1.0, config: str | None = None,
                cgroup: str | None = None, dump_keep: int = DUMP_KEEP) -> int:
    """`mdatui` with no subcommand. config and cgroup are what `enable` gets when offered."""
    system.unmap_large_blocks()
    app = MdaConsole(LiveBackend(pin_dir, config=config, cgroup=cgroup), interval=interval,
                     dump_keep=dump_keep)
    previous = {sig: signal.signal(sig, app.end_on_signal) for sig in ENDING_SIGNALS}
    try:
        result = app.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        app.ended()
    # run() gives None when the app died of an exception; return_code is then non-zero.
    return result if result is not None else (app.return_code or 0)
