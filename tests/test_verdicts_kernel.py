"""The column judge (verdicts.py) against the verdicts bpf/sock_ops.c gives real connections.

The kernel judges a connection when its accepting end is established and says so in an event
(accelerated, or refused with the rule); an accelerated one also has both ends in
sock_proxy_map. For a few rule sets and connections that differ in each thing a rule looks at
(addresses, IPv4 and IPv6, ports on either end and behind an iptables REDIRECT, owners, a pod's
loopback), the column judge must give the kernel's verdict: on the pair read from the map where
there is one, and on the two ends the event names. The servers listen dual-stack, so their IPv4
clients arrive IPv4-mapped, as the kernel keeps every IPv4 address.
"""

from __future__ import annotations

import pytest

from mdatui.core import events, reader, rules, verdicts
from mdatui.core.ends import ACCELERATED, Connection
from mdatui.core.table import Table

from . import peers
from .test_events import wait_events

pytestmark = pytest.mark.kernel

RULE_SETS = [
    "",
    "chain --ip 198.18.1.0/24 --uid-owner 1337 -j ACCEPT\nchain --port 15006 -j RETURN\n",
    "chain --port 80 -j RETURN\nchain --ip 127.0.0.0/8 -j ACCEPT\nchain --gid-owner 1234 -j ACCEPT\n",
    # 15001: only the sidecar's end of the REDIRECTed connection has it (nothing else accepts
    # that one); 32768-60999: the connecting ends' ephemeral ports.
    "chain --port 15001 -j ACCEPT\nchain --port 32768-60999 --gid-owner 1234 -j RETURN\n"
    "chain --ip 198.18.1.2/32 --port 7000-7005 -j ACCEPT\n",
    # An IPv4 CIDR never matches an IPv6 address, nor an IPv6 one (but ::/0) an IPv4 address.
    "chain --ip 0.0.0.0/0 --port 7000 -j RETURN\nchain --ip fd00:18:1::/64 -j ACCEPT\n"
    "chain --ip ::1 --uid-owner 1337 -j ACCEPT\nchain --ip 127.0.0.1 -j ACCEPT\n",
    "chain --ip ::/0 --port 15006 -j RETURN\nchain --ip fd00:18:1::2/128 --port 7000 -j RETURN\n"
    "chain --ip 198.18.1.0/24 -j ACCEPT\nchain --ip ::1/128 -j ACCEPT\n",
]


@pytest.fixture
def pods(lab, accel):
    """Pod a (198.18.1.1, fd00:18:1::1) whose port-80 connections go to its sidecar on :15001
    (nat OUTPUT REDIRECT, IPv4 and IPv6), and pod b (198.18.1.2, fd00:18:1::2; servers on 7000,
    7005 and 15006). Every server listens on :: for both."""
    a, b = lab.add_netns("a"), lab.add_netns("b")
    lab.link(a, "198.18.1.1/24", b, "198.18.1.2/24")
    lab.link(a, "fd00:18:1::1/64", b, "fd00:18:1::2/64")
    for v6 in (False, True):
        lab.iptables(a, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "80",
                     "-j", "REDIRECT", "--to-ports", "15001", v6=v6)
    peers.server(lab, "echo", 15001, a, True, "--host", "::")
    for port in (7000, 7005, 15006):
        peers.server(lab, "echo", port, b, True, "--host", "::")
    return a, b


def clients(a: str, b: str) -> list[tuple[str, str, dict]]:
    """(netns, destination, owner ids) of the connections made under each rule set."""
    return [(a, "198.18.1.2:7000", dict(uid=1337, gid=1337)),
            (a, "198.18.1.2:15006", dict(uid=1000, gid=1234)),
            (a, "198.18.1.2:7005", dict(uid=1000, gid=1000)),
            (a, "198.18.1.2:80", dict(uid=1337, gid=1337)),   # REDIRECTed to a's sidecar
            (b, "127.0.0.1:7000", {}),                         # root, on b's loopback
            (a, "[fd00:18:1::2]:7000", dict(uid=1337, gid=1337)),
            (a, "[fd00:18:1::2]:15006", dict(uid=1000, gid=1234)),
            (a, "[fd00:18:1::2]:80", dict(uid=1337, gid=1337)),  # REDIRECTed to [::1]:15001
            (b, "[::1]:7005", dict(uid=1337, gid=1000))]        # on b's IPv6 loopback


def column_verdict(pairs: verdicts.ConnectionPairs, rule_set: list[rules.Rule]) -> dict:
    """{connecting end's local address: (accelerate, rule index or None)} of these pairs."""
    keep, by = pairs.judge(rule_set)
    return {pairs.pair(k).connecting.end.local: (bool(keep[k]), None if by[k] < 0 else int(by[k]))
            for k in range(len(pairs))}


def event_pair(ev: events.Accelerated | events.Refused) -> verdicts.ConnectionPairs:
    """The connection an event names, as the two ends of a table."""
    def end(me, peer, owner, active):
        return Connection(me, peer, "accelerated", 0, 0, 0, 0.0, owner, True, active)
    table = Table.of([end(ev.end, ev.peer, ev.owner, True), end(ev.peer, ev.end, ev.peer_owner, False)])
    return verdicts.ConnectionPairs.of(table, ACCELERATED)


@pytest.mark.parametrize("text", RULE_SETS, ids=["none", "seed", "return-80", "ports", "v4-v6", "v6-v4"])
def test_column_judge_gives_the_kernels_verdicts(lab, accel, pods, text):
    rule_set = rules.parse(text).rules
    accel.load_rules(rules.to_ruleset(rule_set))
    held = []
    with events.EventStream(accel) as stream:
        for ns, to, ids in clients(*pods):
            cli = peers.client(lab, ns, "send", "--to", to, "--bytes", "4096", "--echo",
                               hold=True, **ids)
            held.append((cli, peers.report(cli)["local"]))
        locals_ = {local for _, local in held}

        def judged(evs):
            return {e.end.local for e in evs
                    if isinstance(e, (events.Accelerated, events.Refused))} >= locals_
        seen = [e for e in wait_events(stream, judged)
                if isinstance(e, (events.Accelerated, events.Refused)) and e.end.local in locals_]
        in_map = column_verdict(verdicts.ConnectionPairs.of(reader.read(accel).table, ACCELERATED),
                                rule_set)
    kernel, columns = {}, {}
    for ev in seen:
        refused = isinstance(ev, events.Refused)
        kernel[ev.end.local] = (not refused, ev.rule if refused else None)
        columns[ev.end.local] = column_verdict(event_pair(ev), rule_set)[ev.end.local]
        if not refused:  # the kernel names no rule for an accepted connection: the map's pair
            assert in_map[ev.end.local] == columns[ev.end.local]
            kernel[ev.end.local] = (True, columns[ev.end.local][1])
    assert columns == kernel
    assert set(in_map) >= {local for local, (accelerate, _) in kernel.items() if accelerate}
    for cli, _ in held:
        peers.proceed(cli)
        done = peers.report(cli)
        assert done["sha256_received"] == done["sha256_sent"]
        peers.proceed(cli)
        cli.wait(10)


def test_the_rule_sets_above_meet_every_kind_of_verdict():
    """What the kernel test compares is worth comparing: its rule sets accept and refuse, by a
    RETURN rule and for want of an ACCEPT one (judged with the oracle, rules.judge)."""
    def view(src, dst, server, sport, dport, server_port, uid, gid, server_uid=0):
        return rules.ConnView((src, dst, server), (sport, dport, server_port),
                              (uid, server_uid), (gid, server_uid))
    views = [view("198.18.1.1", "198.18.1.2", "198.18.1.2", 40000, 7000, 7000, 1337, 1337),
             view("198.18.1.1", "198.18.1.2", "198.18.1.2", 40001, 15006, 15006, 1000, 1234),
             view("198.18.1.1", "198.18.1.2", "198.18.1.2", 40002, 7005, 7005, 1000, 1000),
             view("198.18.1.1", "198.18.1.2", "127.0.0.1", 40003, 80, 15001, 1337, 1337),
             view("127.0.0.1", "127.0.0.1", "127.0.0.1", 40004, 7000, 7000, 0, 0),
             view("fd00:18:1::1", "fd00:18:1::2", "fd00:18:1::2", 40005, 7000, 7000, 1337, 1337),
             view("fd00:18:1::1", "fd00:18:1::2", "fd00:18:1::2", 40006, 15006, 15006, 1000, 1234),
             view("fd00:18:1::1", "fd00:18:1::2", "::1", 40007, 80, 15001, 1337, 1337),
             view("::1", "::1", "::1", 40008, 7005, 7005, 1337, 1000)]
    kinds = {(v.accelerate, v.rule_index is None)
             for text in RULE_SETS for v in (rules.judge(rules.parse(text).rules, w) for w in views)}
    assert kinds == {(True, True), (True, False), (False, True), (False, False)}
    # The IPv6 rule sets tell the families apart: what each does to each connection.
    verdicts_of = {text: [tuple(rules.judge(rules.parse(text).rules, w)) for w in views]
                   for text in RULE_SETS[-2:]}
    assert list(verdicts_of.values()) == [
        [(False, 0), (False, None), (False, None), (True, 3), (False, 0),
         (True, 1), (True, 1), (True, 1), (True, 2)],
        [(True, 2), (False, 0), (True, 2), (True, 2), (False, None),
         (False, 1), (False, 0), (True, 3), (True, 3)],   # ::1: the sidecar's end behind REDIRECT
    ]
