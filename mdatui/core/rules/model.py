"""Rules as values: what one says, how a set judges a connection, and its form in the kernel."""

from __future__ import annotations

import ctypes as ct
import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .. import addrs
from ..kernel import abi

MAX_ID = abi.UNKNOWN_ID - 1  # the kernel marks an unknown owner with UNKNOWN_ID


class Target(enum.Enum):
    ACCEPT = "ACCEPT"
    RETURN = "RETURN"


@dataclass(frozen=True)
class NamedId:
    """A uid or gid, with the name it was written as (None when written as a number)."""

    id: int
    name: str | None = None

    def __str__(self) -> str:
        return self.name if self.name is not None else str(self.id)


@dataclass(frozen=True)
class ConnView:
    """What a rule sees of a connection: the three addresses and ports, the two owners.
    Addresses as text, IPv4 or IPv6 ("10.0.0.1", "fd00::1"); an IPv4-mapped IPv6 one
    ("::ffff:10.0.0.1") is the IPv4 address, as the kernel's keys hold it."""

    ips: tuple[str, ...]
    ports: tuple[int, ...]
    uids: tuple[int | None, ...]
    gids: tuple[int | None, ...]


@dataclass(frozen=True)
class Rule:
    target: Target
    net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    ports: tuple[int, int] | None = None  # inclusive range
    uid: NamedId | None = None
    gid: NamedId | None = None

    def matches(self, view: ConnView) -> bool:
        if self.net is not None and not any(_in(ip, self.net) for ip in view.ips):
            return False
        if self.ports is not None and not any(self.ports[0] <= p <= self.ports[1] for p in view.ports):
            return False
        if self.uid is not None and self.uid.id not in view.uids:
            return False
        if self.gid is not None and self.gid.id not in view.gids:
            return False
        return True

    def __str__(self) -> str:
        return format_rule(self)


class Verdict(NamedTuple):
    accelerate: bool
    rule_index: int | None  # refused with None: no ACCEPT rule matched


@dataclass(frozen=True)
class RuleError:
    path: str
    line: int  # 1-based
    col: int   # 1-based, of the offending token
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


class ParseError(ValueError):
    def __init__(self, errors: Sequence[RuleError]):
        self.errors = list(errors)
        super().__init__("\n".join(map(str, self.errors)))


# ---------------------------------------------------------------- matching and the kernel form

def _in(ip: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """As bpf/mdatui.h's mda_ip_in: (ip & mask) == net over the 16 bytes of the kernel's form,
    where an IPv4 network is ::ffff:a.b.c.d/(96+N). So an IPv4 network holds IPv4 (and
    IPv4-mapped) addresses only, an IPv6 one IPv6 addresses (and, as ::/0 or a network around
    ::ffff:0:0/96, mapped ones too)."""
    address, mask = (int.from_bytes(raw, "big") for raw in addrs.network(net))
    return int.from_bytes(addrs.pack(ip), "big") & mask == address


def judge(rules: Sequence[Rule], view: ConnView) -> Verdict:
    """Whether the kernel would accelerate this connection, and by (or against) which rule.
    The tests' oracle; what mdatui judges goes through verdicts.ConnectionPairs.judge."""
    matched = [i for i, rule in enumerate(rules) if rule.matches(view)]
    for i in matched:
        if rules[i].target is Target.RETURN:
            return Verdict(False, i)
    if matched:
        return Verdict(True, matched[0])
    if any(rule.target is Target.ACCEPT for rule in rules):
        return Verdict(False, None)
    return Verdict(True, None)


def to_ruleset(rules: Sequence[Rule]) -> abi.RuleSet:
    if len(rules) > abi.MAX_RULES:
        raise ValueError(f"{len(rules)} rules; at most {abi.MAX_RULES} fit in the kernel")
    rs = abi.RuleSet(count=len(rules), n_accept=sum(r.target is Target.ACCEPT for r in rules))
    for slot, rule in zip(rs.rules, rules):
        slot.flags = abi.RULE_RETURN if rule.target is Target.RETURN else 0
        if rule.net is not None:
            slot.flags |= abi.RULE_IP
            ip, mask = addrs.network(rule.net)
            ct.memmove(slot.ip, ip, len(ip))
            ct.memmove(slot.mask, mask, len(mask))
        if rule.ports is not None:
            slot.flags |= abi.RULE_PORT
            slot.port_lo, slot.port_hi = rule.ports
        if rule.uid is not None:
            slot.flags |= abi.RULE_UID
            slot.uid = rule.uid.id
        if rule.gid is not None:
            slot.flags |= abi.RULE_GID
            slot.gid = rule.gid.id
    return rs


def from_ruleset(rs: abi.RuleSet) -> list[Rule]:
    """The rules of a kernel rule set: to_ruleset's inverse, but that users and groups come back
    as numbers (the kernel keeps no names), and an IPv6 network within ::ffff:0:0/96 (which the
    parser refuses) as the IPv4 network the kernel cannot tell it from."""
    out = []
    for slot in rs.rules[:rs.count]:
        flags = slot.flags
        out.append(Rule(
            Target.RETURN if flags & abi.RULE_RETURN else Target.ACCEPT,
            net=addrs.from_network(bytes(slot.ip), bytes(slot.mask)) if flags & abi.RULE_IP else None,
            ports=(slot.port_lo, slot.port_hi) if flags & abi.RULE_PORT else None,
            uid=NamedId(slot.uid) if flags & abi.RULE_UID else None,
            gid=NamedId(slot.gid) if flags & abi.RULE_GID else None))
    return out


def first_difference(kernel: Sequence[Rule], wanted: Sequence[Rule]) -> int | None:
    """Where the rules a kernel runs (from_ruleset) and wanted ones first differ, compared as the
    kernel sees them (users and groups by number): the index of the first rule that differs, or
    of the first that only one of them has; None when they are the same."""
    wanted = from_ruleset(to_ruleset(wanted))
    for i, (k, w) in enumerate(zip(kernel, wanted)):
        if k != w:
            return i
    return None if len(kernel) == len(wanted) else min(len(kernel), len(wanted))


# ---------------------------------------------------------------- one rule: text <-> Rule

def format_rule(rule: Rule) -> str:
    """The canonical text of a rule, as new and edited lines are written."""
    parts = ["chain"]
    if rule.net is not None:
        parts += ["--ip", str(rule.net)]
    if rule.ports is not None:
        lo, hi = rule.ports
        parts += ["--port", str(lo) if lo == hi else f"{lo}-{hi}"]
    if rule.uid is not None:
        parts += ["--uid-owner", str(rule.uid)]
    if rule.gid is not None:
        parts += ["--gid-owner", str(rule.gid)]
    parts += ["-j", rule.target.value]
    return " ".join(parts)

