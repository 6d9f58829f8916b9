"""mdatui.core.procs: owner pids to commands and users; unknown stays unknown."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from mdatui.core import procs
from tests import peers
from tests.test_events import end_of, held_client, wait_accelerated


def test_unknown_pid_is_no_process():
    assert procs.Processes().info(None, 0) is None


def test_a_running_process_is_named_with_the_recorded_user():
    info = procs.Processes().info(os.getpid(), 0)
    assert info.pid == os.getpid()
    assert info.command == " ".join(psutil.Process().cmdline())
    assert info.user == "root"


def test_user_is_only_what_the_kernel_recorded():
    assert procs.Processes().info(os.getpid(), None).user is None
    assert procs.user_name(54321) == "54321"  # no passwd entry: the number, not a guess


def test_a_process_that_is_gone_has_no_command():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert procs.Processes().info(child.pid, 0) == procs.ProcessInfo(child.pid, None, "root")


def test_a_pid_reused_after_the_socket_existed_is_not_blamed():
    started = psutil.Process().create_time()
    p = procs.Processes()
    assert p.info(os.getpid(), 0, socket_since=started - 60).command is None
    assert p.info(os.getpid(), 0, socket_since=started).command is not None


def test_lookups_are_cached_for_a_while(monkeypatch):
    now = [100.0]
    p = procs.Processes(clock=lambda: now[0])
    calls = []
    real = psutil.Process
    monkeypatch.setattr(psutil, "Process", lambda pid: calls.append(pid) or real(pid))
    for _ in range(3):
        p.info(os.getpid(), 0)
    assert calls == [os.getpid()]
    now[0] += procs.CACHE_SECONDS
    p.info(os.getpid(), 0)
    assert calls == [os.getpid()] * 2


@pytest.mark.kernel
def test_the_kernel_owner_of_a_connection_names_its_client(lab, accel):
    ns = lab.add_netns("pod")
    srv = peers.server(lab, "sink", 7000, ns)
    cli, local = held_client(lab, ns)
    wait_accelerated(accel, local)
    conn = end_of(accel, local)
    since = time.time() - conn.age_s
    p = procs.Processes()
    info = p.info(conn.owner.pid, conn.owner.uid, socket_since=since)
    assert info == procs.ProcessInfo(cli.pid, " ".join(cli.args), "root")
    server_end = end_of(accel, "127.0.0.1:7000")
    assert p.info(server_end.owner.pid, server_end.owner.uid).command == " ".join(srv.args)
    peers.proceed(cli)
    peers.report(cli)
    peers.proceed(cli)
