"""A one-line field that filters a SortableTable as you type."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input

from .sortable_table import SortableTable


class FilterInput(Input):
    """Enter goes back to the table with the filter kept; escape clears it."""

    # Priority, as the tables' keys (sortable_table.CURSOR_BINDINGS): a field takes no escape
    # of its own, so acting on it as the app takes the key is the same, without the trip up
    # through the containers first.
    BINDINGS = [Binding("escape", "clear", "Clear filter", priority=True)]

    def __init__(self, table_id: str, **kw) -> None:
        super().__init__(placeholder="/ filter: type to narrow by any column", compact=True, **kw)
        self._table_id = table_id

    def _table(self) -> SortableTable:
        return self.screen.query_one(f"#{self._table_id}", SortableTable)

    def on_focus(self) -> None:
        self._table().prepare_filter()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._table().set_filter(self.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._table().focus()

    def action_clear(self) -> None:
        self.value = ""
        self._table().focus()
