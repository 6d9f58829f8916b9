"""Start traffic peers in a lab and read what they report, with timeouts."""

from __future__ import annotations

import json
import select
import subprocess

TRAFFIC = "mdatui.lab.traffic"


def _line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no output from {proc.args} within {timeout}s")
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"{proc.args} ended: {err[-2000:]}")
    return line.decode() if isinstance(line, bytes) else line


def server(lab, kind: str, port: int, netns: str, inside: bool = True, *extra: str,
           timeout: float = 10) -> subprocess.Popen:
    proc = lab.python([TRAFFIC, kind, "--port", str(port), *extra], netns=netns, inside=inside)
    assert _line(proc, timeout).strip() == "READY"
    return proc


def client(lab, netns: str, *args: str, inside: bool = True, hold: bool = False,
           **ids) -> subprocess.Popen:
    extra = {"stdin": subprocess.PIPE} if hold else {}
    return lab.python([TRAFFIC, *args, *(["--hold"] if hold else [])], netns=netns, inside=inside,
                      **ids, **extra)


def report(proc: subprocess.Popen, timeout: float = 60) -> dict:
    return json.loads(_line(proc, timeout))


def proceed(proc: subprocess.Popen) -> None:
    """Let a --hold client go on to its next step."""
    proc.stdin.write(b"\n")
    proc.stdin.flush()
