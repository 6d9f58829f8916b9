"""Guardians: small processes that undo what their owner did once the owner is gone, however
it went (returned, raised, got a signal, was SIGKILLed).

A guardian reads its stdin, a pipe whose only writer is its owner, until end of file: the kernel
closes the owner's end when the owner exits, whatever the cause. It runs in a session
of its own and ignores SIGINT, SIGTERM and SIGHUP, so that the terminal's Ctrl-C or hangup
that ends the owner, or a second one while it works, does not end it too.

    # the owner                                      # the guardian: python -m MODULE --guard ARGS
    g = guardian.start("mdatui.lab.demo", prefix)    guardian.wait_for_owner()
    ...                                               undo(...)
    guardian.release(g, timeout)
"""

from __future__ import annotations

import signal
import subprocess
import sys


def start(module: str, *args: str) -> subprocess.Popen:
    """Start `python -m module --guard args...`; it acts at release() or at our end."""
    return subprocess.Popen([sys.executable, "-m", module, "--guard", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def release(proc: subprocess.Popen, timeout: float) -> bool:
    """Let the guardian act now; whether it finished within timeout (it goes on regardless)."""
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def wait_for_owner() -> None:
    """In the guardian: return once the owner released us or is gone."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):  # nothing is ever written: this waits for the end
        pass
