"""Keys sent in one burst land where they would if typed slowly (ui.key_order).

Pilot.press waits for the app to go idle after every key, which hides the bug; these tests put
every key of a sequence on the app's queue at once, as a terminal delivers a paste or a fast
typist, and only then wait.
"""

from __future__ import annotations

from textual import events
from textual.css.query import NoMatches
from textual.widgets import Input

from mdatui.ui.app import MdaConsole
from mdatui.ui.screens.rule_form import RuleFormScreen

from .fake import FakeBackend, wait_frames
from .fake import shown as text

SIZE = (100, 30)
CHARS = {"slash": "/", "full_stop": "."}


def burst(app: MdaConsole, *keys: str) -> None:
    """All the keys onto the app's queue, with no pause between them."""
    for key in keys:
        event = events.Key(key, CHARS.get(key, key if len(key) == 1 else None))
        event.set_sender(app)
        app._driver.send_message(event)


async def settle(pilot, until, timeout_s: float = 5.0) -> None:
    """Until until() holds (a widget it asks for may not be there yet), or timeout_s."""
    for _ in range(int(timeout_s / 0.02)):
        try:
            if until():
                return
        except NoMatches:
            pass
        await pilot.pause(0.02)


def fields(screen, *names: str) -> dict[str, str]:
    return {name: screen.query_one(f"#{name}", Input).value for name in names}


async def test_the_rule_form_takes_a_burst_in_order_from_the_key_that_opens_it():
    async with MdaConsole(FakeBackend(), interval=3600).run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("5")
        burst(pilot.app, "a", "tab", "tab", "9", "0", "8", "0")
        line = "rule  chain --uid-owner 9080 -j RETURN"
        await settle(pilot, lambda: text(pilot.app.screen.query_one("#rf-line")) == line)
        form = pilot.app.screen
        assert isinstance(form, RuleFormScreen)
        assert fields(form, "rf-ip", "rf-port", "rf-uid", "rf-gid") == {
            "rf-ip": "", "rf-port": "", "rf-uid": "9080", "rf-gid": ""}
        assert text(form.query_one("#rf-line")) == line


async def test_the_rule_form_takes_fields_and_shift_tab_back_in_order():
    async with MdaConsole(FakeBackend(), interval=3600).run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("5", "a")
        burst(pilot.app, *"10.0.0.0/8", "tab", *"80-90", "tab", "tab", *"1337",
              "shift+tab", *"0", "tab")
        form = pilot.app.screen
        want = {"rf-ip": "10.0.0.0/8", "rf-port": "80-90", "rf-uid": "0", "rf-gid": "1337"}
        gid = form.query_one("#rf-gid", Input)
        await settle(pilot, lambda: fields(form, *want) == want and gid.has_focus)
        assert fields(form, *want) == want and gid.has_focus  # after the last tab


async def test_the_dump_filter_takes_a_burst_in_order():
    async with MdaConsole(FakeBackend(), interval=3600).run_test(size=SIZE) as pilot:
        await wait_frames(pilot, 1)
        burst(pilot.app, "4", "f", *"10.1.0.0/16", "tab", *"8080", "tab",
              "backspace", "backspace", "backspace", *"64")
        view = pilot.app.screen.query_one("#dump-view")
        want = {"dump-ip": "10.1.0.0/16", "dump-port": "8080", "dump-snaplen": "64"}
        await settle(pilot, lambda: fields(view, *want) == want)
        assert fields(view, *want) == want
