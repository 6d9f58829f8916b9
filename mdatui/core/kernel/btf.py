"""Where members of kernel structs sit in the running kernel, read from its BTF.

BCC compiles against the headers that are installed, which may be another kernel version's
(Debian's 6.1 headers under a 6.18 kernel here), so a program that reads a kernel struct is given
each member's offset from /sys/kernel/btf/vmlinux instead (-D macros, see loader.py).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
MAGIC = 0xEB9F
STRUCT, UNION = 4, 5
QUALIFIERS = {8, 9, 10, 11, 18}  # typedef, volatile, const, restrict, type tag: see through them
# Bytes that follow a type's 12-byte record, by kind: a fixed size, or a size per vlen entry.
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}
_PER_ENTRY = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}


class Btf:
    def __init__(self, data: bytes):
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", data)
        if magic != MAGIC:
            raise ValueError("not BTF")
        self.data = data
        self.strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
        # type id -> (name offset, kind, vlen, kind flag, size or type, where its record is)
        self.types: list[tuple[int, int, int, int, int, int]] = [(0, 0, 0, 0, 0, 0)]
        self.structs: dict[int, list[int]] = {}  # name offset -> struct type ids
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name, info, size_or_type = struct.unpack_from("<III", data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            if kind == STRUCT:
                self.structs.setdefault(name, []).append(len(self.types))
            self.types.append((name, kind, vlen, info >> 31, size_or_type, pos))
            pos += 12 + _FIXED.get(kind, 0) + _PER_ENTRY.get(kind, 0) * vlen

    def _name_off(self, name: str) -> int | None:  # BTF keeps each name once
        at = self.strings.find(b"\0" + name.encode() + b"\0")
        return None if at < 0 else at + 1

    def _resolve(self, type_id: int) -> int:
        while self.types[type_id][1] in QUALIFIERS:
            type_id = self.types[type_id][4]
        return type_id

    def _member(self, type_id: int, name_off: int, bits: int) -> tuple[int, int] | None:
        """(bit offset, type id) of a member, looked for in anonymous members too."""
        _name, kind, vlen, kflag, _size, at = self.types[type_id]
        if kind not in (STRUCT, UNION):
            return None
        for m_name, m_type, m_off in struct.iter_unpack("<III", self.data[at + 12:at + 12 + 12 * vlen]):
            m_bits = bits + ((m_off & 0xFFFFFF) if kflag else m_off)
            if m_name == name_off:
                return m_bits, m_type
            if not m_name:
                found = self._member(self._resolve(m_type), name_off, m_bits)
                if found is not None:
                    return found
        return None

    def offset(self, path: str) -> int | None:
        """The byte offset of "struct.member[.member...]" (members of members inline), or None."""
        struct_name, *members = path.split(".")
        names = [self._name_off(n) for n in (struct_name, *members)]
        if None in names or not members:
            return None
        for type_id in self.structs.get(names[0], []):
            bits = 0
            for name_off in names[1:]:
                found = self._member(type_id, name_off, bits)
                if found is None:
                    break
                bits, type_id = found[0], self._resolve(found[1])
            else:
                return bits // 8
        return None


def offsets(wanted: Mapping[str, str], path: Path = VMLINUX) -> dict[str, int]:
    """{name: offset} for each {name: "struct.member"} the running kernel has; {} without BTF."""
    try:
        btf = Btf(path.read_bytes())
    except (OSError, ValueError, struct.error):
        return {}
    found = {name: btf.offset(member) for name, member in wanted.items()}
    return {name: offset for name, offset in found.items() if offset is not None}
