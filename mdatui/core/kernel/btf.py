"""Where a member of a kernel struct sits in the running kernel, read from its BTF.

BCC compiles against the headers that are installed, which may be another kernel version's
(Debian's 6.1 headers under a 6.18 kernel here), so a program that reads a kernel struct is given
the member's offset from /sys/kernel/btf/vmlinux instead (a -D macro, see loader.py).
"""

from __future__ import annotations

import struct
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
MAGIC = 0xEB9F
STRUCT, UNION = 4, 5
# Bytes that follow a type's 12-byte record, by kind: a fixed size, or a size per vlen entry.
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}
_PER_ENTRY = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}


def member_offset(struct_name: str, member: str, path: Path = VMLINUX) -> int | None:
    """The byte offset of struct_name.member (looked for in anonymous members too), or None
    when the kernel has no BTF or no such member."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, _str_len = \
        struct.unpack_from("<HBBIIIII", data)
    if magic != MAGIC:
        return None
    strings = hdr_len + str_off

    def name(off: int) -> bytes:
        return data[strings + off:data.index(b"\0", strings + off)]

    types: list[tuple[bytes, int, list[tuple[bytes, int, int]]]] = [(b"", 0, [])]  # by type id
    pos, end = hdr_len + type_off, hdr_len + type_off + type_len
    while pos < end:
        name_off, info, _size = struct.unpack_from("<III", data, pos)
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        pos += 12
        members = []
        if kind in (STRUCT, UNION):
            for i in range(vlen):
                m_name, m_type, m_off = struct.unpack_from("<III", data, pos + 12 * i)
                members.append((name(m_name), m_type, (m_off & 0xFFFFFF) if kflag else m_off))
        types.append((name(name_off) if kind in (STRUCT, UNION) else b"", kind, members))
        pos += _FIXED.get(kind, 0) + _PER_ENTRY.get(kind, 0) * vlen

    def find(type_id: int, bits: int) -> int | None:
        for m_name, m_type, m_off in types[type_id][2]:
            if m_name == member.encode():
                return (bits + m_off) // 8
            if not m_name and types[m_type][1] in (STRUCT, UNION):
                found = find(m_type, bits + m_off)
                if found is not None:
                    return found
        return None

    for type_id, (t_name, kind, _members) in enumerate(types):
        if kind == STRUCT and t_name == struct_name.encode():
            found = find(type_id, 0)
            if found is not None:
                return found
    return None
