"""A DataTable over many rows: sortable by any column, filtered as you type, refreshed in place.

Views hand the table all their rows on every refresh as a `Rows`: columns of numbers, one value
per row (numpy arrays), that sort and filter a few hundred thousand rows in milliseconds. Only
the first MAX_ROWS rows of the result become objects and cells, so a refresh costs about the same
for 100 rows as for 200,000. The table keeps the cursor on the same row and the scroll where it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.cache import LRUCache
from textual.coordinate import Coordinate
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip
from textual.widgets import DataTable

T = TypeVar("T")

# Rows the DataTable holds: two screens' worth. Textual measures each cell it is given and draws
# a cell in some 50 µs, so a new order or filter re-adding 500 rows took a quarter of a second.
# Past this many rows, filter (the summary lines say how many more match).
MAX_ROWS = 100


def _nth_smallest(values: np.ndarray, at: int):
    """values[at] of values sorted. numpy's partition takes 10-20 times longer when many values
    are equal (25 ms at 200,000 rates of 0, a sort 1-2 ms); with few equal it is the faster."""
    sample = values[::max(1, len(values) // 1024)]
    if 8 * np.unique(sample, return_counts=True)[1].max(initial=0) > len(sample):
        return np.sort(values)[at]
    return np.partition(values, at)[at]


class Rows(Protocol[T]):
    """All rows of a table as its columns see them."""

    def __len__(self) -> int: ...

    def tiebreak(self, rows: np.ndarray) -> Sequence[np.ndarray]:
        """Sort keys of these rows for where a column holds equal values, least significant
        first (as numpy.lexsort takes them): rows must not hop about from one refresh to the
        next."""

    def item(self, row: int) -> T:
        """The object a shown row is made from."""


@dataclass(frozen=True)
class Column(Generic[T]):
    key: str
    label: str
    text: Callable[[T], str | Text]              # the cell of a shown row
    order: Callable[[Any], np.ndarray]            # a sort value per row of the Rows; none: largest
    search: Callable[[Any, str], np.ndarray] | None = None  # rows whose cell holds a casefolded
    numeric: bool = False                                    # needle; None: the filter skips it
    width: int | None = None

    def render(self, item: T) -> Text:
        shown = self.text(item)
        if isinstance(shown, Text):
            return shown
        # Text rather than str: the table parses no markup (a command may hold brackets).
        return Text(shown, justify="right" if self.numeric else None)


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
        self._rows: Rows[T] | None = None
        self._found: tuple[Rows[T], str, np.ndarray] | None = None  # the last filter's rows
        self._items: dict[str, T] = {}
        self._shown: list[str] = []
        self._cells: dict[str, list[Text]] = {}
        self.matched = 0      # rows the filter lets through
        self.hidden_rows = 0  # of those, rows past MAX_ROWS
        self._selected: str | None = None
        self._drawn: LRUCache[tuple, list[list[Segment]]] = LRUCache(1024)
        # DataTable keeps a thousand lines and rows drawn, and ten thousand cells: each a few
        # objects the cyclic GC walks at every full collection (150,000 in all took 80 ms).
        # A screen shows some 50 rows; cells are kept above (the header's alone are left).
        self._line_cache = LRUCache(256)
        self._row_render_cache = LRUCache(256)
        self._row_renderable_cache = LRUCache(256)
        self._cell_render_cache = LRUCache(256)
        self._styles_drawn: dict | None = None  # while lines are drawn (render_lines)

    def on_mount(self) -> None:
        self._add_columns()

    def render_lines(self, crop: Region) -> list[Strip]:
        """DataTable works out its own style and its rows' from the styles of every ancestor for
        each line it draws, some 100 µs a line; drawing the lines of one region they are the same."""
        self._styles_drawn = {}
        try:
            return super().render_lines(crop)
        finally:
            self._styles_drawn = None

    @property
    def rich_style(self) -> Style:
        styles = self._styles_drawn
        if styles is None:
            return super().rich_style
        if "" not in styles:
            styles[""] = super().rich_style
        return styles[""]

    def _get_row_style(self, row_index: int, base_style: Style) -> Style:
        styles = self._styles_drawn
        if styles is None:
            return super()._get_row_style(row_index, base_style)
        key = (row_index if row_index < max(self.fixed_rows, 0) else row_index % 2, base_style)
        if key not in styles:
            styles[key] = super()._get_row_style(row_index, base_style)
        return styles[key]

    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False) -> list[list[Segment]]:
        """DataTable draws a cell through Rich's layout (some 80 µs) and draws every visible
        cell again whenever any cell has changed: its cache of drawn cells is keyed by a count
        of updates, and each refresh changes a few cells of every row (ages, rates). Here cells
        are kept by what they show and where, and a cell of one plain line is drawn directly
        (draw_cell), so a refresh or a new order costs a few milliseconds. The key is
        DataTable's own with the cell's content in place of the update count."""
        if row_index < 0 or column_index < 0:  # the header
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        cell = self.get_cell_at(Coordinate(row_index, column_index))
        key = (row_index, column_index, cell.plain, cell.style, cell.justify, tuple(cell.spans),
               width, base_style, cursor, hover, self._show_hover_cursor, self._pseudo_class_state)
        lines = self._drawn.get(key)
        if lines is None:
            lines = self.draw_cell(cell, row_index, column_index, base_style, width, cursor, hover)
            if lines is None:
                lines = super()._render_cell(row_index, column_index, base_style, width, cursor,
                                             hover)
            self._drawn[key] = lines
        return lines

    def draw_cell(self, cell: Text, row_index: int, column_index: int, base_style: Style,
                  width: int, cursor: bool, hover: bool) -> list[list[Segment]] | None:
        """The segments DataTable's Rich layout makes of a Text of one style on one line, with
        no wrapping, left or right justified; None for any other cell (and for rows taller than
        a line, or fixed rows and columns, which this table has not). Laid out as Padding, Text
        and Styled do it: the text cut or padded to the width less the cell padding; padding in
        the cell's base and component styles, the text in those with its own style between."""
        plain = cell.plain
        if (cell.spans or cell.justify not in (None, "default", "right") or cell.overflow
                or plain != plain.rstrip() or any(c < " " for c in plain) or self.fixed_rows
                or self.fixed_columns or self.rows[self.coordinate_to_cell_key(
                    Coordinate(row_index, column_index)).row_key].height != 1):
            return None
        component, post = self._get_styles_to_render_cell(
            False, False, False, hover, cursor, self.show_cursor, self._show_hover_cursor,
            self.cursor_foreground_priority == "css", self.cursor_background_priority == "css")
        pre = base_style + Style.from_meta({"row": row_index, "column": column_index}) + component
        pad_style = pre + post
        text_style = pre + self.app.console.get_style(cell.style) + post
        room = width - 2 * self.cell_padding
        edge = Segment(" " * self.cell_padding, pad_style)
        length = cell_len(plain)
        if length > room:
            middle = [Segment(set_cell_size(plain, room), text_style)]
        elif cell.justify == "right":
            middle = [Segment(" " * (room - length) + plain, text_style)]
        elif length == room:
            middle = [Segment(plain, text_style)]
        else:
            middle = [Segment(plain, text_style), Segment(" " * (room - length), pad_style)]
        return [[edge, *middle, edge]]

    # ------------------------------------------------------------ public

    @property
    def selected(self) -> T | None:
        key = self._selected
        return self._items.get(key) if key is not None else None

    @property
    def shown_count(self) -> int:
        return len(self._shown)

    @property
    def source(self) -> Rows[T] | None:
        """The rows the table shows now; None once forgotten. (DataTable.rows are its own.)"""
        return self._rows

    def show(self, rows: Rows[T]) -> None:
        self._rows = rows
        self._render_rows()

    def forget(self) -> None:
        """Let go of the rows (the shown ones stay on screen) until the next show()."""
        self._rows = self._found = None

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

    def _filtered(self, rows: Rows[T]) -> np.ndarray:
        """The rows the filter lets through, kept until the rows or the filter change."""
        needle = self.filter_text.casefold()
        if self._found is not None and self._found[0] is rows and self._found[1] == needle:
            return self._found[2]
        if needle:
            mask = np.zeros(len(rows), dtype=bool)
            for c in self._columns:
                if c.search is not None:
                    mask |= c.search(rows, needle)
            found = np.flatnonzero(mask)
        else:
            found = np.arange(len(rows))
        self._found = (rows, needle, found)
        return found

    def _page(self, rows: Rows[T]) -> np.ndarray:
        """The first MAX_ROWS rows in the order asked for. Rows that cannot be among them are
        left out before the sort: a partition finds the boundary value in linear time."""
        found = self._filtered(rows)
        self.matched = len(found)
        value = self._column(self.sort_column).order(rows)
        if len(found) < len(rows):
            value = value[found]
        reverse = self.sort_reverse
        if len(found) > MAX_ROWS:
            found, value = self._contenders(rows, found, value, reverse)
        order = np.lexsort([*rows.tiebreak(found), value])
        if reverse:
            order = order[::-1]
        return found[order[:MAX_ROWS]]

    @staticmethod
    def _contenders(rows: Rows[T], found: np.ndarray, value: np.ndarray,
                    reverse: bool) -> tuple[np.ndarray, np.ndarray]:
        """The found rows that can be among the first MAX_ROWS, and their values: those before
        the value at that place, and of the rows that hold it, those that can come first by the
        tiebreak's most significant key (a column of a few states ties on all rows)."""
        def first(values: np.ndarray, n: int) -> np.ndarray:
            at = len(values) - n if reverse else n - 1
            bound = _nth_smallest(values, at)
            return (values >= bound if reverse else values <= bound), bound
        near, bound = first(value, MAX_ROWS)
        tied = np.flatnonzero(value == bound)
        ahead = np.flatnonzero(near & (value != bound))
        need = MAX_ROWS - len(ahead)
        if len(tied) > need:
            major = rows.tiebreak(found[tied])[-1]
            tied = tied[first(major, need)[0]]
        keep = np.concatenate([ahead, tied])
        return found[keep], value[keep]

    def _render_rows(self) -> None:
        if self._rows is None:
            return
        page = self._page(self._rows)
        items: dict[str, T] = {}
        cells: dict[str, list[Text]] = {}
        for row in page.tolist():
            item = self._rows.item(row)
            key = self._row_key(item)
            items[key] = item
            cells[key] = [c.render(item) for c in self._columns]
        keys = list(items)
        self.hidden_rows = self.matched - len(keys)
        if keys == self._shown:
            for key in keys:
                for column_def, old, new in zip(self._columns, self._cells[key], cells[key]):
                    if old.plain != new.plain or old.style != new.style or old.spans != new.spans:
                        # Columns grow here and shrink at the next rebuild: DataTable measures
                        # a narrower cell's whole column again, every refresh for ages.
                        self.update_cell(key, column_def.key, new,
                                         update_width=new.cell_len > old.cell_len)
        else:
            self._rebuild(keys, cells)
        self._items, self._cells = items, cells
        if self._selected not in items:
            self._selected = keys[0] if keys else None
        self.post_message(self.Selected(self, self.selected))

    def _rebuild(self, keys: list[str], cells: dict[str, list[Text]]) -> None:
        keep, scroll_y = self._selected, self.scroll_y
        self.clear()
        for key in keys:
            self.add_row(*cells[key], key=key)
        self._shown = keys
        if keep in cells and keep in keys:
            self.move_cursor(row=keys.index(keep), animate=False, scroll=False)
            self.call_after_refresh(self.scroll_to, y=scroll_y, animate=False)
