"""The connections and pairs tables over thousands of rows. The page that the columns' arrays
pick (numpy sorts and filters) is the page that sorting and filtering the rows' cells one by one
picks, for every column both ways."""

from __future__ import annotations

import ipaddress
import itertools
import random
from dataclasses import replace

import numpy as np
import pytest

from mdatui.core import addrs, reader
from mdatui.core.backend import Frame
from mdatui.core.ends import Endpoint
from mdatui.core.procs import ProcessInfo
from mdatui.core.snapshot import Snapshot
from mdatui.ui.app import MdaConsole
from mdatui.ui.views import connections, pairs
from mdatui.ui.widgets import table_rows
from mdatui.ui.widgets.columns import Addresses, positions
from mdatui.ui.widgets.sortable_table import SortableTable

from ..test_columns import BatchedMap, as_read, mesh, moved
from .fake import FakeBackend, wait_frames

PAGE = 40  # smaller than the rows, so that choosing a page's contenders is exercised


def frames(n: int) -> Frame:
    conns = mesh(n, 11, v6=True)
    rng = random.Random(12)
    later = [type(c)(c.end, c.peer, c.state, c.msgs + rng.randrange(3), c.bytes + rng.randrange(3) * 500,
                     c.passed, c.age_s + 1, c.owner, c.in_sockhash, c.active) for c in conns]
    who = {100: ProcessInfo(100, "envoy --config a.yaml", "istio-proxy"),
           200: ProcessInfo(200, None, "root")}
    by_end = lambda cs: {c.end: who[c.owner.pid] for c in cs if c.owner.pid in who}  # noqa: E731
    first = Frame.next(None, Snapshot(10.0, True, "/x", connections=conns), 0.0, by_end(conns))
    return Frame.next(first, Snapshot(11.0, True, "/x", connections=later), 1.0, by_end(later))


def address(text: str) -> tuple[int, int]:
    """An endpoint's address in the keys' form (IPv4-mapped: after ::1, before 2001:2::) as a
    number, and its port."""
    ip, port = addrs.split_endpoint(text)
    return int.from_bytes(ip, "big"), port


def key_order(end) -> tuple:
    return (*address(end.local), *address(end.remote), end.netns % (1 << 32))


# What each column sorted by when the table sorted objects (None: after all values).
CONN_VALUES = {
    "local": lambda r: address(r.conn.end.local),
    "remote": lambda r: address(r.conn.end.remote),
    "netns": lambda r: r.conn.end.netns,
    "state": lambda r: r.conn.state,
    "pid": lambda r: r.conn.owner.pid,
    "command": lambda r: connections._command(r),
    "user": lambda r: connections._user(r),
    "msgs": lambda r: r.conn.msgs,
    "bytes": lambda r: r.conn.bytes,
    "rate": lambda r: r.rate.bytes_per_s,
    "age": lambda r: r.conn.age_s,
}
PAIR_VALUES = {
    "a": lambda r: address(r.pair.a.end.local),
    "b": lambda r: address(r.pair.b.end.local) if r.pair.b else None,
    "health": lambda r: pairs.HEALTH_ORDER[r.pair.health],
    "state": lambda r: r.pair.a.state,
    "ab_msgs": lambda r: r.pair.a.msgs,
    "ab_bytes": lambda r: r.pair.a.bytes,
    "ba_msgs": lambda r: pairs._b(r, "msgs"),
    "ba_bytes": lambda r: pairs._b(r, "bytes"),
    "rate": lambda r: r.rate.bytes_per_s,
    "age": lambda r: r.pair.a.age_s,
}


def reference(rows, columns, values, tiebreak, sort: str, reverse: bool, needle: str) -> list[str]:
    items = [rows.item(i) for i in range(len(rows))]
    if needle:
        items = [it for it in items if any(needle in c.render(it).plain.casefold()
                                           for c in columns if c.search is not None)]
    value = values[sort]
    items.sort(key=lambda it: ((value(it) is None, value(it) if value(it) is not None else 0),
                               tiebreak(it)), reverse=reverse)
    return items[:PAGE]


CASES = [("connections", connections.COLUMNS, connections.ConnRows, CONN_VALUES,
          lambda r: key_order(r.conn.end), lambda r: r.key),
         ("pairs", pairs.COLUMNS, pairs.PairRows, PAIR_VALUES,
          lambda r: key_order(r.pair.a.end), lambda r: r.pair.key)]


@pytest.mark.parametrize("ranked_past", [10**9, 0], ids=["by-address", "by-rank"])
@pytest.mark.parametrize("name, columns, make_rows, values, tiebreak, key", CASES,
                         ids=[c[0] for c in CASES])
def test_the_page_is_what_sorting_and_filtering_every_row_gives(monkeypatch, name, columns,
                                                                make_rows, values, tiebreak, key,
                                                                ranked_past):
    monkeypatch.setattr(table_rows, "MAX_ROWS", PAGE)
    monkeypatch.setattr(connections, "RANKED_PAST", ranked_past)  # how tied rows are ordered
    rows = make_rows(frames(1500))
    table = SortableTable(columns, key)
    for needle, column, reverse in itertools.product(("", "198.19.1", ":8", "ok", "envoy",
                                                      "2001:2:0:1", "::a]:8"),
                                                     [c.key for c in columns], (False, True)):
        table.filter_text, table.sort_column, table.sort_reverse = needle, column, reverse
        page = [key(rows.item(i)) for i in table._page(rows).tolist()]
        want = [key(it) for it in reference(rows, columns, values, tiebreak, column, reverse, needle)]
        assert page == want, (needle, column, reverse)


def test_rows_of_a_read_of_the_same_ends_take_over_their_columns_and_filter_what_is_read(
        monkeypatch):
    monkeypatch.setattr(reader, "BATCH", 128)
    conns = as_read(mesh(300, 13))
    gone = next(i for i, c in enumerate(conns) if c.end.local.startswith("198.19.1."))
    changed = conns[:gone] + conns[gone + 1:] + [replace(conns[gone], end=Endpoint(
        "198.19.7.7:7777", conns[gone].end.remote))]
    reads = []
    for i, later in enumerate((conns, moved(conns, 1), changed)):
        table = reader.read_ends(BatchedMap(later), 1024, 0, reads[-1].table if reads else None)
        reads.append(Snapshot(10.0 + i, True, "/x", table=table))
    frame = None
    conn_rows, pair_rows = [], []
    for snap in reads:
        frame = Frame.next(frame, snap, snap.taken_at)
        conn_rows.append(connections.ConnRows(frame, conn_rows[-1].leftover() if conn_rows else None))
        pair_rows.append(pairs.PairRows(frame, pair_rows[-1].leftover() if pair_rows else None))
        for needle in ("198.19.1.", "198.19.7.7:7777"):
            ends = [c.end for c in snap.table.connections()]
            assert conn_rows[-1].local.search(needle).tolist() == [needle in e.local for e in ends]
            a_ends = [snap.table.connection(int(a)).end for a in frame.pairs.a]
            assert pair_rows[-1].a_local.search(needle).tolist() == [needle in e.local for e in a_ends]
    first, same, other = conn_rows
    assert same.local is first.local and other.local is not same.local
    assert pair_rows[1].a_local is pair_rows[0].a_local
    assert pair_rows[2].a_local is not pair_rows[1].a_local


ADDRESSES = ["198.19.0.5", "10.0.0.10", "10.0.0.9", "127.0.0.1", "::1", "2001:2::5", "2001:2::1:5",
             "2001:2:0:1::80", "fd00::1", "::ffff:198.19.0.6", "ff02::1:ff00:5", "::"]


@pytest.mark.parametrize("family", ["ipv4", "both"])
def test_addresses_sort_as_numbers_and_find_what_their_text_holds(family):
    rng = random.Random(3)
    pool = [a for a in ADDRESSES if family == "both" or ":" not in a or a.startswith("::ffff:")]
    rows = [(rng.choice(pool), rng.choice([80, 8, 15006, 5, 443, 0])) for _ in range(500)]
    ips = np.array([addrs.words_of(addrs.pack(ip)) for ip, _ in rows], dtype=np.uint32)
    ports = np.array([port for _, port in rows], dtype=np.uint32)
    column = Addresses(ips, ports)
    texts = [addrs.endpoint(addrs.pack(ip), port) for ip, port in rows]
    by_number = sorted(range(len(rows)), key=lambda i: address(texts[i]))
    order = column.order
    assert [address(texts[i]) for i in np.argsort(order, kind="stable")] == [
        address(texts[i]) for i in by_number]
    assert len(set(order.tolist())) == len(set(texts))  # equal only where the text is
    for needle in ("198.19", "10.0.0.1", "0.9:", ".5:80", ":80", ":8", "80", "5", "::1", "[::1]:",
                   "2001:2", "2001:2::5]", "::5]:80", "]:15", "[fd00::1]:443", "::ffff", ":", "",
                   "1:5]:8", "0.0.0.10:0", "1:2:3", "[2001:2::1:5]:15006", "0:1::80]:8"):
        assert column.search(needle).tolist() == [needle in t for t in texts], needle


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("n", [1, 7, 201, 512, 513, 5000])
def test_positions_among_the_distinct_values_are_what_a_binary_search_finds(dtype, n):
    rng = np.random.default_rng(n)
    # Addresses as the kernel keeps them: 127.0.0.1 and 198.19.x.y share their last two bytes.
    ips = [int.from_bytes(ipaddress.ip_address(f"198.19.{i // 250}.{i % 250 + 1}").packed, "little")
           for i in range(n - 1)] + [int.from_bytes(bytes([127, 0, 0, 1]), "little")]
    distinct = np.unique(np.array(ips, dtype=dtype) if dtype == np.uint32
                         else rng.integers(0, 2**63, n, dtype=np.uint64))
    values = distinct[rng.integers(0, len(distinct), 20000)]
    assert np.array_equal(positions(distinct, values), np.searchsorted(distinct, values))


class ReadAsTheKernelDoes(FakeBackend):
    """The fake mesh with its ends read as from the map (reader.read_ends): from one read to
    the next the same ends, and the tables share their columns, until one end closes."""

    def __init__(self):
        super().__init__()
        self.table = None
        self.closed = 0

    def snapshot(self, fresh: bool = False) -> Snapshot:
        snap = super().snapshot(fresh)
        ends = as_read(list(snap.connections))[self.closed:]
        self.table = reader.read_ends(BatchedMap(ends), 1024, 0, self.table)
        return replace(snap, connections=[], table=self.table)


async def test_a_hidden_table_keeps_what_it_worked_out_while_the_ends_stay_the_same():
    backend = ReadAsTheKernelDoes()
    async with MdaConsole(backend, interval=3600).run_test(size=(100, 30)) as pilot:
        await wait_frames(pilot, 1)
        await pilot.press("2")
        table = pilot.app.screen.query_one("#conn-table", SortableTable)
        table.sort_by("local")              # works out the local addresses' order
        local = table.source.local
        await pilot.press("1")
        for n in (2, 3):                    # frames of the same ends, the tab hidden
            pilot.app.action_refresh_now()
            await wait_frames(pilot, n)
        await pilot.press("2")
        assert table.source.frame is pilot.app.frame and table.source.local is local
        assert table.row_keys[0].startswith("127.0.0.1:15001>")   # still by local address
        await pilot.press("1")
        backend.closed = 1                  # an end closes: what was worked out is let go
        pilot.app.action_refresh_now()
        await wait_frames(pilot, 4)
        view = pilot.app.screen.query_one("#connections-view")
        assert view._leftover is None
        await pilot.press("2")
        assert "local" not in table.source.__dict__ or table.source.local is not local
