"""Bytes as hex and ASCII side by side, the way tcpdump -X and xxd show them."""

from __future__ import annotations

from rich.text import Text

WIDTH = 16


def printable(data: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in data)


def hexdump(data: bytes, width: int = WIDTH) -> Text:
    out = Text(no_wrap=True)
    for off in range(0, len(data), width):
        chunk = data[off:off + width]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        # An extra space after the eighth byte, as xxd does, so columns can be counted by eye.
        if len(chunk) > 8:
            hexes = hexes[:23] + " " + hexes[23:]
        out.append(f"{off:04x}  ", style="dim")
        out.append(hexes.ljust(width * 3))
        out.append(" " + printable(chunk) + "\n", style="cyan")
    out.rstrip()
    return out
