"""Take ends that stopped redirecting out of the sockhash once nothing redirected is left unread.

A socket in the sockhash is served by tcp_bpf, which misbehaves where plain TCP would not (a
blocked recv() that wakes without redirected data returns EAGAIN) and costs more per message; a
socket that has left is plain TCP again. Leaving frees the unread redirected bytes, so an end
leaves only when (1) its peer no longer redirects into it: the peer stopped, or was asked to
and any message it sends now carries that out before redirecting, (2) GRACE_NS has passed since,
for a redirect decided just before the stop to be queued, and (3) FIONREAD says its reader has
taken everything. `mdatui serve` runs this; `disable` too, until every end has left.
"""

from __future__ import annotations

import ctypes as ct
import time
from dataclasses import dataclass

import numpy as np

from .kernel import abi
from .kernel.instance import Instance
from .reader import BATCH, read_entries
from .sockets import SocketFinder
from .table import KEY

GRACE_NS = 20_000_000
UNHELD_NS = 1_000_000_000
BACKOFF_MIN_NS, BACKOFF_MAX_NS = 5_000_000, 200_000_000
# FIONREAD questions a sweep asks at most (some ten system calls each): with 200,000 ends to
# drain (disable at scale) a sweep stays near a tenth of a second and the rest wait their turn.
ASKS_PER_SWEEP = 2000
LEAVE, WAIT, GONE = object(), object(), object()
DRAIN = np.dtype(abi.Drain)
PERIOD_BUSY = 0.005  # between sweeps while ends wait to leave
PERIOD_IDLE = 0.05
RECHECK = 1.0  # seconds an empty sock_drain_map is trusted to stay so while LISTED stays put


@dataclass
class Sweep:
    waiting: int = 0  # ends still in sock_drain_map after this sweep
    left: int = 0     # ends taken out of the sockhash by this sweep (not already out)


class Reaper:
    def __init__(self, inst: Instance, all_asked: bool = False):
        """all_asked: every end was asked to stop (disable), so a peer with no entry in
        sock_drain_map has left the sockhash, also when another process took it out."""
        self.inst = inst
        self.all_asked = all_asked
        self.finder = SocketFinder(inst.cgroup)
        # Ends are known by their keys' bytes here.
        self._unheld: dict[bytes, int] = {}  # ends no process held, since when
        self._retry: dict[bytes, tuple[int, int]] = {}  # when to ask FIONREAD again, backoff
        self.left = 0  # ends this reaper took out of the sockhash
        # Ends listed to stop in some sweep. A peer gone from the list has left the sockhash
        # or closed, so it cannot redirect any more, even if it never said it stopped. Kept
        # only while an end that waits has it as its peer.
        self._seen: set[bytes] = set()
        self._asks = 0  # FIONREAD questions asked in the current sweep
        self._listed, self._recheck_at = -1, 0.0  # see _nobody_listed

    def sweep(self) -> Sweep:
        """One pass over sock_drain_map, read in batches: each end that may leave and whose
        reader has taken everything leaves. A pass asks FIONREAD at most ASKS_PER_SWEEP times
        and then stops (the rest wait for the next pass): with 200,000 ends to drain a pass
        that went on would cost a second of bpf() calls for a hundredth of them."""
        drain = self.inst.maps["sock_drain_map"]
        proxy = self.inst.maps["sock_proxy_map"]
        sockhash = self.inst.maps["sock_ops_map"]
        # Most sweeps find nobody listed (see _nobody_listed), and the last pass left nothing
        # to remember. Not while ends wait (the last pass saw some): the probe would walk the
        # map's buckets, and the read again. Room for a batch, grown when more wait.
        if not self._seen and self._nobody_listed(drain):
            self._settle_requests(drain, False)
            return Sweep()
        keys, values = read_entries(drain, KEY, DRAIN, BATCH)
        listed = keys.view(f"V{KEY.itemsize}").tolist()  # each key's bytes
        self._seen.update(listed)
        out = Sweep(waiting=len(keys))
        now = time.monotonic_ns()
        self._asks = 0
        whole = True
        peers: set[bytes] = set()
        for raw_key, d in zip(listed, values.view(f"V{DRAIN.itemsize}").tolist()):
            if self._asks >= ASKS_PER_SWEEP:
                whole = False
                break
            key, d = abi.SockKey.from_buffer_copy(raw_key), abi.Drain.from_buffer_copy(d)
            conn = proxy.lookup(key)
            verdict = self._verdict(key, conn, d, now)
            if conn is not None:
                peers.add(bytes(conn.peer))
            if verdict is WAIT:
                continue
            # GONE stays where it is: a socket whose application closed it has left the
            # sockhash already, and one that reached CLOSE while still held keeps its unread
            # bytes there until the application reads them or closes it.
            if verdict is LEAVE and sockhash.delete(key):
                out.left += 1
            drain.delete(key)
            out.waiting -= 1
        if whole:  # forget what no end listed now needs any more
            now_listed = set(listed)
            self._seen = (self._seen & peers) | now_listed
            self._unheld = {k: t for k, t in self._unheld.items() if k in now_listed}
            self._retry = {k: r for k, r in self._retry.items() if k in now_listed}
        if out.left:
            self.left += out.left
            self.inst.add_stat(abi.Stat.DRAINED, out.left)
        self._settle_requests(drain, bool(values["requested"].any()))
        return out

    def _nobody_listed(self, drain) -> bool:
        """Whether sock_drain_map is empty. The map is asked only when an entry was put there
        since it was last found empty (the LISTED counter moved), and once a second: walking
        the buckets of an empty hash map of 262,144 to find no key costs 0.7 ms, which at a
        sweep every PERIOD_IDLE was 1.4 % of a CPU for an idle service. The counter is read
        before the map, and moves after each write there, so no entry written after it was
        read can be missed. The second is for user space's additions to it, which can lose a
        program's increment made meanwhile (Instance.add_stat writes every CPU's slot)."""
        listed = self.inst.stat(abi.Stat.LISTED)
        now = time.monotonic()
        if listed == self._listed and now < self._recheck_at:
            return True
        empty = drain.is_empty()
        self._listed, self._recheck_at = (listed, now + RECHECK) if empty else (-1, 0.0)
        return empty

    def _verdict(self, key, conn, d, now: int) -> object:
        if conn is None:
            return GONE  # closed: sock_ops dropped its entry
        if now - d.since_ns < GRACE_NS:
            return WAIT
        if not conn.paired:
            return LEAVE  # nothing was ever redirected into it
        ident = bytes(key)
        retry_at, backoff = self._retry.get(ident, (0, 0))
        if now < retry_at:
            return WAIT
        peer = self.inst.maps["sock_proxy_map"].lookup(conn.peer)
        if peer is not None:
            stopped = self.inst.maps["sock_drain_map"].lookup(conn.peer)
            if (stopped is None and not peer.tainted and not self.all_asked
                    and bytes(conn.peer) not in self._seen):
                return WAIT  # the peer still redirects into it, never asked to stop
            if stopped is not None and now - stopped.since_ns < GRACE_NS:
                return WAIT
        self._asks += 1
        unread = self.finder.unread(key)
        if unread is None:
            # Not found: closed by its application while sock_ops was detached (disable), or
            # between two owners, or reached CLOSE while held (a closed socket has no peer name
            # to be found by). Only a lasting absence counts as closed.
            first = self._unheld.setdefault(ident, now)
            verdict = GONE if now - first >= UNHELD_NS else WAIT
        else:
            self._unheld.pop(ident, None)
            verdict = LEAVE if unread == 0 else WAIT
        if verdict is WAIT:
            # A reader that falls behind is asked again later and later: each ask costs some
            # ten system calls, and a socket no process holds, a walk of /proc.
            backoff = min(max(2 * backoff, BACKOFF_MIN_NS), BACKOFF_MAX_NS)
            self._retry[ident] = (now + backoff, backoff)
        return verdict

    def _settle_requests(self, drain, outstanding: bool) -> None:
        """Messages look for requests only while some are outstanding. Clearing the flag is
        checked again after, so that a request written meanwhile is never missed."""
        flag = self.inst.maps["mda_stop_req"]
        if outstanding or not flag.lookup(ct.c_uint32(0)).value:
            return
        flag.update(ct.c_uint32(0), ct.c_uint32(0))
        if any(d.requested for _, d in drain.items()):
            flag.update(ct.c_uint32(0), ct.c_uint32(1))

    def run(self, until_empty: bool = False, deadline: float | None = None,
            stop=lambda: False) -> Sweep:
        """Sweep until asked to stop, or until nothing waits (until_empty), or the deadline."""
        while True:
            s = self.sweep()
            if (until_empty and not s.waiting) or stop():
                return s
            if deadline is not None and time.monotonic() >= deadline:
                return s
            time.sleep(PERIOD_BUSY if s.waiting else PERIOD_IDLE)

