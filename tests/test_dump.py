"""mdatui.core.dump and `mdatui dump`: payloads, filters, stopping, and dump off afterwards."""

from __future__ import annotations

import ipaddress
import json
import mmap
import signal
import subprocess
import sys
import time

import pytest

from mdatui.core import dump, reader
from mdatui.core.kernel import abi
from mdatui.core.snapshot import DumpState
from mdatui.lab import traffic
from tests import peers
from tests.test_events import _line, held_client, wait_accelerated

SIZES = [5, 100, 101, 3000, 1]


def collect(session: dump.DumpSession, n: int, timeout: float = 10, settle: float = 0.5) -> list:
    """At least n records, then whatever else arrives within settle seconds."""
    got: list[dump.DumpRecord] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += session.poll(0.2)
    settled = time.monotonic() + settle
    while time.monotonic() < settled:
        got += session.poll(0.1)
    return got


def send_held(lab, accel, ns: str, to: str, sizes=SIZES):
    """A client that sends only once its end is accelerated; returns it and its local address."""
    cli, local = held_client(lab, ns, sizes, to=to)
    wait_accelerated(accel, local)
    peers.proceed(cli)
    assert peers.report(cli)["state"] == "done"
    return cli, local


def finish(cli) -> None:
    peers.proceed(cli)
    cli.wait(timeout=10)


@pytest.mark.kernel
def test_records_hold_the_first_snaplen_bytes_of_each_message(lab, accel):
    ns = lab.add_netns("pod")
    peers.server(lab, "sink", 7000, ns)
    with dump.DumpSession(accel, snaplen=100) as session:
        assert accel.control().dump_on == 1 and accel.control().snaplen == 100
        cli, local = send_held(lab, accel, ns, "127.0.0.1:7000")
        records = collect(session, len(SIZES))
        assert session.lost == 0
    assert [r.len for r in records] == SIZES
    assert [r.data for r in records] == [m[:100] for m in traffic.messages(SIZES)]
    assert {(r.src, r.dst, r.direction) for r in records} == {(local, "127.0.0.1:7000", "to-server")}
    assert [r.truncated for r in records] == [False, False, True, True, False]
    assert all(abs(r.ts - time.time()) < 10 for r in records)
    assert accel.control().dump_on == 0
    finish(cli)


@pytest.mark.kernel
def test_echoed_bytes_are_recorded_as_sent_to_the_client(lab, accel):
    ns = lab.add_netns("pod")
    peers.server(lab, "echo", 7000, ns)
    with dump.DumpSession(accel, snaplen=4096) as session:
        cli, local = send_held(lab, accel, ns, "127.0.0.1:7000", [1000])
        records = collect(session, 2)
    back = [r for r in records if r.direction == "to-client"]
    assert [(r.src, r.dst) for r in back] == [("127.0.0.1:7000", local)]
    assert back[0].data == traffic.messages([1000])[0]
    finish(cli)


# Pod to pod over the veth (IPv4 and IPv6), and loopback inside pod a (IPv4 and IPv6).
SERVERS = ("198.18.0.2:7000", "[fd00:18::2]:7000", "127.0.0.1:7001", "[::1]:7001")


@pytest.mark.kernel
@pytest.mark.parametrize("filters, wanted", [
    (dict(ip="198.18.0.2/32"), {"198.18.0.2:7000"}),
    (dict(ip="fd00:18::/64"), {"[fd00:18::2]:7000"}),
    (dict(ip="::1"), {"[::1]:7001"}),
    (dict(ip="0.0.0.0/0"), {"198.18.0.2:7000", "127.0.0.1:7001"}),  # IPv4 connections only
    (dict(ip="::/0", port=7001), {"127.0.0.1:7001", "[::1]:7001"}),  # every address
    (dict(port=7001), {"127.0.0.1:7001", "[::1]:7001"}),
], ids=["ip", "ip6", "ip6-loopback", "all-ip4", "all-ip-port", "port"])
def test_filters_select_only_matching_connections(lab, accel, filters, wanted):
    a, b = lab.add_netns("a"), lab.add_netns("b")
    lab.link(a, "198.18.0.1/24", b, "198.18.0.2/24")
    lab.link(a, "fd00:18::1/64", b, "fd00:18::2/64")
    peers.server(lab, "sink", 7000, b, True, "--host", "::")  # dual-stack: IPv4 clients arrive mapped
    peers.server(lab, "sink", 7001, a, True, "--host", "::")
    with dump.DumpSession(accel, snaplen=16, **filters) as session:
        clients = [send_held(lab, accel, a, to)[0] for to in SERVERS]
        records = collect(session, len(SIZES) * len(wanted))
    assert len(records) == len(SIZES) * len(wanted)
    assert {r.dst for r in records} == wanted
    for cli in clients:
        finish(cli)


@pytest.mark.kernel
def test_every_matching_message_is_captured_or_counted_lost(lab, accel):
    """A ring of two pages overflows at once; the rest must show up in the lost count."""
    ns = lab.add_netns("pod")
    peers.server(lab, "sink", 7000, ns)
    sizes = [17000] * 2000  # over MDA_STREAM_SMALL: a stream that keeps the fast path
    with dump.DumpSession(accel, snaplen=1000, page_cnt=2) as session:
        cli, _ = send_held(lab, accel, ns, "127.0.0.1:7000", sizes)
        records = collect(session, 1, settle=1)
        assert session.lost > 0
        assert len(records) + session.lost == len(sizes)
        # The ring reports its drops with its next record, so its count may lag the kernel's.
        assert session.lost_in_ring <= session.failed_submits == session.lost
    finish(cli)


@pytest.mark.kernel
def test_records_that_wrap_around_the_ring_arrive_intact_and_in_order(lab, accel):
    """Paced sends into a ring of two pages: the reader keeps up, and since the record size does
    not divide the ring, records keep straddling its end."""
    ns = lab.add_netns("pod")
    peers.server(lab, "sink", 7000, ns)
    chunk, count, snaplen, page_cnt = 13000, 300, 1000, 2  # a stream over MDA_STREAM_SMALL
    record = 8 + (4 + abi.DUMP_HEADER_SIZE + snaplen + 7) // 8 * 8  # header, size, padded raw
    assert (page_cnt * mmap.PAGESIZE) % record
    with dump.DumpSession(accel, snaplen=snaplen, page_cnt=page_cnt) as session:
        cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes", str(chunk * count),
                           "--chunk", str(chunk), "--pause", "0.005", hold=True)
        wait_accelerated(accel, peers.report(cli)["local"])
        peers.proceed(cli)
        records = collect(session, count, timeout=30)
        assert peers.report(cli)["state"] == "done"
        assert session.lost == 0
    assert [r.len for r in records] == [chunk] * count
    assert [r.data for r in records] == [m[:snaplen] for m in traffic.messages([chunk] * count)]
    finish(cli)


@pytest.mark.kernel
def test_dump_goes_off_when_the_caller_fails(accel):
    with pytest.raises(RuntimeError):
        with dump.DumpSession(accel, ip="10.1.2.3/8", port=80):
            ctl = accel.control()
            assert (ctl.dump_on, ctl.dump_port) == (1, 80)
            assert (bytes(ctl.dump_ip), bytes(ctl.dump_mask)) == (  # ::ffff:10.0.0.0/104, as keys hold it
                bytes(10) + b"\xff\xff\x0a\0\0\0", b"\xff" * 13 + bytes(3))
            assert reader.read(accel).dump == DumpState(True, "10.0.0.0/8", 80, dump.DEFAULT_SNAPLEN)
            raise RuntimeError("the consumer broke")
    ctl = accel.control()
    assert (ctl.dump_on, bytes(ctl.dump_ip), bytes(ctl.dump_mask), ctl.dump_port) == (0, bytes(16), bytes(16), 0)


@pytest.mark.parametrize("ip, address, mask", [
    (None, bytes(16), bytes(16)),                                     # any address
    ("::/0", bytes(16), bytes(16)),                                   # any address too
    ("0.0.0.0/0", bytes(10) + b"\xff\xff" + bytes(4), b"\xff" * 12 + bytes(4)),  # any IPv4 address
    ("2001:db8::/32", b"\x20\x01\x0d\xb8" + bytes(12), b"\xff" * 4 + bytes(12)),
    ("fd00::1", b"\xfd" + bytes(14) + b"\x01", b"\xff" * 16),
])
def test_the_filter_is_written_as_the_kernel_compares_it_and_read_back(ip, address, mask):
    class Inst:
        control = abi.Control

        def set_control(self, ctl):
            self.ctl = ctl
    inst = Inst()
    dump._set(inst, True, dump.parse_ip(ip) if ip else None, 80, 64)
    assert (bytes(inst.ctl.dump_ip), bytes(inst.ctl.dump_mask)) == (address, mask)
    shown = None if ip in (None, "::/0") else str(dump.parse_ip(ip))  # ::/0 is no filter
    assert reader._dump_state(inst.ctl) == DumpState(True, shown, 80, 64)


def test_arguments_are_checked_before_anything_is_touched():
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 address"):
        dump.DumpSession(None, ip="10.0.0.300")
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 address"):
        dump.DumpSession(None, ip="fd00:::1")
    with pytest.raises(ValueError, match="names a zone"):
        dump.DumpSession(None, ip="fe80::1%eth0")
    with pytest.raises(ValueError, match="outside 1-65535"):
        dump.DumpSession(None, port=70000)
    with pytest.raises(ValueError, match="outside 1-4096"):
        dump.DumpSession(None, snaplen=4097)
    assert dump.parse_ip("10.1.2.3/8") == ipaddress.IPv4Network("10.0.0.0/8")
    assert dump.parse_ip("10.1.2.3") == ipaddress.IPv4Network("10.1.2.3/32")
    assert dump.parse_ip("2001:db8::1/32") == ipaddress.IPv6Network("2001:db8::/32")
    assert dump.parse_ip("::1") == ipaddress.IPv6Network("::1/128")
    assert dump.parse_ip("::ffff:10.1.2.3/104") == ipaddress.IPv4Network("10.0.0.0/8")  # the same filter


@pytest.mark.parametrize("args, named", [
    (["--snaplen", "0"], "--snaplen"), (["--snaplen", "5000"], "--snaplen"), (["--port", "http"], "--port"),
    (["--ip", "300.1.1.1"], "--ip"), (["--ip", "fd00::/129"], "--ip"), (["--count", "-1"], "--count"),
    (["--json", "--pcap", "f"], "--pcap"),
])
def test_cli_rejects_bad_arguments_in_one_line(args, named):
    done = subprocess.run([sys.executable, "-m", "mdatui.cli.main", "dump", *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("mdatui dump: error: argument") and named in error


def start_cli(pin_dir: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mdatui.cli.main", "dump", "--pin-dir", pin_dir, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert "Ctrl-C to stop" in _line(proc, proc.stderr)
    return proc


def stop(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out.decode(), err.decode()


@pytest.mark.kernel
def test_cli_stops_after_count_and_switches_dump_off(lab, accel, pin_dir):
    ns = lab.add_netns("pod")
    peers.server(lab, "sink", 7000, ns)
    proc = start_cli(pin_dir, "--count", "3", "--json", "--snaplen", "8", "--port", "7000")
    assert accel.control().dump_on == 1
    cli, local = send_held(lab, accel, ns, "127.0.0.1:7000")
    out, err = stop(proc)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(j["src"], j["len"], bytes.fromhex(j["data"])) for j in lines] == \
        [(local, n, m[:8]) for n, m in zip(SIZES[:3], traffic.messages(SIZES))]
    assert "3 messages captured, 0 lost; dump switched off" in err
    assert accel.control().dump_on == 0
    finish(cli)


@pytest.mark.kernel
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_cli_stopped_by_a_signal_switches_dump_off(lab, accel, pin_dir, sig):
    ns = lab.add_netns("pod")
    peers.server(lab, "sink", 7000, ns)
    proc = start_cli(pin_dir)
    cli, local = send_held(lab, accel, ns, "127.0.0.1:7000", [30])
    first = _line(proc, proc.stdout)
    assert f"{local} > 127.0.0.1:7000: to-server, length 30:" in first
    assert accel.control().dump_on == 1
    proc.send_signal(sig)
    _, err = stop(proc)
    assert proc.returncode == 0
    assert "1 messages captured, 0 lost; dump switched off" in err
    assert accel.control().dump_on == 0
    finish(cli)


@pytest.mark.kernel
def test_cli_refuses_a_second_dump_while_one_runs(accel, pin_dir):
    proc = start_cli(pin_dir)
    try:
        done = subprocess.run([sys.executable, "-m", "mdatui.cli.main", "dump", "--pin-dir", pin_dir],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 1
        assert f"already being read by process {proc.pid}" in done.stderr
        assert accel.control().dump_on == 1  # the first one is still running
    finally:
        proc.send_signal(signal.SIGINT)
        stop(proc)
    assert accel.control().dump_on == 0
