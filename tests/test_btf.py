"""core.kernel.btf on a small BTF blob made here, and on the running kernel's."""

from __future__ import annotations

import os
import struct

from mdatui.core.kernel import btf

INT, STRUCT, UNION = 1, 4, 5


def blob(tmp_path, types: list[bytes], names: list[str]):
    strings = b"\0" + b"".join(n.encode() + b"\0" for n in names)
    body = b"".join(types)
    path = tmp_path / "vmlinux"
    path.write_bytes(struct.pack("<HBBIIIII", btf.MAGIC, 1, 0, 24, 0, len(body), len(body),
                                 len(strings)) + body + strings)
    return path


def name(names: list[str], n: str) -> int:
    return 1 + sum(len(x) + 1 for x in names[:names.index(n)])


def record(name_off: int, kind: int, vlen: int, size: int, kflag: int = 0) -> bytes:
    return struct.pack("<III", name_off, kind << 24 | vlen | kflag << 31, size)


def test_members_are_found_directly_in_anonymous_members_and_as_bitfields(tmp_path):
    """struct outer { int a; union { int b; struct { int c; int d; }; }; int e:4, f:4; }"""
    names = ["int", "outer", "a", "b", "c", "d", "e", "f"]
    n = {x: name(names, x) for x in names}
    types = [
        record(n["int"], INT, 0, 4) + struct.pack("<I", 32),                      # 1
        record(0, STRUCT, 2, 8) + struct.pack("<6I", n["c"], 1, 0, n["d"], 1, 32),  # 2
        record(0, UNION, 2, 8) + struct.pack("<6I", n["b"], 1, 0, 0, 2, 0),        # 3
        record(n["outer"], STRUCT, 4, 16, kflag=1)                                # 4
        + struct.pack("<12I", n["a"], 1, 0, 0, 3, 32, n["e"], 1, 4 << 24 | 96, n["f"], 1, 4 << 24 | 100),
    ]
    path = blob(tmp_path, types, names)
    found = {m: btf.member_offset("outer", m, path) for m in ("a", "b", "c", "d", "e")}
    assert found == {"a": 0, "b": 4, "c": 4, "d": 8, "e": 12}
    assert btf.member_offset("outer", "nosuch", path) is None
    assert btf.member_offset("int", "a", path) is None  # not a struct


def test_no_btf_is_no_offset(tmp_path):
    assert btf.member_offset("task_struct", "nr_cpus_allowed", tmp_path / "absent") is None
    (tmp_path / "garbage").write_bytes(b"\0" * 64)
    assert btf.member_offset("task_struct", "nr_cpus_allowed", tmp_path / "garbage") is None


def test_the_running_kernels_task_struct_has_the_member_the_programs_read():
    if not btf.VMLINUX.exists():
        assert os.environ.get("CI") != "true", "the CI machine's kernel has no BTF"
        return
    offset = btf.member_offset("task_struct", "nr_cpus_allowed")
    assert offset is not None and 0 < offset < 16384
