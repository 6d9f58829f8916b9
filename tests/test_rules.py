"""mdatui.core.rules: the rules file format, its errors, the judge() mirror and the kernel form."""

from __future__ import annotations

import dataclasses
import errno
import grp
import ipaddress
import os
import pwd
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdatui.core import addrs
from mdatui.core import rules as R
from mdatui.core.kernel import abi
from mdatui.core.rules import ConnView, NamedId, ParseError, Rule, RuleError, Target, Verdict

SEED = """\
# accelerate only 192.168.1.0/24 connections of uid 1337 processes; never traffic with port 15006 at either end
chain --ip 192.168.1.0/24 --uid-owner 1337 --j ACCEPT
chain --port 15006 -j RETURN
"""
ROOT_USER = pwd.getpwuid(0).pw_name
ROOT_GROUP = grp.getgrgid(0).gr_name


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def errors_of(text: str, path: str = "oncn-mda.conf") -> list[str]:
    with pytest.raises(ParseError) as info:
        R.parse(text, path)
    return [str(e) for e in info.value.errors]


@pytest.fixture
def fake_accounts(monkeypatch):
    """A user and a group that exist only for the test, so ids other than root's are covered."""
    real_user, real_group = pwd.getpwnam, grp.getgrnam
    monkeypatch.setattr(pwd, "getpwnam", lambda n: pwd.struct_passwd(
        ("istio-proxy", "x", 1337, 1337, "", "/", "/bin/false")) if n == "istio-proxy" else real_user(n))
    monkeypatch.setattr(grp, "getgrnam", lambda n: grp.struct_group(
        ("mesh", "x", 2000, [])) if n == "mesh" else real_group(n))


# ---------------------------------------------------------------- forms

def test_seed_example_parses_as_written():
    assert R.parse(SEED).rules == [
        Rule(Target.ACCEPT, net=net("192.168.1.0/24"), uid=NamedId(1337)),
        Rule(Target.RETURN, ports=(15006, 15006)),
    ]


FULL = Rule(Target.ACCEPT, net("10.0.0.0/8"), (80, 90), NamedId(1337), NamedId(1338))


@pytest.mark.parametrize("text", [
    "chain --ip 10.0.0.0/8 --port 80-90 --uid-owner 1337 --gid-owner 1338 -j ACCEPT",
    "chain -i 10.0.0.0/8 -p 80-90 -u 1337 -g 1338 --j ACCEPT",
    "chain --ports 80-90 --jump accept --gid-owner 1338 -i 10.0.0.0/8 --uid-owner 1337",
    "\t chain  --ip\t10.0.0.0/8 --port 80-90 -u 1337 -g 1338 -j Accept   # trailing comment",
])
def test_option_aliases_order_case_and_whitespace(text):
    assert R.parse_rule(text) == FULL


def test_bare_address_is_a_slash_32_or_128():
    assert R.parse_rule("chain --ip 1.2.3.4 -j RETURN").net == net("1.2.3.4/32")
    assert R.parse_rule("chain --ip fd00::1 -j RETURN").net == net("fd00::1/128")


@pytest.mark.parametrize("text, cidr", [
    ("2001:db8::/32", "2001:db8::/32"),
    ("2001:DB8:0:0::/64", "2001:db8::/64"),
    ("::/0", "::/0"),
    ("::1", "::1/128"),
    ("fe80::/10", "fe80::/10"),
    ("::/80", "::/80"),                  # holds ::ffff:0:0/96, and so every IPv4 address
    ("64:ff9b::/96", "64:ff9b::/96"),    # NAT64: IPv6 addresses, not IPv4-mapped ones
    ("::102:304", "::102:304/128"),      # IPv4-compatible: an IPv6 address
])
def test_ipv6_cidrs(text, cidr):
    rule = R.parse_rule(f"chain --ip {text} -j ACCEPT")
    assert rule.net == net(cidr)
    assert R.format_rule(rule) == f"chain --ip {cidr} -j ACCEPT"


@pytest.mark.parametrize("text, rule", [
    ("chain -j ACCEPT", Rule(Target.ACCEPT)),
    ("chain -j return", Rule(Target.RETURN)),
    ("chain --ip 0.0.0.0/0 -j RETURN", Rule(Target.RETURN, net=net("0.0.0.0/0"))),
    ("chain --port 1-65535 -j ACCEPT", Rule(Target.ACCEPT, ports=(1, 65535))),
    ("chain --port 0080 -j ACCEPT", Rule(Target.ACCEPT, ports=(80, 80))),
    ("chain -u 4294967294 -j ACCEPT", Rule(Target.ACCEPT, uid=NamedId(4294967294))),
])
def test_edge_values(text, rule):
    assert R.parse_rule(text) == rule


def test_user_and_group_names_resolve_and_keep_their_name(fake_accounts):
    rule = R.parse_rule("chain --uid-owner istio-proxy --gid-owner mesh -j ACCEPT")
    assert rule.uid == NamedId(1337, "istio-proxy") and rule.gid == NamedId(2000, "mesh")
    assert R.format_rule(rule) == "chain --uid-owner istio-proxy --gid-owner mesh -j ACCEPT"
    slot = R.to_ruleset([rule]).rules[0]
    assert (slot.uid, slot.gid) == (1337, 2000)


def test_real_root_names_resolve():
    rule = R.parse_rule(f"chain -u {ROOT_USER} -g {ROOT_GROUP} -j RETURN")
    assert rule.uid == NamedId(0, ROOT_USER) and rule.gid == NamedId(0, ROOT_GROUP)


def test_comments_and_blank_lines_are_not_rules():
    text = "# head\n\n   \n  # indented\nchain -j ACCEPT # why\n\t\n"
    assert R.parse(text).rules == [Rule(Target.ACCEPT)]


def test_empty_text_is_an_empty_config():
    assert R.parse("").rules == [] and R.parse("").text() == ""


def test_canonical_form():
    assert R.format_rule(FULL) == "chain --ip 10.0.0.0/8 --port 80-90 --uid-owner 1337 --gid-owner 1338 -j ACCEPT"
    assert str(Rule(Target.RETURN, ports=(15006, 15006))) == "chain --port 15006 -j RETURN"


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("line, message", [
    ("chain --ip 300.1.1.1/24 -j ACCEPT", "1:12: '300.1.1.1/24' is not an IPv4 CIDR"),
    ("chain --ip 10.0.0 -j ACCEPT", "1:12: '10.0.0' is not an IPv4 CIDR"),
    ("chain --ip 10.0.0.0/ -j ACCEPT", "1:12: '10.0.0.0/' is not an IPv4 CIDR"),
    ("chain --ip example.com -j ACCEPT", "1:12: 'example.com' is not an IPv4 or IPv6 CIDR"),
    ("chain --ip 10.0.0.0/33 -j ACCEPT", "1:12: '10.0.0.0/33': prefix length must be 0-32"),
    ("chain --ip 192.168.1.5/24 -j ACCEPT",
     "1:12: '192.168.1.5/24' has host bits set; did you mean 192.168.1.0/24"),
    ("chain --ip 2001:db8::1/32 -j ACCEPT",
     "1:12: '2001:db8::1/32' has host bits set; did you mean 2001:db8::/32"),
    ("chain --ip 2001:db8::/129 -j ACCEPT", "1:12: '2001:db8::/129': prefix length must be 0-128"),
    ("chain --ip 2001:db8:::1 -j ACCEPT", "1:12: '2001:db8:::1' is not an IPv6 CIDR"),
    ("chain --ip 1:2:3:4:5:6:7:8:9 -j ACCEPT", "1:12: '1:2:3:4:5:6:7:8:9' is not an IPv6 CIDR"),
    ("chain --ip 2001:db8::/ -j ACCEPT", "1:12: '2001:db8::/' is not an IPv6 CIDR"),
    ("chain --ip gggg::/16 -j ACCEPT", "1:12: 'gggg::/16' is not an IPv6 CIDR"),
    ("chain --ip fe80::1%eth0 -j ACCEPT", "1:12: 'fe80::1%eth0' is not an IPv6 CIDR"),
    ("chain --ip [fd00::1] -j ACCEPT", "1:12: '[fd00::1]' is not an IPv6 CIDR"),
    ("chain --ip ::ffff:10.0.0.0/104 -j ACCEPT",
     "1:12: '::ffff:10.0.0.0/104' is an IPv4-mapped network; write it as 10.0.0.0/8"),
    ("chain --ip ::ffff:0:0/96 -j ACCEPT",
     "1:12: '::ffff:0:0/96' is an IPv4-mapped network; write it as 0.0.0.0/0"),
    ("chain --ip ::ffff:1.2.3.4 -j ACCEPT",
     "1:12: '::ffff:1.2.3.4' is an IPv4-mapped network; write it as 1.2.3.4/32"),
    ("chain --port 0 -j ACCEPT", "1:14: port 0 is out of range 1-65535"),
    ("chain --port 65536 -j ACCEPT", "1:14: port 65536 is out of range 1-65535"),
    ("chain --port 80-99999999999999999999 -j ACCEPT",
     "1:14: port 99999999999999999999 is out of range 1-65535"),
    ("chain --port 80-70 -j ACCEPT", "1:14: port range '80-70' is reversed; did you mean 70-80"),
    ("chain --port http -j ACCEPT", "1:14: 'http' is not a port or port range (N or N-M)"),
    ("chain --port 80,443 -j ACCEPT", "1:14: '80,443' is not a port or port range (N or N-M)"),
    ("chain --dport 80 -j ACCEPT", "1:7: unknown option '--dport'"),
    ("chain 80 -j ACCEPT", "1:7: unexpected '80'; options start with -"),
    ("chain --ip 10.0.0.0/8", "1:1: rule has no target; add -j ACCEPT or -j RETURN"),
    ("chain --ip 10.0.0.0/8 -j DROP", "1:26: 'DROP' is not a target; use ACCEPT or RETURN"),
    ("chain -j ACCEPT --ip", "1:17: option '--ip' needs a value"),
    ("chain --uid-owner no-such-user-mdatui -j ACCEPT", "1:19: unknown user 'no-such-user-mdatui'"),
    ("chain --gid-owner no-such-group-mdatui -j ACCEPT", "1:19: unknown group 'no-such-group-mdatui'"),
    ("chain --uid-owner 4294967295 -j ACCEPT", "1:19: user id 4294967295 is out of range 0-4294967294"),
    ("chain -p 80 --ports 81 -j ACCEPT", "1:13: duplicate option '--ports' (already given at column 7)"),
    ("chain -j ACCEPT --jump RETURN", "1:17: duplicate option '--jump' (already given at column 7)"),
    ("rule --ip 10.0.0.0/8 -j ACCEPT", "1:1: expected 'chain' at the start of a rule, got 'rule'"),
    ("  Chain -j ACCEPT", "1:3: expected 'chain' at the start of a rule, got 'Chain'"),
])
def test_each_error_names_file_line_column_and_what(line, message):
    assert errors_of(line + "\n") == [f"oncn-mda.conf:{message}"]


def test_option_without_value_before_another_option():
    assert errors_of("chain --ip -j ACCEPT") == ["oncn-mda.conf:1:7: option '--ip' needs a value"]


def test_several_errors_on_one_line_are_all_reported():
    assert errors_of("chain --ip 1.2.3.4/40 --port 0\n") == [
        "oncn-mda.conf:1:12: '1.2.3.4/40': prefix length must be 0-32",
        "oncn-mda.conf:1:30: port 0 is out of range 1-65535",
        "oncn-mda.conf:1:1: rule has no target; add -j ACCEPT or -j RETURN",
    ]


def test_every_bad_line_of_a_file_is_reported_with_its_line_number():
    text = "# c\nchain -j ACCEPT\nchain --ip 300.1.1.1/24 -j ACCEPT\n\nchain -p 70-0 -j RETURN\nfoo\n"
    assert errors_of(text, "/etc/oncn-mda/oncn-mda.conf") == [
        "/etc/oncn-mda/oncn-mda.conf:3:12: '300.1.1.1/24' is not an IPv4 CIDR",
        "/etc/oncn-mda/oncn-mda.conf:5:10: port 0 is out of range 1-65535",
        "/etc/oncn-mda/oncn-mda.conf:6:1: expected 'chain' at the start of a rule, got 'foo'",
    ]


def test_parse_error_is_a_value_error_carrying_rule_errors():
    with pytest.raises(ValueError) as info:
        R.parse("chain -j ACCEPT\nchain -j NOPE\n", "x.conf")
    error = info.value
    assert isinstance(error, ParseError)
    assert error.errors == [RuleError("x.conf", 2, 10, "'NOPE' is not a target; use ACCEPT or RETURN")]
    assert str(error) == "x.conf:2:10: 'NOPE' is not a target; use ACCEPT or RETURN"


def test_max_rules_fit():
    assert len(R.parse("chain -j ACCEPT\n" * abi.MAX_RULES).rules) == abi.MAX_RULES


def test_too_many_rules_names_the_first_rule_too_many():
    text = "# header\n\n" + "chain -p 80 -j RETURN\n" * 64 + "chain -j ACCEPT # ok\n" * 64 + "  chain -j ACCEPT\n" * 3
    assert errors_of(text) == ["oncn-mda.conf:131:3: too many rules: at most 128 fit in the kernel"]


def test_parse_rule_errors_are_relative_to_the_text():
    with pytest.raises(ParseError) as info:
        R.parse_rule("chain --port 80-70 -j ACCEPT")
    assert str(info.value) == "<rule>:1:14: port range '80-70' is reversed; did you mean 70-80"
    with pytest.raises(ParseError) as info:
        R.parse_rule("chain -j DROP", path="argv")
    assert str(info.value) == "argv:1:10: 'DROP' is not a target; use ACCEPT or RETURN"


@pytest.mark.parametrize("text, message", [
    ("", "<rule>:1:1: no rule here; a rule starts with 'chain'"),
    ("   # just a comment", "<rule>:1:1: no rule here; a rule starts with 'chain'"),
    ("chain -j ACCEPT\nchain -j RETURN", "<rule>:1:16: a rule is a single line"),
])
def test_parse_rule_wants_exactly_one_rule(text, message):
    with pytest.raises(ParseError) as info:
        R.parse_rule(text)
    assert str(info.value) == message


# ---------------------------------------------------------------- judge()

def view(ips=("10.0.0.1", "10.0.0.2", "10.0.0.2"), ports=(40000, 80, 80), uids=(1000, 2000),
         gids=(1000, 2000)) -> ConnView:
    return ConnView(tuple(ips), tuple(ports), tuple(uids), tuple(gids))


ACCEPT_ALL = R.parse_rule("chain -j ACCEPT")
RETURN_80 = R.parse_rule("chain --port 80 -j RETURN")


def test_no_rules_accelerates_everything():
    assert R.judge([], view()) == Verdict(True, None)


@pytest.mark.parametrize("rules, index", [([ACCEPT_ALL, RETURN_80], 1), ([RETURN_80, ACCEPT_ALL], 0)])
def test_return_beats_accept_in_either_order(rules, index):
    assert R.judge(rules, view()) == Verdict(False, index)


def test_only_return_rules_accelerate_everything_they_do_not_match():
    rules = [R.parse_rule("chain -p 15006 -j RETURN"), R.parse_rule("chain -u 0 -j RETURN")]
    assert R.judge(rules, view()) == Verdict(True, None)
    assert R.judge(rules, view(uids=(1000, 0))) == Verdict(False, 1)


def test_any_accept_rule_accelerates_only_what_an_accept_rule_matches():
    rules = [R.parse_rule("chain -p 15006 -j RETURN"), R.parse_rule("chain --ip 192.168.1.0/24 -j ACCEPT"),
             R.parse_rule("chain -p 80 -j ACCEPT")]
    assert R.judge(rules, view()) == Verdict(True, 2)
    assert R.judge(rules, view(ips=("192.168.1.9",) * 3, ports=(1, 2, 3))) == Verdict(True, 1)
    assert R.judge(rules, view(ports=(1, 2, 3))) == Verdict(False, None)


def test_all_options_of_a_line_must_match():
    rule = [R.parse_rule("chain --ip 10.0.0.0/24 --port 80 --uid-owner 1000 --gid-owner 2000 -j ACCEPT")]
    assert R.judge(rule, view()).accelerate
    assert not R.judge(rule, view(ips=("10.9.0.1",) * 3)).accelerate
    assert not R.judge(rule, view(ports=(1, 2, 3))).accelerate
    assert not R.judge(rule, view(uids=(5, 6))).accelerate
    assert not R.judge(rule, view(gids=(5, 6))).accelerate


@pytest.mark.parametrize("end", [0, 1, 2])
def test_ip_and_port_match_at_any_of_the_three_ends(end):
    ips, ports = ["1.1.1.1"] * 3, [1, 1, 1]
    ips[end], ports[end] = "10.0.0.7", 80
    rules = [R.parse_rule("chain --ip 10.0.0.0/24 -p 80 -j ACCEPT")]
    assert R.judge(rules, view(ips=ips, ports=ports)) == Verdict(True, 0)


def test_redirect_original_destination_matches_ip_though_accepting_end_does_not():
    # 10.0.0.1 connects to 10.96.0.10:80; iptables REDIRECTs it to the sidecar on 127.0.0.1:15001
    redirected = view(ips=("10.0.0.1", "10.96.0.10", "127.0.0.1"), ports=(40000, 80, 15001))
    assert R.judge([R.parse_rule("chain --ip 10.96.0.0/16 -j ACCEPT")], redirected) == Verdict(True, 0)
    assert R.judge([R.parse_rule("chain --port 80 -j RETURN")], redirected) == Verdict(False, 0)


@pytest.mark.parametrize("cidr, ips, matches", [
    # An IPv4 CIDR is ::ffff:a.b.c.d/(96+N) to the kernel: IPv4 addresses only.
    ("10.0.0.0/8", ("10.1.2.3", "fd00::1", "fd00::1"), True),
    ("10.0.0.0/8", ("::ffff:10.1.2.3", "fd00::1", "fd00::1"), True),   # the same address, mapped
    ("0.0.0.0/0", ("fd00::1", "::1", "::"), False),
    ("0.0.0.0/0", ("fd00::1", "127.0.0.1", "::"), True),
    ("0.0.0.0/0", ("::a00:1", "::a00:1", "::a00:1"), False),           # IPv4-compatible is IPv6
    # An IPv6 CIDR holds IPv6 addresses, and IPv4 ones only where it holds ::ffff:a.b.c.d.
    ("2001:db8::/32", ("2001:db8:1::5", "10.0.0.1", "10.0.0.1"), True),
    ("2001:db8::/32", ("2001:db9::5", "10.0.0.1", "::1"), False),
    ("::/0", ("10.0.0.1", "10.0.0.2", "10.0.0.2"), True),
    ("::/0", ("fd00::1", "fd00::2", "fd00::2"), True),
    ("::/96", ("10.0.0.1", "0.0.0.0", "fd00::"), False),
    ("::/96", ("10.0.0.1", "::ffff:0", "fd00::"), True),                # ::255.255.0.0
    ("::/80", ("10.0.0.1", "fd00::1", "fd00::1"), True),                # holds ::ffff:0:0/96
    ("::/81", ("10.0.0.1", "fd00::1", "fd00::1"), False),
    ("fd00::1/128", ("fd00::1", "fd00::2", "fd00::2"), True),
    ("fd00::1/128", ("fd00::2", "fd00::2", "fd00::2"), False),
])
def test_ip_matches_as_the_kernel_compares_16_bytes(cidr, ips, matches):
    assert R.judge([R.parse_rule(f"chain --ip {cidr} -j ACCEPT")], view(ips=ips)) == \
        Verdict(matches, 0 if matches else None)


@pytest.mark.parametrize("owner", [0, 1])
def test_owner_of_either_socket_matches(owner):
    uids, gids = [5, 5], [6, 6]
    uids[owner], gids[owner] = 1337, 1338
    rules = [R.parse_rule("chain -u 1337 -g 1338 -j ACCEPT")]
    assert R.judge(rules, view(uids=uids, gids=gids)) == Verdict(True, 0)


def test_unknown_owner_never_matches():
    unknown = view(uids=(None, None), gids=(None, None))
    assert R.judge([R.parse_rule("chain -u 0 -j RETURN")], unknown) == Verdict(True, None)
    assert R.judge([R.parse_rule("chain -g 0 -j ACCEPT")], unknown) == Verdict(False, None)


# ---------------------------------------------------------------- kernel form

def test_to_ruleset_fields():
    rs = R.to_ruleset(R.parse(SEED + "chain -i 10.1.2.3 -p 80-90 -g 7 -j accept\n").rules)
    assert (rs.count, rs.n_accept) == (3, 2)
    first, second, third = rs.rules[0], rs.rules[1], rs.rules[2]
    assert first.flags == abi.RULE_IP | abi.RULE_UID
    assert (bytes(first.ip), bytes(first.mask), first.uid) == (
        addrs.pack("192.168.1.0"), b"\xff" * 15 + b"\0", 1337)  # ::ffff:192.168.1.0/120
    assert second.flags == abi.RULE_PORT | abi.RULE_RETURN
    assert (second.port_lo, second.port_hi) == (15006, 15006)
    assert third.flags == abi.RULE_IP | abi.RULE_PORT | abi.RULE_GID
    assert (bytes(third.ip), bytes(third.mask)) == (bytes(10) + b"\xff\xff\x0a\x01\x02\x03", b"\xff" * 16)
    assert (third.port_lo, third.port_hi, third.gid) == (80, 90, 7)
    assert rs.rules[3].flags == 0


def test_to_ruleset_keeps_ipv6_cidrs_as_they_are():
    rs = R.to_ruleset([R.parse_rule("chain --ip 2001:db8::/32 -j ACCEPT"), R.parse_rule("chain -i ::/0 -j RETURN")])
    first, second = rs.rules[0], rs.rules[1]
    assert first.flags == abi.RULE_IP and second.flags == abi.RULE_IP | abi.RULE_RETURN
    assert (bytes(first.ip), bytes(first.mask)) == (b"\x20\x01\x0d\xb8" + bytes(12), b"\xff" * 4 + bytes(12))
    assert list(first.ip) == addrs.words_of(addrs.pack("2001:db8::")).tolist()  # words as the keys hold them
    assert (bytes(second.ip), bytes(second.mask)) == (bytes(16), bytes(16))


def test_to_ruleset_empty_and_too_many():
    rs = R.to_ruleset([])
    assert (rs.count, rs.n_accept) == (0, 0)
    with pytest.raises(ValueError, match="at most 128"):
        R.to_ruleset([ACCEPT_ALL] * (abi.MAX_RULES + 1))


def by_number(rule: Rule) -> Rule:
    """A rule as the kernel keeps it: users and groups without their names."""
    return dataclasses.replace(rule, uid=rule.uid and NamedId(rule.uid.id),
                               gid=rule.gid and NamedId(rule.gid.id))


@pytest.mark.parametrize("text", [
    "chain -j ACCEPT",
    "chain -j RETURN",
    "chain --ip 0.0.0.0/0 -j RETURN",
    "chain --ip 10.1.2.3 -j ACCEPT",
    "chain --ip ::/0 -j RETURN",
    "chain --ip ::/95 -j RETURN",
    "chain --ip fd00::1 -j ACCEPT",
    "chain --ip 2001:db8::/32 --port 443 -u 0 -j ACCEPT",
    "chain --ip ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127 -j ACCEPT",
    "chain --ip 192.168.1.0/24 --uid-owner 1337 --j ACCEPT",
    "chain --port 15006 -j RETURN",
    "chain --port 80-90 -j ACCEPT",
    "chain --port 1-65535 --gid-owner 4294967294 -j RETURN",
    "chain -i 10.0.0.0/8 -p 8000-8999 -u 0 -g 7 -j return",
])
def test_from_ruleset_gives_back_each_kind_of_rule(text):
    rule = R.parse_rule(text)
    assert R.from_ruleset(R.to_ruleset([rule])) == [rule]


def test_from_ruleset_gives_back_names_as_numbers(fake_accounts):
    rules = R.parse(SEED + "chain --uid-owner istio-proxy --gid-owner mesh -p 80-89 -j RETURN\n").rules
    assert R.from_ruleset(R.to_ruleset(rules)) == [
        Rule(Target.ACCEPT, net=net("192.168.1.0/24"), uid=NamedId(1337)),
        Rule(Target.RETURN, ports=(15006, 15006)),
        Rule(Target.RETURN, ports=(80, 89), uid=NamedId(1337), gid=NamedId(2000)),
    ]
    assert R.from_ruleset(R.to_ruleset([])) == []


SAME = R.parse(SEED).rules


@pytest.mark.parametrize("kernel, wanted, at", [
    (SAME, SAME, None),
    ([], [], None),
    (SAME, [by_number(r) for r in SAME], None),
    ([R.parse_rule("chain -u 0 -j RETURN")], [R.parse_rule(f"chain -u {ROOT_USER} -j RETURN")], None),
    (SAME, SAME[::-1], 0),                                      # order matters
    (SAME, [SAME[0], R.parse_rule("chain --port 15007 -j RETURN")], 1),
    (SAME, [SAME[0], R.parse_rule("chain --port 15006 -j ACCEPT")], 1),
    (SAME + [ACCEPT_ALL], SAME, 2),                             # the kernel runs one more
    (SAME[:1], SAME, 1),                                        # the kernel lacks one
    ([], SAME, 0),
])
def test_first_difference_compares_what_the_kernel_sees(kernel, wanted, at):
    assert R.first_difference(R.from_ruleset(R.to_ruleset(kernel)), wanted) == at


# ---------------------------------------------------------------- document edits

DOC = """\
# header comment

# web traffic
chain --port 80 -j ACCEPT   # trailing
# never the sidecar
chain -p 15006 -j RETURN
# tail
"""


def test_unedited_document_round_trips_byte_for_byte():
    for text in (DOC, SEED, "", "\n\n", "chain -j ACCEPT", "chain -j ACCEPT\r\n# c\r\n"):
        assert R.parse(text).text() == text


def test_add_appends_in_canonical_form():
    doc = R.parse(DOC)
    assert doc.add(R.parse_rule("chain -j accept -u 1 --ip 1.2.3.0/24 -p 80-90")) == 2
    assert doc.text() == DOC + "chain --ip 1.2.3.0/24 --port 80-90 --uid-owner 1 -j ACCEPT\n"


def test_add_after_an_unterminated_last_line():
    doc = R.parse("# no newline")
    doc.add(ACCEPT_ALL)
    assert doc.text() == "# no newline\nchain -j ACCEPT\n"


def test_add_refuses_rule_129():
    doc = R.parse("chain -j ACCEPT\n" * abi.MAX_RULES)
    with pytest.raises(ValueError, match="at most 128"):
        doc.add(ACCEPT_ALL)


def test_delete_removes_only_that_line():
    doc = R.parse(DOC)
    assert doc.delete(0) == R.parse_rule("chain --port 80 -j ACCEPT")
    assert doc.text() == DOC.replace("chain --port 80 -j ACCEPT   # trailing\n", "")


def test_replace_rewrites_the_rule_and_keeps_its_trailing_comment():
    doc = R.parse(DOC)
    doc.replace(0, R.parse_rule("chain -p 8080 -j ACCEPT"))
    doc.replace(1, R.parse_rule("chain -p 15001 -j RETURN"))
    assert doc.text() == DOC.replace("chain --port 80 -j ACCEPT   # trailing",
                                     "chain --port 8080 -j ACCEPT   # trailing") \
                            .replace("chain -p 15006 -j RETURN", "chain --port 15001 -j RETURN")


def test_move_moves_only_the_rule_line():
    doc = R.parse(DOC)
    doc.move(1, 0)
    assert doc.text() == """\
# header comment

# web traffic
chain -p 15006 -j RETURN
chain --port 80 -j ACCEPT   # trailing
# never the sidecar
# tail
"""
    doc.move(0, 1)
    assert [str(r) for r in doc.rules] == ["chain --port 80 -j ACCEPT", "chain --port 15006 -j RETURN"]
    doc.move(1, 1)
    assert len(doc.rules) == 2


def test_move_of_an_unterminated_last_line_keeps_lines_apart():
    doc = R.parse("chain -p 1 -j ACCEPT\nchain -p 2 -j ACCEPT")
    doc.move(1, 0)
    assert doc.text() == "chain -p 2 -j ACCEPT\nchain -p 1 -j ACCEPT\n"
    doc = R.parse("chain -p 1 -j ACCEPT\nchain -p 2 -j ACCEPT")
    doc.move(0, 1)
    assert doc.text() == "chain -p 2 -j ACCEPT\nchain -p 1 -j ACCEPT\n"


@pytest.mark.parametrize("edit", [lambda d: d.delete(2), lambda d: d.replace(-1, ACCEPT_ALL),
                                  lambda d: d.move(0, 2), lambda d: d.move(5, 0)])
def test_edits_of_missing_rules_raise_index_error(edit):
    doc = R.parse(DOC)
    with pytest.raises(IndexError):
        edit(doc)
    assert doc.text() == DOC


# ---------------------------------------------------------------- load and save

def test_load_and_save_round_trip(tmp_path):
    path = tmp_path / "oncn-mda.conf"
    path.write_bytes(DOC.encode() + b"# caf\xe9 in latin-1\n")
    before = path.read_bytes()
    R.save(R.load(path), path)
    assert path.read_bytes() == before


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "oncn-mda.conf"
    path.write_text("chain -j ACCEPT\nchain --ip 300.1.1.1/24 -j ACCEPT\n")
    with pytest.raises(ParseError) as info:
        R.load(path)
    assert str(info.value) == f"{path}:2:12: '300.1.1.1/24' is not an IPv4 CIDR"


def test_load_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.conf"):
        R.load(tmp_path / "nope.conf")


def test_load_empty_file(tmp_path):
    (tmp_path / "empty.conf").write_text("")
    assert R.load(tmp_path / "empty.conf").rules == []


def test_save_keeps_mode_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "oncn-mda.conf"
    path.write_text(SEED)
    path.chmod(0o640)
    doc = R.load(path)
    doc.add(ACCEPT_ALL)
    R.save(doc, path)
    assert path.read_text() == SEED + "chain -j ACCEPT\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["oncn-mda.conf"]


def test_save_creates_a_new_file(tmp_path):
    path = tmp_path / "new.conf"
    R.save(R.parse(SEED), path)
    assert path.read_text() == SEED
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_save_through_a_symlink_replaces_the_target(tmp_path):
    real = tmp_path / "real.conf"
    real.write_text("")
    link = tmp_path / "link.conf"
    link.symlink_to(real)
    R.save(R.parse(SEED), link)
    assert link.is_symlink() and real.read_text() == SEED


def fail(*args, **kwargs):
    raise OSError("disk on fire")


@pytest.mark.parametrize("name", ["replace", "fsync", "fchmod"])
def test_failed_save_leaves_the_original_and_no_temp_file(tmp_path, monkeypatch, name):
    path = tmp_path / "oncn-mda.conf"
    path.write_text(SEED)
    doc = R.load(path)
    doc.delete(0)
    monkeypatch.setattr(os, name, fail)
    with pytest.raises(OSError, match="disk on fire"):
        R.save(doc, path)
    assert path.read_text() == SEED
    assert os.listdir(tmp_path) == ["oncn-mda.conf"]


def test_failure_in_the_middle_of_the_write(tmp_path, monkeypatch):
    path = tmp_path / "oncn-mda.conf"
    path.write_text(SEED)
    real_fdopen = os.fdopen

    class DiskFull:
        """The temp file, filling up halfway through the text."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(os, "fdopen", lambda *args, **kwargs: DiskFull(real_fdopen(*args, **kwargs)))
    with pytest.raises(OSError, match="No space left"):
        R.save(R.parse(DOC), path)
    assert path.read_text() == SEED
    assert os.listdir(tmp_path) == ["oncn-mda.conf"]


# ---------------------------------------------------------------- properties

OWNERS = st.one_of(
    st.none(),
    st.builds(NamedId, st.integers(0, R.MAX_ID)),
    st.just(NamedId(0, ROOT_USER)),
)
GROUPS = st.one_of(st.none(), st.builds(NamedId, st.integers(0, R.MAX_ID)), st.just(NamedId(0, ROOT_GROUP)))


@st.composite
def networks(draw):
    """IPv4 and IPv6 CIDRs; none within ::ffff:0:0/96, which are written as IPv4 ones."""
    bits = draw(st.sampled_from([32, 128]))
    prefix = draw(st.integers(0, bits))
    address = draw(st.integers(0, 2**bits - 1)) >> (bits - prefix) << (bits - prefix) if prefix else 0
    net = ipaddress.ip_network((address, prefix)) if bits == 32 else ipaddress.IPv6Network((address, prefix))
    if net.version == 6 and prefix >= 96 and net.network_address.ipv4_mapped is not None:
        return ipaddress.IPv4Network((net.network_address.ipv4_mapped, prefix - 96))
    return net


@st.composite
def port_ranges(draw):
    lo = draw(st.integers(1, 65535))
    return lo, draw(st.integers(lo, 65535))


RULES = st.builds(Rule, st.sampled_from(Target), st.none() | networks(), st.none() | port_ranges(),
                  OWNERS, GROUPS)


@given(st.lists(RULES, max_size=20))
def test_formatting_then_parsing_gives_the_same_rules(rules):
    doc = R.parse("# generated\n")
    for rule in rules:
        doc.add(rule)
    assert R.parse(doc.text()).rules == rules
    assert [R.parse_rule(R.format_rule(rule)) for rule in rules] == rules


@given(st.lists(RULES, max_size=abi.MAX_RULES))
def test_to_ruleset_then_back_gives_the_rules_by_number(rules):
    back = R.from_ruleset(R.to_ruleset(rules))
    assert back == [by_number(rule) for rule in rules]
    assert R.first_difference(back, rules) is None


TOKENS = st.sampled_from(["chain", "--ip", "-i", "--port", "-p", "--ports", "-u", "--uid-owner", "-g",
                          "--gid-owner", "-j", "--j", "--jump", "ACCEPT", "return", "DROP", "#", "1.2.3.4",
                          "10.0.0.0/8", "10.0.0.1/8", "1.2.3.4/99", "80", "0", "80-70", "65536", "root",
                          "2001:db8::/32", "fd00::1/64", "::/0", "::ffff:1.2.3.4", "fe80::1%lo", ":", "::/999",
                          "\t", "\r", "1337", "4294967295", "\x00", "\udcff", "٣"])


@settings(max_examples=300)
@given(st.one_of(st.text(), st.lists(st.one_of(TOKENS, st.text(max_size=5))).map(" ".join)))
def test_arbitrary_text_raises_nothing_but_parse_error(text):
    for attempt in (lambda: R.parse(text), lambda: R.parse_rule(text)):
        try:
            attempt()
        except ParseError as error:
            assert error.errors and all(e.line >= 1 and e.col >= 1 for e in error.errors)
