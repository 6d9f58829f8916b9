"""What every tab of the main screen shares: it renders the app's current frame."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import SystemCommand
from textual.binding import Binding
from textual.containers import Vertical

from ...core.backend import Frame
from ..widgets.columns import Leftover
from ..widgets.filter_input import FilterInput
from ..widgets.sortable_table import SortableTable


class View(Vertical):
    """A tab's content. show_frame runs on the UI thread."""

    MAIN = "SortableTable"  # selector of the widget that gets the focus when the tab opens
    # True: show_frame shows only the ends (the table, their rates and processes), so a frame
    # that brings the same table again (core.reader.Reader) changes nothing on the screen.
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
        """Focus what the keys of this view act on (its table, usually). Not again when it has
        the focus: Textual's focus() repaints the widget, and a tab switch asks twice (the key's
        action, then the tab's activation, which a click brings alone), a second paint of the
        table after the screen's (some 3 ms at 200x50)."""
        main = self.query_one(self.MAIN)
        if main is not self.screen.focused:
            main.focus()

    def action_focus_filter(self) -> None:
        self.query_one(FilterInput).focus()

    def commands(self) -> Iterable[SystemCommand]:
        """Command palette entries; none unless a view has some."""
        return ()


class EndsView(View):
    """A tab whose table shows a frame's ends (connections, pairs). Its rows take over what
    the rows before them worked out of the same ends, also across the frames it skipped while
    hidden: a first sort or filter after switching tabs would work it out again."""

    BINDINGS = [Binding("slash", "focus_filter", "Filter", key_display="/")]
    ENDS_ONLY = True
    ROWS: type  # made of a frame and a Leftover, with .frame, made_of(frame) and leftover()
    TABLE_ID: str

    _leftover: Leftover | None = None  # of the rows let go of while hidden

    @property
    def table(self) -> SortableTable:
        return self.query_one(f"#{self.TABLE_ID}", SortableTable)

    def catch_up(self) -> None:
        # Opened again before a frame with other ends came: the table shows the newest already.
        rows = self.table.source
        if rows is None or rows.frame is not self._latest:
            super().catch_up()

    def show_rows(self, frame: Frame) -> None:
        self.table.show(self.ROWS(frame, self._leftover_now()))
        self._leftover = None

    def forget_frame(self) -> None:
        # Kept only while the newest frame holds the same ends: stale columns would hold
        # the old ends' arrays (some 10 MB at 200,000) until the tab is opened.
        leftover = self._leftover_now()
        fits = leftover is not None and leftover.fits(self.ROWS.made_of(self._latest))
        self._leftover = leftover if fits else None
        self.table.forget()

    def _leftover_now(self) -> Leftover | None:
        rows = self.table.source
        return rows.leftover() if rows is not None else self._leftover
