"""Cell helpers the tables of several views share: styled states, and columns of addresses and
of a few distinct values that sort and filter without a string per row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from rich.text import Text

from ...core import addrs

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


def numbers32(words: np.ndarray) -> np.ndarray:
    """A key column's addresses as numbers under 2^32 that sort as they do: all IPv4, the
    addresses themselves; else addrs.numbers less their least (ranks, fewer than the rows; a
    column whose numbers span more, which addrs.numbers does not give today, is ranked)."""
    v4 = addrs.ipv4_words(words)
    if v4 is not None:
        return addrs.host_order(v4)
    numbers = addrs.numbers(words)
    if not len(numbers):
        return numbers
    least = numbers.min()
    if numbers.max() - least < np.uint64(1 << 32):
        return numbers - least
    return np.unique(numbers, return_inverse=True)[1].reshape(len(numbers)).astype(np.uint64)


class Addresses:
    """The ip:port of many rows: "a.b.c.d:port", or "[v6]:port" for an IPv6 address."""

    def __init__(self, ip: np.ndarray | None, port: np.ndarray, v4: np.ndarray | None = None):
        """ip: (N, 4) u32, a key column (core.addrs); or, all of them IPv4, None and v4 their
        last words (addrs.ipv4_words), which are all it takes."""
        self.ip = ip
        self.port = port
        if v4 is not None:
            self._v4 = v4

    @cached_property
    def _v4(self) -> np.ndarray | None:
        return addrs.ipv4_words(self.ip)

    @cached_property
    def order(self) -> np.ndarray:
        """ip:port as one number per row, sorted as numbers: 10.0.0.9 before 10.0.0.10, IPv4
        (::ffff:a.b.c.d) after the IPv6 addresses below ::ffff:0:0, before those above. The
        address's part is addrs.numbers's, taken from the last words alone when all are IPv4
        (0.3 ms rather than 1.7 at 200,000 rows: no copy of the four words)."""
        numbers = addrs.numbers(self.ip) if self._v4 is None else addrs.host_order(self._v4) | addrs.V4_NUMBER
        return (numbers << np.uint64(16)) | self.port.astype(np.uint64)

    @cached_property
    def _ips(self) -> tuple[list[str], np.ndarray]:
        """The distinct addresses' texts as shown ("[v6]" bracketed), and each row's among them."""
        if self._v4 is not None:
            distinct = np.unique(self._v4)  # and positions: far faster than return_inverse
            raw = distinct.tobytes()
            names = [addrs.host(addrs.V4_PREFIX + raw[i:i + 4]) for i in range(0, len(raw), 4)]
            return names, positions(distinct, self._v4)
        numbers = addrs.numbers(self.ip)
        distinct = np.unique(numbers)
        which = positions(distinct, numbers)
        one = np.empty(len(distinct), dtype=np.intp)
        one[which] = np.arange(len(numbers))  # a row of each: equal numbers, equal addresses
        return addrs.texts(self.ip[one]), which

    @cached_property
    def _ports(self) -> np.ndarray:
        return np.flatnonzero(np.bincount(self.port, minlength=1 << 16))

    def search(self, needle: str) -> np.ndarray:
        """Rows whose "ip:port" contains the needle: it is in the ip (as shown, "[v6]" with its
        brackets), in the port, or it spans the colon before the port: what precedes its last
        colon ends the ip and what follows starts the port. Worked out on the distinct ips and
        ports, which are few."""
        ip_texts, which = self._ips
        ports = self._ports
        in_ip = np.array([needle in t for t in ip_texts], dtype=bool)
        by_port = np.zeros(1 << 16, dtype=bool)
        head, colon, tail = needle.rpartition(":")
        if not colon:
            by_port[ports] = [needle in str(p) for p in ports.tolist()]
            return in_ip[which] | by_port[self.port]
        by_port[ports] = [str(p).startswith(tail) for p in ports.tolist()]
        ends_ip = np.array([t.endswith(head) for t in ip_texts], dtype=bool)
        spans = ends_ip[which] & by_port[self.port]
        return spans | in_ip[which] if in_ip.any() else spans


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
