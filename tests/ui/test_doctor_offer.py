"""The not-running screen shows what the preflight found wrong under its enable offer."""

from __future__ import annotations

from textual.widgets import Button

from mdatui.ui.app import MdaConsole
from mdatui.ui.screens.not_running import NotRunningScreen

from .fake import FakeBackend, wait_frames
from .fake import shown as text

WARNING = "warn iptables not found: sidecars' REDIRECT rules (and the demo) need it; apt-get install iptables"


class WarnedBackend(FakeBackend):
    def enable_offer(self) -> tuple[bool, str]:
        possible, offer = super().enable_offer()
        return possible, f"{offer}\n{WARNING}"


async def test_offer_is_a_sentence_with_what_failed_below_it():
    backend = WarnedBackend(enabled=False)
    async with MdaConsole(backend, interval=3600).run_test(size=(120, 30)) as pilot:
        await wait_frames(pilot, 1)
        screen = pilot.app.screen
        assert isinstance(screen, NotRunningScreen)
        lines = [" ".join(line.split()) for line in text(screen.query_one("#nr-offer")).splitlines()]
        said = "\n".join(lines)
        assert "Enable will attach to the root cgroup with the rules in" in said
        assert ".conf.\nwarn iptables not found" in said  # the offer ends before the warning
        assert not screen.query_one("#nr-enable", Button).disabled
