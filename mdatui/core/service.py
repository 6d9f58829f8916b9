"""The resident part of an accelerator: `mdatui serve`, one per pin dir.

It takes ends that stopped redirecting out of the sockhash once drained (core.drain), and keeps
blocking full-duplex sockets off the fast path (core.guard). `enable`
starts it unless told not to (systemd runs it as the unit's main process instead), `disable`
hands it what is still draining: it takes each such end out once read, so that it is plain TCP
again, and exits when the last has left or closed.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

from . import drain, guard
from .kernel.instance import Instance, NotEnabled
from .service_status import RUN_DIR, pidfile, running

START_SECONDS = 15  # a Python start with numpy, on a loaded 2-CPU host, took over 5


def start(pin_dir: str) -> int:
    """Start a detached service for pin_dir unless one runs; its pid."""
    pid = running(pin_dir)
    if pid is not None:
        return pid
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(pidfile(pin_dir).with_suffix(".log"), "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "mdatui.cli.main", "serve", "--pin-dir", pin_dir],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            close_fds=True)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        pid = running(pin_dir)
        if pid is not None:
            return pid
        if child.poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError(f"mdatui serve for {pin_dir} did not start (exit {child.poll()})")


def stop(pin_dir: str, seconds: float = START_SECONDS) -> None:
    pid = running(pin_dir)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while running(pin_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.02)


def _lock(fd: int, pin_dir: str) -> bool:
    """Lock our pid file, unless another service holds it. running() holds a shared lock on it
    for an instant (start() asks it every 20 ms while we start): that is waited out."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if running(pin_dir) is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def serve(pin_dir: str) -> int:
    """Run until SIGTERM/SIGINT/SIGHUP while the accelerator is enabled (what drains then stays
    in the pinned maps for the next run), or until it was disabled and nothing drains."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = pidfile(pin_dir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if not _lock(fd, pin_dir):
        os.close(fd)
        print(f"mdatui serve: already running for {pin_dir}", file=sys.stderr)
        return 1
    os.ftruncate(fd, 0)  # a killed service's pid must not stand for this one
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stopping.append(1))
    try:
        with Instance(pin_dir) as inst:
            # Said only now that the maps are open: disable unpins them as soon as start() sees
            # this pid, and then nothing can find them any more.
            os.write(fd, str(os.getpid()).encode())
            pins = os.path.join(pin_dir, "sock_ops_map")
            reaper = drain.Reaper(inst)
            watch = guard.Guard(inst, reaper.finder)
            if watch.iterator is None:
                print("mdatui serve: this kernel cannot run bpf/blocked_readers.c; looking for "
                      "blocked readers in /proc, thread by thread", file=sys.stderr, flush=True)
            waiting, next_sweep = 0, 0.0
            while not stopping and os.path.exists(pins):
                # The guard looks often just after connections were accelerated (their readers
                # block at once); that alone is no reason to sweep the drain list as often. What
                # it asked to stop is swept at the next tick: a blocked reader is exposed to
                # EAGAIN until its end has left the sockhash.
                if waiting or time.monotonic() >= next_sweep:
                    waiting = reaper.sweep().waiting
                    next_sweep = time.monotonic() + drain.PERIOD_IDLE
                if watch.tick():
                    next_sweep = 0.0
                time.sleep(drain.PERIOD_BUSY if waiting or watch.eager() else drain.PERIOD_IDLE)
            if not os.path.exists(pins):
                # Disabled: only this process can still take ends out (the kernel keeps an
                # unpinned sockhash, and its members on tcp_bpf, while any socket is in it), so
                # it stays, signals or not, until every draining end has left or closed.
                # disable asked every end to stop, and took some out itself: a peer it took out
                # has no entry left to say so.
                reaper.all_asked = True
                reaper.run(until_empty=True)
    except NotEnabled:
        print(f"mdatui serve: nothing is enabled at {pin_dir}", file=sys.stderr)
        return 1
    finally:
        path.unlink(missing_ok=True)
        log = path.with_suffix(".log")
        if log.exists() and not log.stat().st_size:
            log.unlink()
        os.close(fd)
    return 0
