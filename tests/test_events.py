"""Counters and the event log (mdatui.core.events, perfbuf) against the real kernel."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdatui.core import ends, events, reader
from mdatui.core.dump import DumpSession
from mdatui.core.kernel import abi, perfbuf
from mdatui.core.kernel.perfbuf import ReaderBusy, online_cpus
from tests import peers

SIZES = [1, 17, 500, 1460, 3000, 9, 4096]
SERVER = "127.0.0.1:7000"


def wait_events(stream: events.EventStream, want, timeout: float = 10) -> list[events.Event]:
    """Poll until want(all events so far) holds."""
    seen: list[events.Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += stream.poll(0.2)
        if want(seen):
            return seen
    raise AssertionError(f"events never satisfied the test; got {[e.to_json() for e in seen]}")


def end_of(inst, local: str) -> ends.Connection | None:
    return next((c for c in reader.read(inst).connections if c.end.local == local), None)


def wait_accelerated(inst, local: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = end_of(inst, local)
        if conn and conn.state == "accelerated":
            return
        time.sleep(0.02)
    raise AssertionError(f"{local} never became accelerated: {end_of(inst, local)}")


def held_client(lab, ns: str, sizes=SIZES, to: str = SERVER):
    proc = peers.client(lab, ns, "msgs", "--to", to, "--sizes", ",".join(map(str, sizes)), hold=True)
    return proc, peers.report(proc)["local"]


@pytest.mark.kernel
def test_counters_equal_messages_and_bytes_sent(lab, accel):
    ns = lab.add_netns("pod")
    peers.server(lab, "sink", 7000, ns)
    cli, local = held_client(lab, ns)
    wait_accelerated(accel, local)
    peers.proceed(cli)
    assert peers.report(cli)["state"] == "done"
    conn = end_of(accel, local)
    assert (conn.msgs, conn.bytes, conn.passed) == (len(SIZES), sum(SIZES), 0)
    peers.proceed(cli)


@pytest.mark.kernel
def test_a_reader_held_to_a_cpu_share_reads_the_ends_again_once_its_time_is_up(lab, accel,
                                                                              monkeypatch):
    ns = lab.add_netns("pod")
    peers.server(lab, "sink", 7000, ns)
    cli, local = held_client(lab, ns)
    wait_accelerated(accel, local)
    slow = reader.Reader(cpu_share=1e-6)  # a millisecond of reading buys a quarter hour
    first, second = slow.read(accel), slow.read(accel)
    assert first.ends_every_s == 0 and second.table is not first.table
    assert second.ends_every_s > 1
    peers.proceed(cli)
    assert peers.report(cli)["state"] == "done"
    held = slow.read(accel)
    assert held.table is second.table  # the messages just sent are not in it yet
    assert held.stats == accel.stats() and held.taken_at > second.taken_at
    clock = reader._ktime_now_ns
    monkeypatch.setattr(reader, "_ktime_now_ns",
                        lambda: clock() + round(second.ends_every_s * 1e9))
    later = slow.read(accel)
    conn = next(c for c in later.connections if c.end.local == local)
    assert (conn.msgs, conn.bytes) == (len(SIZES), sum(SIZES))
    assert slow.read(accel).table is later.table
    assert slow.read(accel, fresh=True).table is not later.table  # ctrl+r in the console
    peers.proceed(cli)


@pytest.mark.kernel
def test_accelerated_and_closed_events_carry_tuples_and_final_counts(lab, accel):
    ns = lab.add_netns("pod")
    with events.EventStream(accel) as stream:
        srv = peers.server(lab, "sink", 7000, ns)
        cli, local = held_client(lab, ns)
        seen = wait_events(stream, lambda evs: any(isinstance(e, events.Accelerated) for e in evs))
        acc = next(e for e in seen if isinstance(e, events.Accelerated))
        assert (acc.end.local, acc.end.remote) == (local, SERVER)
        assert (acc.peer.local, acc.peer.remote) == (SERVER, local)
        assert acc.end.netns and acc.end.netns == acc.peer.netns  # loopback: the pod's cookie
        assert (acc.owner.pid, acc.peer_owner.pid) == (cli.pid, srv.pid)
        assert acc.owner.uid == 0 and abs(acc.ts - time.time()) < 10

        peers.proceed(cli)
        peers.report(cli)
        peers.proceed(cli)
        seen = wait_events(stream, lambda evs: sum(isinstance(e, events.Closed) for e in evs) == 2)
        closed = {e.end.local: e for e in seen if isinstance(e, events.Closed)}
        assert (closed[local].msgs, closed[local].bytes, closed[local].passed) == (len(SIZES), sum(SIZES), 0)
        assert closed[local].peer.local == SERVER and closed[local].owner.pid == cli.pid
        assert (closed[SERVER].msgs, closed[SERVER].bytes) == (0, 0)
        assert stream.lost == 0
        times = [e.ts_ns for e in seen]
        assert times == sorted(times)


def one_rule(flags: int, port: int) -> abi.RuleSet:
    rs = abi.RuleSet(count=1, n_accept=0 if flags & abi.RULE_RETURN else 1)
    rs.rules[0] = abi.Rule(flags=flags, port_lo=port, port_hi=port)
    return rs


@pytest.mark.kernel
@pytest.mark.parametrize("rule_flags, rule_port, expected_rule", [
    (abi.RULE_PORT | abi.RULE_RETURN, 7000, 0),   # RETURN rule 0 matches the server port
    (abi.RULE_PORT, 9999, None),                  # the only ACCEPT rule does not match
])
def test_refused_event_names_the_rule(lab, accel, rule_flags, rule_port, expected_rule):
    ns = lab.add_netns("pod")
    accel.load_rules(one_rule(rule_flags, rule_port))
    with events.EventStream(accel) as stream:
        peers.server(lab, "sink", 7000, ns)
        cli, local = held_client(lab, ns)
        seen = wait_events(stream, lambda evs: any(isinstance(e, events.Refused) for e in evs))
        refused = next(e for e in seen if isinstance(e, events.Refused))
        assert (refused.end.local, refused.end.remote, refused.rule) == (local, SERVER, expected_rule)
        assert refused.owner.pid == cli.pid
        assert not any(isinstance(e, events.Accelerated) for e in seen)
        assert refused.to_json()["rule"] == expected_rule
        peers.proceed(cli)
        peers.report(cli)
        peers.proceed(cli)
    assert accel.stats()["refused"] == 1


@pytest.mark.kernel
def test_second_reader_is_refused_until_the_first_closes(accel):
    first = events.EventStream(accel)
    try:
        with pytest.raises(ReaderBusy, match=r"already being read by process \d+"):
            events.EventStream(accel)
    finally:
        first.close()
    events.EventStream(accel).close()


@pytest.mark.kernel
def test_a_killed_readers_lock_file_is_swept_by_the_next_reader(accel):
    code = ("import sys, time; from mdatui.core import events; from mdatui.core.kernel.instance import "
            "Instance; s = events.EventStream(Instance(sys.argv[1])); print('READY', flush=True); "
            "time.sleep(60)")
    reader = subprocess.Popen([sys.executable, "-c", code, accel.pin_dir], stdout=subprocess.PIPE)
    try:
        assert reader.stdout.readline().strip() == b"READY"
        left = [p for p in Path(perfbuf.LOCK_DIR).glob("*.lock")
                if p.read_text().strip() == str(reader.pid)]
        assert len(left) == 1
    finally:
        reader.kill()
        reader.wait()
    assert left[0].exists()  # SIGKILL: nobody removed it
    with DumpSession(accel):  # any reader, of any array, sweeps it
        assert not left[0].exists()
    events.EventStream(accel).close()


def test_online_cpus_reads_ranges_and_single_cpus():
    assert online_cpus("0-3,6,8-9\n") == [0, 1, 2, 3, 6, 8, 9]
    assert online_cpus("0\n") == [0]
    assert len(online_cpus()) == os.cpu_count()  # sysconf(_SC_NPROCESSORS_ONLN)


def test_decode_rejects_short_records_and_skips_unknown_types():
    with pytest.raises(ValueError):
        events.decode(b"\0" * 10)
    assert events.decode(bytes(abi.Event(type=99))) is None
    ev = events.decode(bytes(abi.Event(type=abi.EventType.CLOSED, msgs=3, bytes=30)))
    assert isinstance(ev, events.Closed) and ev.peer is None and ev.owner.pid == 0
    assert ev.to_json()["msgs"] == 3


def _line(proc: subprocess.Popen, stream, timeout: float = 15) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no output from {proc.args}"
    return stream.readline().decode()


@pytest.mark.kernel
def test_events_cli_prints_json_and_stops_at_count(lab, accel, pin_dir):
    ns = lab.add_netns("pod")
    proc = subprocess.Popen([sys.executable, "-m", "mdatui.cli.main", "events", "--json",
                             "--count", "1", "--pin-dir", pin_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert "Ctrl-C to stop" in _line(proc, proc.stderr)
        peers.server(lab, "sink", 7000, ns)
        cli, local = held_client(lab, ns)
        ev = json.loads(_line(proc, proc.stdout))
        assert (ev["kind"], ev["local"], ev["remote"]) == ("accelerated", local, SERVER)
        assert proc.wait(timeout=15) == 0
        peers.proceed(cli)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
