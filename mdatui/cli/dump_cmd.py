"""`mdatui dump` (what accelerated connections send) and `mdatui events` (what the programs did).

Both run until Ctrl-C, SIGTERM/SIGHUP or --count. dump always switches capture back off: the
copy costs every redirected message while it is on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import sys
import threading

from ..core import dump, events, pcap, units
from ..core.ends import Owner
from ..core.kernel import system
from ..core.kernel.instance import Instance
from ..core.kernel.perfbuf import ReaderBusy

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_SECONDS = 0.5
PREVIEW_CHARS = 80


def _checked(check, convert=int):
    """An argparse type from a core validator, so that the error names the argument."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        try:
            return check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _positive(n: int) -> int:
    if n < 1:
        raise ValueError(f"{n} is not a positive number")
    return n


def add_parser(sub, pin_arg) -> None:
    p = sub.add_parser("dump", help="print what accelerated connections send (tcpdump cannot see it)")
    p.add_argument("--ip", type=_checked(dump.parse_ip, str),
                   help="only connections with an end in this IPv4 or IPv6 address or CIDR")
    p.add_argument("--port", type=_checked(dump.check_port), help="only connections with an end on this port")
    p.add_argument("--snaplen", type=_checked(dump.check_snaplen), default=dump.DEFAULT_SNAPLEN,
                   help=f"bytes captured of each message (default {dump.DEFAULT_SNAPLEN}, "
                        f"at most {dump.MAX_SNAPLEN})")
    p.add_argument("--count", type=_checked(_positive), help="stop after this many messages")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per message (data in hex)")
    out.add_argument("--pcap", metavar="FILE", help="write a pcap file for Wireshark ('-': stdout)")
    pin_arg(p)
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("events", help="stream what the accelerator does: pairs made, refused, closed")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--count", type=_checked(_positive), help="stop after this many events")
    pin_arg(p)
    p.set_defaults(func=cmd_events)


def _fail(message: str) -> int:
    print(f"mdatui: {message}", file=sys.stderr)
    return 1


def _open(pin_dir: str, action: str) -> Instance:
    system.require_root(action)
    return Instance(pin_dir)


@contextlib.contextmanager
def _stop_on_signals():
    """Ctrl-C, SIGTERM and SIGHUP ask the command to stop between two polls, so that nothing is
    cut in half and the cleanup runs. A flag, not an exception: a signal may reach any thread
    (numpy's among them), so blocking it in the main thread would not hold it off."""
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in _STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _clock(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")


def _preview(data: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 else "." for b in data[:PREVIEW_CHARS])


def _dump_line(rec: dump.DumpRecord) -> str:
    cut = f", captured {len(rec.data)}" if rec.truncated else ""
    return (f"{_clock(rec.ts)} {rec.src} > {rec.dst}: {rec.direction}, length {rec.len}{cut}: "
            f"{_preview(rec.data)}")


def _filter_text(a) -> str:
    parts = [f"ip {a.ip}" if a.ip else "", f"port {a.port}" if a.port else ""]
    return " and ".join(p for p in parts if p) or "all connections"


def _pump(poll, emit, count: int | None, out, stop: threading.Event) -> int:
    """Emit what poll() returns until count items or a stop signal; returns how many went out."""
    done = 0
    try:
        while not stop.is_set() and (count is None or done < count):
            for item in poll(POLL_SECONDS)[: None if count is None else count - done]:
                emit(item)
                done += 1
            out.flush()
    except BrokenPipeError:
        # The reader of our output went away (`| head`); nothing more can be printed there.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return done


def cmd_dump(a) -> int:
    with contextlib.ExitStack() as stack:
        inst = stack.enter_context(_open(a.pin_dir, "dump"))
        out = sys.stdout.buffer if a.pcap == "-" else sys.stdout
        if a.pcap and a.pcap != "-":
            try:
                out = stack.enter_context(open(a.pcap, "wb"))
            except OSError as e:
                return _fail(f"cannot write --pcap {a.pcap}: {e.strerror}")
        writer = pcap.PcapWriter(out, a.snaplen) if a.pcap else None
        stop = stack.enter_context(_stop_on_signals())
        try:
            session = dump.DumpSession(inst, ip=a.ip, port=a.port, snaplen=a.snaplen)
        except ReaderBusy as e:
            return _fail(str(e))
        try:
            print(f"dumping redirected messages on {a.pin_dir} ({_filter_text(a)}, "
                  f"snaplen {a.snaplen}); Ctrl-C to stop", file=sys.stderr, flush=True)

            def emit(rec) -> None:
                if writer:
                    writer.write(rec)
                else:
                    print(json.dumps(rec.to_json()) if a.json else _dump_line(rec))
            captured = _pump(session.poll, emit, a.count, out, stop)
        finally:
            lost = session.lost
            session.close()
        print(f"{captured} messages captured, {lost} lost; dump switched off", file=sys.stderr)
    return 0


def _who(owner: Owner) -> str:
    return f"pid {owner.pid if owner.pid is not None else '?'}"


def _event_line(ev: events.Event) -> str:
    head = f"{_clock(ev.ts)} {ev.kind.upper():<15}"
    if isinstance(ev, (events.Accelerated, events.Refused)):
        line = f"{head} {ev.end.local} > {ev.end.remote} ({_who(ev.owner)} > {_who(ev.peer_owner)})"
        if isinstance(ev, events.Refused):
            line += f" by rule {ev.rule}" if ev.rule is not None else ": no ACCEPT rule matched"
        return line
    peer = f"peer {ev.peer.local}" if ev.peer else "never paired"
    return (f"{head} {ev.end.local} > {ev.end.remote} ({_who(ev.owner)}, {peer}): "
            f"{ev.msgs} msgs, {units.size(ev.bytes)} redirected, {ev.passed} passed")


def cmd_events(a) -> int:
    with contextlib.ExitStack() as stack:
        inst = stack.enter_context(_open(a.pin_dir, "events"))
        stop = stack.enter_context(_stop_on_signals())
        try:
            stream = stack.enter_context(events.EventStream(inst))
        except ReaderBusy as e:
            return _fail(str(e))
        print(f"events of {a.pin_dir}; Ctrl-C to stop", file=sys.stderr, flush=True)
        _pump(stream.poll, lambda ev: print(json.dumps(ev.to_json()) if a.json else _event_line(ev)),
              a.count, sys.stdout, stop)
        if stream.lost:
            print(f"{stream.lost} events lost (the reader fell behind)", file=sys.stderr)
    return 0
