"""Reading the pinned maps into a Snapshot, once (`read`) or again and again (`Reader`)."""

from __future__ import annotations

import ctypes as ct
import errno
import time
from collections.abc import Iterator

import numpy as np

from . import addrs, rules, service_status
from .kernel import abi, bpfsys
from .kernel.instance import Instance
from .snapshot import DumpState, ShortLived, Snapshot
from .table import CONN, COUNTERS, COUNTER_FIELDS, KEY, PENDING_ENTRY, STATIC, STATIC_FIELDS, Table, _hash, _words


def _ktime_now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _dump_state(ctl: abi.Control) -> DumpState:
    mask = bytes(ctl.dump_mask)
    ip = str(addrs.from_network(bytes(ctl.dump_ip), mask)) if any(mask) else None  # zeros: any
    return DumpState(bool(ctl.dump_on), ip, ctl.dump_port or None, ctl.snaplen)


BATCH = 8192  # entries per bpf() call when reading a map in parts
DEST, DEST_STAT = np.dtype(abi.Dest), np.dtype(abi.DestStat)


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
            service=(pid := service_status.running(inst.pin_dir)),
            service_usage=None if pid is None else service_status.usage(pid),
            short_lived=short_lived(inst),
            nodelay_streams=inst.nodelay_streams,
        )


def short_lived(inst: Instance) -> list[ShortLived]:
    """The destinations whose new connections stay on the stack now, fewest messages first."""
    dests, stats = read_entries(inst.maps["mda_dest_map"], DEST, DEST_STAT,
                                inst.map_capacity("mda_dest_map"))
    conns, msgs = stats["conns"].astype(np.int64), stats["msgs"].astype(np.int64)
    rows = np.flatnonzero((conns >= abi.SHORT_MIN) & (msgs < abi.SHORT_MSGS * conns))
    found = [ShortLived(addrs.endpoint(dests["ip"][i].tobytes(), int(dests["port"][i])),
                        int(dests["netns"][i]), msgs[i] / conns[i]) for i in rows.tolist()]
    return sorted(found, key=lambda s: (s.msgs_per_conn, s.destination))


def read(inst: Instance) -> Snapshot:
    """One snapshot, the sockhash walked whole."""
    return Reader(walk_slice=None).read(inst)

