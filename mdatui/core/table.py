"""Every end of sock_proxy_map as columns, one numpy array per field.

The console sorts, filters and joins a few hundred thousand ends every second, which an object
per end could do neither in time nor in memory; `Connections` makes Connection objects from the
rows as they are read, for whatever shows a handful of them.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Iterator, Sequence
from functools import cached_property

import numpy as np

from . import addrs
from .ends import ACCELERATED, NORMAL, PENDING, STATES, Connection, Endpoint, Owner
from .kernel import abi

KEY = np.dtype(abi.SockKey)
KEY_WORDS = KEY.itemsize // 8  # a key as 64-bit words: addresses, ports, netns
_PORTS_WORD = KEY.fields["local_port"][1] // 8  # the word that tells keys apart soonest
CONN = np.dtype(abi.Conn)
PENDING_ENTRY = np.dtype(abi.Pending)


def _packed(fields: Sequence[str]) -> np.dtype:
    return np.dtype([(f, CONN.fields[f][0]) for f in fields])


# A Table keeps what an end's CONN record says in two parts: what stays while the end lives
# (STATIC; pad makes a record whole words) and the counters its sends move.
STATIC_FIELDS = ("peer", "since_ns", "owner", "paired", "tainted", "active")
COUNTER_FIELDS = ("msgs", "bytes", "passed")
STATIC = np.dtype(_packed(STATIC_FIELDS).descr + [("pad", "<u4")])
COUNTERS = _packed(COUNTER_FIELDS)


def _words(records: np.ndarray, at: int = 0) -> np.ndarray:
    """The key at byte offset `at` of each record (KEY records, or STATIC ones for the peer) as
    KEY_WORDS 64-bit words, to compare and hash keys whole: a view, nothing is copied."""
    records = np.ascontiguousarray(records)
    words = records.view(np.uint64).reshape(len(records), records.dtype.itemsize // 8)
    return words[:, at // 8:at // 8 + KEY_WORDS]


_MIX = tuple(np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                                     0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB))


def _hash(words: np.ndarray) -> np.ndarray:
    """64 bits of each key; equal hashes are checked word by word where it matters. Each word is
    multiplied in and the high bits folded down again: a product only carries upward, and an
    IPv4 key's addresses sit in the high halves of their words (its first word is 0)."""
    h = np.zeros(len(words), dtype=np.uint64)
    for i in range(KEY_WORDS):
        h = (h ^ words[:, i]) * _MIX[i]
        h ^= h >> np.uint64(29)
    return h


class KeyIndex:
    """Finds keys among a set of keys by a sorted hash of each: a few hundred thousand keys are
    found in a few tens of milliseconds. Two different keys of one set with one hash (about 1
    in 10^9 for 200,000 keys) would make one of them unfindable: a rate counted from zero.

    Keys are handled as KEY_WORDS columns of words: numpy gathers single columns several times
    faster than rows of a two-dimensional array."""

    def __init__(self, words: np.ndarray):
        self.words = words
        self._columns = tuple(words[:, i] for i in range(KEY_WORDS))
        hashes = _hash(words)
        self._order = np.argsort(hashes).astype(np.int32)  # rows fit: a map holds < 2^31 keys
        self._sorted = hashes[self._order]

    def __len__(self) -> int:
        return len(self.words)

    def find(self, words: np.ndarray) -> np.ndarray:
        """The position of each of `words` in this set, -1 where it is not in it."""
        hashes = _hash(words)
        columns = [words[:, i] for i in range(KEY_WORDS)]
        if len(words) < 1024:
            return self._found(hashes, columns, np.arange(len(words)))
        # Looked for in sorted order, many keys are found several times faster.
        order = np.argsort(hashes)
        return self._found(hashes[order], [c[order] for c in columns], order)

    def find_all(self, other: "KeyIndex") -> np.ndarray:
        """find(other.words), using the order other has sorted its keys in already."""
        return self._found(other._sorted, [c[other._order] for c in other._columns], other._order)

    def among(self, hashes: np.ndarray) -> np.ndarray:
        """For each key of this set, whether its hash is among the sorted `hashes`."""
        if len(hashes) == 0:
            return np.zeros(len(self), dtype=bool)
        pos = np.searchsorted(hashes, self._sorted).clip(max=len(hashes) - 1)
        out = np.empty(len(self), dtype=bool)
        out[self._order] = hashes[pos] == self._sorted
        return out

    def _found(self, hashes: np.ndarray, columns: list[np.ndarray], at: np.ndarray) -> np.ndarray:
        out = np.full(len(hashes), -1, dtype=np.int32)
        if len(self) == 0 or len(hashes) == 0:
            return out
        pos = np.searchsorted(self._sorted, hashes).clip(max=len(self) - 1)
        rows = self._order[pos]
        found = self._sorted[pos] == hashes
        for mine, theirs in zip(self._columns, columns):
            found &= mine[rows] == theirs
        out[at] = np.where(found, rows, -1)
        return out


def _endpoint(key: tuple) -> Endpoint:
    """A key record as tolist() gives it (each address a list of four words) to an Endpoint."""
    local_ip, remote_ip, local_port, remote_port, netns = key
    return Endpoint(addrs.endpoint(struct.pack("=4I", *local_ip), local_port),
                    addrs.endpoint(struct.pack("=4I", *remote_ip), remote_port), netns)


def key_record(end: Endpoint) -> tuple:
    """An Endpoint back to the fields of its key."""
    (lip, lport), (rip, rport) = addrs.split_endpoint(end.local), addrs.split_endpoint(end.remote)
    return (addrs.words_of(lip), addrs.words_of(rip), lport, rport, end.netns)


class Table:
    """Every end of sock_proxy_map at one instant, as columns: row i of each array is one end.

    keys are the kernel's records (KEY), static and counters the two parts of its values (STATIC,
    COUNTERS); in_sockhash says whether the end is in the sockhash as well; taken_ns is the
    CLOCK_MONOTONIC time they were read at (ages count to it). Derived columns are computed when
    first asked for. A table read after `earlier` whose ends had not changed shares its keys and
    static arrays (read_ends), and with them whatever was derived from those alone.
    """

    # The cached columns that depend on keys and static alone.
    _OF_STATIC = ("words", "index", "state", "active", "peer_words", "peer_row")

    def __init__(self, keys: np.ndarray, static: np.ndarray, counters: np.ndarray, taken_ns: int,
                 in_sockhash: np.ndarray | None = None, earlier: "Table | None" = None):
        self.keys = keys
        self.static = static
        self.counters = counters
        self.taken_ns = taken_ns
        self.in_sockhash = np.ones(len(keys), dtype=bool) if in_sockhash is None else in_sockhash
        self._rows_in: tuple[weakref.ref, np.ndarray] | None = None
        if earlier is not None and self.shares_columns(earlier):
            for name in self._OF_STATIC:
                if name in earlier.__dict__:
                    self.__dict__[name] = earlier.__dict__[name]

    def shares_columns(self, other: "Table") -> bool:
        """Whether other holds these ends with the same peers, owners and states: its keys and
        static columns are these very arrays (read_ends)."""
        return self.keys is other.keys and self.static is other.static

    def same_ends(self, other: "Table") -> bool:
        """shares_columns, and the same ends in the sockhash."""
        return self.shares_columns(other) and np.array_equal(self.in_sockhash, other.in_sockhash)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def of(cls, connections: Sequence[Connection]) -> "Table":
        """The columns of Connection objects (the console's tests hand it such), their ages
        counted against a clock of its own."""
        taken_ns = 1 << 62
        keys = np.zeros(len(connections), KEY)
        static = np.zeros(len(connections), STATIC)
        counters = np.zeros(len(connections), COUNTERS)
        for i, c in enumerate(connections):
            keys[i] = key_record(c.end)
            owner = [abi.UNKNOWN_ID if v is None else v for v in (c.owner.pid, c.owner.uid, c.owner.gid)]
            paired = c.peer is not None and c.state != "pending"
            static[i] = (key_record(c.peer) if c.peer else (0,) * 5, taken_ns - round(c.age_s * 1e9),
                         (*owner, 0), paired, c.state in ("draining", "normal"), c.active, 0)
            counters[i] = (c.msgs, c.bytes, c.passed)
        return cls(keys, static, counters, taken_ns,
                   np.array([c.in_sockhash for c in connections], dtype=bool))

    # ------------------------------------------------------------ columns

    @cached_property
    def words(self) -> np.ndarray:
        return _words(self.keys)

    @cached_property
    def index(self) -> KeyIndex:
        return KeyIndex(self.words)

    @cached_property
    def state(self) -> np.ndarray:
        """STATES index of each row."""
        paired = self.static["paired"] != 0
        return np.where(self.static["tainted"] != 0, NORMAL,
                        np.where(paired, ACCELERATED, PENDING)).astype(np.uint8)

    @property
    def draining(self) -> np.ndarray:
        """Ends that stopped redirecting and wait in the sockhash until their reader has taken
        what was redirected to them (state NORMAL, shown as "draining")."""
        return (self.state == NORMAL) & self.in_sockhash

    @cached_property
    def active(self) -> np.ndarray:
        return self.static["active"] != 0

    @property
    def msgs(self) -> np.ndarray:
        return self.counters["msgs"]

    @property
    def bytes(self) -> np.ndarray:
        return self.counters["bytes"]

    @property
    def owners(self) -> np.ndarray:
        return self.static["owner"]

    @property
    def pid(self) -> np.ndarray:
        return self.owners["pid"]

    @property
    def uid(self) -> np.ndarray:
        return self.owners["uid"]

    @property
    def since_ns(self) -> np.ndarray:
        return self.static["since_ns"]

    @cached_property
    def age_s(self) -> np.ndarray:
        since = self.since_ns.astype(np.int64)
        return np.maximum(0, self.taken_ns - since) / 1e9

    @cached_property
    def peer_words(self) -> np.ndarray:
        return _words(self.static, STATIC.fields["peer"][1])

    @cached_property
    def peer_row(self) -> np.ndarray:
        """The row of each end's peer: -1 while it has none, or where the peer has no entry."""
        return np.where(self.static["paired"] != 0, self.find(self.peer_words), -1)

    def peer_rows(self, rows: np.ndarray) -> np.ndarray:
        """peer_row of some rows, without finding every row's peer."""
        if "peer_row" in self.__dict__:
            return self.peer_row[rows]
        return np.where(self.static["paired"][rows] != 0, self.find(self.peer_words[rows]), -1)

    # ------------------------------------------------------------ finding rows

    def rows_in(self, other: "Table") -> np.ndarray:
        """For each row, the row of the same end in `other` (an earlier read), -1 if it is new.
        The last answer is kept (the rates and the sockhash membership both ask for it), but not
        `other`: each read would keep every earlier one alive."""
        if other is self:  # a Reader gave the same table again
            return np.arange(len(self), dtype=np.int32)
        if self._rows_in is not None and self._rows_in[0]() is other:
            return self._rows_in[1]
        if self.keys is other.keys or (len(self) == len(other)
                                       and np.array_equal(self.words, other.words)):
            rows = np.arange(len(self), dtype=np.int32)  # nothing came or went
        else:
            rows = other.index.find_all(self.index)
        self._rows_in = (weakref.ref(other), rows)
        return rows

    def find(self, words: np.ndarray) -> np.ndarray:
        """The row of each key (as words), -1 where there is none. A few keys are looked for
        one by one: cheaper than sorting the table's keys for them (the index)."""
        if len(words) > 8 or "index" in self.__dict__:
            return self.index.find(words)
        out = np.full(len(words), -1, dtype=np.int32)
        mine = self.words
        for i, key in enumerate(words):
            rows = np.flatnonzero(mine[:, _PORTS_WORD] == key[_PORTS_WORD])  # far fewer to compare
            rows = rows[(mine[rows] == key).all(axis=1)]
            if len(rows):
                out[i] = rows[0]
        return out

    def row_of(self, end: Endpoint) -> int:
        """The row of an end, -1 if it has none."""
        return int(self.find(_words(np.array([key_record(end)], KEY)))[0])

    # ------------------------------------------------------------ rows as objects

    def connections(self, start: int = 0, stop: int | None = None) -> list[Connection]:
        stop = len(self) if stop is None else stop
        out = []
        rows = zip(self.keys[start:stop].tolist(), self.static[start:stop].tolist(),
                   self.counters[start:stop].tolist(), self.state[start:stop].tolist(),
                   self.age_s[start:stop].tolist(), self.in_sockhash[start:stop].tolist())
        for key, static, (msgs, nbytes, passed), state, age, held in rows:
            peer, _since, (pid, uid, gid, _), paired, _, active, _ = static
            out.append(Connection(
                end=_endpoint(key), peer=_endpoint(peer) if paired else None,
                state="draining" if state == NORMAL and held else STATES[state],
                msgs=msgs, bytes=nbytes, passed=passed, age_s=age, owner=Owner.of_ids(pid, uid, gid),
                in_sockhash=held, active=bool(active)))
        return out

    def connection(self, row: int) -> Connection:
        return self.connections(row, row + 1)[0]


class Connections(Sequence):
    """A table's rows as Connection objects, made as they are read and not kept."""

    CHUNK = 4096

    def __init__(self, table: Table):
        self._table = table

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._table.connection(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._table.connection(i)

    def __iter__(self) -> Iterator[Connection]:
        for start in range(0, len(self), self.CHUNK):
            yield from self._table.connections(start, start + self.CHUNK)

