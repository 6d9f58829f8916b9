"""What every tab of the main screen shares: it renders the app's current frame."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import SystemCommand
from textual.containers import Vertical

from ...core.console import Frame
from ..widgets.filter_input import FilterInput


class View(Vertical):
    """A tab's content. show_frame runs on the UI thread."""

    MAIN = "SortableTable"  # selector of the widget that gets the focus when the tab opens
    # True: show_frame shows only the ends (the table, their rates and processes), so a frame
    # that brings the same table again (core.snapshot.Reader) changes nothing on the screen.
    ENDS_ONLY = False

    def on_mount(self) -> None:
        self._latest: Frame | None = None
        self.watch(self.app, "frame", self._frame_changed, init=True)

    @property
    def shown(self) -> bool:
        return self.parent is not None and self.parent.display  # the TabPane the tabs switch

    def _frame_changed(self, frame: Frame | None) -> None:
        if frame is None or not frame.snapshot.enabled:
            return
        if self.shows_nothing_new(frame):
            return
        self._latest = frame
        self.record_frame(frame)
        # Hidden tabs skip frames (even an update of a hidden widget lays the screen out
        # again), and catch up when shown.
        if self.shown:
            self.show_frame(frame)
        else:
            self.forget_frame()

    def shows_nothing_new(self, frame: Frame) -> bool:
        """Whether frame would show nothing the latest one did not: for a view of the ends
        only (ENDS_ONLY), a frame that brings the same table again."""
        return self.ENDS_ONLY and self.same_ends(frame)

    def same_ends(self, frame: Frame) -> bool:
        return self._latest is not None and frame.snapshot.table is self._latest.snapshot.table

    def catch_up(self) -> None:
        """The tab was opened: render the newest frame it skipped."""
        if self._latest is not None:
            self.show_frame(self._latest)

    def record_frame(self, frame: Frame) -> None:
        """Keep what the view needs of every frame, shown or not (a history)."""

    def show_frame(self, frame: Frame) -> None:
        """Render a frame of a running accelerator. Views fed by a stream of their own
        (events, dump) watch the app's frame for starts and stops as well."""

    def forget_frame(self) -> None:
        """A hidden view lets go of the older frame it shows: a frame holds the columns of every
        end, and the newest one is kept for catch_up anyway."""

    def focus_main(self) -> None:
        """Focus what the keys of this view act on (its table, usually)."""
        self.query_one(self.MAIN).focus()

    def action_focus_filter(self) -> None:
        self.query_one(FilterInput).focus()

    def commands(self) -> Iterable[SystemCommand]:
        """Command palette entries; none unless a view has some."""
        return ()
