"""What a reader's end leaves in the kernel: a dump whose reader was SIGKILLed switches itself
off (its guardian does), and a console that only watches changes nothing, however it ends."""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mdatui.core import dump
from mdatui.core.kernel import perfbuf
from mdatui.core.kernel.instance import Instance
from mdatui.ui.app import EXIT_GRACE_S

from .test_demo_tmux import Tmux, process_tree, wait_for

pytestmark = pytest.mark.kernel
OFF_WITHIN_S = 3


def reader(pin_dir: str, code: str) -> subprocess.Popen:
    """A python process that runs code with `pin_dir` and `inst` (an Instance) set and prints
    READY when it has done what it does before waiting to be ended."""
    script = textwrap.dedent(f"""
        import sys, time
        from mdatui.core.kernel.instance import Instance
        pin_dir = {pin_dir!r}
        inst = Instance(pin_dir)
    """) + textwrap.dedent(code)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if line != "READY":
        p.kill()
        pytest.fail(f"reader did not start: {line} {p.stderr.read()[-2000:]}")
    return p


def wait_until(probe, timeout: float) -> float:
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            return -1.0
        time.sleep(0.05)
    return time.monotonic() - start


SESSION = """
    from mdatui.core.dump import DumpSession
    session = DumpSession(inst, port=80)
    print("READY", flush=True)
    time.sleep(60)
"""


def test_a_dump_whose_reader_was_sigkilled_switches_itself_off(accel, pin_dir):
    p = reader(pin_dir, SESSION)
    assert (accel.control().dump_on, accel.control().dump_port) == (1, 80)
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    took = wait_until(lambda: not accel.control().dump_on, OFF_WITHIN_S)
    assert took >= 0, f"dump still on {OFF_WITHIN_S}s after its reader was SIGKILLed"
    ctl = accel.control()
    assert (bytes(ctl.dump_ip), bytes(ctl.dump_mask), ctl.dump_port) == (bytes(16), bytes(16), 0)


def test_the_guardian_of_a_dead_reader_leaves_the_next_readers_dump_on(accel, pin_dir):
    p = reader(pin_dir, SESSION)
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    with dump.DumpSession(Instance(pin_dir), port=443) as session:  # at once: races the guardian
        time.sleep(OFF_WITHIN_S)
        assert (accel.control().dump_on, accel.control().dump_port) == (1, 443)
        assert session.poll(0.1) == []
    assert accel.control().dump_on == 0


def kernel_state(inst: Instance, pin_dir: str) -> dict:
    return {"pins": sorted(os.listdir(pin_dir)), "programs": inst.program_ids(),
            "control": bytes(inst.control()), "cgroup": inst.cgroup}


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL"])
def test_a_console_that_only_watches_changes_nothing_in_the_kernel_when_it_ends(
        accel, pin_dir, sig, tmp_path):
    before = kernel_state(accel, pin_dir)
    tmux = Tmux(tmp_path)
    status = tmp_path / "status"
    try:
        pane = tmux.start(f"env TERM=xterm-256color {shlex.quote(sys.executable)} -m mdatui.cli.main "
                          f"--pin-dir {pin_dir} --refresh 0.2; echo $? > {status}")
        wait_for("console", lambda: "Connections" in tmux.screen(), 30, tmux.screen)
        for key in ("6", "2", "4", "1"):  # the events reader opens, each tab renders
            tmux.keys(key)
            time.sleep(0.2)
        console = next(p for p in process_tree(pane) if "mdatui.cli.main" in p.cmdline())
        console.send_signal(sig)
        console.wait(EXIT_GRACE_S + 3)
        if sig != signal.SIGKILL:  # it ended as on q, with the signal's status
            # the shell makes the file before it writes the status into it
            wait_for("exit status", lambda: status.exists() and status.read_text().strip(), 5, tmux.screen)
            assert status.read_text().strip() == str(128 + sig), tmux.screen()
    finally:
        tmux.kill()
    assert kernel_state(accel, pin_dir) == before
    # No reader of this accelerator's perf arrays is left (other tests' readers are theirs).
    assert all(_lock_free(Path(perfbuf.lock_path(os.path.join(pin_dir, array))))
               for array in ("mda_events", "mda_dump"))


def _lock_free(path: Path) -> bool:
    """No live reader holds it (the files of killed ones stay until the next reader sweeps)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
