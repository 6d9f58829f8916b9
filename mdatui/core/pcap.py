"""Write dump records as a classic pcap file that Wireshark and tshark decode as TCP streams.

Redirected messages never had packets, so each one gets synthesized IPv4 and TCP headers
(LINKTYPE_RAW: the file starts at the IP header). Each direction of a connection numbers its
bytes from its own initial sequence number and advances by the whole message length, so a
message cut at snaplen shows as a truncated packet (captured length < original length), not as
missing bytes. Messages longer than an IPv4 packet can carry are split into several packets; the
ones past the snaplen carry headers only. TCP checksums are correct where the whole payload was
captured and 0 where it was not (it cannot be computed; Wireshark does not check it by default).
"""

from __future__ import annotations

import socket
import struct
import zlib
from typing import BinaryIO

from .dump import DumpRecord

LINKTYPE_RAW = 101
_MAGIC_NS = 0xA1B23C4D            # timestamps in nanoseconds
_HEADERS = 20 + 20                # IPv4 + TCP, no options
MAX_SEGMENT = 0xFFFF - _HEADERS   # IPv4 total length is 16 bits
_PSH_ACK = 0x18
_DONT_FRAGMENT = 0x4000


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _addr(text: str) -> tuple[bytes, int]:
    host, _, port = text.rpartition(":")
    return socket.inet_aton(host), int(port)


class _Direction:
    """Sequence state of one direction of one connection."""

    def __init__(self, key: tuple):
        self.next_seq = zlib.crc32(repr(key).encode())  # arbitrary but reproducible ISN
        self.ip_id = 0


class PcapWriter:
    """Appends packets to an open binary file; the caller owns and closes the file."""

    def __init__(self, out: BinaryIO, snaplen: int):
        self._out = out
        self._flows: dict[tuple, _Direction] = {}
        out.write(struct.pack("=IHHiIII", _MAGIC_NS, 2, 4, 0, 0, snaplen + _HEADERS, LINKTYPE_RAW))
        self.packets = 0

    def _flow(self, netns: int, src: str, dst: str) -> _Direction:
        key = (netns, src, dst)
        if key not in self._flows:
            self._flows[key] = _Direction(key)
        return self._flows[key]

    def write(self, rec: DumpRecord) -> None:
        sending = self._flow(rec.netns, rec.src, rec.dst)
        ack = self._flow(rec.netns, rec.dst, rec.src).next_seq
        src_ip, sport = _addr(rec.src)
        dst_ip, dport = _addr(rec.dst)
        for n, off in enumerate(range(0, max(rec.len, 1), MAX_SEGMENT)):
            seglen = min(MAX_SEGMENT, rec.len - off)
            payload = rec.data[off:off + seglen]
            whole = len(payload) == seglen
            tcp = struct.pack("!HHIIBBHHH", sport, dport, sending.next_seq, ack, 5 << 4, _PSH_ACK,
                              0xFFFF, 0, 0)
            if whole:
                pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp) + seglen)
                tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp + payload)) + tcp[18:]
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, _HEADERS + seglen, sending.ip_id,
                             _DONT_FRAGMENT, 64, socket.IPPROTO_TCP, 0, src_ip, dst_ip)
            ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
            ts = rec.ts_ns + n  # the packets of a split message keep their order in time
            packet = ip + tcp + payload
            self._out.write(struct.pack("=IIII", ts // 10**9, ts % 10**9, len(packet), _HEADERS + seglen))
            self._out.write(packet)
            sending.next_seq = (sending.next_seq + seglen) & 0xFFFFFFFF
            sending.ip_id = (sending.ip_id + 1) & 0xFFFF
            self.packets += 1
