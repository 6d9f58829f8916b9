"""The console on the real kernel: a RETURN rule typed into the rule editor and applied takes a
live accelerated connection off the fast path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mdatui.core import ends, reader, rules
from mdatui.core.backend import LiveBackend
from mdatui.ui.app import MdaConsole
from mdatui.ui.screens.not_running import NotRunningScreen

from .. import peers
from .fake import shown, wait_frames

pytestmark = pytest.mark.kernel

PORT = 7000


def ends_to(inst, port: int) -> list[ends.Connection]:
    return [c for c in reader.read(inst).connections if f":{port}" in c.end.local + c.end.remote]


def wait_for(condition, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{condition} still false after {seconds}s")
        time.sleep(0.05)
    return found


async def until(pilot, condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{condition} still false after {seconds}s")
        await pilot.pause(0.05)


async def test_return_rule_applied_from_the_editor_takes_a_live_connection_off_the_fast_path(
        lab, accel, pin_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MDATUI_CONFIG", str(tmp_path / "oncn-mda.conf"))  # not the system's file
    ns = lab.add_netns("pod")
    peers.server(lab, "echo", PORT, ns)
    chat = peers.client(lab, ns, "chat", "--to", f"127.0.0.1:{PORT}", "--seconds", "60",
                        "--rate", "100")
    wait_for(lambda: [c for c in ends_to(accel, PORT) if c.msgs > 0 and c.state == "accelerated"])
    assert {c.state for c in ends_to(accel, PORT)} == {"accelerated"}

    app = MdaConsole(LiveBackend(pin_dir), interval=0.25)
    async with app.run_test(size=(120, 35)) as pilot:
        await wait_frames(pilot, 2)
        await pilot.press("5", "a", "tab", *str(PORT))
        await pilot.press("enter")
        view = app.screen.query_one("#rules-view")
        assert [str(r) for r in view.edited.rules] == [f"chain --port {PORT} -j RETURN"]
        await until(pilot, lambda: "1 open connections leave the fast path"
                    in shown(view.query_one("#rules-preview")))
        await pilot.press("A")
        # Applied once the kernel's rule set, read back, is the table (the file is not saved).
        status = view.query_one("#rules-status")
        await until(pilot, lambda: "edited, not saved" in shown(status))
        assert app.frame.snapshot.active_rules == [rules.Rule(rules.Target.RETURN, ports=(PORT, PORT))]
        assert (f"in kernel: differs: it runs 1 rule the file has not, from rule 0: chain --port "
                f"{PORT} -j RETURN") in shown(status)

    # The connection drains and leaves the sockhash: plain TCP, no more redirects.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = ends_to(accel, PORT)
        if {(c.state, c.in_sockhash) for c in after} == {("normal", False)}:
            break
        time.sleep(0.05)
    assert {(c.state, c.in_sockhash) for c in after} == {("normal", False)}
    before = {c.end: c.msgs for c in after}
    time.sleep(0.5)
    assert {c.end: c.msgs for c in ends_to(accel, PORT)} == before
    assert chat.poll() is None  # the application did not notice


def offering_console(lab, pin_dir: str, tmp_path, rules_text: str) -> MdaConsole:
    """A console on nothing running, that offers to enable on the lab's cgroup with these rules."""
    config = tmp_path / "oncn-mda.conf"
    config.write_text(rules_text)
    return MdaConsole(LiveBackend(pin_dir, config=str(config), cgroup=lab.cgroup), interval=0.25)


async def test_enable_offered_when_nothing_runs_attaches_to_the_given_cgroup(lab, pin_dir, tmp_path):
    app = offering_console(lab, pin_dir, tmp_path, "chain --port 15006 -j RETURN\n")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_frames(pilot, 1)
        assert isinstance(app.screen, NotRunningScreen)
        assert lab.cgroup in shown(app.screen.query_one("#nr-offer"))
        await pilot.press("e")
        await until(pilot, lambda: not isinstance(app.screen, NotRunningScreen), seconds=60)
        assert app.frame.snapshot.cgroup == lab.cgroup and app.frame.snapshot.rules_active == 1


async def test_enable_with_a_bad_rules_file_says_where_and_attaches_nothing(lab, pin_dir, tmp_path):
    app = offering_console(lab, pin_dir, tmp_path, "chain --ip 300.1.1.1/24 -j ACCEPT\n")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("e")
        offer = app.screen.query_one("#nr-offer")
        await until(pilot, lambda: "Enable failed" in shown(offer), seconds=60)
        assert "oncn-mda.conf:1:" in shown(offer) and "300.1.1.1/24" in shown(offer)
        assert isinstance(app.screen, NotRunningScreen)
    assert not Path(pin_dir, "sock_ops_map").exists()
