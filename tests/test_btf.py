"""core.kernel.btf on a small BTF blob made here, and on the running kernel's."""

from __future__ import annotations

import os
import struct

from mdatui.core.kernel import btf, loader

INT, STRUCT, UNION, TYPEDEF = 1, 4, 5, 8


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


def test_members_are_found_directly_in_anonymous_members_as_bitfields_and_by_path(tmp_path):
    """struct inner { int c; int d; };
    struct outer { int a; union { int b; struct inner; }; int e:4, f:4; struct inner g; }"""
    names = ["int", "outer", "a", "b", "c", "d", "e", "f", "inner", "g"]
    n = {x: name(names, x) for x in names}
    types = [
        record(n["int"], INT, 0, 4) + struct.pack("<I", 32),                            # 1
        record(n["inner"], STRUCT, 2, 8) + struct.pack("<6I", n["c"], 1, 0, n["d"], 1, 32),  # 2
        record(0, UNION, 2, 8) + struct.pack("<6I", n["b"], 1, 0, 0, 2, 0),              # 3
        record(n["outer"], STRUCT, 5, 24, kflag=1)                                      # 4
        + struct.pack("<15I", n["a"], 1, 0, 0, 3, 32, n["e"], 1, 4 << 24 | 96, n["f"], 1, 4 << 24 | 100,
                      n["g"], 5, 128),
        record(0, TYPEDEF, 0, 2),                                                       # 5
    ]
    path = blob(tmp_path, types, names)
    wanted = {m: f"outer.{m}" for m in ("a", "b", "c", "d", "e")} | {"gd": "outer.g.d"}
    wanted |= {"nosuch": "outer.nosuch", "not_a_struct": "int.a", "a_is_no_struct": "outer.a.c"}
    assert btf.offsets(wanted, path) == {"a": 0, "b": 4, "c": 4, "d": 8, "e": 12, "gd": 20}


def test_no_btf_is_no_offset(tmp_path):
    wanted = {"X": "task_struct.nr_cpus_allowed"}
    assert btf.offsets(wanted, tmp_path / "absent") == {}
    (tmp_path / "garbage").write_bytes(b"\0" * 64)
    assert btf.offsets(wanted, tmp_path / "garbage") == {}


def test_the_running_kernel_has_every_member_the_programs_read():
    if not btf.VMLINUX.exists():
        assert os.environ.get("CI") != "true", "the CI machine's kernel has no BTF"
        return
    found = btf.offsets(loader.KERNEL_MEMBERS)
    assert set(found) == set(loader.KERNEL_MEMBERS) and all(0 <= v < 16384 for v in found.values())
