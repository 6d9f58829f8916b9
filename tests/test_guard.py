"""What mdatui serve sees in /proc: which end a process holds, how much of it is unread, and
which threads block reading a blocking socket (core.sockets, core.guard): plain sockets, and
the kernel's iterator the guard reads where it can."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from mdatui.core import addrs, guard, sockets
from mdatui.core.kernel.instance import READER_ITER

# A process with a reader thread blocked in recv() on a blocking socket and another on a
# non-blocking one (in select, not recv), and a main thread that waits: what guard looks for.
HOLDER = r"""
import select, socket, sys, threading, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
port = srv.getsockname()[1]
blocking = socket.create_connection(("127.0.0.1", port)); a, _ = srv.accept()
quiet = socket.create_connection(("127.0.0.1", port)); b, _ = srv.accept()
quiet.setblocking(False)
a.sendall(b"x" * 1000)  # unread by `blocking` until the test says so
print(blocking.fileno(), quiet.fileno(), blocking.getsockname()[1], port, flush=True)
sys.stdin.readline()
threading.Thread(target=lambda: blocking.recv(1 << 20) and blocking.recv(10), daemon=True).start()
threading.Thread(target=lambda: select.select([quiet], [], [], 30), daemon=True).start()
time.sleep(30)
"""


@pytest.fixture
def holder():
    p = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        yield p, [int(x) for x in p.stdout.readline().split()]
    finally:
        p.kill()
        p.wait()


def wait_for(what, seconds: float = 5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.02)
    return what()


@pytest.mark.skipif(os.geteuid() != 0, reason="pidfd_getfd on another process needs root")
def test_finder_names_the_end_a_process_holds_and_its_unread_bytes(holder):
    proc, (fd, _, local_port, port) = holder
    finder = sockets.SocketFinder(cgroup="/nonexistent")  # falls back to every process
    ident = finder.key_at(proc.pid, fd)
    lo = addrs.pack("127.0.0.1")
    assert ident is not None and ident[:4] == (lo, lo, local_port, port)
    assert ident[4] != 0  # loopback: keyed by the netns cookie as the programs do
    key = type("Key", (), {"ident": lambda self: ident})()
    assert finder.unread(key) == 1000
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert wait_for(lambda: finder.unread(key) == 0)


def test_guard_sees_the_thread_blocked_reading_a_blocking_socket_only(holder):
    proc, (fd, quiet_fd, _, _) = holder
    proc.stdin.write("\n")
    proc.stdin.flush()
    # The first recv takes the 1000 bytes; the second blocks.
    found = wait_for(lambda: [(pid, f) for pid, f in guard.blocked_reads([proc.pid])])
    assert found == [(proc.pid, fd)]
    assert quiet_fd not in [f for _, f in found]


def test_a_single_threaded_blocking_reader_is_left_alone():
    reader = subprocess.Popen([sys.executable, "-c", (
        "import socket; a, b = socket.socketpair(); print('ready', flush=True); a.recv(10)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        assert list(guard.blocked_reads([reader.pid])) == []
    finally:
        reader.kill()
        reader.wait()


@pytest.mark.kernel
def test_the_kernels_iterator_finds_what_proc_shows_and_only_in_the_cgroup(lab, accel):
    """bpf/blocked_readers.c, read as `mdatui serve` reads it (one read for every task of the
    host), against the /proc walk: the same blocked reader, and none outside the cgroup."""
    procs = [lab.spawn([sys.executable, "-c", HOLDER], inside=inside, stdin=subprocess.PIPE,
                       text=True) for inside in (True, False)]
    fds = []
    for p in procs:
        fds.append(int(p.stdout.readline().split()[0]))
        p.stdin.write("\n")
        p.stdin.flush()
    pinned = os.path.join(accel.pin_dir, READER_ITER)
    assert guard.Guard(accel, sockets.SocketFinder(lab.cgroup)).iterator is not None
    pids = [p.pid for p in procs]
    walked = wait_for(lambda: len(found := list(guard.blocked_reads(pids))) == 2 and found)
    assert walked == list(zip(pids, fds))  # both readers block by now
    kernel = guard.ReaderIterator(pinned, lab.cgroup)
    assert list(kernel.blocked_reads()) == walked[:1]


@pytest.mark.kernel
def test_the_guard_looks_the_cheaper_way_for_the_threads_the_cgroup_holds(lab, accel):
    """The iterator walks every task of the host, /proc only the cgroup's threads: a few threads
    are looked at in /proc, many through the iterator."""
    watch = guard.Guard(accel, sockets.SocketFinder(lab.cgroup))
    threads = 2 * int(sockets.host_tasks() * guard.ITER_COST_US / guard.PROC_COST_US) + 50
    many = lab.spawn([sys.executable, "-c", (
        f"import threading, time\nfor _ in range({threads}):\n"
        "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "print('ready', flush=True)\ntime.sleep(60)\n")], text=True)
    assert many.stdout.readline().strip() == "ready"
    assert sockets.cgroup_threads(lab.cgroup) == threads + 1
    assert watch._by_iterator(time.monotonic())
    many.kill()
    many.wait()
    assert not watch._by_iterator(time.monotonic() + 1.0)
