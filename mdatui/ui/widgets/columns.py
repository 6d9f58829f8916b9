"""Cell helpers the tables of several views share: styled states, and columns of addresses and
of a few distinct values that sort and filter without a string per row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from rich.text import Text

from ...core.kernel.abi import ip_str

STATE_STYLES = {
    "accelerated": "green",
    "pending": "yellow",
    "draining": "cyan",
    "normal": "dim",
    "ok": "green",
    "one-sided": "bold red",
    "stale": "bold yellow",
}


def styled(word: str) -> Text:
    return Text(word, style=STATE_STYLES.get(word, ""))


def host_order(ip_be: np.ndarray) -> np.ndarray:
    """Addresses as the kernel keeps them (network byte order in a native integer) as numbers
    that sort as the addresses do."""
    return np.ascontiguousarray(ip_be, dtype=np.uint32).view(">u4").astype(np.uint64)


# Odd 64-bit multipliers for hashing values into 16 bits (Knuth's multiplicative hashing).
_HASHES = tuple(np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F,
                                       0x165667B19E3779F9, 0xD6E8FEB86659FD93))
_SLOT_SHIFT = np.uint64(64 - 16)


def positions(distinct: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Where each value is in distinct (sorted, and holding every value). Through a table of
    2^16 slots when one of a few hashes gives each distinct value a slot of its own (likely
    for a few hundred values: 1 ms at 200,000 rows), else by binary search (7 ms)."""
    if len(distinct) <= 512:
        for k in _HASHES:
            slots = (distinct.astype(np.uint64) * k) >> _SLOT_SHIFT
            if len(np.unique(slots)) == len(distinct):
                table = np.zeros(1 << 16, dtype=np.intp)
                table[slots.astype(np.intp)] = np.arange(len(distinct))
                return table[((values.astype(np.uint64) * k) >> _SLOT_SHIFT).astype(np.intp)]
    return np.searchsorted(distinct, values)


class Addresses:
    """The ip:port of many rows."""

    def __init__(self, ip_be: np.ndarray, port: np.ndarray):
        self.ip = ip_be
        self.port = port

    @cached_property
    def order(self) -> np.ndarray:
        """ip:port as one number per row, sorted as numbers: 10.0.0.9 before 10.0.0.10."""
        return (host_order(self.ip) << np.uint64(16)) | self.port.astype(np.uint64)

    @cached_property
    def _ips(self) -> tuple[list[str], np.ndarray]:
        distinct = np.unique(self.ip)
        return [ip_str(v) for v in distinct.tolist()], positions(distinct, self.ip)

    @cached_property
    def _ports(self) -> np.ndarray:
        return np.flatnonzero(np.bincount(self.port, minlength=1 << 16))

    def search(self, needle: str) -> np.ndarray:
        """Rows whose "ip:port" contains the needle: it is in the ip, in the port, or it spans
        the colon. Worked out on the distinct ips and ports, which are few."""
        head, colon, tail = needle.partition(":")
        if ":" in tail:
            return np.zeros(len(self.ip), dtype=bool)
        ip_texts, which = self._ips
        ports = self._ports
        if colon:
            ip_hit = [t.endswith(head) for t in ip_texts]
            port_hit = [str(p).startswith(tail) for p in ports.tolist()]
        else:
            ip_hit = [needle in t for t in ip_texts]
            port_hit = [needle in str(p) for p in ports.tolist()]
        by_port = np.zeros(1 << 16, dtype=bool)
        by_port[ports] = port_hit
        ip_hit = np.array(ip_hit, dtype=bool)
        if colon:
            return ip_hit[which] & by_port[self.port]
        return ip_hit[which] | by_port[self.port]


class Distinct:
    """A column of few distinct values (netns cookies, pids): each value's text is made once."""

    def __init__(self, values: np.ndarray):
        self.values = values

    @cached_property
    def _distinct(self) -> tuple[np.ndarray, np.ndarray]:
        distinct = np.unique(self.values)  # and positions: far faster than return_inverse
        return distinct, positions(distinct, self.values)

    def search(self, text: Callable[[int], str], needle: str) -> np.ndarray:
        """Rows whose value's text (casefolded) contains the needle."""
        distinct, which = self._distinct
        return np.array([needle in text(v).casefold() for v in distinct.tolist()], dtype=bool)[which]


@dataclass(frozen=True)
class Leftover:
    """Columns that rows worked out of a set of ends (addresses, distinct values, the ends'
    order), apart from the rows' frame: rows of a later frame with the same ends take them over
    instead of working them out again (at 200,000 ends a first filter takes 30-50 ms, the ends'
    order 30 ms), also once their view, hidden, let go of its frame."""

    made_of: tuple[np.ndarray, ...]  # the arrays they were worked out from
    columns: dict[str, object]

    @classmethod
    def of(cls, rows: object, made_of: tuple[np.ndarray, ...], names: tuple[str, ...]) -> "Leftover":
        return cls(made_of, {name: rows.__dict__[name] for name in names if name in rows.__dict__})

    def fits(self, made_of: tuple[np.ndarray, ...]) -> bool:
        return len(made_of) == len(self.made_of) and all(
            now is then for now, then in zip(made_of, self.made_of))

    def give(self, rows: object, made_of: tuple[np.ndarray, ...]) -> None:
        """Hand the columns to rows made of these very arrays (the same ends: read_ends)."""
        if self.fits(made_of):
            rows.__dict__.update(self.columns)


def indexed_search(index: np.ndarray, texts: list[str], needle: str) -> np.ndarray:
    """Rows whose text is texts[index[row]] (the last one where index is negative) and contains
    the needle."""
    hit = np.array([needle in t.casefold() for t in texts], dtype=bool)
    return hit[index]


def indexed_order(index: np.ndarray, values: list[str | None]) -> np.ndarray:
    """A sort value per row from values[index[row]] (None where index is negative): the rank of
    the row's value among them; None after all others."""
    ranked = sorted((v, i) for i, v in enumerate(values) if v is not None)
    rank = np.full(len(values) + 1, len(values), dtype=np.int64)  # the last one: index -1
    rank[np.array([i for _, i in ranked], dtype=np.intp)] = np.arange(len(ranked))
    return rank[index]
