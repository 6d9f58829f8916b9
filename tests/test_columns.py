"""The ends as columns (table.Table) against the same questions asked of Connection objects
one by one, the way the console answered them before it kept columns: pairs and their health,
rates between two reads, ends found by key, and the sockhash walked a slice at a
time."""

from __future__ import annotations

import ctypes as ct
import random
from dataclasses import replace
from ipaddress import IPv6Address

import numpy as np
import pytest

from bench.scripting import synthetic_table
from mdatui.core import reader, snapshot
from mdatui.core.backend import Attribution, Frame
from mdatui.core.ends import Connection, Endpoint, Owner
from mdatui.core.kernel import abi
from mdatui.core.pairing import HEALTH, PairTable, pair_rows_of
from mdatui.core.procs import ProcessInfo
from mdatui.core.snapshot import Snapshot
from mdatui.core.table import CONN, COUNTER_FIELDS, STATIC_FIELDS, Table, _hash, key_record


def mesh(n: int, seed: int, first_port: int = 10000, v6: bool = False) -> list[Connection]:
    """n connections: both ends paired, or a connecting end waiting, or an end whose peer entry
    is gone, or pairs that point elsewhere or left the sockhash; some on a pod's loopback. With
    v6, one in three over IPv6 (2001:2::/48, ::1 on a loopback)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        loop = i % 7 == 0
        netns = 4026532000 + i % 3 if loop else 0
        ip_a, ip_b = ("127.0.0.1", "127.0.0.1") if loop else (f"198.19.{i % 5}.{i % 250 + 1}",
                                                              f"198.19.9.{i % 11 + 1}")
        if v6 and i % 3 == 1:
            ip_a, ip_b = ("[::1]", "[::1]") if loop else (f"[{IPv6Address(f'2001:2:0:{i % 5}::{i % 250 + 1:x}')}]",
                                                          f"[2001:2:0:9::{i % 11 + 1:x}]")
        a = Endpoint(f"{ip_a}:{first_port + i}", f"{ip_b}:{80 + i % 3}", netns)
        b = Endpoint(f"{ip_b}:{80 + i % 3}", f"{ip_a}:{first_port + i}", netns)
        kind = rng.choice(["ok"] * 6 + ["pending", "one-sided", "stale-peer", "stale-hash", "normal"])
        uid = rng.choice([None, 0, 5])
        owner = Owner(rng.choice([None, 100, 200]), uid, uid)
        def end(me, peer, active, state="accelerated", held=True, owner=owner):
            return Connection(me, peer, state, rng.randrange(1000), rng.randrange(10**6), 0,
                              float(rng.randrange(1, 5000)), owner, held, active)
        if kind == "pending":
            out.append(end(a, None, True, "pending"))
        elif kind == "one-sided":
            out.append(end(a, b, True))
        elif kind == "stale-peer":
            out += [end(a, b, True), end(b, Endpoint("10.0.0.1:1", "10.0.0.2:2"), False)]
        else:
            state = "normal" if kind == "normal" else "accelerated"
            held = kind == "ok"  # an end on the normal path has left the sockhash
            out += [end(a, b, True, state, held), end(b, a, False, state, kind != "normal")]
    rng.shuffle(out)
    return out


def reference_pairs(conns: list[Connection]) -> set[tuple]:
    """What console.pairs() made of objects before the columns."""
    by_end = {c.end: c for c in conns}
    seen: set[Endpoint] = set()
    out = set()
    for c in sorted(conns, key=lambda c: not c.active):
        if c.end in seen:
            continue
        seen.add(c.end)
        peer = by_end.get(c.peer) if c.peer is not None else None
        if c.peer is None:
            health = "pending"
        elif peer is None:
            health = "one-sided"
        elif peer.peer == c.end:
            stopped = {"normal", "draining"} & {c.state, peer.state}
            held = c.in_sockhash and peer.in_sockhash
            health = "ok" if held and not stopped else "normal"
        else:
            health = "stale"
        if peer is not None and peer.peer == c.end:
            seen.add(peer.end)
        out.add((c.end, peer.end if peer else None, health))
    return out


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "dual-stack"])
def test_rows_are_the_connections_they_were_made_of(v6):
    conns = mesh(300, 1, v6=v6)
    table = Snapshot(taken_at=1.0, enabled=True, pin_dir="/x", connections=conns).table
    assert table.connections() == conns
    assert [table.row_of(c.end) for c in conns] == list(range(len(conns)))
    assert table.row_of(Endpoint("10.9.9.9:1", "10.9.9.9:2")) == -1


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "dual-stack"])
def test_pairs_and_their_health_are_what_objects_made_of_them(v6):
    conns = mesh(2000, 2, v6=v6)
    table = Table.of(conns)
    pairs = PairTable.of(table)
    found = {(table.connection(a).end, table.connection(b).end if b >= 0 else None, HEALTH[h])
             for a, b, h in zip(pairs.a.tolist(), pairs.b.tolist(), pairs.health.tolist())}
    assert found == reference_pairs(conns)
    assert {h for *_, h in found} == set(HEALTH)  # every health was exercised
    # One row's pair, found without pairing every row, is the same pair; an end that is b of
    # a stale pair and a of its own is shown with its own (as the console always did).
    pair_of = {}
    for k in range(len(pairs)):
        pair = (int(pairs.a[k]), int(pairs.b[k]), HEALTH[pairs.health[k]])
        pair_of[pair[0]] = pair
        if pair[1] >= 0:
            pair_of.setdefault(pair[1], pair)
    fresh = Table.of(conns)  # its peers not found yet: each row's are found for it alone
    for row in range(0, len(table), 7):
        assert pair_rows_of(fresh, row) == pair_of[row]
    assert "peer_row" not in fresh.__dict__


def test_accelerated_pairs_are_the_ok_pairs_and_one_end_on_the_stack_is_enough_for_normal():
    a, b = Endpoint("198.19.0.1:1000", "198.19.0.2:80"), Endpoint("198.19.0.2:80", "198.19.0.1:1000")
    owner = Owner(None, None, None)
    half = [Connection(a, b, "normal", 0, 0, 3, 1.0, owner, False, True),
            Connection(b, a, "accelerated", 5, 500, 0, 1.0, owner, True, False)]
    conns = mesh(2000, 4) + half
    snap = Snapshot(taken_at=1.0, enabled=True, pin_dir="/x", connections=conns)
    assert snap.pairs == sum(health == "ok" for *_, health in reference_pairs(conns))
    assert (a, b, "normal") in reference_pairs(conns)
    assert pair_rows_of(snap.table, snap.table.row_of(b))[2] == "normal"


def test_rates_follow_each_end_across_reads_that_add_and_drop_ends():
    before = mesh(500, 3)
    after = [Connection(c.end, c.peer, c.state, c.msgs + i % 5, c.bytes + 100 * (i % 3), c.passed,
                        c.age_s + 2, c.owner, c.in_sockhash, c.active)
             for i, c in enumerate(before) if i % 9]
    after += mesh(20, 4, first_port=20000)[:10]  # new ends count from zero
    random.Random(5).shuffle(after)
    prev = Snapshot(taken_at=10.0, enabled=True, pin_dir="/x", connections=before)
    cur = Snapshot(taken_at=12.0, enabled=True, pin_dir="/x", connections=after)
    _, msgs, nbytes = snapshot.rates(prev, cur)
    old = {c.end: c for c in before}
    for row, c in enumerate(after):
        p = old.get(c.end)
        assert msgs[row] == max(c.msgs - (p.msgs if p else 0), 0) / 2
        assert nbytes[row] == np.float32(max(c.bytes - (p.bytes if p else 0), 0) / 2)
    frame = Frame.next(Frame.next(None, prev, 0.0), cur, 2.0)
    assert frame.rate(after[3].end).bytes_per_s == float(nbytes[3])


def test_a_table_given_again_keeps_its_rates_and_the_next_read_counts_from_where_it_was_read():
    before = mesh(50, 8)
    after = [Connection(c.end, c.peer, c.state, c.msgs + 10, c.bytes + 1000, c.passed, c.age_s + 2,
                        c.owner, c.in_sockhash, c.active) for c in before]
    read = Snapshot(taken_at=10.0, enabled=True, pin_dir="/x", connections=before,
                    stats={"closed_msgs": 100})
    # A Reader holding to its CPU share gives the same table with newer counters of its own.
    again = Snapshot(taken_at=11.0, enabled=True, pin_dir="/x", table=read.table,
                     stats={"closed_msgs": 160})
    later = Snapshot(taken_at=12.0, enabled=True, pin_dir="/x", connections=after,
                     stats={"closed_msgs": 160})
    first = Frame.next(Frame.next(None, read, 0.0), again, 1.0)
    assert first.msgs_rate is None and first.read_in is read
    steady = Frame.next(first, later, 2.0)
    # Over the 2 s since the table was read, not the 1 s since the frame before.
    assert steady.msgs_rate.tolist() == [5.0] * len(after)
    assert steady.total.msgs_per_s == (60 + 10 * len(after)) / 2
    held = Frame.next(steady, replace(later, taken_at=13.0), 3.0)
    assert held.total == steady.total and held.msgs_rate is steady.msgs_rate
    assert held.read_in is later


def test_processes_given_by_end_are_found_by_row():
    conns = mesh(50, 6)
    table = Table.of(conns)
    info = ProcessInfo(100, "envoy", "root")
    attribution = Attribution.of(table, {conns[4].end: info})
    assert attribution.of_row(4) == info and attribution.get(conns[4].end) == info
    assert attribution.of_row(5) is None


class WalkedMap:
    """A map's keys in a fixed order, walked as bpfsys.Map.next_keys_into walks them."""

    def __init__(self, keys: list[abi.SockKey]):
        self.keys = keys
        self.calls = 0

    def next_keys_into(self, out: int, after: int, count: int) -> tuple[int, bool]:
        self.calls += 1
        start = 0
        if after:
            last = ct.string_at(after, ct.sizeof(abi.SockKey))
            start = next(i + 1 for i, k in enumerate(self.keys) if bytes(k) == last)
        chunk = self.keys[start:start + count]
        for i, key in enumerate(chunk):
            ct.memmove(out + i * ct.sizeof(key), ct.addressof(key), ct.sizeof(key))
        return len(chunk), start + len(chunk) >= len(self.keys)


def test_the_sockhash_walked_a_slice_per_read_says_which_ends_it_holds():
    conns = mesh(400, 7)
    table = Table.of(conns)
    now = table.taken_ns  # every end was made before the walks below began
    held_ends = [c.end for c in conns if c.in_sockhash]
    keys = [abi.SockKey.of(lip.tobytes(), rip.tobytes(), *rest)
            for lip, rip, *rest in map(key_record, held_ends)]
    members = reader.SockhashMembers(walk_slice=100)
    walked = WalkedMap(keys)
    members.walk(walked, now, capacity=1024)  # the first walk goes to the end at once
    assert walked.calls == 1 and members.count == len(keys)
    assert members.held(table).tolist() == [c.in_sockhash for c in conns]
    # The next walk begins once a period has passed, and takes a slice per read.
    members.walk(walked, now + 10**9, capacity=1024)
    assert walked.calls == 1
    keys.pop(0)  # an end leaves the sockhash
    reads = 0
    while members.count == len(keys) + 1:
        members.walk(walked, now + 31 * 10**9 + reads, capacity=1024)
        reads += 1
    assert reads == -(-len(keys) // 100) and members.count == len(keys)
    assert members.held(Table.of(conns)).tolist() == [
        c.in_sockhash and c.end != held_ends[0] for c in conns]


class BatchedMap:
    """sock_proxy_map's entries in a fixed order, read as bpfsys.Map.lookup_batch reads them."""

    def __init__(self, conns: list[Connection]):
        table = Table.of(conns)
        self.keys = table.keys
        self.values = np.zeros(len(conns), CONN)
        for part, fields in ((table.static, STATIC_FIELDS),
                             (table.counters, COUNTER_FIELDS)):
            for f in fields:
                self.values[f] = part[f]
        self.taken_ns = table.taken_ns

    def lookup_batch(self, keys: int, values: int, room: int, token: ct.c_uint64,
                     first: bool) -> tuple[int, bool]:
        start = 0 if first else token.value
        stop = min(start + room, len(self.keys))
        for out, records in ((keys, self.keys), (values, self.values)):
            part = np.ascontiguousarray(records[start:stop])
            ct.memmove(out, part.ctypes.data, part.nbytes)
        token.value = stop
        return stop - start, stop == len(self.keys)


def moved(conns: list[Connection], step: int) -> list[Connection]:
    return [replace(c, msgs=c.msgs + step * (i % 3), bytes=c.bytes + 10 * step)
            for i, c in enumerate(conns)]


def as_read(conns: list[Connection]) -> list[Connection]:
    """What a read of sock_proxy_map alone says of them (ages aside): every end is taken to
    be in the sockhash, so an end on the normal path reads as draining."""
    return [replace(c, age_s=0.0, in_sockhash=True,
                    state="draining" if c.state == "normal" else c.state) for c in conns]


def read_back(table: Table) -> list[Connection]:
    return as_read(table.connections())


@pytest.fixture
def small_batches(monkeypatch):
    """Reads in batches of 256 ends: a map of a thousand is read in a few."""
    monkeypatch.setattr(reader, "BATCH", 256)


def test_a_read_of_the_same_ends_shares_their_columns_and_only_the_counters_are_new(small_batches):
    conns = mesh(3 * reader.BATCH, 9)
    assert len(conns) > 3 * reader.BATCH
    ages_zero = as_read(conns)
    m = BatchedMap(ages_zero)
    first = reader.read_ends(m, len(conns), m.taken_ns)
    assert read_back(first) == ages_zero
    _ = first.peer_row, first.index  # worked out once
    later = moved(ages_zero, 1)
    second = reader.read_ends(BatchedMap(later), len(conns), m.taken_ns, earlier=first)
    assert read_back(second) == later
    assert second.keys is first.keys and second.static is first.static
    assert second.__dict__["peer_row"] is first.peer_row  # not worked out again
    assert snapshot.rates(Snapshot(taken_at=1.0, enabled=True, pin_dir="/x", table=first),
                          Snapshot(taken_at=2.0, enabled=True, pin_dir="/x", table=second)
                          )[1].tolist() == [float(i % 3) for i in range(len(conns))]


@pytest.mark.parametrize("change", ["state", "owner", "peer", "gone", "new", "fewer"])
def test_a_read_of_changed_ends_is_read_whole(change, small_batches):
    conns = as_read(mesh(3 * reader.BATCH, 10))
    first = reader.read_ends(BatchedMap(conns), len(conns), 0)
    later = moved(conns, 2)
    at = 2 * reader.BATCH + 5  # in the third batch: the first two were shared so far
    c = later[at]
    if change == "state":
        later[at] = replace(c, state="accelerated" if c.state == "draining" else "draining")
    elif change == "owner":
        later[at] = replace(c, owner=Owner(4242, 1, 1))
    elif change == "peer":
        later[at] = replace(c, peer=Endpoint("10.9.9.9:9", "10.9.9.8:8"), state="accelerated")
    elif change == "gone":
        del later[at]
    elif change == "new":
        later.insert(at, replace(c, end=Endpoint("10.1.1.1:1", "10.1.1.2:2")))
    else:
        del later[at:]
    second = reader.read_ends(BatchedMap(later), len(conns), 0, earlier=first)
    assert read_back(second) == later
    assert second.static is not first.static
    assert (second.peer_row == Table.of(later).peer_row).all()
    assert read_back(first) == conns  # the earlier table is as it was read


def test_frames_of_the_same_ends_take_the_earlier_pairs_and_of_changed_ends_pair_anew(small_batches):
    conns = as_read(mesh(3 * reader.BATCH, 11))
    changed = moved(conns, 1)
    ok = PairTable.of(Table.of(conns))
    at = int(ok.a[list(ok.health).index(HEALTH.index("ok"))])  # rows are in the map's order
    changed[at] = replace(changed[at], state="normal", in_sockhash=False)  # ok becomes "normal"
    tables = []
    for later in (conns, moved(conns, 1), changed):
        tables.append(reader.read_ends(BatchedMap(later), len(conns), 0,
                                         tables[-1] if tables else None))
    frames = []
    for i, table in enumerate(tables):
        snap = Snapshot(taken_at=float(i), enabled=True, pin_dir="/x", table=table)
        frames.append(Frame.next(frames[-1] if frames else None, snap, float(i)))
    first, same, other = frames
    assert same.pairs.a is first.pairs.a and same.pairs.table is same.snapshot.table
    assert other.pairs.a is not same.pairs.a
    for frame in frames:
        fresh = PairTable.of(frame.snapshot.table)
        assert (frame.pairs.health == fresh.health).all() and (frame.pairs.a == fresh.a).all()
    assert other.pairs.counts()["normal"] == same.pairs.counts()["normal"] + 1
    assert other.pairs.counts()["ok"] == same.pairs.counts()["ok"] - 1


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "dual-stack"])
def test_every_key_of_a_large_table_hashes_apart_and_finds_its_peer(v6):
    """KeyIndex finds a key by its hash: keys that share one would lose their peers and rates.
    IPv4 keys are mostly zero words with the addresses in high halves, which a weak mix folds
    together (990 keys gave 605 hashes once)."""
    table = synthetic_table(50_000)
    if v6:  # a third of the ends get an IPv6 address, on both sides of their connection
        keys, static = table.keys.copy(), table.static.copy()
        for column in (keys["local_ip"], keys["remote_ip"], static["peer"]["local_ip"],
                       static["peer"]["remote_ip"]):
            moved = column[:, 3] % np.uint32(3) == 0
            column[moved, 0] = np.frombuffer(bytes([0x20, 1, 0, 2]), np.uint32)[0]
            column[moved, 2] = 0
        table = Table(keys, static, table.counters, table.taken_ns)
    assert len(np.unique(_hash(table.words))) == len(np.unique(table.keys)) == len(table)
    paired = table.static["paired"] != 0
    assert (table.peer_row[paired] >= 0).all()
