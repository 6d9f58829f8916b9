"""`mdatui demo` ended any way at any moment leaves nothing: not its namespaces, cgroups, pins
and attached programs, processes (traffic, `mdatui serve`, its guardian) or rules file.

Each test starts the demo in a real terminal (tmux, as test_demo_tmux does), ends it at a
random moment from its build (BCC compiling, pods starting) to the console running, and lists
what is left. `mdatui demo --clean` removes what a demo killed together with its guardian left.
"""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mdatui.core import apply, resources
from mdatui.lab import demo

from .test_demo_tmux import Tmux, _alive, leftovers, process_tree, remove, wait_for

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]

TEARDOWN_S = 5      # the bound, from the signal to nothing left
LATEST_S = 25       # a random moment up to this long after the start: the console runs by then


def everything_left(prefix: str, procs: list[psutil.Process]) -> dict[str, list[str]]:
    """What test_demo_tmux.leftovers lists, and processes anywhere that name the demo (its
    guardian, `mdatui serve` of its pin dir), and its scratch rules file."""
    left = leftovers(prefix, procs)
    named = [f"{p.pid} {' '.join(p.info['cmdline'] or [])}"
             for p in psutil.process_iter(["cmdline"])
             if any(prefix in arg for arg in p.info["cmdline"] or []) and _alive(p)]
    files = [str(f) for f in demo.RUN_DIR.glob(prefix + "*")]
    return {**left, **{k: v for k, v in (("named processes", named), ("files", files)) if v}}


class Demo:
    """A demo in a terminal of its own, and what it made."""

    def __init__(self, tmp_path: Path):
        self.tmux = Tmux(tmp_path)
        self.status = tmp_path / "status"
        command = (f"env TERM=xterm-256color {shlex.quote(sys.executable)} -m mdatui.cli.main "
                   f"--refresh 0.5 demo; echo $? > {shlex.quote(str(self.status))}")
        self.pane = self.tmux.start(command)
        self.pid = wait_for("demo process", self._demo_pid, 10)
        self.prefix = demo.prefix_of(self.pid)
        self.procs: list[psutil.Process] = []

    def _demo_pid(self) -> int | None:
        return next((p.pid for p in process_tree(self.pane)
                     if _alive(p) and "mdatui.cli.main" in p.cmdline()), None)

    def running_for(self, seconds: float) -> None:
        time.sleep(seconds)
        self.procs = process_tree(self.pane)

    def signal(self, sig: int) -> bool:
        """Whether the demo was still there to get it."""
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def gone_within(self, seconds: float) -> float:
        """Seconds until nothing is left; fails with what is left after `seconds`."""
        start = time.monotonic()
        while everything_left(self.prefix, self.procs):
            if time.monotonic() - start > seconds:
                pytest.fail(f"after {seconds}s the demo left {everything_left(self.prefix, self.procs)}; "
                            f"screen:\n{self.tmux.screen()}")
            time.sleep(0.1)
        return time.monotonic() - start

    def close(self) -> None:
        self.procs = self.procs or process_tree(self.pane)
        self.tmux.kill()
        remove(everything_left(self.prefix, self.procs), self.procs)
        demo.remove(self.prefix)


@pytest.fixture
def a_demo(tmp_path):
    d = Demo(tmp_path)
    yield d
    d.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_at_a_random_moment_leaves_nothing(a_demo, sig):
    moment = random.uniform(0.5, LATEST_S)
    a_demo.running_for(moment)
    if sig == signal.SIGHUP:
        a_demo.tmux.kill()  # the terminal closes: its processes get SIGHUP
    else:
        assert a_demo.signal(sig), f"the demo ended by itself:\n{a_demo.tmux.screen()}"
    took = a_demo.gone_within(TEARDOWN_S)
    print(f"{signal.Signals(sig).name} {moment:.1f}s after the start: nothing left after {took:.1f}s")


def test_q_then_ctrl_c_and_sigterm_during_the_teardown_leave_nothing(a_demo):
    wait_for("console", lambda: "Connections" in a_demo.tmux.screen(), 60, a_demo.tmux.screen)
    a_demo.running_for(random.uniform(0, 3))
    a_demo.tmux.keys("q")
    time.sleep(random.uniform(0, 0.3))  # the teardown takes some 0.5 s: these may come after it
    a_demo.signal(signal.SIGINT)
    a_demo.signal(signal.SIGTERM)
    a_demo.gone_within(TEARDOWN_S)


def test_q_leaves_nothing_and_exits_0(a_demo):
    wait_for("console", lambda: "Connections" in a_demo.tmux.screen(), 60, a_demo.tmux.screen)
    a_demo.running_for(1)
    a_demo.tmux.keys("q")
    a_demo.gone_within(TEARDOWN_S)
    wait_for("exit status", a_demo.status.exists, 5)
    assert a_demo.status.read_text().strip() == "0"


def test_clean_removes_what_a_demo_killed_with_its_guardian_left(a_demo):
    wait_for("console", lambda: "Connections" in a_demo.tmux.screen(), 60, a_demo.tmux.screen)
    a_demo.running_for(1)
    guardian = next(p for p in psutil.process_iter(["cmdline"])
                    if "--guard" in (p.info["cmdline"] or []) and a_demo.prefix in p.info["cmdline"])
    for p in (guardian, psutil.Process(a_demo.pid)):
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs([guardian], timeout=5)
    left = everything_left(a_demo.prefix, [])
    assert {"netns", "cgroups", "pins", "files"} <= left.keys(), left
    done = subprocess.run([sys.executable, "-m", "mdatui.cli.main", "demo", "--clean"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"removed /sys/fs/bpf/{a_demo.prefix}" in done.stdout
    a_demo.gone_within(TEARDOWN_S)  # its traffic, killed with its cgroups
    again = subprocess.run([sys.executable, "-m", "mdatui.cli.main", "demo", "--clean"],
                           capture_output=True, text=True, timeout=60)
    assert a_demo.prefix not in again.stdout


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_the_demo_edits_a_scratch_copy_of_the_rules_and_a_pasted_burst_lands_in_order(a_demo):
    """Items 3 and 4 of issue 12, as a user meets them: Tab Tab 9080 sent at once into the Add
    form (one tmux send-keys: one write to the terminal), then Done, Apply, Save."""
    shipped, system_file = Path(resources.DEFAULT_CONFIG), Path(apply.SYSTEM_CONFIG)
    before = (_digest(shipped), _digest(system_file))
    wait_for("console", lambda: "Connections" in a_demo.tmux.screen(), 60, a_demo.tmux.screen)
    scratch = demo.RUN_DIR / f"{a_demo.prefix}0.conf"
    a_demo.tmux.keys("5")
    wait_for("the rules file named", lambda: str(scratch) in a_demo.tmux.screen(), 10, a_demo.tmux.screen)
    a_demo.tmux.keys("a")
    wait_for("the rule form", lambda: "uid-owner" in a_demo.tmux.screen(), 10, a_demo.tmux.screen)
    a_demo.tmux.keys("Tab", "Tab", "9", "0", "8", "0")
    wait_for("the rule line", lambda: "chain --uid-owner 9080 -j RETURN" in a_demo.tmux.screen(),
             10, a_demo.tmux.screen)
    a_demo.tmux.keys("C-s")
    time.sleep(0.5)
    a_demo.tmux.keys("A")
    wait_for("apply", lambda: "rules applied" in a_demo.tmux.screen()
             or "1 rules" in a_demo.tmux.screen(), 10, a_demo.tmux.screen)
    a_demo.tmux.keys("S")
    wait_for("the scratch file saved", lambda: "--uid-owner 9080" in scratch.read_text(), 10,
             a_demo.tmux.screen)
    assert (_digest(shipped), _digest(system_file)) == before
    a_demo.tmux.keys("q")
    a_demo.gone_within(TEARDOWN_S)
    assert not scratch.exists()


def test_an_exception_in_the_demo_leaves_nothing():
    """What an exception in the console does too: the demo's block ends by raising."""
    script = ("from mdatui.lab import demo\n"
              "with demo.running(clients=1, seconds=30) as d:\n"
              "    print(d.lab.name, flush=True)\n"
              "    raise RuntimeError('boom')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "RuntimeError: boom" in done.stderr, done.stderr[-2000:]
    prefix = done.stdout.strip().rsplit("-", 1)[0] + "-"
    assert prefix.startswith("mdatui-demo-")
    try:
        assert everything_left(prefix, []) == {}  # the demo waited for its guardian
    finally:
        demo.remove(prefix)


@pytest.mark.parametrize("args, error", [
    (["--clients", "0"], "argument --clients: 0 is out of range 1-8"),
    (["--clients", "9"], "argument --clients: 9 is out of range 1-8"),  # 64 KiB messages and up
    (["--clients", "two"], "argument --clients: 'two' is not a whole number"),
    (["--seconds", "-4"], "argument --seconds: -4 is out of range 1-604800 seconds"),
])
def test_bad_arguments_are_named_and_nothing_is_built(args, error):
    child = subprocess.Popen([sys.executable, "-m", "mdatui.cli.main", "demo", "--no-console", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 2
    assert err.strip().splitlines()[-1] == f"mdatui demo: error: {error}"
    assert leftovers(demo.prefix_of(child.pid), []) == {}
