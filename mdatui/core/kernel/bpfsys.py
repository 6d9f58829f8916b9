"""Raw bpf(2) calls on maps and programs that outlive the process which loaded them.

BCC's Python API works on the objects of the BPF() module it compiled. `query`, the console and
`disable` instead open what `enable` pinned, so they speak to the kernel directly here.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from collections.abc import Iterator

from .system import SetupError, libc, syscall_number

_SYS_BPF = syscall_number("bpf")

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_MAP_LOOKUP_BATCH = 24
BPF_LINK_CREATE = 28

ENOTSUPP = 524  # the kernel's own "operation not supported", not in Python's errno

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# enum bpf_attach_type
ATTACH_CGROUP_INET_SOCK_CREATE = 2
ATTACH_CGROUP_SOCK_OPS = 3
ATTACH_SK_MSG_VERDICT = 7
ATTACH_TRACE_ITER = 28
BPF_F_ALLOW_MULTI = 2


class BpfError(OSError):
    """A bpf(2) call failed; errno and the operation are kept for the caller's message."""


# What LayoutMismatch says to do.
OTHER_VERSION = ("the accelerator pinned there comes from another version of mdatui; disable it "
                 "with that version")


class LayoutMismatch(SetupError):
    """A map's keys or values are not the size of the ctypes types read from it."""


def _sys(cmd: int, attr: ct.Structure) -> int:
    ret = libc.syscall(_SYS_BPF, cmd, ct.byref(attr), ct.sizeof(attr))
    if ret < 0:
        err = ct.get_errno()
        raise BpfError(err, f"bpf cmd {cmd}: {os.strerror(err)}")
    return ret


class _MapElemAttr(ct.Structure):
    _fields_ = [("map_fd", ct.c_uint32), ("pad", ct.c_uint32), ("key", ct.c_uint64),
                ("value", ct.c_uint64), ("flags", ct.c_uint64)]


class _BatchAttr(ct.Structure):
    _fields_ = [("in_batch", ct.c_uint64), ("out_batch", ct.c_uint64), ("keys", ct.c_uint64),
                ("values", ct.c_uint64), ("count", ct.c_uint32), ("map_fd", ct.c_uint32),
                ("elem_flags", ct.c_uint64), ("flags", ct.c_uint64)]


class _ObjAttr(ct.Structure):
    _fields_ = [("pathname", ct.c_uint64), ("bpf_fd", ct.c_uint32), ("file_flags", ct.c_uint32)]


class _AttachAttr(ct.Structure):
    _fields_ = [("target_fd", ct.c_uint32), ("attach_bpf_fd", ct.c_uint32),
                ("attach_type", ct.c_uint32), ("attach_flags", ct.c_uint32),
                ("replace_bpf_fd", ct.c_uint32)]


class _InfoAttr(ct.Structure):
    _fields_ = [("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64)]


class _QueryAttr(ct.Structure):
    _fields_ = [("target_fd", ct.c_uint32), ("attach_type", ct.c_uint32),
                ("query_flags", ct.c_uint32), ("attach_flags", ct.c_uint32),
                ("prog_ids", ct.c_uint64), ("prog_cnt", ct.c_uint32)]


class MapInfo(ct.Structure):
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("key_size", ct.c_uint32),
                ("value_size", ct.c_uint32), ("max_entries", ct.c_uint32),
                ("map_flags", ct.c_uint32), ("name", ct.c_char * 16)]


class ProgInfo(ct.Structure):
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
                ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
                ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64),
                ("load_time", ct.c_uint64), ("created_by_uid", ct.c_uint32),
                ("nr_map_ids", ct.c_uint32), ("map_ids", ct.c_uint64), ("name", ct.c_char * 16)]


def obj_pin(fd: int, path: str) -> None:
    p = ct.create_string_buffer(os.fsencode(path))
    _sys(BPF_OBJ_PIN, _ObjAttr(pathname=ct.addressof(p), bpf_fd=fd))


def obj_get(path: str) -> int:
    p = ct.create_string_buffer(os.fsencode(path))
    return _sys(BPF_OBJ_GET, _ObjAttr(pathname=ct.addressof(p)))


class _LinkAttr(ct.Structure):
    _fields_ = [("prog_fd", ct.c_uint32), ("target_fd", ct.c_uint32),
                ("attach_type", ct.c_uint32), ("flags", ct.c_uint32), ("pad", ct.c_uint64 * 4)]


def link_create(prog_fd: int, attach_type: int) -> int:
    """A link of a program that attaches to no target (an iterator's): its fd."""
    return _sys(BPF_LINK_CREATE, _LinkAttr(prog_fd=prog_fd, attach_type=attach_type))


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> None:
    _sys(BPF_PROG_ATTACH, _AttachAttr(target_fd=target_fd, attach_bpf_fd=prog_fd,
                                      attach_type=attach_type, attach_flags=flags))


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    _sys(BPF_PROG_DETACH, _AttachAttr(target_fd=target_fd, attach_bpf_fd=prog_fd,
                                      attach_type=attach_type))


def attached_prog_ids(target_fd: int, attach_type: int) -> list[int]:
    ids = (ct.c_uint32 * 64)()
    attr = _QueryAttr(target_fd=target_fd, attach_type=attach_type,
                      prog_ids=ct.addressof(ids), prog_cnt=64)
    _sys(BPF_PROG_QUERY, attr)
    return list(ids[: attr.prog_cnt])


def _info(fd: int, info: ct.Structure) -> ct.Structure:
    _sys(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info),
                                           info=ct.addressof(info)))
    return info


def map_info(fd: int) -> MapInfo:
    return _info(fd, MapInfo())


def prog_info(fd: int) -> ProgInfo:
    return _info(fd, ProgInfo())


class Map:
    """A pinned or loaded map, typed by the ctypes key and value it holds."""

    def __init__(self, fd: int, key_type: type[ct._SimpleCData] | type[ct.Structure],
                 value_type: type[ct._SimpleCData] | type[ct.Structure] | None, value_size: int = 0):
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type
        self.value_size = value_size or (ct.sizeof(value_type) if value_type else 0)

    @classmethod
    def open(cls, path: str, key_type, value_type, value_size: int = 0) -> "Map":
        return cls(obj_get(path), key_type, value_type, value_size)

    def check_layout(self, path: str) -> None:
        """Refuse a map whose records the ctypes types would misread: pinned by another
        version of mdatui, or bpf/mdatui.h changed without mdatui/core/kernel/abi.py."""
        info = map_info(self.fd)
        key_size = ct.sizeof(self.key_type)
        # A value size of 0: the reader sizes its own buffers (per-CPU values).
        if info.key_size == key_size and info.value_size == (self.value_size or info.value_size):
            return
        names = "/".join(t.__name__ for t in (self.key_type, self.value_type) if t is not None)
        raise LayoutMismatch(
            f"{path} holds {info.key_size}-byte keys and {info.value_size}-byte values where this "
            f"mdatui reads {key_size} and {self.value_size or 'any'} ({names}): {OTHER_VERSION}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _elem(self, key, value=None, flags: int = 0) -> _MapElemAttr:
        return _MapElemAttr(map_fd=self.fd, key=ct.addressof(key),
                            value=ct.addressof(value) if value is not None else 0, flags=flags)

    def lookup_raw(self, key, buf) -> bool:
        try:
            _sys(BPF_MAP_LOOKUP_ELEM, self._elem(key, buf))
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def lookup(self, key):
        value = self.value_type()
        return value if self.lookup_raw(key, value) else None

    def update(self, key, value, flags: int = BPF_ANY) -> None:
        _sys(BPF_MAP_UPDATE_ELEM, self._elem(key, value, flags))

    def delete(self, key) -> bool:
        try:
            _sys(BPF_MAP_DELETE_ELEM, self._elem(key))
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def next_keys_into(self, out: int, after: int, count: int) -> tuple[int, bool]:
        """Up to count keys in the map's order, written one after another at address out, from
        the key after the one at address `after` (0: from the first): how many, and whether the
        walk has ended. One syscall a key: what a map without batch lookups (the sockhash) needs.
        A key deleted meanwhile makes the kernel start again from the first."""
        size = ct.sizeof(self.key_type)
        attr = _MapElemAttr(map_fd=self.fd, key=after)
        ref, attr_size, syscall = ct.byref(attr), ct.sizeof(attr), libc.syscall
        for n in range(count):
            attr.value = out + n * size
            if syscall(_SYS_BPF, BPF_MAP_GET_NEXT_KEY, ref, attr_size) < 0:
                err = ct.get_errno()
                if err == errno.ENOENT:
                    return n, True
                raise BpfError(err, f"bpf cmd {BPF_MAP_GET_NEXT_KEY}: {os.strerror(err)}")
            attr.key = attr.value
        return count, False

    def keys(self) -> Iterator:
        """Every key, each a fresh object."""
        chunk = (self.key_type * 256)()
        last = self.key_type()
        after = 0
        while True:
            n, done = self.next_keys_into(ct.addressof(chunk), after, len(chunk))
            for i in range(n):
                yield self.key_type.from_buffer_copy(chunk[i])
            if done:
                return
            ct.memmove(ct.addressof(last), ct.addressof(chunk[n - 1]), ct.sizeof(last))
            after = ct.addressof(last)

    def is_empty(self) -> bool:
        """Whether the map holds no key, in one syscall."""
        first = self.key_type()
        return self.next_keys_into(ct.addressof(first), 0, 1)[0] == 0

    def items(self) -> Iterator[tuple]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def count(self) -> int:
        return sum(1 for _ in self.keys())

    def lookup_batch(self, keys: int, values: int, room: int, token: ct.c_uint64,
                     first: bool) -> tuple[int, bool]:
        """One BPF_MAP_LOOKUP_BATCH into buffers at the addresses keys and values, with room for
        `room` entries each, laid out as the kernel's: how many it wrote, and whether the map has
        been read to its end. `token` keeps the position from one call to the next; `first`
        starts at the beginning. BpfError ENOSPC: the room is less than one hash bucket holds;
        EINVAL or ENOTSUPP on the first call: the map type has no batch lookup."""
        attr = _BatchAttr(in_batch=0 if first else ct.addressof(token),
                          out_batch=ct.addressof(token), keys=keys, values=values, count=room,
                          map_fd=self.fd)
        try:
            _sys(BPF_MAP_LOOKUP_BATCH, attr)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return attr.count, True  # the last, possibly partial, batch
            raise
        return attr.count, False
