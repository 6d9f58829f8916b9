"""A table over many rows: sortable by any column, filtered as you type, refreshed in place.

Views hand the table all their rows on every refresh as a `Rows`, of which it shows the first
MAX_ROWS as sorted and filtered (table_rows picks them). It keeps the cursor on the same row and
the scroll where it was.

It draws its lines itself (Textual's line API) rather than through a DataTable, which measured
every cell it was given through Rich (15 ms for a page) and drew each line through Rich's layout
again whenever any cell had changed: a key press that brought a new order spent 30-40 ms there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from .cell_segments import PAD, draw_cell
from .table_rows import Column, Rows, first_rows, matching

T = TypeVar("T")

# The cursor's keys, for tables with actions cursor(step), page(pages) and cursor_to(row).
# Priority: Textual looks up a widget's bindings only once the key has gone from it up through
# each of its containers' queues to the app (five hops here, several ms a key). The tables
# contain nothing and take no keys but these, so acting on them as the app takes the key is
# the same as acting on them there.
CURSOR_BINDINGS = [
    Binding("up", "cursor(-1)", "Up", show=False, priority=True),
    Binding("down", "cursor(1)", "Down", show=False, priority=True),
    Binding("pageup", "page(-1)", "Page up", show=False, priority=True),
    Binding("pagedown", "page(1)", "Page down", show=False, priority=True),
    Binding("home", "cursor_to(0)", "First", show=False, priority=True),
    Binding("end", "cursor_to(-1)", "Last", show=False, priority=True),
]


class SortableTable(ScrollView, Generic[T], can_focus=True):
    """The header stays on the first line; the cursor is a row; a click on a header sorts."""

    BINDINGS = [
        *CURSOR_BINDINGS,
        Binding("s", "sort_next", "Sort", priority=True),  # as the cursor's keys
        Binding("S", "sort_reverse", "Reverse", show=False, priority=True),
    ]
    COMPONENT_CLASSES = {"sortable-table--header", "sortable-table--cursor",
                         "sortable-table--hover", "sortable-table--even-row",
                         "sortable-table--odd-row"}
    DEFAULT_CSS = """
    SortableTable {
        background: $surface;
        color: $foreground;
        scrollbar-size-vertical: 1;
        &:focus {
            background-tint: $foreground 5%;
            & > .sortable-table--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
        }
        & > .sortable-table--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        & > .sortable-table--even-row {
            background: $surface-lighten-1 50%;
        }
        &:dark > .sortable-table--even-row {
            background: $surface-darken-1 40%;
        }
        & > .sortable-table--hover {
            background: $block-hover-background;
        }
        & > .sortable-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
    }
    """

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
        super().__init__(id=id, classes=classes)
        self._columns = list(columns)
        self._row_key = row_key
        self.sort_column = sort or self._columns[0].key
        self.sort_reverse = self._column(self.sort_column).numeric
        self.filter_text = ""
        self._rows: Rows[T] | None = None
        self._found: tuple[Rows[T], str, np.ndarray] | None = None  # the last filter's rows
        self._items: dict[str, T] = {}
        self._keys: list[str] = []                 # of the shown rows, in order
        self._cells: dict[str, list[Text]] = {}
        self._widths = [c.width or label.cell_len for c, label in zip(columns, self._header())]
        self._lines: dict[tuple, Strip] = {}        # drawn since the cells or widths changed
        self._styles: dict[str, Style] = {}         # of each kind of line, while drawing
        self.cursor_row = 0
        self._hover_row: int | None = None  # under the mouse
        self.matched = 0      # rows the filter lets through
        self.hidden_rows = 0  # of those, rows past MAX_ROWS

    # ------------------------------------------------------------ public

    @property
    def selected(self) -> T | None:
        return self._items[self._keys[self.cursor_row]] if self._keys else None

    @property
    def row_count(self) -> int:
        return len(self._keys)

    @property
    def row_keys(self) -> list[str]:
        """The keys of the shown rows, top to bottom."""
        return list(self._keys)

    def cells(self, row: int) -> list[Text]:
        return self._cells[self._keys[row]]

    def column_spans(self) -> list[tuple[Column[T], int, int]]:
        """Each column with where it starts and how wide it is, padding included, in the
        table's own (unscrolled) coordinates."""
        spans, x = [], 0
        for column, width in zip(self._columns, self._widths):
            spans.append((column, x, width + 2 * PAD))
            x += width + 2 * PAD
        return spans

    @property
    def source(self) -> Rows[T] | None:
        """The rows the table shows now; None once forgotten."""
        return self._rows

    def show(self, rows: Rows[T]) -> None:
        self._rows = rows
        self._render_rows()

    def forget(self) -> None:
        """Let go of the rows (the shown ones stay on screen) until the next show()."""
        self._rows = self._found = None

    def prepare_filter(self) -> None:
        """Once the screen shows the filter focused, search the rows for nothing, a column at a
        time between other events: the first search works out what every later one needs (the
        distinct addresses, netns, pids: some 11 ms at 200,000 rows), which the first key typed
        would wait for. Callbacks, not a Worker: a finished Worker kept the rows alive until a
        full collection, and a thread's heap cost 6 MB of resident memory."""
        self.call_after_refresh(self._start_preparing)

    def _start_preparing(self) -> None:
        rows = self._rows
        columns = [c for c in self._columns if c.search is not None]

        def next_column() -> None:
            if columns and rows is not None and rows is self._rows and self.is_attached:
                columns.pop(0).search(rows, "")
                self.call_later(next_column)
        next_column()

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        self._render_rows(fit=True, lost="top")

    def sort_by(self, key: str, reverse: bool | None = None) -> None:
        column = self._column(key)
        if reverse is None:
            reverse = (not self.sort_reverse) if key == self.sort_column else column.numeric
        self.sort_column, self.sort_reverse = key, reverse
        self._render_rows(fit=True)
        self._scroll_to_cursor()

    def move_cursor(self, row: int) -> None:
        """Put the cursor on a shown row (clamped) and bring that row into view."""
        row = max(0, min(row, len(self._keys) - 1))
        if row != self.cursor_row:
            self.cursor_row = row
            self.refresh()
            self.post_message(self.Selected(self, self.selected))
        self._scroll_to_cursor()

    # ------------------------------------------------------------ actions and events

    def action_sort_next(self) -> None:
        keys = [c.key for c in self._columns]
        self.sort_by(keys[(keys.index(self.sort_column) + 1) % len(keys)])

    def action_sort_reverse(self) -> None:
        self.sort_by(self.sort_column, not self.sort_reverse)

    def action_cursor(self, step: int) -> None:
        self.move_cursor(self.cursor_row + step)

    def action_page(self, pages: int) -> None:
        self.move_cursor(self.cursor_row + pages * max(1, self.size.height - 1))

    def action_cursor_to(self, row: int) -> None:
        self.move_cursor(row if row >= 0 else len(self._keys) - 1)

    def on_mouse_move(self, event: events.MouseMove) -> None:
        at = event.get_content_offset(self)
        row = round(self.scroll_y) + at.y - 1 if at is not None and at.y > 0 else None
        if row != self._hover_row:
            self._hover_row = row
            self.refresh()

    def on_leave(self) -> None:
        if self._hover_row is not None:
            self._hover_row = None
            self.refresh()

    def on_click(self, event: events.Click) -> None:
        at = event.get_content_offset(self)
        if at is None:
            return
        if at.y == 0:
            x = at.x + round(self.scroll_x)
            for column, start, width in self.column_spans():
                if start <= x < start + width:
                    self.sort_by(column.key)
                    return
        else:
            self.move_cursor(round(self.scroll_y) + at.y - 1)

    # ------------------------------------------------------------ drawing

    def render_lines(self, crop: Region) -> list[Strip]:
        # A widget's style is worked out from every ancestor's (some 100 µs): once per region.
        base = self.rich_style
        self._styles = {kind: base + self.get_component_rich_style(kind)
                        for kind in self.COMPONENT_CLASSES}
        self._styles[""] = base
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        scroll_x, scroll_y = self.scroll_offset
        row = -1 if y == 0 else y - 1 + scroll_y
        if row >= len(self._keys):
            return Strip.blank(width, self._styles[""])
        if row < 0:
            kind = "sortable-table--header"
        elif row == self.cursor_row:
            kind = "sortable-table--cursor"
        elif row == self._hover_row:
            kind = "sortable-table--hover"
        else:
            kind = "sortable-table--odd-row" if row % 2 else "sortable-table--even-row"
        style = self._styles[kind]
        key = (row, kind, style, scroll_x, width)
        strip = self._lines.get(key)
        if strip is None:
            cells = self._header() if row < 0 else self._cells[self._keys[row]]
            console = self.app.console
            segments = [segment for cell, room in zip(cells, self._widths)
                        for segment in draw_cell(cell, room, style, console)]
            strip = Strip(segments).crop(scroll_x, scroll_x + width).adjust_cell_length(width, style)
            self._lines[key] = strip
        return strip

    def _header(self) -> list[Text]:
        labels = []
        for c in self._columns:
            arrow = (" ▼" if self.sort_reverse else " ▲") if c.key == self.sort_column else ""
            labels.append(Text(c.label + arrow, justify="right" if c.numeric else "left"))
        return labels

    def _scroll_to_cursor(self) -> None:
        seen = max(1, self.size.height - 1)  # less the header
        top = round(self.scroll_y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + seen:
            self.scroll_to(y=self.cursor_row - seen + 1, animate=False)

    # ------------------------------------------------------------ internals

    def _column(self, key: str) -> Column[T]:
        return next(c for c in self._columns if c.key == key)

    def _filtered(self, rows: Rows[T]) -> np.ndarray:
        """The rows the filter lets through, kept until the rows or the filter change."""
        needle = self.filter_text.casefold()
        if self._found is not None and self._found[0] is rows and self._found[1] == needle:
            return self._found[2]
        found = matching(rows, self._columns, needle)
        self._found = (rows, needle, found)
        return found

    def _page(self, rows: Rows[T]) -> np.ndarray:
        found = self._filtered(rows)
        self.matched = len(found)
        return first_rows(rows, found, self._column(self.sort_column).order(rows), self.sort_reverse)

    def _render_rows(self, fit: bool = False, lost: str = "stay") -> None:
        """Show the page of the rows as sorted and filtered now. The cursor stays on its row;
        if that row is gone, on the same line ("stay", a refresh) or on the first ("top", a new
        filter). Columns grow to fit their cells, and are fitted anew only at a new order or
        filter (fit): columns that narrowed and widened as each refresh brought other rows, ages
        and rates would make the table jump, and the screen be laid out again."""
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
        kept = self._keys[self.cursor_row] if self._keys else None
        widths = [c.width or max([label.cell_len] + [row[i].cell_len for row in cells.values()])
                  for i, (c, label) in enumerate(zip(self._columns, self._header()))]
        if not fit:
            widths = [max(now, was) for now, was in zip(widths, self._widths)]
        self._items, self._cells, self._keys, self._widths = items, cells, keys, widths
        self._lines = {}
        self.virtual_size = Size(sum(widths) + 2 * PAD * len(widths), len(keys) + 1)
        if kept in items:
            self.cursor_row = keys.index(kept)  # the scroll stays where it was
        elif lost == "stay":
            self.cursor_row = max(0, min(self.cursor_row, len(keys) - 1))
        else:
            self.cursor_row = 0
            self.scroll_to(y=0, animate=False)
        self.refresh()
        self.post_message(self.Selected(self, self.selected))
