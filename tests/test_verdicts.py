"""The column judge (verdicts.py, what Preview, Apply and `rules apply` use) against the object
judge (rules.judge on BothEnds.view, the oracle): random rule sets on random connections."""

from __future__ import annotations

import ipaddress
from functools import partial

from hypothesis import given, settings
from hypothesis import strategies as st

from mdatui.core import addrs, rules, verdicts
from mdatui.core.ends import ACCELERATED, NORMAL, Connection, Endpoint, Owner
from mdatui.core.table import Table

from .test_columns import mesh

# Few values, so that rules and connections meet often: addresses of two subnets and loopback,
# IPv4 and IPv6 (one written IPv4-mapped, one IPv4-compatible: an IPv6 address whose last
# bytes are 10.0.0.1), the ports of services and of the first clients, owners known and not.
IPS4 = ("198.19.0.1", "198.19.0.2", "198.19.1.7", "198.19.9.3", "127.0.0.1", "10.0.0.1",
        "::ffff:198.19.0.2")
IPS6 = ("fd00::1", "fd00::2", "fd00:0:0:1::7", "fd01::3", "::1", "::a00:1", "2001:db8::1")
IPS = IPS4 + IPS6
SERVICE_PORTS = (80, 81, 15001, 15006)
CLIENT_PORT = 40000  # the connecting ends' ports count up from here, so that keys differ
IDS = (None, 0, 5, 1337, rules.MAX_ID)

nets = st.one_of(
    st.builds(lambda ip, prefix: ipaddress.IPv4Network(f"{ip}/{prefix}", strict=False),
              st.sampled_from(IPS4[:-1]), st.sampled_from([0, 8, 16, 24, 31, 32])),
    st.builds(lambda ip, prefix: ipaddress.IPv6Network(f"{ip}/{prefix}", strict=False),
              st.sampled_from(IPS6), st.sampled_from([0, 8, 16, 64, 80, 96, 120, 127, 128])),
    # IPv4 networks as IPv6 ones: the kernel cannot tell them apart, nor may the judges.
    st.sampled_from([ipaddress.IPv6Network("::ffff:0:0/96"), ipaddress.IPv6Network("::ffff:c613:0/112"),
                     ipaddress.IPv6Network("::/80"), ipaddress.IPv6Network("::/81")]))
port_ranges = st.builds(lambda lo, width: (lo, min(65535, lo + width)),
                        st.sampled_from([1, 80, 81, 15006, CLIENT_PORT, CLIENT_PORT + 3]),
                        st.sampled_from([0, 1, 5, 70000]))
ids = st.builds(rules.NamedId, st.sampled_from([0, 5, 1337, rules.MAX_ID]))
rule_sets = st.lists(st.builds(rules.Rule, st.sampled_from(list(rules.Target)),
                               st.none() | nets, st.none() | port_ranges,
                               st.none() | ids, st.none() | ids), max_size=6)

# One connection: the connecting end's address, its original destination (the accepting end's
# address, unless an iptables REDIRECT sent it to a sidecar's), both owners, and its state.
connections = st.tuples(
    st.sampled_from(IPS), st.sampled_from(IPS), st.sampled_from(SERVICE_PORTS),
    st.none() | st.tuples(st.sampled_from(IPS), st.sampled_from(SERVICE_PORTS)),
    st.sampled_from(IDS), st.sampled_from(IDS), st.sampled_from(IDS), st.sampled_from(IDS),
    st.sampled_from(["accelerated", "normal", "draining", "pending", "peer gone"]))


def endpoint(ip: str, port: int) -> str:
    """As the table writes an end: an IPv4-mapped address dotted, IPv6 ones in brackets."""
    return addrs.endpoint(addrs.pack(ip), port)


def mapped(view: rules.ConnView) -> rules.ConnView:
    """The view with its IPv4 addresses written IPv4-mapped, as a dual-stack socket sees them."""
    ips = tuple(f"::ffff:{ip}" if ipaddress.ip_address(ip).version == 4 else ip for ip in view.ips)
    return rules.ConnView(ips, view.ports, view.uids, view.gids)


def ends_of(specs: list[tuple]) -> list[Connection]:
    out = []
    for i, (src, dst, dport, redirect, cuid, cgid, auid, agid, state) in enumerate(specs):
        client = Endpoint(endpoint(src, CLIENT_PORT + i), endpoint(dst, dport))
        server = Endpoint(endpoint(*redirect) if redirect else client.remote, client.local)
        paired = state if state in ("normal", "draining") else "accelerated"
        end = partial(Connection, state=paired, msgs=3, bytes=300, passed=0, age_s=1.0,
                      in_sockhash=state != "normal")
        if state == "pending":
            out.append(Connection(client, None, "pending", 0, 0, 0, 1.0, Owner(1, cuid, cgid),
                                  True, True))
            continue
        out.append(end(client, server, owner=Owner(1, cuid, cgid), active=True))
        if state != "peer gone":
            out.append(end(server, client, owner=Owner(2, auid, agid), active=False))
    return out


def object_pairs(conns: list[Connection], states: tuple[str, ...]) -> list[verdicts.BothEnds]:
    """Pairs as the object path found them: a connecting end in one of `states` whose peer has
    an entry."""
    by_end = {c.end: c for c in conns}
    return [verdicts.BothEnds(c, by_end[c.peer]) for c in conns
            if c.state in states and c.active and c.peer in by_end]


def assert_judged_alike(conns: list[Connection], rule_set: list[rules.Rule]) -> None:
    table = Table.of(conns)
    for state, names in ((ACCELERATED, ("accelerated",)), (NORMAL, ("normal", "draining"))):
        objects = object_pairs(conns, names)
        pairs = verdicts.ConnectionPairs.of(table, state)
        assert [pairs.pair(k) for k in range(len(pairs))] == objects
        keep, by = pairs.judge(rule_set)
        want = [rules.judge(rule_set, p.view()) for p in objects]
        assert want == [rules.judge(rule_set, mapped(p.view())) for p in objects]
        assert list(zip(keep.tolist(), [None if i < 0 else i for i in by.tolist()])) == \
            [(v.accelerate, v.rule_index) for v in want]
    change = verdicts.preview(table, rule_set, first=len(conns))
    judged = [(p, rules.judge(rule_set, p.view())) for p in object_pairs(conns, ("accelerated",))]
    assert change.first_taken_off == [(p, v.rule_index) for p, v in judged if not v.accelerate]
    assert change.taken_off == len(change.off)
    assert sorted(k.tobytes() for k in change.off.keys()) == sorted(
        k.tobytes() for k in
        Table.of([e for p, _ in change.first_taken_off for e in (p.connecting, p.accepting)]).keys)
    put_on = [p for p in object_pairs(conns, ("normal", "draining"))
              if rules.judge(rule_set, p.view()).accelerate]
    assert (change.put_on, change.first_put_on) == (len(put_on), put_on)


@settings(max_examples=300, deadline=None)
@given(rule_sets, st.lists(connections, max_size=12))
def test_column_judge_is_the_object_judge(rule_set, specs):
    assert_judged_alike(ends_of(specs), rule_set)


@settings(max_examples=40, deadline=None)
@given(rule_sets)
def test_column_judge_is_the_object_judge_on_a_mesh(rule_set):
    """Hundreds of connections of every kind pairing.py knows (stale peers, ends that left the
    sockhash), on a pod's loopback too."""
    assert_judged_alike(mesh(300, 8), rule_set)


def test_preview_says_which_connections_leave_and_which_would_join():
    """A readable case: an ACCEPT for one subnet and a RETURN for a port."""
    conns = ends_of([("198.19.0.1", "198.19.0.2", 80, None, 0, 0, 0, 0, "accelerated"),
                     ("198.19.0.1", "198.19.0.2", 15006, None, 0, 0, 0, 0, "accelerated"),
                     ("10.0.0.1", "127.0.0.1", 80, None, 0, 0, 0, 0, "accelerated"),
                     ("198.19.1.7", "198.19.0.2", 81, None, 0, 0, 0, 0, "normal")])
    edited = [rules.parse_rule("chain --ip 198.19.0.0/16 -j ACCEPT"),
              rules.parse_rule("chain --port 15006 -j RETURN")]
    change = verdicts.preview(Table.of(conns), edited)
    assert [(p.connecting.end.remote, rule) for p, rule in change.first_taken_off] == [
        ("198.19.0.2:15006", 1), ("127.0.0.1:80", None)]  # None: no ACCEPT rule matched
    assert [p.connecting.end.local for p in change.first_put_on] == ["198.19.1.7:40003"]
