"""What every tab of the main screen shares: it renders the app's current frame."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import SystemCommand
from textual.containers import Vertical

from ...core.console import Frame
from ..widgets.filter_input import FilterInput


class View(Vertical):
    """A tab's content. Subclasses implement show_frame; it runs on the UI thread."""

    MAIN = "DataTable"  # selector of the widget that gets the focus when the tab opens

    def on_mount(self) -> None:
        self.watch(self.app, "frame", self._frame_changed, init=True)

    def _frame_changed(self, frame: Frame | None) -> None:
        if frame is not None and frame.snapshot.enabled:
            self.show_frame(frame)

    def show_frame(self, frame: Frame) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not render frames")

    def focus_main(self) -> None:
        """Focus what the keys of this view act on (its table, usually)."""
        self.query_one(self.MAIN).focus()

    def action_focus_filter(self) -> None:
        self.query_one(FilterInput).focus()

    def commands(self) -> Iterable[SystemCommand]:
        """Command palette entries; none unless a view has some."""
        return ()
