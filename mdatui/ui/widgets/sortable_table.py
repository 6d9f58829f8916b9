"""A DataTable of objects: sortable by any column, filtered as you type, refreshed in place.

Views describe their columns once (what to show, what to sort by) and hand the table the whole
list on every refresh; the table keeps the cursor on the same object and the scroll where it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

T = TypeVar("T")

# Refreshing thousands of rows every second would stall the terminal; past this, filter.
MAX_ROWS = 2000


@dataclass(frozen=True)
class Column(Generic[T]):
    key: str
    label: str
    value: Callable[[T], Any]                    # sorts by this
    text: Callable[[T], str | Text] | None = None  # shows this (default: str(value))
    numeric: bool = False                        # right-aligned; sorts largest first
    width: int | None = None

    def render(self, item: T) -> str | Text:
        shown = self.text(item) if self.text else str(self.value(item))
        return Text(shown, justify="right") if self.numeric and isinstance(shown, str) else shown


def _sort_key(value: Any) -> tuple[bool, Any]:
    return (value is None, value if value is not None else 0)


class SortableTable(DataTable, Generic[T]):
    BINDINGS = [
        Binding("s", "sort_next", "Sort"),
        Binding("S", "sort_reverse", "Reverse", show=False),
    ]

    class Selected(Message):
        """The highlighted object changed (None: nothing is shown)."""

        def __init__(self, table: "SortableTable", item: Any) -> None:
            super().__init__()
            self.table = table
            self.item = item

        @property
        def control(self) -> "SortableTable":
            return self.table

    def __init__(self, columns: Sequence[Column[T]], row_key: Callable[[T], str], *,
                 sort: str | None = None, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self._columns = list(columns)
        self._row_key = row_key
        self.sort_column = sort or self._columns[0].key
        self.sort_reverse = self._column(self.sort_column).numeric
        self.filter_text = ""
        self._all: Sequence[T] = []
        self._items: dict[str, T] = {}
        self._shown: list[str] = []
        self._cells: dict[str, list[str | Text]] = {}
        self.hidden_rows = 0  # rows past MAX_ROWS
        self._selected: str | None = None

    def on_mount(self) -> None:
        self._add_columns()

    # ------------------------------------------------------------ public

    @property
    def selected(self) -> T | None:
        key = self._selected
        return self._items.get(key) if key is not None else None

    @property
    def shown_count(self) -> int:
        return len(self._shown)

    def show(self, items: Sequence[T]) -> None:
        self._all = items
        self._render_rows()

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        self._render_rows()

    def sort_by(self, key: str, reverse: bool | None = None) -> None:
        column = self._column(key)
        if reverse is None:
            reverse = (not self.sort_reverse) if key == self.sort_column else column.numeric
        self.sort_column, self.sort_reverse = key, reverse
        self.clear(columns=True)
        self._shown = []
        self._add_columns()
        self._render_rows()

    def action_sort_next(self) -> None:
        keys = [c.key for c in self._columns]
        self.sort_by(keys[(keys.index(self.sort_column) + 1) % len(keys)])

    def action_sort_reverse(self) -> None:
        self.sort_by(self.sort_column, not self.sort_reverse)

    # ------------------------------------------------------------ Textual events

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._selected = event.row_key.value if event.row_key is not None else None
        self.post_message(self.Selected(self, self.selected))

    # ------------------------------------------------------------ internals

    def _column(self, key: str) -> Column[T]:
        return next(c for c in self._columns if c.key == key)

    def _add_columns(self) -> None:
        for c in self._columns:
            arrow = (" ▼" if self.sort_reverse else " ▲") if c.key == self.sort_column else ""
            label = Text(c.label + arrow, justify="right" if c.numeric else "left")
            self.add_column(label, key=c.key, width=c.width)

    def _matches(self, cells: list[str | Text]) -> bool:
        needle = self.filter_text.casefold()
        return not needle or any(needle in str(cell).casefold() for cell in cells)

    def _render_rows(self) -> None:
        column = self._column(self.sort_column)
        # Ties are broken by row key: maps iterate in no stable order, rows must not hop about.
        ordered = sorted(self._all, key=lambda item: (_sort_key(column.value(item)), self._row_key(item)),
                         reverse=self.sort_reverse)
        items: dict[str, T] = {}
        cells: dict[str, list[str | Text]] = {}
        for item in ordered:
            row = [c.render(item) for c in self._columns]
            if self._matches(row):
                key = self._row_key(item)
                items[key] = item
                cells[key] = row
        keys = list(items)
        self.hidden_rows = max(0, len(keys) - MAX_ROWS)
        keys = keys[:MAX_ROWS]
        if keys == self._shown:
            for key in keys:
                for column_def, old, new in zip(self._columns, self._cells[key], cells[key]):
                    if str(old) != str(new) or (isinstance(new, Text) and old != new):
                        self.update_cell(key, column_def.key, new, update_width=True)
        else:
            self._rebuild(keys, cells)
        self._items, self._cells = items, cells
        if self._selected not in items:
            self._selected = keys[0] if keys else None
        self.post_message(self.Selected(self, self.selected))

    def _rebuild(self, keys: list[str], cells: dict[str, list[str | Text]]) -> None:
        keep, scroll_y = self._selected, self.scroll_y
        self.clear()
        for key in keys:
            self.add_row(*cells[key], key=key)
        self._shown = keys
        if keep in cells and keep in keys:
            self.move_cursor(row=keys.index(keep), animate=False, scroll=False)
            self.call_after_refresh(self.scroll_to, y=scroll_y, animate=False)
