"""Put a chain-rule set into the running kernel, and say what it changes for live connections.

The kernel judges a connection once, when its accepting end is established. A new set therefore
takes already-accelerated connections that it refuses off the fast path here (both ends are
marked so that their sk_msg program passes every further message to the stack, in order, with
no byte lost), while connections it newly accepts are accelerated from their next connection on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import abi, resources, rules, snapshot
from .instance import Instance

SYSTEM_CONFIG = Path("/etc/oncn-mda/oncn-mda.conf")


def default_config(inst: Instance | None = None) -> str:
    """The file `rules` commands edit: what enable loaded, else the system's, else the repo's."""
    if inst is not None and inst.config:
        return inst.config
    if env := os.environ.get("MDATUI_CONFIG"):
        return env
    return str(SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else resources.DEFAULT_CONFIG)


@dataclass(frozen=True)
class Pair:
    """Both ends of an accelerated connection: the one that connected and the one that accepted."""

    connecting: snapshot.Connection
    accepting: snapshot.Connection

    def view(self) -> rules.ConnView:
        """What the rules see, as bpf/sock_ops.c builds it when the pair is made."""
        c, a = self.connecting, self.accepting
        addr = [c.end.local, c.end.remote, a.end.local]
        return rules.ConnView(
            ips=tuple(x.rpartition(":")[0] for x in addr),
            ports=tuple(int(x.rpartition(":")[2]) for x in addr),
            uids=(c.owner.uid, a.owner.uid),
            gids=(c.owner.gid, a.owner.gid),
        )


def accelerated_pairs(snap: snapshot.Snapshot) -> list[Pair]:
    by_end = {c.end: c for c in snap.connections}
    pairs = []
    for c in snap.connections:
        if c.state == "accelerated" and c.active and c.peer in by_end:
            pairs.append(Pair(c, by_end[c.peer]))
    return pairs


@dataclass
class Preview:
    """What a rule set would change now: pairs taken off the fast path, with the refusing rule."""

    taken_off: list[tuple[Pair, int | None]] = field(default_factory=list)
    staying: list[Pair] = field(default_factory=list)


def preview(snap: snapshot.Snapshot, new_rules: list[rules.Rule]) -> Preview:
    out = Preview()
    for pair in accelerated_pairs(snap):
        verdict = rules.judge(new_rules, pair.view())
        if verdict.accelerate:
            out.staying.append(pair)
        else:
            out.taken_off.append((pair, verdict.rule_index))
    return out


def take_off_fast_path(inst: Instance, pair: Pair) -> None:
    inst.request_stop((_key(end) for end in (pair.connecting.end, pair.accepting.end)),
                      abi.Leave.RULE)


def _key(end: snapshot.Endpoint) -> abi.SockKey:
    lip, _, lport = end.local.rpartition(":")
    rip, _, rport = end.remote.rpartition(":")
    return abi.SockKey(abi.ip_be(lip), abi.ip_be(rip), int(lport), int(rport), end.netns)


@dataclass
class Applied:
    rules: int
    taken_off: int
    saved_to: str | None


def apply(inst: Instance, config: rules.Config, path: str | None) -> Applied:
    """Kernel first, then the file; if saving fails the kernel goes back to the old set."""
    new_rules = config.rules
    ruleset = rules.to_ruleset(new_rules)
    before = preview(snapshot.read(inst), new_rules)
    old_active = inst.active_set
    inst.load_rules(ruleset)
    if path is not None:
        try:
            rules.save(config, path)
        except BaseException:
            inst.active_set = old_active
            raise
    # Connections made after the flip were judged by the new set already; the ones before it
    # that it refuses leave the fast path now.
    for pair, _ in before.taken_off:
        take_off_fast_path(inst, pair)
    return Applied(len(new_rules), len(before.taken_off), path)
