"""A table's cell as the segments of its line, for the tables that draw their lines themselves
(SortableTable, RingTable)."""

from __future__ import annotations

from rich.cells import set_cell_size
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

PAD = 1  # blank cells each side of a column's content


def draw_cell(cell: Text, width: int, base: Style, console: Console) -> list[Segment]:
    """A cell (one line of text) padded or cut to width, right justified if it says so; the
    row's style lies under the cell's own."""
    edge = Segment(" " * PAD, base)
    length = cell.cell_len
    if cell.spans:
        line = Segment.adjust_line_length(list(cell.render(console)), width)
        if cell.justify == "right" and length < width:
            line = [Segment(" " * (width - length)), *line[:-1]]
        return [edge, *Segment.apply_style(line, base), edge]
    style = base + console.get_style(cell.style) if cell.style else base
    plain = cell.plain
    if length > width:
        return [edge, Segment(set_cell_size(plain, width), style), edge]
    gap = " " * (width - length)
    if cell.justify == "right":
        return [Segment(" " * PAD + gap, base), Segment(plain, style), edge]
    return [edge, Segment(plain, style), Segment(gap + " " * PAD, base)]
