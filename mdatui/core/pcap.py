"""Write dump records as a classic pcap file that Wireshark and tshark decode as TCP streams.

Redirected messages never had packets, so each one gets synthesized IP and TCP headers: IPv4
for a connection between IPv4 addresses, IPv6 otherwise (LINKTYPE_RAW: each packet starts at its
IP header, whose version field says which). Each direction of a connection numbers its
bytes from its own initial sequence number and advances by the whole message length, so a
message cut at snaplen shows as a truncated packet (captured length < original length), not as
missing bytes. Messages longer than an IP packet can carry are split into several packets; the
ones past the snaplen carry headers only. TCP checksums are correct where the whole payload was
captured and 0 where it was not (it cannot be computed; Wireshark does not check it by default).
"""

from __future__ import annotations

import socket
import struct
import zlib
from typing import BinaryIO

from . import addrs
from .dump import DumpRecord

LINKTYPE_RAW = 101
_MAGIC_NS = 0xA1B23C4D            # timestamps in nanoseconds
_TCP = 20                         # no options
_HEADERS = 20 + _TCP              # IPv4 + TCP
_HEADERS6 = 40 + _TCP             # IPv6 + TCP, no extension headers
MAX_SEGMENT = 0xFFFF - _HEADERS   # IPv4 total length is 16 bits
MAX_SEGMENT6 = 0xFFFF - _TCP      # IPv6 payload length is 16 bits, its own header not counted
_PSH_ACK = 0x18
_DONT_FRAGMENT = 0x4000
_HOP_LIMIT = 64


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4(address: bytes) -> bytes | None:
    """The IPv4 address an address in the keys' form holds, None when it is IPv6."""
    return address[12:] if address[:12] == addrs.V4_PREFIX else None


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
        out.write(struct.pack("=IHHiIII", _MAGIC_NS, 2, 4, 0, 0, snaplen + _HEADERS6, LINKTYPE_RAW))
        self.packets = 0

    def _flow(self, netns: int, src: str, dst: str) -> _Direction:
        key = (netns, src, dst)
        if key not in self._flows:
            self._flows[key] = _Direction(key)
        return self._flows[key]

    def write(self, rec: DumpRecord) -> None:
        sending = self._flow(rec.netns, rec.src, rec.dst)
        ack = self._flow(rec.netns, rec.dst, rec.src).next_seq
        src, sport = addrs.split_endpoint(rec.src)
        dst, dport = addrs.split_endpoint(rec.dst)
        v4 = _ipv4(src) is not None and _ipv4(dst) is not None
        if v4:
            src, dst = _ipv4(src), _ipv4(dst)
        headers, max_segment = (_HEADERS, MAX_SEGMENT) if v4 else (_HEADERS6, MAX_SEGMENT6)
        for n, off in enumerate(range(0, max(rec.len, 1), max_segment)):
            seglen = min(max_segment, rec.len - off)
            payload = rec.data[off:off + seglen]
            whole = len(payload) == seglen
            tcp = struct.pack("!HHIIBBHHH", sport, dport, sending.next_seq, ack, 5 << 4, _PSH_ACK,
                              0xFFFF, 0, 0)
            if whole:
                if v4:
                    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, _TCP + seglen)
                else:
                    pseudo = src + dst + struct.pack("!I3xB", _TCP + seglen, socket.IPPROTO_TCP)
                tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp + payload)) + tcp[18:]
            if v4:
                ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, _HEADERS + seglen, sending.ip_id,
                                 _DONT_FRAGMENT, _HOP_LIMIT, socket.IPPROTO_TCP, 0, src, dst)
                ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
            else:  # version 6, no traffic class or flow label; IPv6 has no header checksum
                ip = struct.pack("!IHBB16s16s", 6 << 28, _TCP + seglen, socket.IPPROTO_TCP,
                                 _HOP_LIMIT, src, dst)
            ts = rec.ts_ns + n  # the packets of a split message keep their order in time
            packet = ip + tcp + payload
            self._out.write(struct.pack("=IIII", ts // 10**9, ts % 10**9, len(packet), headers + seglen))
            self._out.write(packet)
            sending.next_seq = (sending.next_seq + seglen) & 0xFFFFFFFF
            sending.ip_id = (sending.ip_id + 1) & 0xFFFF
            self.packets += 1
