"""Addresses as the kernel's keys hold them: 16 bytes in network byte order, an IPv4 address
IPv4-mapped (::ffff:a.b.c.d). Shown as dotted quads when IPv4, as compressed IPv6 otherwise; an
endpoint is "a.b.c.d:port" or "[v6]:port".

As numpy columns an address is four u32 words (the key records' `local_ip`, `remote_ip`);
`column` views them as one 16-byte value per row, `numbers` as integers that sort as the
addresses do.
"""

from __future__ import annotations

import ipaddress
import socket

import numpy as np

V4_PREFIX = bytes(10) + b"\xff\xff"
_V4_HEAD = int.from_bytes(V4_PREFIX, "big")  # the first 12 bytes of a mapped address


def pack(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """An address (text or ipaddress object) in the keys' form."""
    ip = ipaddress.ip_address(address)
    return V4_PREFIX + ip.packed if ip.version == 4 else ip.packed


def text(raw: bytes) -> str:
    """The keys' form back to text: IPv4 (mapped ones too) dotted, IPv6 compressed."""
    raw = bytes(raw)
    if raw[:12] == V4_PREFIX:
        return socket.inet_ntoa(raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def is_loopback(raw: bytes) -> bool:
    """127.0.0.0/8 or ::1, as bpf/mdatui.h's mda_is_loopback (the keys' netns rule)."""
    return raw[12] == 127 if raw[:12] == V4_PREFIX else raw == bytes(15) + b"\x01"


def host(raw: bytes) -> str:
    """An address as an endpoint shows it: text(), bracketed when IPv6."""
    name = text(raw)
    return f"[{name}]" if ":" in name else name


def endpoint(raw: bytes, port: int) -> str:
    return f"{host(raw)}:{port}"


def split_endpoint(end: str) -> tuple[bytes, int]:
    """"a.b.c.d:port" or "[v6]:port" to the keys' form and the port."""
    host, _, port = end.rpartition(":")
    return pack(host.strip("[]")), int(port)


def network(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[bytes, bytes]:
    """A CIDR as (address, mask) in the keys' form: a.b.c.d/N is ::ffff:a.b.c.d/(96+N)."""
    if net.version == 4:
        return V4_PREFIX + net.network_address.packed, b"\xff" * 12 + net.netmask.packed
    return net.network_address.packed, net.netmask.packed


def from_network(address: bytes, mask: bytes) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """network() back: a mapped address under a mask that covers the prefix is an IPv4 CIDR."""
    address, mask = bytes(address), bytes(mask)
    if address[:12] == V4_PREFIX and mask[:12] == b"\xff" * 12:
        return ipaddress.IPv4Network((address[12:], bin(int.from_bytes(mask[12:], "big")).count("1")))
    return ipaddress.IPv6Network((address, bin(int.from_bytes(mask, "big")).count("1")))


def column(words: np.ndarray) -> np.ndarray:
    """Rows of four u32 words (a key column) as one 16-byte value each; equal addresses are equal
    values, and sorting them sorts the addresses (network byte order compares as numbers)."""
    return np.ascontiguousarray(words, dtype=np.uint32).view("V16").reshape(len(words))


def halves(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each address as two u64 numbers (high, low) in host order."""
    big = np.ascontiguousarray(words, dtype=np.uint32).view(">u8").reshape(len(words), 2)
    return big[:, 0].astype(np.uint64), big[:, 1].astype(np.uint64)


_MAPPED = np.frombuffer(V4_PREFIX[8:], dtype=np.uint32)[0]  # a mapped address's third word
V4_NUMBER = np.uint64(0xFFFF << 32)  # what numbers() adds to an IPv4 address


def ipv4_words(words: np.ndarray) -> np.ndarray | None:
    """The last word of each row of a key column (an IPv4 address in network byte order) when
    every row's address is IPv4-mapped, else None: the usual case, worked on without copying
    the four words."""
    if len(words) and ((words[:, 0] | words[:, 1]).any() or (words[:, 2] != _MAPPED).any()):
        return None
    return np.ascontiguousarray(words[:, 3])


def host_order(ip_be: np.ndarray) -> np.ndarray:
    """IPv4 addresses in network byte order as numbers that sort as the addresses do."""
    return np.ascontiguousarray(ip_be, dtype=np.uint32).view(">u4").astype(np.uint64)


def numbers(words: np.ndarray) -> np.ndarray:
    """One u64 per row that sorts as the addresses do, under 2^48: the IPv4-mapped form's low
    48 bits when every address is IPv4 (the usual case, with no sort), else the rank of the
    address among the column's distinct ones."""
    v4 = ipv4_words(words)
    if v4 is not None:
        return host_order(v4) | V4_NUMBER
    high, low = halves(words)
    order = np.lexsort((low, high))  # by high, then low: far faster than np.unique of pairs
    high, low = high[order], low[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (high[1:] != high[:-1]) | (low[1:] != low[:-1])
    rank = np.empty(len(order), dtype=np.uint64)
    rank[order] = np.cumsum(new, dtype=np.uint64) - np.uint64(1)
    return rank


def texts(words: np.ndarray, known: dict[bytes, str] | None = None) -> list[str]:
    """Each row's address as an endpoint shows it (host()). A mesh has few distinct ones: each
    is formatted once, and the rows take theirs by numpy indexing rather than a Python call
    each. All IPv4 (the usual case), the distinct ones are found among the last words: a sort
    of u32 rather than of 16-byte values (at 200,000 rows, 0.4 s rather than 0.6)."""
    known = {} if known is None else known
    v4 = ipv4_words(words)
    if v4 is not None:
        distinct, at = np.unique(v4, return_inverse=True)
        raw = distinct.tobytes()
        raws = [V4_PREFIX + raw[i:i + 4] for i in range(0, len(raw), 4)]
    else:
        distinct, at = np.unique(column(words), return_inverse=True)
        raws = [bytes(v) for v in distinct]
    names = np.array([known.get(r) or known.setdefault(r, host(r)) for r in raws], dtype=object)
    return names[at.reshape(len(words))].tolist()


def words_of(raw: bytes) -> np.ndarray:
    """An address in the keys' form as the four u32 words a key column holds."""
    return np.frombuffer(raw, dtype=np.uint32)
