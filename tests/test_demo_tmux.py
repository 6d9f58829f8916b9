"""`mdatui demo` end to end, the way a person runs it: in a real terminal (a private tmux server),
watching counters move on the Connections tab, quitting with `q`, and leaving nothing behind.

The terminal is 200 columns wide, where the selected-connection pane sits beside the table (under
200 columns it goes below it), so that the test reads table rows and the pane's lines apart.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mdatui.core import lifecycle
from mdatui.core.kernel import system
from mdatui.core.kernel.instance import NotEnabled

REPO = Path(__file__).resolve().parents[1]
BPFFS = "/sys/fs/bpf"
WIDTH, HEIGHT = 200, 45

ADDR = r"\d{1,3}(?:\.\d{1,3}){3}:\d+"
# One table row: local, remote, state, msgs, bytes, rate, age, pid, command, user, netns. The
# command cell may hold spaces, so netns is the last word. The detail pane starts at the first "│".
ROW = re.compile(rf"^\s*(?P<local>{ADDR})\s+(?P<remote>{ADDR})\s+[a-z]+\s+"
                 r"(?P<msgs>\d+(?:\.\d)?[kMGT]?)\s+(?P<bytes>\d+(?:\.\d)?(?:B|Ki|Mi|Gi|Ti))"
                 r"\s+\S+/s\s+\S+\s.*\s(?P<netns>\S+)\s*$")
LAB_NAME = re.compile(r"mdatui-demo-\d+-\d+")
COUNT_UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
SIZE_UNITS = {"B": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def _number(text: str, units: dict[str, float]) -> float:
    """Undo mdatui.ui.format.count/size: 1.2k -> 1200, 103.0Ki -> 105472."""
    m = re.fullmatch(r"([\d.]+)(\D*)", text)
    return float(m[1]) * units[m[2]]


def rows(screen: str) -> dict[tuple[str, str, str], tuple[float, float]]:
    """Connection rows on screen: (local, remote, netns) -> (msgs, bytes)."""
    found = {}
    for line in screen.splitlines():
        m = ROW.match(line.split("│", 1)[0])
        if m:
            found[m["local"], m["remote"], m["netns"]] = (
                _number(m["msgs"], COUNT_UNITS), _number(m["bytes"], SIZE_UNITS))
    return found


class Tmux:
    """One detached session on a tmux server of its own, so no user's tmux or config is involved.
    remain-on-exit keeps the pane after the demo ends, to show its last words on failure."""

    def __init__(self, workdir: Path):
        self.name = f"mdatui-tmuxtest-{os.getpid()}-{secrets.token_hex(3)}"
        self.conf = workdir / "tmux.conf"
        self.conf.write_text("set -g remain-on-exit on\nset -g history-limit 100\n")
        # The server copies its environment from the first client. os.environ, not the C-level
        # environ: readline in this process may have exported COLUMNS=80 LINES=24 there, and
        # Textual prefers those to the size of the pane.
        self.env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        self.socket: str | None = None

    def __call__(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.name, "-f", str(self.conf), *args],
                              capture_output=True, text=True, timeout=10, env=self.env)
        if done.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def start(self, command: str) -> int:
        self("new-session", "-d", "-s", self.name, "-x", str(WIDTH), "-y", str(HEIGHT),
             "-c", str(REPO), command)
        self.socket, pid = self("display-message", "-p", "-t", self.name,
                                "#{socket_path} #{pane_pid}").split()
        return int(pid)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", self.name, *keys)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True, timeout=10)
        if self.socket:  # the server leaves its socket file behind
            Path(self.socket).unlink(missing_ok=True)


def wait_for(what: str, probe, timeout: float, screen=None):
    """Polls probe() until it returns something true; fails with the last screen otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:g}s; screen:\n{screen() if screen else ''}")
        time.sleep(0.2)


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def leftovers(prefix: str, procs: list[psutil.Process]) -> dict[str, list[str]]:
    """What of a demo whose lab names start with prefix still exists."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    cg_root = system.cgroup2_root()
    return {kind: names for kind, names in {
        "netns": [line.split()[0] for line in netns.splitlines() if line.startswith(prefix)],
        "cgroups": [os.path.join(cg_root, n) for n in os.listdir(cg_root) if n.startswith(prefix)],
        "pins": [os.path.join(BPFFS, n) for n in os.listdir(BPFFS) if n.startswith(prefix)],
        "processes": [f"{p.pid} {_name(p)}" for p in procs if _alive(p)],
    }.items() if names}


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.NoSuchProcess:
        return "(just ended)"


def _alive(p: psutil.Process) -> bool:
    """Zombies have ended: only the tmux server that owns the pane can still reap them."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def remove(found: dict[str, list[str]], procs: list[psutil.Process]) -> None:
    """Take away what a demo left: processes, then programs and pins, namespaces, cgroups."""
    alive = [p for p in procs if _alive(p)]
    for p in alive:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    for pin in found.get("pins", []):
        try:
            lifecycle.disable(pin)
        except NotEnabled:
            pass
    for ns in found.get("netns", []):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for cg in found.get("cgroups", []):
        deadline = time.monotonic() + 5
        while os.path.isdir(cg) and time.monotonic() < deadline:
            for pid in Path(cg, "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(cg)
            except OSError:
                time.sleep(0.1)


@pytest.mark.kernel
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_demo_in_a_terminal_shows_moving_counters_and_leaves_nothing(tmp_path):
    tmux = Tmux(tmp_path)
    # The shell, not tmux, reaps the demo and keeps its exit status: tmux 3.3 sometimes leaves
    # its pane's process a zombie with no status for half a minute.
    status_file = tmp_path / "status"
    command = (f"env TERM=xterm-256color {shlex.quote(sys.executable)} -m mdatui.cli.main "
               f"--refresh 0.5 demo; echo $? > {shlex.quote(str(status_file))}")
    pane_pid = None
    procs: list[psutil.Process] = []
    prefix = None
    passed = False
    try:
        pane_pid = tmux.start(command)
        # BCC compiles before the console opens: wait for the tab bar and the lab in the status bar.
        lab = wait_for("console", lambda: "Connections" in (s := tmux.screen())
                       and LAB_NAME.search(s), 45, tmux.screen)[0]
        procs = process_tree(pane_pid)
        demo_pid = next(p.pid for p in procs if "mdatui.cli.main" in p.cmdline())
        prefix = f"mdatui-demo-{demo_pid}-"
        assert lab.startswith(prefix)
        # The names are right only if they name what is there now; afterwards they must be gone.
        now = leftovers(prefix, procs)
        assert {"netns", "cgroups", "pins", "processes"} <= now.keys(), now
        assert len(now["processes"]) > 3, "demo runs servers, sidecars and clients"

        tmux.keys("2")
        first = wait_for("connection rows", lambda: rows(tmux.screen()), 30, tmux.screen)
        locals_ = {local.rsplit(":", 1)[0] for local, _, _ in first}
        assert any(a.startswith("198.18.0.") for a in locals_), first
        assert "127.0.0.1" in locals_, first

        def rising():
            later = rows(tmux.screen())
            up = [k for k, (msgs, size) in later.items()
                  if k in first and msgs > first[k][0] and size > first[k][1]]
            kinds = {k[0].startswith("198.18.0.") for k in up}
            return up if kinds == {True, False} else None
        up = wait_for("pod and loopback rows with rising msgs and bytes", rising, 15, tmux.screen)
        assert len(up) >= 2

        tmux.keys("q")
        wait_for("end of the demo's processes after q",
                 lambda: not any(_alive(p) for p in procs), 30, tmux.screen)
        assert status_file.read_text().strip() == "0", tmux.screen()
        assert leftovers(prefix, procs) == {}
        passed = True
    finally:
        procs = procs or (process_tree(pane_pid) if pane_pid else [])
        if prefix is None:
            prefix = next((f"mdatui-demo-{p.pid}-" for p in procs if _alive(p)
                           and "mdatui.cli.main" in p.cmdline()), None)
        tmux.kill()
        left = leftovers(prefix, procs) if prefix else {}
        remove(left, procs)
        if left and passed:
            pytest.fail(f"the demo left {left} (removed now)")
