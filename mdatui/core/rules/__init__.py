"""Chain rules: which connections the accelerator may short-circuit.

Format (etc/oncn-mda.conf, compatible with oncn-mda): one rule per line,

    chain [--ip CIDR] [--port N|N-M] [--uid-owner USER] [--gid-owner GROUP] -j ACCEPT|RETURN

with the aliases -i; --ports, -p; -u; -g; --j, --jump. The target is case-insensitive. `#` starts
a comment, on its own line or after a rule; blank lines are fine. --ip takes an IPv4 or IPv6
address (a /32 or /128) or CIDR with no host bits set (a.b.c.d/N, 2001:db8::/32). An IPv4 CIDR
matches IPv4 addresses only; an IPv6 one the addresses in it, an IPv4 address counting as
::ffff:a.b.c.d, as the kernel keeps it (core.addrs): 2001:db8::/32 matches no IPv4 address and
::/0 every address. IPv4-mapped CIDRs are written in IPv4 form. A user or group may be a number
or a name; a name is resolved when the file is parsed, like iptables' owner match, and kept for
display and saving. At most abi.MAX_RULES rules fit in the kernel.

Semantics (bpf/sock_ops.c implements them; verdicts.py judges open connections by them over
columns, held by the tests to the kernel and to judge() here, one connection at a time):
  * A rule matches when all its options hold. An option holds when ANY end of the connection
    satisfies it: --ip when any of the three addresses (the connecting end's local address, its
    original destination, the accepting end's local address; they differ behind an iptables
    REDIRECT) is in the CIDR, --port likewise for the three ports, --uid-owner / --gid-owner when
    the owner of either socket has that id. An unknown owner (None) never matches.
  * A matching RETURN rule refuses acceleration, whatever the order of the rules.
  * With no ACCEPT rule, everything else is accelerated (so no rules: everything is).
  * With any ACCEPT rule, only what some ACCEPT rule matches is accelerated.

Rule indices are 0-based positions among the rules (comments and blank lines not counted): the
number the kernel reports in its events.
"""

from .model import (
           MAX_ID,
           ConnView,
           NamedId,
           ParseError,
           Rule,
           RuleError,
           Target,
           Verdict,
           first_difference,
           format_rule,
           from_ruleset,
           judge,
           to_ruleset,
)
from .text import Config, load, parse, parse_rule, save

__all__ = ["MAX_ID", "Config", "ConnView", "NamedId", "ParseError", "Rule", "RuleError", "Target",
           "Verdict", "first_difference", "format_rule", "from_ruleset", "judge", "load", "parse",
           "parse_rule", "save", "to_ruleset"]
