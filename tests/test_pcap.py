"""mdatui.core.pcap and `mdatui dump --pcap`: files that tshark decodes as TCP and HTTP."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys

import pytest

from mdatui.core import pcap
from mdatui.core.dump import Direction, DumpRecord
from tests.test_dump import start_cli, stop
from tests.test_events import wait_accelerated

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")

REQUEST = b"GET /mdatui HTTP/1.1\r\nHost: pod\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
T0 = 1_700_000_000_000_000_000


def record(ts_ns: int, src: str, dst: str, payload: bytes, length: int | None = None,
           direction: Direction = Direction.TO_SERVER) -> DumpRecord:
    return DumpRecord(ts_ns, src, dst, 0, len(payload) if length is None else length, payload, direction)


def tshark(path, *args: str) -> list[list[str]]:
    done = subprocess.run(["tshark", "-r", str(path), "-o", "tcp.check_checksum:TRUE",
                           "-o", "ip.check_checksum:TRUE", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line.split("\t") for line in done.stdout.splitlines()]


def write(path, snaplen: int, records: list[DumpRecord]) -> None:
    with open(path, "wb") as f:
        writer = pcap.PcapWriter(f, snaplen)
        for rec in records:
            writer.write(rec)
        assert writer.packets >= len(records)


def test_header_declares_raw_ip_nanoseconds_and_snaplen(tmp_path):
    path = tmp_path / "x.pcap"
    write(path, 64, [])
    magic, major, minor, _, _, snaplen, linktype = struct.unpack("=IHHiIII", path.read_bytes())
    # Room for an IPv6 header: one file holds IPv4 and IPv6 connections.
    assert (magic, major, minor, snaplen, linktype) == (0xA1B23C4D, 2, 4, 64 + 60, pcap.LINKTYPE_RAW)


@needs_tshark
def test_sequence_numbers_advance_by_whole_messages_and_checksums_hold(tmp_path):
    path = tmp_path / "x.pcap"
    client, server = "10.0.0.1:5555", "10.0.0.2:80"
    write(path, 128, [
        record(T0, client, server, REQUEST),
        record(T0 + 1000, server, client, RESPONSE, direction=Direction.TO_CLIENT),
        record(T0 + 2000, client, server, b"x" * 128, length=1000),        # cut at snaplen
        record(T0 + 3000, client, server, b"y" * 128, length=100_000),     # split in two packets
        record(T0 + 4000, client, server, b"z"),
    ])
    rows = tshark(path, "-T", "fields", "-e", "ip.src", "-e", "tcp.seq_raw", "-e", "tcp.ack_raw",
                  "-e", "tcp.len", "-e", "frame.len", "-e", "frame.cap_len", "-e", "tcp.flags",
                  "-e", "ip.checksum.status", "-e", "tcp.checksum.status")
    assert len(rows) == 6
    src = [r[0] for r in rows]
    seq, ack, tcp_len, frame_len, cap_len = ([int(r[i], 0) for r in rows] for i in range(1, 6))
    assert src == ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.1"]
    isn_c, isn_s, req = seq[0], seq[1], len(REQUEST)
    assert seq[2:] == [(isn_c + req + n) % 2**32 for n in (0, 1000, 1000 + 65495, 101_000)]
    assert ack == [isn_s, isn_c + req] + [isn_s + len(RESPONSE)] * 4
    assert tcp_len == [req, len(RESPONSE), 1000, 65495, 100_000 - 65495, 1]
    assert frame_len == [n + 40 for n in tcp_len]
    assert cap_len == [40 + req, 40 + len(RESPONSE), 168, 168, 40, 41]
    assert {r[6] for r in rows} == {"0x0018"}                             # PSH, ACK
    assert {r[7] for r in rows} == {"1"}                                  # every IP checksum good
    assert [r[8] for r in rows] == ["1", "1", "2", "2", "2", "1"]         # TCP: good, or unverifiable


@needs_tshark
def test_ipv6_connections_get_ipv6_headers_with_good_checksums(tmp_path):
    path = tmp_path / "x.pcap"
    client, server = "[fd00::1]:5555", "[fd00::2]:80"
    write(path, 128, [
        record(T0, client, server, REQUEST),
        record(T0 + 1000, server, client, RESPONSE, direction=Direction.TO_CLIENT),
        record(T0 + 2000, client, server, b"y" * 128, length=100_000),     # split in two packets
        record(T0 + 3000, client, server, b"z"),
    ])
    rows = tshark(path, "-T", "fields", "-e", "ip.version", "-e", "ipv6.src", "-e", "ipv6.dst",
                  "-e", "ipv6.plen", "-e", "ipv6.nxt", "-e", "ipv6.hlim", "-e", "tcp.seq_raw",
                  "-e", "tcp.ack_raw", "-e", "tcp.len", "-e", "frame.len", "-e", "frame.cap_len",
                  "-e", "tcp.checksum.status")
    assert len(rows) == 5
    assert [r[:3] for r in rows] == [["6", "fd00::1", "fd00::2"], ["6", "fd00::2", "fd00::1"]] + \
        [["6", "fd00::1", "fd00::2"]] * 3
    assert {(r[4], r[5]) for r in rows} == {("6", "64")}                  # TCP, hop limit 64
    seq, ack, tcp_len, frame_len, cap_len = ([int(r[i], 0) for r in rows] for i in range(6, 11))
    isn_c, isn_s, req = seq[0], seq[1], len(REQUEST)
    assert seq[2:] == [(isn_c + req + n) % 2**32 for n in (0, 65515, 100_000)]
    assert ack == [isn_s, isn_c + req] + [isn_s + len(RESPONSE)] * 3
    assert tcp_len == [req, len(RESPONSE), 65515, 100_000 - 65515, 1]   # payload length 16 bits
    assert [int(r[3]) for r in rows] == [20 + n for n in tcp_len]
    assert frame_len == [n + 60 for n in tcp_len]
    assert cap_len == [60 + req, 60 + len(RESPONSE), 188, 60, 61]
    assert [r[11] for r in rows] == ["1", "1", "2", "2", "1"]             # good, or unverifiable
    assert tshark(path, "-Y", "_ws.expert.severity >= warning", "-T", "fields", "-e", "frame.number",
                  "-e", "_ws.expert") == []                               # nothing tshark doubts


@needs_tshark
@pytest.mark.parametrize("client, server", [("10.0.0.1:5555", "10.0.0.2:80"),
                                            ("[2001:db8::1]:5555", "[2001:db8::2]:80")])
def test_tshark_decodes_http_written_by_hand(tmp_path, client, server):
    path = tmp_path / "x.pcap"
    write(path, 128, [record(T0, client, server, REQUEST),
                      record(T0 + 1000, server, client, RESPONSE, direction=Direction.TO_CLIENT)])
    rows = tshark(path, "-Y", "http", "-T", "fields", "-e", "http.request.uri", "-e", "http.response.code")
    assert rows == [["/mdatui", ""], ["", "200"]]


@needs_tshark
def test_one_file_holds_ipv4_and_ipv6_connections(tmp_path):
    """A dump sees both families at once; each packet says its own IP version."""
    path = tmp_path / "x.pcap"
    write(path, 128, [record(T0, "10.0.0.1:5555", "10.0.0.2:80", REQUEST),
                      record(T0 + 1, "[fd00::1]:5556", "[fd00::2]:80", REQUEST),
                      record(T0 + 2, "[fd00::2]:80", "[fd00::1]:5556", RESPONSE, direction=Direction.TO_CLIENT),
                      record(T0 + 3, "10.0.0.2:80", "10.0.0.1:5555", RESPONSE, direction=Direction.TO_CLIENT)])
    rows = tshark(path, "-Y", "http", "-T", "fields", "-e", "ip.version", "-e", "ip.src", "-e", "ipv6.src",
                  "-e", "tcp.srcport", "-e", "http.response.code", "-e", "tcp.checksum.status")
    assert rows == [["4", "10.0.0.1", "", "5555", "", "1"], ["6", "", "fd00::1", "5556", "", "1"],
                    ["6", "", "fd00::2", "80", "200", "1"], ["4", "10.0.0.2", "", "80", "200", "1"]]


# A client and a server small enough to read here: one HTTP exchange over port 80, on HOST.
HTTP_SERVER = f"""
import socket, sys
host = sys.argv[1]
srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, 80)); srv.listen(8); print("READY", flush=True)
conn, _ = srv.accept()
conn.recv(4096)
conn.sendall({RESPONSE!r})
conn.close()
"""
HTTP_CLIENT = f"""
import select, socket, sys
s = socket.create_connection((sys.argv[1], 80)); host, port = s.getsockname()[:2]
print(f"[{{host}}]:{{port}}" if ":" in host else f"{{host}}:{{port}}", flush=True)
sys.stdin.readline()
s.sendall({REQUEST!r})
select.select([s], [], [], 10)
print(s.recv(4096).decode().split()[1], flush=True)
"""


@pytest.mark.kernel
@needs_tshark
@pytest.mark.parametrize("host, src", [("127.0.0.1", "ip.src"), ("::1", "ipv6.src")])
def test_cli_pcap_of_an_accelerated_http_exchange_decodes_in_tshark(lab, accel, pin_dir, tmp_path,
                                                                    host, src):
    ns = lab.add_netns("pod")
    path = tmp_path / "http.pcap"
    srv = lab.spawn([sys.executable, "-c", HTTP_SERVER, host], netns=ns)
    assert srv.stdout.readline().strip() == b"READY"
    proc = start_cli(pin_dir, "--pcap", str(path), "--count", "2", "--port", "80")
    cli = lab.spawn([sys.executable, "-c", HTTP_CLIENT, host], netns=ns, stdin=subprocess.PIPE)
    local = cli.stdout.readline().decode().strip()
    wait_accelerated(accel, local)
    cli.stdin.write(b"\n")
    cli.stdin.flush()
    assert cli.stdout.readline().strip() == b"200"
    _, err = stop(proc)
    assert proc.returncode == 0 and "2 messages captured, 0 lost" in err
    rows = tshark(path, "-Y", "http", "-T", "fields", "-e", src, "-e", "tcp.srcport",
                  "-e", "http.request.method", "-e", "http.request.uri", "-e", "http.response.code")
    port = local.rpartition(":")[2]
    assert rows == [[host, port, "GET", "/mdatui", ""], [host, "80", "", "", "200"]]
    assert accel.control().dump_on == 0
