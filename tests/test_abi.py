"""mdatui/core/kernel/abi.py against what BCC makes of bpf/mdatui.h: each record field by field."""

from __future__ import annotations

import ctypes as ct
import json

import pytest

from mdatui.core.kernel import abi, loader
from mdatui.core.kernel.instance import MAPS

pytestmark = pytest.mark.kernel

# The C types perf event records are declared with, as BCC names them.
C_TYPES = {"__u8": ct.c_uint8, "__u16": ct.c_uint16, "__u32": ct.c_uint32, "__u64": ct.c_uint64,
           "struct mda_sock_key": abi.SockKey, "struct mda_owner": abi.Owner}
EVENTS = {"mda_events": abi.Event, "mda_dump": abi.DumpEvent}


def layout(t) -> list | int:
    """A ctypes type as (field, offset, layout) down to its scalars, which are their size; an
    array as [element, length]."""
    if issubclass(t, ct.Array):
        return [layout(t._type_), t._length_]
    if not issubclass(t, ct.Structure):
        return ct.sizeof(t)
    return [(name, getattr(t, name).offset, layout(ftype)) for name, ftype, *_ in t._fields_]


def c_field_type(decl: str):
    """'data#__u8[4096]' -> c_uint8 * 4096"""
    ctype, _, count = decl.partition("[")
    base = C_TYPES[ctype]
    return base * int(count.rstrip("]")) if count else base


@pytest.fixture
def compiled():
    from bcc import BPF
    from bcc.libbcc import lib

    bpf = loader._compile(1024)  # loads the maps and nothing else: no program is attached
    yield bpf, BPF, lib
    bpf.cleanup()


def test_every_map_record_is_laid_out_as_the_c_declares_it(compiled):
    bpf, BPF, lib = compiled
    differ = []
    for name, types in MAPS.items():
        for what, mirror in zip(("key", "leaf"), types):
            if mirror is None:
                continue  # read by hand (per-CPU values)
            desc = getattr(lib, f"bpf_table_{what}_desc")(bpf.module, name.encode()).decode()
            c = layout(BPF._decode_table_type(json.loads(desc)))
            if c != layout(mirror):
                differ.append(f"{name} {what}: C {c} != abi {layout(mirror)}")
    assert differ == []


def test_every_event_record_is_laid_out_as_the_c_declares_it(compiled):
    bpf, _, lib = compiled
    for name, mirror in EVENTS.items():
        fields = [lib.bpf_perf_event_field(bpf.module, name.encode(), i).decode().split("#")
                  for i in range(lib.bpf_perf_event_fields(bpf.module, name.encode()))]
        c = type(name, (ct.Structure,), {"_fields_": [(f, c_field_type(t)) for f, t in fields]})
        assert layout(c) == layout(mirror), name
