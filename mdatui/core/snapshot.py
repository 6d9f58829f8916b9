"""What the accelerator looks like at one instant, read from its pinned maps.

Both the CLI (`query`) and the console read these objects; rates come from two of them.

The ends are kept as columns, one numpy array per field (`Table`): the console sorts, filters and
joins a few hundred thousand of them every second, which an object per end could do neither in
time nor in memory. `Snapshot.connections` makes Connection objects from the rows as they are
read, for the CLI, the tests and whatever shows a handful of rows.
"""

from __future__ import annotations

import ctypes as ct
import errno
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import abi, bpfsys, rules, service
from .instance import Instance
from .pairing import PairTable

KEY = np.dtype(abi.SockKey)
CONN = np.dtype(abi.Conn)
PENDING_ENTRY = np.dtype(abi.Pending)


def _packed(fields: Sequence[str]) -> np.dtype:
    return np.dtype([(f, CONN.fields[f][0]) for f in fields])


# A Table keeps what an end's CONN record says in two parts: what stays while the end lives
# (STATIC; pad makes a record 64 bytes, whole words) and the counters its sends move.
STATIC_FIELDS = ("peer", "since_ns", "owner", "paired", "tainted", "active")
COUNTER_FIELDS = ("msgs", "bytes", "passed")
STATIC = np.dtype(_packed(STATIC_FIELDS).descr + [("pad", "<u4")])
COUNTERS = _packed(COUNTER_FIELDS)

# Row states as small integers; in this order they sort as their names do.
STATES = ("accelerated", "normal", "pending")
ACCELERATED, NORMAL, PENDING = range(len(STATES))


@dataclass(frozen=True)
class Endpoint:
    """One end of a TCP connection as that end sees it; netns is 0 unless an address is loopback."""

    local: str
    remote: str
    netns: int = 0

    @classmethod
    def of(cls, key: abi.SockKey) -> "Endpoint":
        return cls(key.local, key.remote, key.netns)


@dataclass(frozen=True)
class Owner:
    pid: int | None
    uid: int | None
    gid: int | None

    @classmethod
    def of(cls, o: abi.Owner) -> "Owner":
        return cls.of_ids(o.pid, o.uid, o.gid)

    @classmethod
    def of_ids(cls, pid: int, uid: int, gid: int) -> "Owner":
        def known(v: int) -> int | None:
            return None if v == abi.UNKNOWN_ID else v
        return cls(known(pid), known(uid), known(gid))


@dataclass(slots=True)
class Connection:
    """An end in sock_proxy_map: its peer and what its sends did."""

    end: Endpoint
    peer: Endpoint | None       # None while the connecting end waits for its peer
    state: str                  # "accelerated", "pending", "draining" (stopped redirecting, still
                                # in the sockhash until its reader has taken all), "normal" (TCP)
    msgs: int
    bytes: int
    passed: int
    age_s: float
    owner: Owner
    in_sockhash: bool
    active: bool = False        # True for the end that called connect()

    def to_json(self) -> dict:
        return {
            "local": self.end.local,
            "remote": self.end.remote,
            "netns": self.end.netns,
            "peer": {"local": self.peer.local, "remote": self.peer.remote} if self.peer else None,
            "state": self.state,
            "role": "connecting" if self.active else "accepting",
            "msgs": self.msgs,
            "bytes": self.bytes,
            "passed": self.passed,
            "age_s": round(self.age_s, 3),
            "owner": {"pid": self.owner.pid, "uid": self.owner.uid, "gid": self.owner.gid},
        }


# ---------------------------------------------------------------- the ends as columns

def _words(records: np.ndarray, at: int = 0) -> np.ndarray:
    """The key at byte offset `at` of each record (KEY records, or STATIC ones for the peer) as
    three 64-bit words, to compare and hash keys whole: a view, nothing is copied."""
    records = np.ascontiguousarray(records)
    words = records.view(np.uint64).reshape(len(records), records.dtype.itemsize // 8)
    return words[:, at // 8:at // 8 + 3]


_MIX = tuple(np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9))


def _hash(words: np.ndarray) -> np.ndarray:
    """64 bits of each key; equal hashes are checked word by word where it matters."""
    h = words[:, 0] * _MIX[0]
    h = (h ^ words[:, 1]) * _MIX[1]
    h = (h ^ words[:, 2]) * _MIX[2]
    return h ^ (h >> np.uint64(32))


class KeyIndex:
    """Finds keys among a set of keys by a sorted hash of each: a few hundred thousand keys are
    found in a few tens of milliseconds. Two different keys of one set with one hash (about 1
    in 10^9 for 200,000 keys) would make one of them unfindable: a rate counted from zero.

    Keys are handled as three columns of words: numpy gathers single columns several times
    faster than rows of a two-dimensional array."""

    def __init__(self, words: np.ndarray):
        self.words = words
        self._columns = tuple(words[:, i] for i in range(3))
        hashes = _hash(words)
        self._order = np.argsort(hashes).astype(np.int32)  # rows fit: a map holds < 2^31 keys
        self._sorted = hashes[self._order]

    def __len__(self) -> int:
        return len(self.words)

    def find(self, words: np.ndarray) -> np.ndarray:
        """The position of each of `words` in this set, -1 where it is not in it."""
        hashes = _hash(words)
        columns = [words[:, i] for i in range(3)]
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


def _addr(ip_be: int, port: int) -> str:
    return f"{abi.ip_str(ip_be)}:{port}"


def _endpoint(key: tuple) -> Endpoint:
    local_ip, remote_ip, local_port, remote_port, netns = key
    return Endpoint(_addr(local_ip, local_port), _addr(remote_ip, remote_port), netns)


def key_record(end: Endpoint) -> tuple:
    """An Endpoint back to the fields of its key."""
    (lip, _, lport), (rip, _, rport) = end.local.rpartition(":"), end.remote.rpartition(":")
    return (abi.ip_be(lip), abi.ip_be(rip), int(lport), int(rport), end.netns)


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
        for i, (first, second, third) in enumerate(words.tolist()):
            rows = np.flatnonzero(mine[:, 0] == first)  # one column first: far fewer to compare
            rows = rows[(mine[rows, 1] == second) & (mine[rows, 2] == third)]
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


# ---------------------------------------------------------------- the snapshot

@dataclass(frozen=True)
class DumpState:
    on: bool
    ip: str | None      # CIDR, or None for any
    port: int | None
    snaplen: int


@dataclass
class Snapshot:
    """Give either connections (objects) or table (columns); the other is made from it."""

    taken_at: float                       # time.monotonic()
    enabled: bool
    pin_dir: str
    cgroup: str = ""
    config: str = ""
    enabled_at: int = 0                   # unix seconds
    programs: dict[str, int] = field(default_factory=dict)
    maps: dict[str, dict[str, int]] = field(default_factory=dict)
    connections: Sequence[Connection] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    dump: DumpState | None = None
    active_rules: list[rules.Rule] = field(default_factory=list)  # the live set, read back
    table: Table | None = field(default=None, repr=False, compare=False)
    ends_every_s: float = 0.0             # the ends are read at most this often (Reader)
    service: int | None = None            # pid of `mdatui serve`, None when it does not run

    def __post_init__(self) -> None:
        if self.table is None:
            self.table = Table.of(self.connections)
        elif not self.connections:
            self.connections = Connections(self.table)

    @cached_property
    def redirected_msgs(self) -> int:
        return self.stats.get("closed_msgs", 0) + int(self.table.msgs.sum())

    @cached_property
    def redirected_bytes(self) -> int:
        return self.stats.get("closed_bytes", 0) + int(self.table.bytes.sum())

    @property
    def rules_active(self) -> int:
        return len(self.active_rules)

    @cached_property
    def pairing(self) -> PairTable:
        """Kept here, not on the table: a table holding its pairs would be a reference cycle,
        and tables are large."""
        return PairTable.of(self.table)

    def pair_as(self, earlier: "Snapshot") -> None:
        """Take the pairs earlier worked out, if its table holds the same ends (Table.same_ends):
        pairing 200,000 ends takes tens of ms."""
        if ("pairing" not in self.__dict__ and "pairing" in earlier.__dict__
                and self.table.same_ends(earlier.table)):
            self.__dict__["pairing"] = earlier.pairing.of_same_ends(self.table)

    @cached_property
    def pairs(self) -> int:
        """Connections whose two ends redirect to each other (pairing's "ok")."""
        return self.pairing.accelerated

    def to_json(self, connections: bool = False) -> dict:
        out = {
            "enabled": self.enabled,
            "pin_dir": self.pin_dir,
            "cgroup": self.cgroup,
        }
        if not self.enabled:
            return out
        out.update(
            config=self.config,
            enabled_at=self.enabled_at,
            programs=self.programs,
            maps=self.maps,
            stats=self.stats,
            dump={"on": self.dump.on, "ip": self.dump.ip, "port": self.dump.port,
                  "snaplen": self.dump.snaplen} if self.dump else None,
            rules_active=self.rules_active,
            service={"running": self.service is not None, "pid": self.service},
            totals={"redirected_msgs": self.redirected_msgs,
                    "redirected_bytes": self.redirected_bytes,
                    "pairs": self.pairs},
        )
        if connections:
            out["connections"] = [c.to_json() for c in self.connections]
        return out


# ---------------------------------------------------------------- reading the maps

def _ktime_now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _dump_state(ctl: abi.Control) -> DumpState:
    ip = None
    if ctl.dump_mask:
        prefix = bin(abi.ip_be("255.255.255.255") & ctl.dump_mask).count("1")
        ip = f"{abi.ip_str(ctl.dump_ip)}/{prefix}"
    return DumpState(bool(ctl.dump_on), ip, ctl.dump_port or None, ctl.snaplen)


BATCH = 8192  # entries per bpf() call when reading a map in parts


def _batches(m: bpfsys.Map, key_dtype: np.dtype,
             value_dtype: np.dtype) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every entry of a hash map, BATCH at a time, as record arrays that the next batch
    overwrites. Entries that change meanwhile are read as they are found."""
    keys, values = np.empty(BATCH, key_dtype), np.empty(BATCH, value_dtype)
    token = ct.c_uint64()
    first = True
    while True:
        try:
            got, done = m.lookup_batch(keys.ctypes.data, values.ctypes.data, BATCH, token, first)
        except bpfsys.BpfError as e:
            if first and e.errno in (errno.EINVAL, bpfsys.ENOTSUPP, errno.EOPNOTSUPP):
                items = list(m.items())  # a kernel without batch lookups: one call per key
                yield (np.array([bytes(k) for k, _ in items], dtype=f"V{key_dtype.itemsize}").view(key_dtype),
                       np.array([bytes(v) for _, v in items], dtype=f"V{value_dtype.itemsize}").view(value_dtype))
                return
            raise
        first = False
        yield keys[:got], values[:got]
        if done:
            return


def _room(a: np.ndarray, n: int, more: int) -> np.ndarray:
    """a, or a copy of its first n records with room for `more` after them."""
    if n + more <= len(a):
        return a
    grown = np.empty(max(2 * len(a), n + more), a.dtype)
    grown[:n] = a[:n]
    return grown


def read_entries(m: bpfsys.Map, key_dtype: np.dtype, value_dtype: np.dtype,
                 room: int) -> tuple[np.ndarray, np.ndarray]:
    """Every entry of a hash map as two record arrays, with room (its capacity) allocated
    ahead: pages never written to are never made resident, so room costs address space only."""
    keys, values = np.empty(room, key_dtype), np.empty(room, value_dtype)
    n = 0
    for k, v in _batches(m, key_dtype, value_dtype):
        keys, values = _room(keys, n, len(k)), _room(values, n, len(k))
        keys[n:n + len(k)], values[n:n + len(k)] = k, v
        n += len(k)
    return keys[:n], values[:n]


def _same_records(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) == len(b) and np.array_equal(a.view(np.uint64), b.view(np.uint64))


def read_ends(m: bpfsys.Map, room: int, taken_ns: int, earlier: Table | None = None) -> Table:
    """sock_proxy_map as a Table. Ends mostly live for many reads, and a hash map that nothing
    entered or left is walked in the same order: while the ends read are earlier's, with the
    same peers, owners and states, the new table shares earlier's keys and static arrays and
    only its counters are new. At 200,000 ends a read then makes 5 MB resident instead of 24,
    and the key index, the peers' rows and the pairs need not be worked out again."""
    counters = np.empty(room, COUNTERS)
    part = np.zeros(BATCH, STATIC)  # zeros: pad stays 0, so records compare word by word
    shared = earlier is not None    # every end so far is earlier's, at its row
    keys = static = None
    if not shared:
        keys, static = np.empty(room, KEY), np.empty(room, STATIC)
    n = 0
    for batch_keys, values in _batches(m, KEY, CONN):
        got = len(batch_keys)
        counters = _room(counters, n, got)
        for f in COUNTER_FIELDS:
            counters[f][n:n + got] = values[f]
        static_part = part[:got] if got <= BATCH else np.zeros(got, STATIC)
        for f in STATIC_FIELDS:
            static_part[f] = values[f]
        if shared and not (_same_records(batch_keys, earlier.keys[n:n + got])
                           and _same_records(static_part, earlier.static[n:n + got])):
            shared = False
            keys, static = np.empty(max(room, n), KEY), np.empty(max(room, n), STATIC)
            keys[:n], static[:n] = earlier.keys[:n], earlier.static[:n]
        if not shared:
            keys, static = _room(keys, n, got), _room(static, n, got)
            keys[n:n + got], static[n:n + got] = batch_keys, static_part
        n += got
    if shared:
        if n == len(earlier):
            return Table(earlier.keys, earlier.static, counters[:n], taken_ns, earlier=earlier)
        keys, static = earlier.keys, earlier.static  # fewer ends, the first ones earlier's
    return Table(keys[:n], static[:n], counters[:n], taken_ns)


class SockhashMembers:
    """Which ends the sockhash (sock_ops_map) holds.

    The sockhash has no batch lookup, and no lookup from user space at all with our int values:
    it can only be walked, one bpf() call per key (0.4 s for 200,000 keys). A reader that runs
    once walks it whole. A console reading every second walks `walk_slice` keys per read instead
    and starts a walk at most every `period_s`; in between an end keeps what the last complete
    walk said of it, and an end made after that walk began counts as held (an end enters the
    sockhash before sock_proxy_map). So an end that leaves the sockhash but not sock_proxy_map,
    which only a fault does, is shown within about period_s plus a walk.
    """

    def __init__(self, walk_slice: int | None = None, period_s: float = 30.0):
        self._slice = walk_slice
        self._period_ns = int(period_s * 1e9)
        self._buf = np.empty(0, KEY)
        self._walked = 0                    # keys of the walk under way so far
        self._walk_began: int | None = None  # CLOCK_MONOTONIC ns; None: no walk under way
        # Hashes of the keys the last complete walk found, sorted. Two keys with one hash
        # (about 1 in 10^9 for 200,000 keys) would show an end gone from the sockhash as held.
        self._members: np.ndarray | None = None
        self._members_since = 0             # when the walk that found them began
        self._last: tuple[Table, np.ndarray, np.ndarray] | None = None
        self.count = 0                      # keys the last complete walk found

    def walk(self, m: bpfsys.Map, now_ns: int, capacity: int) -> None:
        """Go on with the walk under way, or begin one when the last is old enough."""
        if self._walk_began is None:
            if self._members is not None and now_ns - self._members_since < self._period_ns:
                return
            self._walk_began, self._walked = now_ns, 0
        if len(self._buf) < capacity:
            self._buf = np.empty(capacity, KEY)  # pages never written to cost nothing
        room = capacity - self._walked
        step = min(room, self._slice) if self._members is not None and self._slice else room
        base, size = self._buf.ctypes.data, KEY.itemsize
        after = base + (self._walked - 1) * size if self._walked else 0
        got, done = m.next_keys_into(base + self._walked * size, after, step)
        self._walked += got
        if done:
            self._members = np.sort(_hash(_words(self._buf[:self._walked])))
            self._members_since, self._walk_began = self._walk_began, None
            self.count = self._walked
            self._buf = np.empty(0, KEY)  # the hashes are all it needs until the next walk
        elif self._walked >= capacity:
            self._walk_began = None  # it restarted (its last key deleted) until full: anew

    def held(self, table: Table) -> np.ndarray:
        """in_sockhash for each row of table (the newest read)."""
        if self._members is None:
            return np.ones(len(table), dtype=bool)
        last = self._last
        if last is not None and last[2] is self._members:
            rows = table.rows_in(last[0])
            held = np.where(rows >= 0, last[1][rows.clip(min=0)] if len(last[1]) else True, True)
        else:
            held = table.index.among(self._members) | (table.since_ns >= self._members_since)
        self._last = (table, held, self._members)
        return held


class Reader:
    """Reads the maps again and again: keeps what makes the next read cheaper (the sockhash
    walk, how many ends there were). walk_slice=None walks the sockhash whole every read.

    With a cpu_share, reading the ends (sock_proxy_map and the sockhash) is held to that share
    of one CPU: the kernel walks a hash map at some 300 ns an entry (60 ms for 200,000 ends,
    whether by batch or by bpf_iter), so past some 100,000 ends a console refreshing every
    second reads them every second refresh, and the refreshes in between give the last table
    again (Snapshot.ends_every_s says how often they are read). Settings, counters and the
    dump state are read on every refresh all the same.
    """

    def __init__(self, walk_slice: int | None = 4096, cpu_share: float | None = None):
        self._sockhash = SockhashMembers(walk_slice)
        self._cpu_share = cpu_share
        self._table: Table | None = None
        self._every_s = 0.0        # the last read's cost over cpu_share
        self._next_ns = 0          # CLOCK_MONOTONIC time from which the ends are read again

    def _ends(self, inst: Instance, taken_ns: int, capacity: dict[str, int], fresh: bool) -> Table:
        if not fresh and self._table is not None and self._cpu_share and taken_ns < self._next_ns:
            return self._table
        cpu = time.thread_time()
        table = read_ends(inst.maps["sock_proxy_map"], capacity["sock_proxy_map"], taken_ns,
                          self._table)
        self._sockhash.walk(inst.maps["sock_ops_map"], taken_ns, capacity["sock_ops_map"])
        table.in_sockhash = self._sockhash.held(table)
        if self._cpu_share and self._table is not None:  # the first read walks the sockhash whole
            self._every_s = (time.thread_time() - cpu) / self._cpu_share
            self._next_ns = taken_ns + int(self._every_s * 1e9)
        self._table = table
        return table

    def read(self, inst: Instance, fresh: bool = False) -> Snapshot:
        """One pass over the maps. Entries that change meanwhile are read as they are found.
        fresh: read the ends whatever the CPU share says (someone asked for it)."""
        taken_ns = _ktime_now_ns()
        names = ("sock_ops_map", "sock_proxy_map", "sock_helper_map")
        capacity = {n: inst.map_capacity(n) for n in names}
        table = self._ends(inst, taken_ns, capacity, fresh)
        helper_keys, _ = read_entries(inst.maps["sock_helper_map"], KEY, PENDING_ENTRY,
                                      capacity["sock_helper_map"])
        counts = {"sock_ops_map": self._sockhash.count, "sock_proxy_map": len(table),
                  "sock_helper_map": len(helper_keys)}
        meta = inst.meta
        ruleset = inst.active_rules()
        return Snapshot(
            taken_at=taken_ns / 1e9,
            enabled=True,
            pin_dir=inst.pin_dir,
            cgroup=meta.cgroup.decode(),
            config=meta.config.decode(),
            enabled_at=meta.enabled_at,
            programs=inst.program_ids(),
            maps={n: {"entries": counts[n], "capacity": capacity[n]} for n in names},
            table=table,
            stats=inst.stats(),
            dump=_dump_state(inst.control()),
            active_rules=rules.from_ruleset(ruleset) if ruleset else [],
            ends_every_s=self._every_s,
            service=service.running(inst.pin_dir),
        )


def read(inst: Instance) -> Snapshot:
    """One snapshot, the sockhash walked whole."""
    return Reader(walk_slice=None).read(inst)


def disabled(pin_dir: str) -> Snapshot:
    return Snapshot(taken_at=time.monotonic(), enabled=False, pin_dir=pin_dir)


@dataclass(frozen=True)
class Rates:
    msgs_per_s: float
    bytes_per_s: float


def rates(prev: Snapshot, cur: Snapshot) -> tuple[Rates, np.ndarray, np.ndarray]:
    """Totals, and msgs/s and bytes/s of each row of cur.table; ends new in cur count from zero."""
    n = len(cur.table)
    dt = cur.taken_at - prev.taken_at
    if dt <= 0:
        return Rates(0.0, 0.0), np.zeros(n, np.float32), np.zeros(n, np.float32)
    rows = cur.table.rows_in(prev.table)
    per = []
    for column in ("msgs", "bytes"):
        now = cur.table.counters[column]
        before = prev.table.counters[column][rows.clip(min=0)] if len(prev.table) else 0
        before = np.where(rows >= 0, before, 0)
        # Counters only grow while an end lives; `where` keeps u64 from wrapping all the same.
        per.append((np.where(now > before, now - before, 0) / dt).astype(np.float32))
    total = Rates(max(cur.redirected_msgs - prev.redirected_msgs, 0) / dt,
                  max(cur.redirected_bytes - prev.redirected_bytes, 0) / dt)
    return total, per[0], per[1]
