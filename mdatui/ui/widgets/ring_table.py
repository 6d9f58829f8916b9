"""A table over the messages of a core.ring.Ring: one line per message, the newest at the bottom.

It draws only the lines on screen (Textual's line API), straight from the ring: a new batch costs
the lines it brings into view, whatever the ring holds. A DataTable made every row an object and
a row removed from the top rebuilt its whole order, which froze the console once a capture had
filled it.

Following, the cursor sits on the newest message and the view scrolls with it; moving the cursor
stops following (the table posts FollowStopped), and the shown end stays where it was until
follow() is called again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.style import Style
from rich.text import Text
from textual import events
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ...core.backend import Ring
from .cell_segments import PAD, draw_cell
from .sortable_table import CURSOR_BINDINGS, SortableTable


@dataclass(frozen=True)
class RingColumn:
    label: str
    text: Callable[[int, Any], str | Text]  # the cell of message number seq
    numeric: bool = False

    def render(self, seq: int, item: Any) -> Text:
        shown = self.text(seq, item)
        return shown if isinstance(shown, Text) else Text(shown, justify="right" if self.numeric else None)


class RingTable(ScrollView, can_focus=True):
    BINDINGS = CURSOR_BINDINGS
    # The look of the connection tables, whose component classes these lines borrow.
    COMPONENT_CLASSES = SortableTable.COMPONENT_CLASSES
    DEFAULT_CSS = SortableTable.DEFAULT_CSS.replace("SortableTable {", "RingTable {")

    class Selected(Message):
        """The cursor is on another message: its number and itself (None: nothing shown)."""

        def __init__(self, table: "RingTable", seq: int | None, item: Any) -> None:
            super().__init__()
            self.table, self.seq, self.item = table, seq, item

        @property
        def control(self) -> "RingTable":
            return self.table

    class FollowStopped(Message):
        """An operator moved the cursor off the newest message."""

    def __init__(self, ring: Ring, columns: Sequence[RingColumn], *, id: str | None = None):
        super().__init__(id=id)
        self.ring = ring
        self._columns = list(columns)
        self._widths = [Text(c.label).cell_len for c in columns]
        self.end = ring.end         # number after the last message shown
        self.cursor: int | None = None  # number of the message under the cursor
        self.following = True
        self._styles: dict[str, Style] = {}
        self._drawn: dict[int, list[Text]] = {}  # cells of the lines being drawn, by number

    # ------------------------------------------------------------ public

    @property
    def first(self) -> int:
        return self.ring.first

    @property
    def row_count(self) -> int:
        return max(0, self.end - self.ring.first)

    def cells(self, seq: int) -> list[Text]:
        item = self.ring[seq]
        return [c.render(seq, item) for c in self._columns]

    def advance(self) -> None:
        """The ring got messages (or lost some off its start): show them if following."""
        if self.following:
            self.end = self.ring.end
            self._set_cursor(self.end - 1 if self.row_count else None)
        elif self.cursor is not None and self.cursor < self.ring.first:
            self._set_cursor(self.ring.first if self.row_count else None)
        self._resize()
        if self.following:
            self.scroll_to(y=max(0, self.row_count + 1 - self.size.height), animate=False)
        self.refresh()

    def follow(self) -> None:
        self.following = True
        self.advance()

    # ------------------------------------------------------------ keys and mouse

    def move_cursor(self, seq: int) -> None:
        if not self.row_count:
            return
        seq = max(self.ring.first, min(seq, self.end - 1))
        if self.following and seq != self.end - 1:  # still on the newest: go on following
            self.following = False
            self.post_message(self.FollowStopped())
        self._set_cursor(seq)
        self._scroll_to_cursor()

    def action_cursor(self, step: int) -> None:
        self.move_cursor((self.cursor if self.cursor is not None else self.end) + step)

    def action_page(self, pages: int) -> None:
        self.action_cursor(pages * max(1, self.size.height - 1))

    def action_cursor_to(self, row: int) -> None:
        self.move_cursor(self.ring.first + row if row >= 0 else self.end - 1)

    def on_click(self, event: events.Click) -> None:
        at = event.get_content_offset(self)
        if at is not None and at.y > 0:
            self.move_cursor(self.ring.first + round(self.scroll_y) + at.y - 1)

    # ------------------------------------------------------------ drawing

    def render_lines(self, crop: Region) -> list[Strip]:
        base = self.rich_style
        self._styles = {kind: base + self.get_component_rich_style(kind)
                        for kind in self.COMPONENT_CLASSES}
        self._styles[""] = base
        self._fit(crop)
        return super().render_lines(crop)

    def _fit(self, crop: Region) -> None:
        """Columns grow to the widest cell drawn so far, never shrink: no jumping as it scrolls."""
        top = self.ring.first + round(self.scroll_y)
        self._drawn = {seq: self.cells(seq) for seq in range(top, min(top + crop.height, self.end))}
        widths = list(self._widths)
        for cells in self._drawn.values():
            widths = [max(w, cell.cell_len) for w, cell in zip(widths, cells)]
        if widths != self._widths:
            self._widths = widths
            self._resize()

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        scroll_x, scroll_y = self.scroll_offset
        seq = self.ring.first + scroll_y + y - 1
        if y == 0:
            kind, cells = "sortable-table--header", [
                Text(c.label, justify="right" if c.numeric else "left") for c in self._columns]
        elif seq >= self.end:
            return Strip.blank(width, self._styles[""])
        else:
            kind = ("sortable-table--cursor" if seq == self.cursor
                    else "sortable-table--odd-row" if seq % 2 else "sortable-table--even-row")
            cells = self._drawn.get(seq) or self.cells(seq)
        style = self._styles[kind]
        console = self.app.console
        segments = [segment for cell, room in zip(cells, self._widths)
                    for segment in draw_cell(cell, room, style, console)]
        return Strip(segments).crop(scroll_x, scroll_x + width).adjust_cell_length(width, style)

    # ------------------------------------------------------------ internals

    def _set_cursor(self, seq: int | None) -> None:
        if seq != self.cursor:
            self.cursor = seq
            self.refresh()
            self.post_message(self.Selected(self, seq, self.ring[seq] if seq is not None else None))

    def _resize(self) -> None:
        self.virtual_size = Size(sum(self._widths) + 2 * PAD * len(self._widths), self.row_count + 1)

    def _scroll_to_cursor(self) -> None:
        if self.cursor is None:
            return
        row = self.cursor - self.ring.first
        seen = max(1, self.size.height - 1)
        top = round(self.scroll_y)
        if row < top:
            self.scroll_to(y=row, animate=False)
        elif row >= top + seen:
            self.scroll_to(y=row - seen + 1, animate=False)
