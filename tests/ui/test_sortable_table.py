"""SortableTable on its own, over rows made here: what its lines show, where the cursor and the
scroll go, what a click does, and how columns fit their cells."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console
from rich.style import Style
from rich.text import Text
from textual.app import App, ComposeResult
from textual.geometry import Region

from mdatui.ui.widgets.cell_segments import draw_cell
from mdatui.ui.widgets.sortable_table import SortableTable
from mdatui.ui.widgets.table_rows import Column

NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliett", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo"]


class Words:
    """Rows of names with a number each (by default NAMES, the number ten times the length)."""

    def __init__(self, sizes: list[int] | None = None, names: list[str] = NAMES):
        self.names = names
        self.sizes = np.array(sizes if sizes is not None else [len(n) * 10 for n in names])

    def __len__(self) -> int:
        return len(self.names)

    def tiebreak(self, rows: np.ndarray):
        return (rows,)

    def item(self, row: int) -> tuple[str, int]:
        return self.names[row], int(self.sizes[row])


COLUMNS = [
    Column("name", "Name", text=lambda r: r[0],
           order=lambda rows: np.argsort(np.argsort(rows.names)),
           search=lambda rows, needle: np.array([needle in n for n in rows.names], dtype=bool)),
    Column("size", "Size", text=lambda r: str(r[1]), order=lambda rows: rows.sizes, numeric=True),
    Column("state", "State", text=lambda r: Text.assemble(("on", "green"), " ", ("fast", "bold")),
           order=lambda rows: np.zeros(len(rows))),
]


class TableApp(App):
    def __init__(self):
        super().__init__()
        self.selected: list[str | None] = []

    def compose(self) -> ComposeResult:
        yield SortableTable(COLUMNS, lambda r: r[0], sort="name")

    def on_sortable_table_selected(self, event: SortableTable.Selected) -> None:
        self.selected.append(event.item[0] if event.item else None)


def lines(table: SortableTable) -> list[str]:
    return [strip.text for strip in table.render_lines(Region(0, 0, *table.size))]


async def started(pilot, rows: Words | None = None) -> SortableTable:
    table = pilot.app.query_one(SortableTable)
    table.show(rows or Words())
    table.focus()
    await pilot.pause()
    return table


async def test_each_cell_is_drawn_in_its_column_and_the_header_names_the_order():
    async with TableApp().run_test(size=(40, 8)) as pilot:
        table = await started(pilot)
        shown = lines(table)
        assert shown[0].startswith(" Name ▲    Size  State   ")
        assert shown[1].startswith(" alpha       50  on fast ")  # numbers to the right
        assert shown[2].startswith(" bravo       50  on fast ")
        assert [column.key for column, _, _ in table.column_spans()] == ["name", "size", "state"]
        assert [(x, width) for _, x, width in table.column_spans()] == [(0, 10), (10, 6), (16, 9)]
        assert all(len(line) == table.size.width for line in shown)


async def test_the_cursor_row_is_drawn_in_the_cursor_style():
    async with TableApp().run_test(size=(40, 8)) as pilot:
        table = await started(pilot)
        strips = table.render_lines(Region(0, 0, *table.size))
        cursor = table.get_component_rich_style("sortable-table--cursor").bgcolor
        assert {s.style.bgcolor for s in strips[1]} == {cursor}       # alpha, the cursor
        assert cursor not in {s.style.bgcolor for s in strips[2]}
        # A cell's own styles are kept, over the row's background.
        drawn = {s.text: s.style for s in strips[2]}
        assert drawn["on"].color != drawn["bravo"].color and drawn["fast"].bold


async def test_the_row_under_the_mouse_is_drawn_in_the_hover_style():
    async with TableApp().run_test(size=(40, 8)) as pilot:
        table = await started(pilot)
        hover = table.get_component_rich_style("sortable-table--hover").bgcolor

        def backgrounds() -> list[set]:
            return [{s.style.bgcolor for s in strip}
                    for strip in table.render_lines(Region(0, 0, *table.size))]
        assert all(hover not in line for line in backgrounds())
        await pilot.hover(SortableTable, offset=(3, 3))   # the third row: charlie
        assert [hover in line for line in backgrounds()[:5]] == [False, False, False, True, False]
        await pilot.hover(SortableTable, offset=(3, 0))   # the header
        assert all(hover not in line for line in backgrounds())


async def test_keys_move_the_cursor_and_the_scroll_follows_it():
    async with TableApp().run_test(size=(40, 8)) as pilot:
        table = await started(pilot)           # 7 rows in view below the header
        await pilot.press("down", "down")
        assert table.selected[0] == "charlie" and pilot.app.selected[-1] == "charlie"
        await pilot.press("end")
        assert table.selected[0] == "romeo" and table.scroll_y == len(NAMES) - 7
        assert lines(table)[0].startswith(" Name")      # the header stays on top
        assert lines(table)[-1].startswith(" romeo")
        await pilot.press("pageup")
        assert table.cursor_row == len(NAMES) - 1 - 7 and table.scroll_y == table.cursor_row
        await pilot.press("home", "up")
        assert table.cursor_row == 0 and table.scroll_y == 0


async def test_a_click_on_a_header_sorts_and_on_a_row_selects_it():
    async with TableApp().run_test(size=(40, 8)) as pilot:
        table = await started(pilot)
        await pilot.click(SortableTable, offset=(12, 0))  # Size
        assert (table.sort_column, table.sort_reverse) == ("size", True)
        assert lines(table)[0].startswith(" Name      Size ▼")
        assert table.row_keys[:4] == ["november", "juliett", "foxtrot", "charlie"]  # 80, 70s
        # The cursor stays on its row, and the table scrolls to where that row went.
        assert table.selected[0] == "alpha" and table.cursor_row == 11 and table.scroll_y == 5
        await pilot.click(SortableTable, offset=(3, 2))   # the second row in view
        assert table.selected[0] == "oscar" and pilot.app.selected[-1] == "oscar"


async def test_columns_grow_with_their_cells_and_shrink_at_a_new_order_or_filter():
    async with TableApp().run_test(size=(40, 8)) as pilot:
        rows = Words()
        table = await started(pilot, rows)
        rows.sizes[0] = 123456
        table.show(rows)
        assert table.column_spans()[1][2] == 8 and table.row_keys[0] == "alpha"
        rows.sizes[0] = 5
        table.show(rows)                      # the same rows: the column keeps its width
        assert table.column_spans()[1][2] == 8
        rows.sizes[1] = 10**9                 # bravo jumps to the top of a sort by size
        table.sort_by("size", reverse=True)   # a new order fits the columns again
        assert table.column_spans()[1][2] == 12 and table.row_keys[0] == "bravo"
        rows.sizes[1] = 5                     # a refresh brings other rows first: no jump
        table.show(rows)
        assert table.column_spans()[1][2] == 12 and table.row_keys[0] != "bravo"
        table.set_filter("a")                 # a new filter fits them too: "Size ▼" is 6
        assert table.column_spans()[1][2] == 8


async def test_a_refresh_without_the_cursor_row_leaves_the_cursor_on_its_line():
    async with TableApp().run_test(size=(40, 8)) as pilot:
        table = await started(pilot)
        await pilot.press("pagedown")   # a page is 7 rows: hotel, and the table scrolled by 1
        assert (table.selected[0], table.cursor_row, table.scroll_y) == ("hotel", 7, 1)
        table.show(Words(names=[n for n in NAMES if n != "hotel"]))   # hotel closed
        await pilot.pause()
        assert (table.selected[0], table.cursor_row, table.scroll_y) == ("india", 7, 1)
        assert pilot.app.selected[-1] == "india"


async def test_the_filter_keeps_the_cursor_on_its_row_or_starts_at_the_top():
    async with TableApp().run_test(size=(40, 8)) as pilot:
        table = await started(pilot)
        await pilot.press("down", "down", "down")  # delta
        table.set_filter("e")
        assert table.selected[0] == "delta" and "alpha" not in table.row_keys
        table.set_filter("zz")
        await pilot.pause()
        assert table.row_count == 0 and table.selected is None and pilot.app.selected[-1] is None
        assert lines(table)[1].strip() == ""
        table.set_filter("")
        assert table.cursor_row == 0 and table.scroll_y == 0


async def test_preparing_the_filter_searches_each_column_before_a_key_is_typed():
    searched = []

    class Recorded(Words):
        def search(self, needle: str) -> np.ndarray:
            searched.append(needle)
            return np.array([needle in n for n in self.names], dtype=bool)

    columns = [*COLUMNS, Column("x", "X", text=lambda r: "", order=lambda rows: np.zeros(len(rows)),
                                search=lambda rows, needle: rows.search(needle))]

    class Prepared(TableApp):
        def compose(self) -> ComposeResult:
            yield SortableTable(columns, lambda r: r[0], sort="name")

    async with Prepared().run_test(size=(40, 8)) as pilot:
        pilot.app.query_one(SortableTable).prepare_filter()   # no rows yet: nothing to do
        await pilot.pause(0.1)
        table = await started(pilot, Recorded())
        table.prepare_filter()
        await pilot.pause(0.1)   # once the screen is refreshed, a column per turn of the loop
        assert searched == [""]
        table.set_filter("ovem")
        assert searched == ["", "ovem"] and table.row_keys == ["november"]


@pytest.mark.parametrize("cell, width, drawn", [
    (Text("abc"), 5, " abc   "),
    (Text("abc", justify="right"), 5, "   abc "),
    (Text("abcdefgh"), 5, " abcde "),
    (Text("abcdefgh", justify="right"), 5, " abcde "),
    (Text.assemble(("ab", "red"), "c", justify="right"), 5, "   abc "),
    (Text.assemble(("ab", "red"), "cdefgh"), 4, " abcd "),
])
def test_a_cell_is_padded_justified_or_cut_to_its_width(cell, width, drawn):
    segments = draw_cell(cell, width, Style(bgcolor="blue"), Console())
    assert "".join(s.text for s in segments) == drawn
    assert all(s.style.bgcolor.name == "blue" for s in segments)
    if cell.spans:
        assert [s.style.color.name for s in segments if s.text == "ab"] == ["red"]
