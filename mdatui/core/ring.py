"""Messages kept for a reader that cannot keep everything: a fixed-size ring, and the bounded
hand-over from the thread that reads the perf rings to the thread that shows them.

A capture can bring 50,000 messages a second for as long as it runs; whatever the rate, keeping
one costs the same (no list is shifted), memory stays bounded, and what could not be kept is
counted, so that a reader can say how much it does not show.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Ring(Generic[T]):
    """The newest `capacity` messages, numbered in arrival order from 0 (a message keeps its
    number while kept). Holding (a reader scrolling back) keeps the oldest instead: arrivals
    that find the ring full are dropped rather than overwrite what is being read.

    Messages are kept as given and made into what readers get by `make` (e.g. decoded) when
    read."""

    def __init__(self, capacity: int, make: Callable[[tuple], T] | None = None):
        if capacity < 1:
            raise ValueError(f"a ring keeps at least one message, not {capacity}")
        self.capacity = capacity
        self._make = make
        self._slots: list = [None] * capacity
        self.first = 0     # number of the oldest message kept
        self.end = 0       # number the next message gets
        self.dropped = 0   # messages not kept: overwritten, or refused while held

    def __len__(self) -> int:
        return self.end - self.first

    def __getitem__(self, seq: int) -> T:
        if not self.first <= seq < self.end:
            raise IndexError(f"message {seq} is not kept (kept: {self.first}-{self.end - 1})")
        slot = self._slots[seq % self.capacity]
        return self._make(slot) if self._make else slot

    def extend(self, items: Sequence[T], hold: bool = False) -> None:
        cap, n = self.capacity, len(items)
        if hold:
            room = cap - len(self)
            if n > room:
                self.dropped += n - room
                items, n = items[:room], room
        elif n > cap:  # the last of them push out all kept and the first of them
            self.dropped += len(self) + n - cap
            self.end += n - cap
            self.first = self.end
            items, n = items[n - cap:], cap
        start = self.end % cap
        head = min(n, cap - start)
        self._slots[start:start + head] = items[:head]
        self._slots[:n - head] = items[head:]
        self.end += n
        over = len(self) - cap
        if over > 0:
            self.first += over
            self.dropped += over

    def items(self) -> Iterator[T]:
        """The messages kept now, oldest first, each made only when reached: a reader going
        through 100,000 (a pcap save) holds one made message at a time."""
        cap = self.capacity
        start, stop = self.first % cap, self.end % cap
        if len(self) == 0:
            return iter(())
        kept = self._slots[start:stop] if start < stop else self._slots[start:] + self._slots[:stop]
        return map(self._make, kept) if self._make else iter(kept)

    def clear(self) -> None:
        """Forget the kept messages (numbers go on from where they were; dropped stays). Their
        slots are let go as new messages take them: freeing 100,000 at once costs the UI thread
        12 ms, and a ring may hold what a full one holds anyway."""
        self.first = self.end


class Handoff(Generic[T]):
    """Messages one thread puts and another takes, at most `limit` waiting: when the taker falls
    behind, the oldest waiting are dropped (counted), so its lag costs no unbounded memory.
    At most one wake-up is outstanding: the putter is told to send one only when the taker has
    taken everything since the last."""

    def __init__(self, limit: int):
        self._lock = threading.Lock()
        self._waiting: deque[T] = deque(maxlen=limit)
        self._limit = limit
        self._wake_sent = False
        self.dropped = 0

    def put(self, items: Sequence[T]) -> None:
        with self._lock:
            self.dropped += max(0, len(self._waiting) + len(items) - self._limit)
            self._waiting.extend(items)

    def claim_wakeup(self) -> bool:
        """Whether the putter should wake the taker now: something waits and no wake-up it
        sent is still untaken."""
        with self._lock:
            if self._waiting and not self._wake_sent:
                self._wake_sent = True
                return True
            return False

    def take(self) -> list[T]:
        with self._lock:
            items = list(self._waiting)
            self._waiting.clear()
            self._wake_sent = False
            return items
