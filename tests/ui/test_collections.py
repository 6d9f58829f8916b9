"""The cyclic GC collects between keys, not in them (ui/app.py), and the dump keeps its messages
as bytes, which the GC does not count (ui/views/dump.py)."""

from __future__ import annotations

import gc

from mdatui.core.dump import record
from mdatui.ui.app import YOUNG_OBJECTS_PER_GC, MdaConsole
from mdatui.ui.views.dump import packed, unpacked

from .fake import FakeBackend, dump_batch, perf_record, wait_frames


async def test_collections_wait_for_no_key_to_be_under_way():
    app = MdaConsole(FakeBackend(), interval=3600)
    collected: list[bool] = []

    def note(phase: str, info: dict) -> None:
        if phase == "start":
            collected.append(bool(app._key_trip))  # a key under way
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_frames(pilot, 1)
            assert not gc.isenabled()  # the app's timer collects
            gc.callbacks.append(note)
            for _ in range(YOUNG_OBJECTS_PER_GC * 2):  # garbage only a collection frees
                cycle: list = []
                cycle.append(cycle)
            for key in "2341" * 3:
                await pilot.press(key)
            await pilot.pause(0.5)
            assert collected and not any(collected)
            assert app.keys_idle()
            assert not app.keys_idle(since_s=60)  # a key was handled within a minute
    finally:
        if note in gc.callbacks:
            gc.callbacks.remove(note)
    assert gc.isenabled()  # back as it was once the console has ended


def test_dump_messages_are_kept_as_bytes_and_decode_as_they_came():
    offsets = (1_700_000_000_000_000_000, 1_700_000_000_000_000_000, -5, 0)
    raw = [(offset, perf_record(rec)) for offset, rec in zip(offsets, dump_batch(128))]
    kept = packed(raw)
    assert all(type(message) is bytes and not gc.is_tracked(message) for message in kept)
    assert [unpacked(message) for message in kept] == [record(message) for message in raw]
