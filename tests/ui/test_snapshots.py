"""What each view looks like at 100x30, fed by fake.py's fixed data (pytest-textual-snapshot).

After a deliberate change of the look: .venv/bin/python -m pytest tests/ui --snapshot-update,
then look at the new .svg files before committing them.
"""

from __future__ import annotations

import pytest

from mdatui.ui.app import MdaConsole

from .fake import FakeBackend, wait_frames

SIZE = (100, 30)


def console(**kw) -> MdaConsole:
    return MdaConsole(FakeBackend(**kw), interval=3600)


def after(*keys: str, frames: int = 2, settle: float = 0.3):
    """Two frames (so that rates show), then the keys. Cursors do not blink in a snapshot."""
    async def run_before(pilot) -> None:
        await wait_frames(pilot, 1)
        if frames > 1:
            pilot.app.action_refresh_now()
            await wait_frames(pilot, frames)
        for key in keys:
            await pilot.press(key)
        for field in pilot.app.screen.query("Input"):
            field.cursor_blink = False
        await pilot.pause(settle)
    return run_before


@pytest.mark.parametrize("name, keys", [
    ("overview", ()),
    ("connections", ("2", "down", "down")),
    ("pairs", ("3",)),
    ("rules", ("5",)),
    ("events", ("6",)),
    ("help", ("2", "question_mark")),
])
def test_view(snap_compare, name, keys):
    assert snap_compare(console(), terminal_size=SIZE, run_before=after(*keys))


def test_dump_capturing_with_a_message_selected(snap_compare):
    assert snap_compare(console(), terminal_size=SIZE,
                        run_before=after("4", "s", "_", "down", "down", settle=0.5))


def test_rule_form_with_a_bad_cidr(snap_compare):
    assert snap_compare(console(), terminal_size=SIZE,
                        run_before=after("5", "a", *"10.0.0.1/8"))


def test_rules_preview_of_a_new_return_rule(snap_compare):
    assert snap_compare(console(), terminal_size=SIZE,
                        run_before=after("5", "a", "tab", *"15006", "enter"))


def test_not_running(snap_compare):
    assert snap_compare(console(enabled=False), terminal_size=SIZE, run_before=after(frames=1))


def test_connections_at_80x24(snap_compare):
    assert snap_compare(console(), terminal_size=(80, 24), run_before=after("2"))
