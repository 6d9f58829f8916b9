"""Cell helpers the tables of several views share: address sort keys, styled states."""

from __future__ import annotations

import ipaddress

from rich.text import Text

STATE_STYLES = {
    "accelerated": "green",
    "pending": "yellow",
    "normal": "dim",
    "ok": "green",
    "one-sided": "bold red",
    "stale": "bold yellow",
}


def address_key(addr: str) -> tuple[int, int]:
    """ip:port sorted as numbers, so that 10.0.0.9 comes before 10.0.0.10."""
    ip, _, port = addr.rpartition(":")
    return int(ipaddress.IPv4Address(ip)), int(port)


def styled(word: str) -> Text:
    return Text(word, style=STATE_STYLES.get(word, ""))
