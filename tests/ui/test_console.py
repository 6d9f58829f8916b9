"""The console driven by keys and clicks (Textual Pilot) against the fixed data of fake.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from textual.geometry import Region
from textual.widgets import Button, DataTable, Input, Log, TabbedContent

from mdatui.core.backend import Frame
from mdatui.ui.app import MdaConsole, Polled
from mdatui.ui.screens.help import HelpScreen
from mdatui.ui.screens.not_running import NotRunningScreen
from mdatui.ui.screens.prompt import PromptScreen
from mdatui.ui.screens.rule_form import RuleFormScreen
from mdatui.ui.widgets.key_bar import KeyBar
from mdatui.ui.widgets.ring_table import RingTable
from mdatui.ui.widgets.sortable_table import SortableTable
from mdatui.ui.widgets.status_bar import status_line

from .fake import ENABLED_AT, RULES_TEXT, FakeBackend, screen_lines, wait_frames
from .fake import shown as text

SIZE = (100, 30)


def console(backend: FakeBackend | None = None) -> MdaConsole:
    # A refresh period longer than any test: frames come only when a test asks for one.
    return MdaConsole(backend or FakeBackend(), interval=3600)


async def two_frames(pilot) -> None:
    """The first frame has no rates (nothing to compare with); the second has steady ones."""
    await wait_frames(pilot, 1)
    pilot.app.action_refresh_now()
    await wait_frames(pilot, 2)


async def test_a_frame_that_comes_as_the_app_ends_is_dropped():
    # The poll worker's last message can be handled after the screens are gone (seen in CI:
    # ScreenStackError, the app's exit an error).
    app = console()
    async with app.run_test() as pilot:
        await two_frames(pilot)
        frame = app.frame
    assert app.screen_stack == []
    app.on_polled(Polled(frame, None))
    app.on_polled(Polled(None, "nothing is pinned"))


async def test_status_line_shows_state_and_rates():
    async with console().run_test(size=SIZE) as pilot:
        await two_frames(pilot)
        line = text(pilot.app.screen.query_one("StatusBar"))
        assert "/sys/fs/cgroup/mesh" in line and "up 1m40s" in line
        assert "3 pairs" in line and "580 msg/s" in line and "1.5Mi/s" in line


def test_status_line_says_when_the_ends_are_read_less_often_than_every_refresh():
    snap = FakeBackend().snapshot()
    frame = Frame.next(None, snap, ENABLED_AT + 100)
    assert "ends every" not in status_line(frame, 1.0, 0).plain
    held = Frame.next(frame, replace(snap, ends_every_s=1.4), ENABLED_AT + 101)
    assert "⟳ 1s, ends every 2s" in status_line(held, 1.0, 0).plain
    assert "ends every" not in status_line(held, 2.0, 0).plain


async def test_number_keys_switch_tabs_and_question_mark_opens_help():
    async with console().run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        tabs = pilot.app.screen.query_one(TabbedContent)
        for key, tab in (("2", "connections"), ("3", "pairs"), ("4", "dump"), ("5", "rules"),
                         ("6", "events"), ("1", "overview")):
            await pilot.press(key)
            assert tabs.active == tab
        await pilot.press("2", "question_mark")
        assert isinstance(pilot.app.screen, HelpScreen)
        assert "Filter" in text(pilot.app.screen.query_one("#help-keys"))  # the view's own keys
        await pilot.press("escape")
        assert not isinstance(pilot.app.screen, HelpScreen)


async def test_a_tab_number_typed_into_a_field_is_the_fields():
    async with console().run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("2", "slash", *"198.1")  # the tabs' keys act before the focused widget
        tabs = pilot.app.screen.query_one(TabbedContent)
        assert tabs.active == "connections"
        assert pilot.app.screen.query_one("#conn-filter", Input).value == "198.1"
        await pilot.press("escape", "3")
        assert tabs.active == "pairs"


@pytest.mark.parametrize("keys", [("ctrl+c",), ("2", "slash", "1", "ctrl+c"), ("ctrl+q",)],
                         ids=["overview", "typing-a-filter", "ctrl+q"])
async def test_ctrl_c_ends_the_console_as_q_does(keys):
    """In a terminal ctrl+c reaches the console as a key, not as SIGINT; a user ends a console
    with it, even from a field."""
    async with console().run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press(*keys)
        await pilot.pause(0.1)
        assert not pilot.app.is_running
    assert pilot.app.return_code == 0


async def test_a_table_opened_again_before_other_ends_came_is_not_made_again():
    async with console().run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("2")
        table = pilot.app.screen.query_one("#conn-table", SortableTable)
        rows = table.source
        await pilot.press("1", "2")
        assert table.source is rows
        pilot.app.action_refresh_now()  # other counters: the tab shows them at once
        await wait_frames(pilot, 2)
        assert table.source is not rows and table.source.frame is pilot.app.frame


async def test_the_rules_tab_opened_again_before_other_ends_came_is_not_drawn_again():
    async with console().run_test(size=SIZE) as pilot:
        await two_frames(pilot)
        await pilot.press("5")
        table = pilot.app.screen.query_one("#rules-table", DataTable)
        rows = list(table.rows)
        await pilot.press("1", "5")
        assert all(now is then for now, then in zip(table.rows, rows, strict=True))
        await pilot.press("a", "tab", *"15006", "enter")  # an edit counts against that frame
        view = pilot.app.screen.query_one("#rules-view")
        assert "2 open connections leave the fast path" in text(view.query_one("#rules-preview"))


async def test_tabs_respond_to_the_mouse():
    async with console().run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.click("#--content-tab-pairs")
        assert pilot.app.screen.query_one(TabbedContent).active == "pairs"


async def test_key_bar_shows_the_keys_of_the_tab_and_a_click_presses_one():
    async with console().run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("4")
        await pilot.pause()
        bar = pilot.app.screen.query_one(KeyBar)
        line = bar.render().plain
        assert "s Start/stop" in line and "w Save pcap" in line and "^p palette" in line
        await pilot.press("2")
        await pilot.pause()
        line = bar.render().plain
        assert "s Sort" in line and "Start/stop" not in line
        await pilot.click(KeyBar, offset=(line.index("? Help") + 1, 0))
        assert isinstance(pilot.app.screen, HelpScreen)


async def test_command_palette_switches_tabs():
    async with console().run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("ctrl+p")
        await pilot.press(*"Show Pairs")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert pilot.app.screen.query_one(TabbedContent).active == "pairs"


async def test_plus_and_minus_change_the_refresh_period():
    app = MdaConsole(FakeBackend(), interval=1.0)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("minus")
        assert app.interval == 2.0
        await pilot.press("plus", "plus")
        assert app.interval == 0.5
        assert "⟳ 0.5s" in text(app.screen.query_one("StatusBar"))


async def test_ctrl_r_reads_the_ends_now_even_where_refreshes_would_skip_them():
    backend = FakeBackend()
    async with console(backend).run_test(size=SIZE) as pilot:
        await two_frames(pilot)  # two_frames asks for its second frame as ctrl+r does
        assert backend.fresh_reads == 1
        await pilot.press("minus")  # a new period wakes the reader too, but asks nothing fresh
        await wait_frames(pilot, 3)
        await pilot.press("ctrl+r")
        await wait_frames(pilot, 4)
        assert backend.fresh_reads == 2


async def test_connections_sort_by_key_and_by_header_click():
    async with console().run_test(size=SIZE) as pilot:
        await two_frames(pilot)
        await pilot.press("2")
        table = pilot.app.screen.query_one("#conn-table", SortableTable)
        assert table.row_keys[0].startswith("198.18.0.1:41000>")      # most bytes first
        await pilot.press("s")                                      # next column: rate
        assert table.sort_column == "rate"
        assert table.row_keys[0].startswith("198.18.0.1:41000>")
        await pilot.press("S")
        assert table.sort_reverse is False
        await pilot.click("#conn-table", offset=(3, 0))             # the Local header
        assert table.sort_column == "local" and table.sort_reverse is False
        assert [k.split(">")[0] for k in table.row_keys][:3] == [
            "127.0.0.1:15001", "127.0.0.1:40000", "127.0.0.1:43000"]


async def test_connections_filter_as_you_type():
    async with console().run_test(size=SIZE) as pilot:
        await two_frames(pilot)
        await pilot.press("2", "slash")
        table = pilot.app.screen.query_one("#conn-table", SortableTable)
        # Focusing the filter works out the addresses' texts before any key is typed.
        await pilot.pause(0.1)
        assert "_ips" in table.source.local.__dict__
        await pilot.press(*"envoy")
        assert table.row_count == 5
        assert "5 of 10 ends" in text(pilot.app.screen.query_one("#conn-summary"))
        await pilot.press("backspace", "backspace", "backspace", "backspace", "backspace", *"pending")
        assert table.row_keys == ["127.0.0.1:43000>127.0.0.1:7000@4026531993"]
        await pilot.press("escape")
        assert table.row_count == 10 and table.has_focus
        # Survives a refresh: the filter and the cursor stay put.
        await pilot.press("down", "down")
        before = table.selected.key
        pilot.app.action_refresh_now()
        await wait_frames(pilot, 3)
        assert table.selected.key == before


async def test_connections_filter_finds_ipv6_ends_by_address_and_port():
    async with console().run_test(size=SIZE) as pilot:
        await two_frames(pilot)
        await pilot.press("2", "slash", *"::2]:15006")  # spans the colon before the port
        table = pilot.app.screen.query_one("#conn-table", SortableTable)
        assert sorted(table.row_keys) == ["[2001:2::1]:42000>[2001:2::2]:15006@0",
                                          "[2001:2::2]:15006>[2001:2::1]:42000@0"]
        await pilot.press("escape")
        table.move_cursor(row=table.row_keys.index("[2001:2::1]:42000>[2001:2::2]:15006@0"))
        await pilot.pause()
        pane = text(pilot.app.screen.query_one("#conn-detail"))
        assert "This end [2001:2::1]:42000 → [2001:2::2]:15006" in pane
        assert "Peer     [2001:2::2]:15006 → [2001:2::1]:42000" in pane and "Pair     ok" in pane


async def test_connection_detail_shows_the_peer_with_live_counters():
    async with console().run_test(size=SIZE) as pilot:
        await two_frames(pilot)
        await pilot.press("2")
        table = pilot.app.screen.query_one("#conn-table", SortableTable)
        table.move_cursor(row=table.row_keys.index("127.0.0.1:40000>198.18.0.2:80@4026531993"))
        await pilot.pause()
        pane = text(pilot.app.screen.query_one("#conn-detail"))
        assert "This end 127.0.0.1:40000 → 198.18.0.2:80" in pane
        assert "Peer     127.0.0.1:15001 → 127.0.0.1:40000" in pane
        assert "(istio-proxy) envoy --config sidecar-out.yaml" in pane
        assert "50 msg/s" in pane and "Pair     ok" in pane
        table.move_cursor(row=table.row_keys.index("198.18.0.1:44000>198.18.0.2:8080@0"))
        await pilot.pause()
        assert "has no entry in the map" in text(pilot.app.screen.query_one("#conn-detail"))


async def test_pairs_put_broken_pairs_first():
    async with console().run_test(size=SIZE) as pilot:
        await two_frames(pilot)
        await pilot.press("3")
        table = pilot.app.screen.query_one("#pairs-table", SortableTable)
        healths = [table.cells(i)[2].plain for i in range(table.row_count)]
        assert healths == ["one-sided", "pending", "normal", "ok", "ok", "ok"]
        assert text(pilot.app.screen.query_one("#pairs-summary")).endswith("1 broken")
        row = table.cells(3)
        assert "→" in row[1]  # a complete pair shows its peer, both directions counted


async def test_a_pair_on_the_normal_path_is_not_an_accelerated_one_anywhere():
    async with console().run_test(size=SIZE) as pilot:
        await two_frames(pilot)
        await pilot.press("3")
        table = pilot.app.screen.query_one("#pairs-table", SortableTable)
        taken_off = table.cells(table.row_keys.index("198.18.0.1:45000>198.18.0.2:9090@0"))
        assert (taken_off[2].plain, taken_off[3].plain) == ("normal", "normal")  # health, state
        summary = text(pilot.app.screen.query_one("#pairs-summary"))
        assert summary.startswith("6 pairs: 3 ok (accelerated), 1 on the normal path, 1 pending")
        assert "│ 3 pairs │" in text(pilot.app.screen.query_one("StatusBar"))
        await pilot.press("1")
        assert "3 accelerated of 6" in text(pilot.app.screen.query_one("#ov-rates"))


async def test_dump_start_pause_stop_and_save_pcap(tmp_path):
    backend = FakeBackend()
    async with console(backend).run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("4")
        view = pilot.app.screen.query_one("#dump-view")
        await pilot.click("#dump-port")
        await pilot.press(*"80")
        await pilot.press("escape")
        view.query_one("#dump-table").focus()
        await pilot.press("s")
        table = view.query_one("#dump-table", RingTable)
        for _ in range(100):
            if table.row_count == 6:
                break
            await pilot.pause(0.02)
        assert table.row_count == 6 and backend.dumps_started == [(None, 80, 128)]
        lines = screen_lines(pilot.app)
        newest = next(line for line in lines if line.lstrip().startswith("6 "))
        assert "127.0.0.1:15001 → 127.0.0.1:40000" in newest and "HTTP/1.1 200 OK" in newest
        assert "6 kept of 100000" in text(view.query_one("#dump-status"))
        await pilot.press("up")  # scrolling back stops following: the status says paused
        assert view.paused and "paused" in text(view.query_one("#dump-status"))
        hex_pane = text(view.query_one("#dump-hex"))
        assert "47 45 54 20 2f 30 20 48" in hex_pane and "GET /0 HTTP/1.1" in hex_pane
        await pilot.press("space")
        assert not view.paused and table.cursor == 5  # following the newest again
        await pilot.press("s")
        for _ in range(100):
            if not view.capturing:
                break
            await pilot.pause(0.02)
        assert not view.capturing and not backend.dump_open
        path = tmp_path / "x.pcap"
        await pilot.press("w")
        assert isinstance(pilot.app.screen, PromptScreen)
        pilot.app.screen.query_one(Input).value = str(path)
        await pilot.press("enter")
        for _ in range(100):
            if path.exists() and path.stat().st_size:
                break
            await pilot.pause(0.02)
        data = path.read_bytes()
        assert data[:4] == (0xA1B23C4D).to_bytes(4, "little") and len(data) > 6 * 40


async def started_dump(pilot):
    """The Dump tab with a capture started: its view and table."""
    await pilot.press("4", "s")
    view = pilot.app.screen.query_one("#dump-view")
    return view, view.query_one("#dump-table", RingTable)


async def until_end(pilot, table: RingTable, end: int) -> None:
    """Until the table holds messages up to `end`, for 2 s at most."""
    for _ in range(100):
        if table.end == end:
            break
        await pilot.pause(0.02)


async def test_dump_keeps_the_newest_in_its_ring_and_counts_what_it_dropped():
    app = MdaConsole(FakeBackend(), interval=3600, dump_keep=8)
    async with app.run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        view, table = await started_dump(pilot)
        for end in (6, 12, 18, 24, 30):  # 6 messages a batch
            await until_end(pilot, table, end)
            app.backend.dump.more(1)
        assert (table.first, table.end, table.cursor) == (22, 30, 29)
        assert "8 kept of 8  22 dropped" in text(view.query_one("#dump-status"))
        numbers = [line.split()[0] for line in screen_lines(pilot.app) if line.split()
                   and line.split()[0].isdigit() and "→" in line]
        assert numbers == [str(n) for n in range(23, 31)]  # the newest 8, numbered from 1


async def test_dump_paused_keeps_what_it_shows_and_drops_arrivals_that_find_no_room():
    backend = FakeBackend()
    backend.dump_batches = 1
    app = MdaConsole(backend, interval=3600, dump_keep=10)
    async with app.run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        view, table = await started_dump(pilot)
        await until_end(pilot, table, 6)
        await pilot.press("space", "home")
        assert view.paused and table.cursor == 0
        backend.dump.more(2)   # 12 arrive; 4 fit
        for _ in range(100):  # the two batches may come a wake-up apart
            if view.dropped == 8:
                break
            await pilot.pause(0.02)
        status = text(view.query_one("#dump-status"))
        assert "10 kept of 10  8 dropped" in status and "4 not shown" in status
        assert (table.first, table.end, table.cursor) == (0, 6, 0)  # what was read stays
        await pilot.press("space")
        assert (table.first, table.end, table.cursor) == (0, 10, 9)


async def test_dump_a_click_on_a_message_shows_it_and_pauses():
    async with console().run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        view, table = await started_dump(pilot)
        await until_end(pilot, table, 6)
        await pilot.click("#dump-table", offset=(3, 2))  # line 0 is the header: message #2
        assert view.paused and table.cursor == 1
        hex_pane = text(view.query_one("#dump-hex"))
        assert hex_pane.startswith("127.0.0.1:15001 → 127.0.0.1:40000  to-client")
        assert "HTTP/1.1 200 OK" in hex_pane


async def test_dump_refuses_a_bad_filter_and_starts_nothing():
    backend = FakeBackend()
    async with console(backend).run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("4", "f", *"10.0.0.300", "enter")
        await pilot.pause(0.2)
        view = pilot.app.screen.query_one("#dump-view")
        assert not view.capturing and not backend.dump_open
        status = text(view.query_one("#dump-status"))
        assert "stopped" in status and "'10.0.0.300' is not an IPv4 or IPv6 address" in status


async def test_rule_editor_bad_cidr_shows_the_parser_error_and_applies_nothing():
    backend = FakeBackend()
    async with console(backend).run_test(size=SIZE) as pilot:
        await two_frames(pilot)
        await pilot.press("5", "a")
        form = pilot.app.screen
        assert isinstance(form, RuleFormScreen)
        await pilot.press(*"10.0.0.1/8")
        error = text(form.query_one("#rf-ip-error"))
        assert error == "'10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8"
        assert form.query_one("#rf-ok", Button).disabled
        await pilot.press("enter")
        assert pilot.app.screen is form           # still open: nothing to accept
        await pilot.press("escape")
        await pilot.press("A")                    # applying now applies the unchanged table
        view = pilot.app.screen.query_one("#rules-view")
        assert len(view.edited.rules) == 4
        assert all(rules == view.edited.rules for rules in backend.applied)
        assert backend.saved == []


async def test_rule_editor_errors_follow_the_field_they_are_about():
    async with console().run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("5", "a", "tab", *"80-20")
        form = pilot.app.screen
        assert text(form.query_one("#rf-port-error")) == "port range '80-20' is reversed; did you mean 20-80"
        assert text(form.query_one("#rf-ip-error")) == ""
        await pilot.press("tab", *"no-such-user-here")
        assert text(form.query_one("#rf-uid-error")) == "unknown user 'no-such-user-here'"


async def test_rule_add_preview_apply_save_revert():
    backend = FakeBackend()
    async with console(backend).run_test(size=SIZE) as pilot:
        await two_frames(pilot)
        await pilot.press("5", "a", "tab", *"15006", "enter")
        view = pilot.app.screen.query_one("#rules-view")
        assert str(view.edited.rules[-1]) == "chain --port 15006 -j RETURN"
        preview = text(view.query_one("#rules-preview"))
        assert "2 open connections leave the fast path" in preview
        assert "198.18.0.1:41000 → 198.18.0.2:15006  (rule 4)" in preview
        assert "[2001:2::1]:42000 → [2001:2::2]:15006  (rule 4)" in preview
        assert "not applied and not saved" in text(view.query_one("#rules-status"))
        await pilot.press("A")
        for _ in range(100):
            if backend.applied:
                break
            await pilot.pause(0.02)
        assert [str(r) for r in backend.applied[-1]][-1] == "chain --port 15006 -j RETURN"
        status = view.query_one("#rules-status")
        for _ in range(100):  # until the kernel's rules are read back
            if "edited, not saved" in text(status):
                break
            await pilot.pause(0.02)
        assert ("in kernel: differs: it runs 1 rule the file has not, from rule 4: chain --port "
                "15006 -j RETURN  ·  edited, not saved") in text(status)
        assert "nothing to apply" in text(view.query_one("#rules-preview"))
        await pilot.press("S")
        assert backend.saved[-1][1].endswith("chain --port 15006 -j RETURN\n")
        assert backend.saved[-1][1].startswith("# accelerate the mesh")  # comments kept
        await pilot.press("x")                                             # delete it again
        assert len(view.edited.rules) == 4
        await pilot.press("R")                                             # back to the file
        assert len(view.edited.rules) == 5


@pytest.mark.parametrize("file, kernel, says", [
    (RULES_TEXT, RULES_TEXT, "in kernel: same as file"),
    # Names survive in the file only: the kernel has the numbers they stand for.
    (RULES_TEXT + "chain --uid-owner root --gid-owner root -p 80-89 -j RETURN\n",
     RULES_TEXT + "chain -u 0 -g 0 -p 80-89 -j RETURN\n", "in kernel: same as file"),
    (RULES_TEXT, RULES_TEXT.replace("9090", "9091"),
     "in kernel: differs: rule 2 is chain --port 9091 -j RETURN there, chain --port 9090 -j RETURN "
     "in the file"),
    (RULES_TEXT, "chain --ip 198.18.0.0/15 -j ACCEPT\n",
     "in kernel: differs: it lacks the file's 3 rules from rule 1: chain --ip 127.0.0.0/8 -j ACCEPT"),
])
async def test_rules_status_says_whether_the_kernel_runs_the_file(file, kernel, says):
    backend = FakeBackend(kernel_rules=kernel)
    backend.file_text = file
    async with console(backend).run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("5")
        view = pilot.app.screen.query_one("#rules-view")
        status = text(view.query_one("#rules-status"))
        assert says in status
        # The table is the file's: it is applied exactly when the kernel runs the file.
        same = says.endswith("same as file")
        assert ("not applied" in status) is not same
        assert ("nothing to apply" in text(view.query_one("#rules-preview"))) is same


async def test_rule_edit_and_move():
    async with console().run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("5", "down", "e")
        form = pilot.app.screen
        assert isinstance(form, RuleFormScreen)
        assert form.query_one("#rf-ip", Input).value == "127.0.0.0/8"
        form.query_one("#rf-ip", Input).value = "127.0.0.0/16"
        await pilot.pause()
        await pilot.press("ctrl+s")
        view = pilot.app.screen.query_one("#rules-view")
        assert str(view.edited.rules[1]) == "chain --ip 127.0.0.0/16 -j ACCEPT"
        await pilot.press("K")
        assert str(view.edited.rules[0]) == "chain --ip 127.0.0.0/16 -j ACCEPT"
        assert view.query_one("#rules-table", DataTable).cursor_row == 0


async def log_lines(pilot, n: int) -> Log:
    """The Events tab's log once it holds n lines (or two seconds on)."""
    log = pilot.app.screen.query_one("#events-log", Log)
    for _ in range(100):
        if len(log.lines) >= n:
            break
        await pilot.pause(0.02)
    return log


async def test_events_are_listed_as_they_arrive():
    async with console().run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("6")
        log = await log_lines(pilot, 4)
        lines = list(log.lines)
        assert any("accelerated" in line and "pid 2001 ↔ pid 2002" in line for line in lines)
        assert any("refused" in line and "by rule 2" in line for line in lines)
        assert any("demoted" in line and "handed back to the stack" in line for line in lines)


async def test_event_summary_has_the_kernel_totals_since_enable_over_what_the_log_saw():
    async with console().run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("6")
        await log_lines(pilot, 6)  # the log's opening note and the fake's five events
        await pilot.pause()
        header, kernel, seen = text(pilot.app.screen.query_one("#events-summary")).splitlines()
        assert header.split() == ["accelerated", "refused", "demoted", "redirect", "failed", "closed"]
        # The fake kernel's mda_stats; it keeps no count of closed ends.
        assert kernel.split() == ["since", "enable", "40", "3", "2", "0", "—"]
        assert seen.split() == ["in", "this", "log", "1", "1", "1", "1", "1"]
        await pilot.press("c")
        assert text(pilot.app.screen.query_one("#events-summary")).splitlines()[1:] == [
            kernel, seen.replace("1", "0")]


async def test_not_running_offers_enable_and_then_shows_the_console():
    backend = FakeBackend(enabled=False)
    async with console(backend).run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        screen = pilot.app.screen
        assert isinstance(screen, NotRunningScreen)
        assert "nothing is pinned at /sys/fs/bpf/mdatui" in text(screen.query_one("#nr-what"))
        await pilot.press("e")
        for _ in range(100):
            if backend.enable_calls and pilot.app.frames >= 2:
                break
            await pilot.pause(0.02)
        await pilot.pause()
        assert backend.enable_calls == 1
        assert not isinstance(pilot.app.screen, NotRunningScreen)


@pytest.mark.parametrize("backend, says", [
    (FakeBackend(enabled=False, can_enable=False), "needs root"),
    (FakeBackend(problem="reading the accelerator's maps needs root"), "needs root"),
])
async def test_without_root_it_explains_and_offers_only_quit(backend, says):
    async with console(backend).run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        screen = pilot.app.screen
        assert isinstance(screen, NotRunningScreen)
        said = text(screen.query_one("#nr-what")) + text(screen.query_one("#nr-offer"))
        assert says in said
        assert screen.query_one("#nr-enable", Button).disabled
        await pilot.press("e")
        assert backend.enable_calls == 0
        await pilot.press("q")
    assert pilot.app.return_code == 0


@pytest.mark.parametrize("size, beside", [((80, 24), False), ((160, 40), False), ((200, 50), True)])
async def test_layout_uses_the_room_it_has(size, beside):
    async with console().run_test(size=size) as pilot:
        await two_frames(pilot)
        await pilot.press("2")
        table = pilot.app.screen.query_one("#conn-table").region
        pane = pilot.app.screen.query_one("#conn-detail").region
        assert pane.height >= 9 and table.height >= 5
        assert (pane.x > table.x) is beside
        assert pane.bottom <= size[1] - 1  # above the footer


@pytest.mark.parametrize("size", [(80, 24), (160, 40), (200, 50)])
async def test_connection_counters_are_in_view_and_clear_of_the_detail_pane(size):
    async with console().run_test(size=size) as pilot:
        await two_frames(pilot)
        await pilot.press("2")
        table = pilot.app.screen.query_one("#conn-table", SortableTable)
        pane = pilot.app.screen.query_one("#conn-detail").region
        seen = table.scrollable_content_region  # on screen, less the scrollbars
        lines = screen_lines(pilot.app)
        x = seen.x - round(table.scroll_x)
        for column, start, width in table.column_spans():
            header = Region(x + start, seen.y, width, 1)
            if column.key in ("msgs", "bytes", "rate"):
                assert seen.contains_region(header) and not header.overlaps(pane), column.key
                label = column.label.split()[0]
                assert label in lines[header.y][header.x:header.right], (label, lines[header.y])


async def test_disable_behind_its_back_shows_the_offer_and_enable_brings_it_back():
    backend = FakeBackend()
    async with console(backend).run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        assert backend.events.closed is False
        backend.enabled = False
        pilot.app.action_refresh_now()
        await wait_frames(pilot, 2)
        assert isinstance(pilot.app.screen, NotRunningScreen)
        for _ in range(100):  # the event reader lets go of the old accelerator
            if backend.events.closed:
                break
            await pilot.pause(0.02)
        assert backend.events.closed
