"""Put a chain-rule set into the running kernel, and say what it changes for live connections.

The kernel judges a connection once, when its accepting end is established. A new set therefore
takes already-accelerated connections that it refuses off the fast path here (both ends are
marked so that their sk_msg program passes every further message to the stack, in order, with
no byte lost), while connections it newly accepts are accelerated from their next connection on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import reader, resources, rules, table, verdicts
from .kernel import abi
from .kernel.instance import Instance

SYSTEM_CONFIG = Path("/etc/oncn-mda/oncn-mda.conf")


def default_config(inst: Instance | None = None) -> str:
    """The file `rules` commands edit: what enable loaded, else the system's, else the repo's."""
    if inst is not None and inst.config:
        return inst.config
    if env := os.environ.get("MDATUI_CONFIG"):
        return env
    return str(SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else resources.DEFAULT_CONFIG)


def take_off_fast_path(inst: Instance, change: verdicts.RulePreview) -> int:
    """Ask both ends of each connection the change takes off to stop redirecting."""
    keys = change.off.keys()
    return inst.request_stop((abi.SockKey * len(keys)).from_buffer_copy(keys.tobytes()),
                             abi.Leave.RULE)


def _ends(inst: Instance) -> table.Table:
    """The ends as they are now. Only sock_proxy_map is read: the judge needs neither the
    sockhash (walking it costs 0.4 s at 200,000 ends) nor the rest of a snapshot."""
    name = "sock_proxy_map"
    return reader.read_ends(inst.maps[name], inst.map_capacity(name), time.clock_gettime_ns(time.CLOCK_MONOTONIC))


@dataclass
class Applied:
    rules: int
    taken_off: int
    saved_to: str | None


def apply(inst: Instance, config: rules.Config, path: str | None) -> Applied:
    """Kernel first, then the file; if saving fails the kernel goes back to the old set."""
    new_rules = config.rules
    ruleset = rules.to_ruleset(new_rules)
    before = verdicts.preview(_ends(inst), new_rules, first=0)
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
    if before.taken_off:
        take_off_fast_path(inst, before)
    return Applied(len(new_rules), before.taken_off, path)
