"""Dump benchmark: the console's Dump tab under a sustained capture.

Targets (issue 12): at 50,000 messages a second for 10 minutes the console keeps refreshing at
its period, a key press is answered within 100 ms (median) and 250 ms (worst), resident memory
stays at most 200 MB, and the messages the view drops are counted.

The console (MdaConsole, headless at 200x50, refreshing at 1 Hz over the UI tests' fake backend)
captures from a source that makes --rate messages a second as perf records, handed over as
DumpSession.poll_raw hands them; from there on the path is the console's own: the capture
thread, the handoff, the ring, the table, decoding the messages it draws, selects or saves. No
kernel and no root needed: what it measures is the console, which the kernel's perf rings feed
the same way (reading them costs the capture thread more than this source does).

Keys are pressed all along on the Dump tab (scrolling back, resuming, clearing, switching tabs,
stopping and starting); once a minute the kept messages are saved as pcap. Latency: from the
key event's delivery to the app until every widget of the screen has an empty queue and the
screen has repainted (bench.console's measure).

    .venv/bin/python -m bench.dump [--rate 50000] [--seconds 60] [--keep 100000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.console import _ms, _rss_mb, _stats, _timed_press  # noqa: E402
from bench.report import run_and_print  # noqa: E402
from mdatui.core import addrs  # noqa: E402
from mdatui.core.kernel import abi  # noqa: E402
from mdatui.core import dump  # noqa: E402
from mdatui.core.kernel.perfbuf import wall_offset_ns  # noqa: E402
from tests.ui.fake import FakeBackend  # noqa: E402  (the fixed maps the UI tests show)

KEY_MEDIAN_MS, KEY_MAX_MS, RSS_MB = 100.0, 250.0, 200.0
REFRESH_S = 1.0
SAVE_EVERY_S = 60.0
MAX_BATCH = 20_000  # records one poll makes at most, as perf rings of bounded size would hold
# Pressed in turn, with the kind of each; the capture runs throughout except between s and s.
KEYS = (("up", "scroll back"), ("pageup", "scroll back"), ("pageup", "scroll back"),
        ("down", "scroll back"), ("home", "scroll back"), ("space", "resume"),
        ("1", "tab"), ("4", "tab"), ("space", "pause"), ("end", "scroll back"),
        ("space", "resume"), ("c", "clear"), ("s", "stop"), ("s", "start"))


class StreamDump:
    """A DumpSource making `rate` messages a second in the kernel's record format; flows and
    sizes vary, payloads look like HTTP."""

    def __init__(self, backend: "StreamBackend", snaplen: int):
        self.snaplen = snaplen
        self._backend = backend
        self.lost = 0
        self._rate = backend.rate
        self._start = time.monotonic()
        self._made = 0
        self._templates = [self._record(i) for i in range(64)]

    def _record(self, i: int) -> bytes:
        key = abi.SockKey.of(addrs.pack(f"198.18.0.{1 + i % 2}"), addrs.pack(f"198.18.0.{2 - i % 2}"),
                             40000 + i, 9080)
        ev = abi.DumpEvent(key=key, len=200 + 37 * i, active=i % 2)
        body = (b"GET /%d HTTP/1.1\r\nHost: svc\r\n\r\n" % i).ljust(ev.len, b".")
        ev.caplen = min(len(body), self.snaplen)
        return bytes(ev)[8:abi.DUMP_HEADER_SIZE] + body[:ev.caplen]  # less its stamp

    def poll_raw(self, timeout_s: float) -> list[dump.Raw]:
        due = int((time.monotonic() - self._start) * self._rate) - self._made
        if due <= 0:
            time.sleep(min(timeout_s, 1 / self._rate))
            return []
        due = min(due, MAX_BATCH)
        stamp = time.monotonic_ns()
        offset = wall_offset_ns()
        templates = self._templates
        out = [(offset, (stamp + n).to_bytes(8, "little") + templates[n % len(templates)])
               for n in range(due)]
        self._made += due
        self._backend.made += due
        return out

    def close(self) -> None:
        pass


class StreamBackend(FakeBackend):
    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate
        self.made = 0  # messages all its dumps made

    def start_dump(self, ip, port, snaplen) -> StreamDump:
        return StreamDump(self, snaplen)


async def measure(rate: float, seconds: float, keep: int) -> dict:
    from mdatui.ui.app import MdaConsole

    polled: list[float] = []
    on_polled = MdaConsole.on_polled

    def timed_polled(self, message):  # instrumentation only: when each refresh is shown
        polled.append(time.monotonic())
        on_polled(self, message)

    MdaConsole.on_polled = timed_polled
    presses: list[tuple[str, str, float]] = []
    saves: list[float] = []
    try:
        app = MdaConsole(StreamBackend(rate), interval=REFRESH_S, dump_keep=keep)
        async with app.run_test(size=(200, 50)) as pilot:
            while app.frames < 1:
                await asyncio.sleep(0.05)
            await _timed_press(pilot, "4")
            view = app.screen.query_one("#dump-view")
            await _timed_press(pilot, "s")
            rng = random.Random(3)
            start, cpu, load = time.monotonic(), time.process_time(), os.getloadavg()[0]
            next_save = start + min(SAVE_EVERY_S, seconds / 2)
            i = 0
            with tempfile.TemporaryDirectory() as tmp:
                while time.monotonic() - start < seconds:
                    if time.monotonic() >= next_save and len(view._ring):
                        saves.append(await _save(pilot, view, os.path.join(tmp, "x.pcap")))
                        next_save += SAVE_EVERY_S
                    key, kind = KEYS[i % len(KEYS)]
                    presses.append((key, kind, await _timed_press(pilot, key)))
                    i += 1
                    await asyncio.sleep(rng.uniform(0.1, 0.5))
            result = {"cpu_share": round((time.process_time() - cpu) / (time.monotonic() - start), 2),
                      "host_load": [round(load, 2), round(os.getloadavg()[0], 2)],
                      "captured": app.backend.made, "kept": len(view._ring),
                      "dropped": view.dropped, "status": str(view.query_one("#dump-status").content)}
    finally:
        MdaConsole.on_polled = on_polled
    gaps = [b - a for a, b in zip(polled, polled[1:])]
    by_kind: dict[str, list[float]] = {}
    for _, kind, dt in presses:
        by_kind.setdefault(kind, []).append(dt)
    return {"rate": rate, "seconds": seconds, "keep": keep, **result,
            "refresh_s": {"n": len(gaps), "median": round(statistics.median(gaps), 3),
                          "max": round(max(gaps), 3)},
            "keys": _stats([dt for *_, dt in presses]),
            "keys_over_max": sum(dt * 1000 > KEY_MAX_MS for *_, dt in presses),
            "keys_by_kind": {k: _stats(v) for k, v in by_kind.items()},
            "slowest_keys": [(key, _ms(dt)) for key, _, dt in sorted(presses, key=lambda p: -p[2])[:5]],
            "pcap_saves_s": [round(s, 2) for s in saves],
            "rss_mb": {"peak": _rss_mb("VmHWM"), "at_end": _rss_mb("VmRSS")}}


async def _save(pilot, view, path: str) -> float:
    """w, the path, enter; until the file is written (the capture goes on meanwhile)."""
    from textual.widgets import Input

    from mdatui.ui.screens.prompt import PromptScreen
    Path(path).unlink(missing_ok=True)
    await _timed_press(pilot, "4")  # the last key may have left another tab open
    t = time.monotonic()
    await _timed_press(pilot, "w")
    if not isinstance(pilot.app.screen, PromptScreen):
        raise RuntimeError(f"w did not offer to save (focus on {pilot.app.focused}): "
                           f"{view.query_one('#dump-status').content}")
    pilot.app.screen.query_one(Input).value = path
    await _timed_press(pilot, "enter")
    deadline = t + 120
    while not os.path.exists(path) or any(w.group == "pcap" and not w.is_finished
                                          for w in pilot.app.workers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pcap save wrote nothing to {path} in 120 s")
        await asyncio.sleep(0.05)
    return time.monotonic() - t


def _verdict(value: float, limit: float) -> str:
    return f"{value:7.1f}  {'OK' if value <= limit else 'OVER'} (target {limit:g})"


def table(r: dict) -> str:
    k, rss, gaps = r["keys"], r["rss_mb"], r["refresh_s"]
    return "\n".join([
        f"dump benchmark: {r['rate']:g} msg/s for {r['seconds']:g} s, ring of {r['keep']} "
        f"(host load average {r['host_load'][0]} at the start, {r['host_load'][1]} at the end, {os.cpu_count()} CPUs)",
        f"  refresh period shown (target {REFRESH_S:g} s): median {gaps['median']} s, "
        f"max {gaps['max']} s over {gaps['n']} refreshes",
        f"  key latency over {k['n']} presses, median ms {_verdict(k['median'], KEY_MEDIAN_MS)}",
        f"                                   max ms    {_verdict(k['max'], KEY_MAX_MS)}"
        f"  ({r['keys_over_max']} presses over it)",
        "    by kind (median/max ms): " + ", ".join(
            f"{kind} {s['median']}/{s['max']} (n={s['n']})" for kind, s in r["keys_by_kind"].items()),
        "    slowest: " + ", ".join(f"{key} {ms}" for key, ms in r["slowest_keys"]),
        f"  process CPU (of one core, capture and decoding included): {r['cpu_share']:.0%}",
        f"  peak RSS MB {_verdict(rss['peak'], RSS_MB)}  (at the end {rss['at_end']})",
        f"  messages: {r['captured']} captured, {r['kept']} kept, {r['dropped']} dropped "
        f"(counted and shown: {r['status']!r})",
        f"  pcap saves of the kept messages (s): {r['pcap_saves_s']}",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=50_000, help="messages a second")
    ap.add_argument("--seconds", type=float, default=60, help="of capture and key presses")
    ap.add_argument("--keep", type=int, default=100_000, help="messages the view keeps")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    if a.rate <= 0 or a.seconds <= 0 or a.keep < 1:
        ap.error("--rate, --seconds and --keep must be positive")
    return run_and_print(lambda: asyncio.run(measure(a.rate, a.seconds, a.keep)), table, a.json)


if __name__ == "__main__":
    sys.exit(main())
