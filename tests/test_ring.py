"""core.ring: the dump's kept messages and the hand-over from the capture thread."""

from __future__ import annotations

import gc
import threading
import time
from typing import NamedTuple

import pytest

from mdatui.core.ring import Handoff, Ring


def test_a_ring_keeps_the_newest_numbered_in_arrival_order_and_counts_the_rest():
    ring = Ring(4)
    ring.extend(["a", "b", "c"])
    assert (ring.first, ring.end, ring.dropped, list(ring.items())) == (0, 3, 0, ["a", "b", "c"])
    ring.extend(["d", "e", "f"])  # wraps: a and b are pushed out
    assert (ring.first, ring.end, ring.dropped) == (2, 6, 2)
    assert list(ring.items()) == ["c", "d", "e", "f"] and [ring[n] for n in range(2, 6)] == list(ring.items())
    with pytest.raises(IndexError):
        ring[1]
    ring.extend(list("ghijkl"))  # more than it holds at once: the first two never land
    assert (ring.first, ring.end, ring.dropped, list(ring.items())) == (8, 12, 8, list("ijkl"))


def test_a_held_ring_drops_arrivals_that_find_no_room_and_keeps_what_it_has():
    ring = Ring(4)
    ring.extend(["a", "b"])
    ring.extend(["c", "d", "e"], hold=True)
    assert (ring.first, ring.end, ring.dropped, list(ring.items())) == (0, 4, 1, list("abcd"))
    ring.extend(["f"])  # let go: the newest push the oldest out again
    assert list(ring.items()) == list("bcdf") and ring.dropped == 2


def test_clearing_forgets_the_messages_and_numbers_go_on():
    ring = Ring(3)
    ring.extend(["a", "b"])
    ring.clear()
    assert len(ring) == 0 and list(ring.items()) == []
    ring.extend(["c"])
    assert (ring.first, ring[2]) == (2, "c")


def test_a_ring_costs_the_same_per_message_when_full():
    """The DataTable it replaced rebuilt its whole order for each message it let go."""
    def cost(capacity: int) -> float:
        ring = Ring(capacity)
        batch = list(range(1000))
        for _ in range(capacity // 1000):
            ring.extend(batch)          # full before the timing
        start = time.perf_counter()
        for _ in range(200):
            ring.extend(batch)
        return time.perf_counter() - start
    assert cost(1_000_000) < 5 * cost(10_000)


def test_the_handoff_is_bounded_and_asks_for_one_wakeup_at_a_time():
    box: Handoff[int] = Handoff(5)
    assert not box.claim_wakeup()           # nothing waits
    box.put([1, 2, 3])
    assert box.claim_wakeup() and not box.claim_wakeup()
    box.put([4, 5, 6, 7])                   # the taker is slow: the oldest two go
    assert box.take() == [3, 4, 5, 6, 7] and box.dropped == 2
    assert not box.claim_wakeup()
    box.put([8])
    assert box.claim_wakeup()               # taken since the last: wake it again


def test_the_handoff_loses_nothing_between_threads_within_its_bound():
    box: Handoff[int] = Handoff(1_000_000)
    got: list[int] = []
    done = threading.Event()

    def taker() -> None:
        while not done.is_set() or box.claim_wakeup():
            got.extend(box.take())
            time.sleep(0.001)
        got.extend(box.take())
    t = threading.Thread(target=taker)
    t.start()
    for start in range(0, 100_000, 100):
        box.put(range(start, start + 100))
    done.set()
    t.join(10)
    assert got == list(range(100_000)) and box.dropped == 0


def test_messages_are_kept_as_given_and_made_when_read():
    class Message(NamedTuple):
        src: str
        data: bytes

    ring = Ring(3, lambda raw: Message(*raw))
    ring.extend([("a", b"1"), ("b", b"2")])
    gc.collect()
    assert not any(gc.is_tracked(slot) for slot in ring._slots[:2])  # why they stay plain
    assert ring[1] == Message("b", b"2") and type(ring[1]) is Message
    assert list(ring.items()) == [Message("a", b"1"), Message("b", b"2")]
