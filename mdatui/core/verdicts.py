"""The chain rules judged over a table's columns: the one judge the Rules tab's preview, Apply
and `mdatui rules apply` use.

bpf/sock_ops.c judges a connection once, when its accepting end is established, from what it
sees then (rules.py describes the semantics); rules.judge mirrors it on one ConnView and is kept
as the oracle the tests hold this module against. Judging BothEnds objects one by one took 2.8 s at
100,000 connections; over the columns it takes milliseconds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import addrs, rules
from .ends import ACCELERATED, NORMAL, Connection
from .table import Table


@dataclass(frozen=True)
class BothEnds:
    """Both ends of a connection: the one that connected and the one that accepted."""

    connecting: Connection
    accepting: Connection

    def view(self) -> rules.ConnView:
        """What the rules see, as bpf/sock_ops.c builds it when the pair is made."""
        c, a = self.connecting, self.accepting
        addr = [c.end.local, c.end.remote, a.end.local]
        ends = [addrs.split_endpoint(x) for x in addr]
        return rules.ConnView(
            ips=tuple(addrs.text(ip) for ip, _ in ends),
            ports=tuple(port for _, port in ends),
            uids=(c.owner.uid, a.owner.uid),
            gids=(c.owner.gid, a.owner.gid),
        )


@dataclass(frozen=True)
class ConnectionPairs:
    """Connections of a table: the rows of each connecting end and of its accepting peer."""

    table: Table
    connecting: np.ndarray
    accepting: np.ndarray

    @classmethod
    def of(cls, table: Table, state: int) -> "ConnectionPairs":
        """Connecting ends in `state` (snapshot.ACCELERATED, NORMAL) whose peer has an entry:
        the connections a rule change can take off (ACCELERATED) or would accept (NORMAL)."""
        rows = np.flatnonzero((table.state == state) & table.active & (table.peer_row >= 0))
        return cls(table, rows, table.peer_row[rows])

    def __len__(self) -> int:
        return len(self.connecting)

    def pair(self, k: int) -> BothEnds:
        return BothEnds(self.table.connection(int(self.connecting[k])),
                        self.table.connection(int(self.accepting[k])))

    def keys(self) -> np.ndarray:
        """The kernel keys (snapshot.KEY records) of both ends of every pair."""
        return self.table.keys[np.concatenate([self.connecting, self.accepting])]

    # What BothEnds.view holds, gathered once for all the rules a set has: the connecting end's
    # local and original destination address, the accepting end's local one (rows of four u32
    # words, as the keys hold them); both owners.
    @cached_property
    def _ips(self) -> tuple[np.ndarray, ...]:
        keys, c, a = self.table.keys, self.connecting, self.accepting
        return keys["local_ip"][c], keys["remote_ip"][c], keys["local_ip"][a]

    @cached_property
    def _ipv4(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """Each of _ips as (IPv4-mapped or not, last word): what an IPv4 CIDR compares, the
        first three words being the same for every IPv4 rule."""
        return tuple((_within(ip, _V4_NET, _V4_MASK), np.ascontiguousarray(ip[:, 3]))
                     for ip in self._ips)

    @cached_property
    def _ports(self) -> tuple[np.ndarray, ...]:
        keys, c, a = self.table.keys, self.connecting, self.accepting
        return keys["local_port"][c], keys["remote_port"][c], keys["local_port"][a]

    @cached_property
    def _owners(self) -> tuple[np.ndarray, np.ndarray]:
        owners = self.table.owners
        return owners[self.connecting], owners[self.accepting]

    def matching(self, rule: rules.Rule) -> np.ndarray:
        """rule.matches(pair.view()) of every pair. An unknown owner is abi.UNKNOWN_ID in the
        columns, which no rule can name (rules.MAX_ID), so it never matches: as None does."""
        hit = np.ones(len(self), dtype=bool)
        if rule.net is not None:
            net, mask = map(addrs.words_of, addrs.network(rule.net))
            if (mask[:3] == _V4_MASK[:3]).all() and (net[:3] == _V4_NET[:3]).all():  # IPv4
                hit &= np.logical_or.reduce([v4 & ((last & mask[3]) == net[3])
                                             for v4, last in self._ipv4])
            else:
                hit &= np.logical_or.reduce([_within(ip, net, mask) for ip in self._ips])
        if rule.ports is not None:
            lo, hi = rule.ports
            hit &= np.logical_or.reduce([(lo <= p) & (p <= hi) for p in self._ports])
        for named, field_ in ((rule.uid, "uid"), (rule.gid, "gid")):
            if named is not None:
                c, a = self._owners
                hit &= (c[field_] == named.id) | (a[field_] == named.id)
        return hit

    def judge(self, rule_set: Sequence[rules.Rule]) -> tuple[np.ndarray, np.ndarray]:
        """rules.judge of every pair: whether it is accelerated, and by (or against) which rule
        (-1: none)."""
        first = np.full(len(self), -1)
        returned = np.full(len(self), -1)
        for i in reversed(range(len(rule_set))):  # the first matching rule is the last written
            hit = self.matching(rule_set[i])
            first[hit] = i
            if rule_set[i].target is rules.Target.RETURN:
                returned[hit] = i
        accepts = any(r.target is rules.Target.ACCEPT for r in rule_set)
        accelerate = (returned < 0) & ((first >= 0) | (not accepts))
        return accelerate, np.where(returned >= 0, returned, first)


# ::ffff:0:0/96, the IPv4-mapped addresses, as words
_V4_NET, _V4_MASK = map(addrs.words_of, addrs.network(ipaddress.IPv4Network("0.0.0.0/0")))


def _within(ips: np.ndarray, net: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """bpf/mdatui.h's mda_ip_in of each row: (ip & mask) == net in each of the four words. A
    word the mask leaves out holds always (net is masked): 0.0.0.0/0 compares three words (the
    IPv4-mapped prefix), ::/0 none."""
    hit = np.ones(len(ips), dtype=bool)
    for w in np.flatnonzero(mask):
        hit &= (ips[:, w] & mask[w]) == net[w]
    return hit


@dataclass(frozen=True)
class RulePreview:
    """What making a rule set live would do to the connections open now: how many, the first
    few of them as pairs, and the rows of all it takes off (to ask those ends to stop)."""

    taken_off: int                                 # accelerated, then refused
    put_on: int      # on the normal path, accepted: accelerated from their next connection
    first_taken_off: list[tuple[BothEnds, int | None]]  # with the refusing rule's index
    first_put_on: list[BothEnds]
    off: ConnectionPairs                           # all the pairs taken off


def preview(table: Table, edited: Sequence[rules.Rule], first: int = 12) -> RulePreview:
    """What the kernel would do with each open connection under `edited`, as apply.apply acts
    on it; only the first `first` of each kind are made into objects."""
    accelerated = ConnectionPairs.of(table, ACCELERATED)
    keep, rule = accelerated.judge(edited)
    off = np.flatnonzero(~keep)
    normal = ConnectionPairs.of(table, NORMAL)
    on = np.flatnonzero(normal.judge(edited)[0])
    return RulePreview(
        len(off), len(on),
        [(accelerated.pair(k), int(rule[k]) if rule[k] >= 0 else None) for k in off[:first]],
        [normal.pair(k) for k in on[:first]],
        ConnectionPairs(table, accelerated.connecting[off], accelerated.accepting[off]))
