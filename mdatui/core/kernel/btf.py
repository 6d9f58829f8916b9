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
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
        struct.unpack_from("<HBBIIIII", data)
    if magic != MAGIC:
        return None
    strings = data[hdr_len + str_off:hdr_len + str_off + str_len]

    def name_off(name: str) -> int | None:  # BTF keeps each name once
        at = strings.find(b"\0" + name.encode() + b"\0")
        return None if at < 0 else at + 1

    want_struct, want_member = name_off(struct_name), name_off(member)
    if want_struct is None or want_member is None:
        return None
    # Only the structs and unions matter, but every record is stepped over to find the next.
    aggregates: dict[int, tuple[int, int, int, int]] = {}  # type id -> name, kind, vlen, at
    pos, end = hdr_len + type_off, hdr_len + type_off + type_len
    type_id = 0
    while pos < end:
        type_id += 1
        t_name, info = struct.unpack_from("<II", data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind in (STRUCT, UNION):
            aggregates[type_id] = (t_name, kind, vlen, pos)
        pos += 12 + _FIXED.get(kind, 0) + _PER_ENTRY.get(kind, 0) * vlen

    def find(type_id: int, bits: int) -> int | None:
        _name, _kind, vlen, at = aggregates[type_id]
        kflag = struct.unpack_from("<I", data, at + 4)[0] >> 31
        for m_name, m_type, m_off in struct.iter_unpack("<III", data[at + 12:at + 12 + 12 * vlen]):
            m_bits = bits + ((m_off & 0xFFFFFF) if kflag else m_off)
            if m_name == want_member:
                return m_bits // 8
            if not m_name and m_type in aggregates:  # an anonymous struct or union member
                found = find(m_type, m_bits)
                if found is not None:
                    return found
        return None

    for type_id, (t_name, kind, _vlen, _at) in aggregates.items():
        if kind == STRUCT and t_name == want_struct:
            found = find(type_id, 0)
            if found is not None:
                return found
    return None
