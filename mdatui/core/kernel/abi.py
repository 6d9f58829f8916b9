"""ctypes mirror of bpf/mdatui.h: the one place Python knows the kernel records' layout."""

from __future__ import annotations

import ctypes as ct
import enum

from .. import addrs

MAX_SOCKS = 262144
MAX_RULES = 128
MAX_SNAPLEN = 4096
# A destination whose connections lately carried fewer than SHORT_MSGS messages each, counted
# over at least SHORT_MIN connections, gets new ones on the stack (MDA_SHORT_* in bpf/mdatui.h;
# the loader compiles these values in).
SHORT_MSGS = 6
SHORT_MIN = 8
# What becomes of a TCP_NODELAY stream whose ends are not on one CPU, by its value in mda_policy
# (MDA_NODELAY_* in bpf/mdatui.h): handed back to the stack, or kept on the fast path.
NODELAY_STREAMS = ("stack", "fast")
UNKNOWN_ID = 0xFFFFFFFF
NO_RULE = 0xFFFFFFFF

RULE_IP = 1 << 0
RULE_PORT = 1 << 1
RULE_UID = 1 << 2
RULE_GID = 1 << 3
RULE_RETURN = 1 << 4


class SockKey(ct.Structure):
    """Addresses in network byte order, IPv4 ones IPv4-mapped (core.addrs)."""

    _fields_ = [
        ("local_ip", ct.c_uint32 * 4),
        ("remote_ip", ct.c_uint32 * 4),
        ("local_port", ct.c_uint32),
        ("remote_port", ct.c_uint32),
        ("netns", ct.c_uint64),
    ]

    @classmethod
    def of(cls, local_ip: bytes, remote_ip: bytes, local_port: int, remote_port: int,
           netns: int = 0) -> "SockKey":
        """From addresses in the keys' form (addrs.pack)."""
        key = cls(local_port=local_port, remote_port=remote_port, netns=netns)
        ct.memmove(key.local_ip, local_ip, 16)
        ct.memmove(key.remote_ip, remote_ip, 16)
        return key

    @property
    def local(self) -> str:
        return addrs.endpoint(bytes(self.local_ip), self.local_port)

    @property
    def remote(self) -> str:
        return addrs.endpoint(bytes(self.remote_ip), self.remote_port)

    def ident(self) -> tuple[bytes, bytes, int, int, int]:
        return (bytes(self.local_ip), bytes(self.remote_ip), self.local_port, self.remote_port,
                self.netns)


class Owner(ct.Structure):
    _fields_ = [("pid", ct.c_uint32), ("uid", ct.c_uint32), ("gid", ct.c_uint32), ("cpu", ct.c_uint32)]


class Conn(ct.Structure):
    _fields_ = [
        ("peer", SockKey),
        ("msgs", ct.c_uint64),
        ("bytes", ct.c_uint64),
        ("passed", ct.c_uint64),
        ("since_ns", ct.c_uint64),
        ("owner", Owner),
        ("paired", ct.c_uint32),
        ("tainted", ct.c_uint32),
        ("active", ct.c_uint32),
        ("run", ct.c_uint32),
        ("run_bytes", ct.c_uint64),
        ("reason", ct.c_uint32),
        ("nodelay", ct.c_uint32),
        ("behind_ms", ct.c_uint32),
        ("peer_read", ct.c_uint32),
        ("sk", ct.c_uint64),
    ]


class Dest(ct.Structure):
    _fields_ = [("ip", ct.c_uint32 * 4), ("port", ct.c_uint32), ("pad", ct.c_uint32),
                ("netns", ct.c_uint64)]


class DestStat(ct.Structure):
    _fields_ = [("conns", ct.c_uint32), ("msgs", ct.c_uint32), ("decided", ct.c_uint32),
                ("pad", ct.c_uint32)]


# The system calls a thread blocked reading a socket sleeps in (core/guard.py and
# bpf/blocked_readers.c look for them).
READ_CALLS = ("read", "readv", "recvfrom", "recvmsg")


class BlockedRead(ct.Structure):
    _fields_ = [("pid", ct.c_uint32), ("fd", ct.c_uint32)]


class Drain(ct.Structure):
    _fields_ = [("since_ns", ct.c_uint64), ("reason", ct.c_uint32), ("requested", ct.c_uint32)]


class Leave(enum.IntEnum):
    """Why an end stopped redirecting (enum mda_leave)."""

    NONE = 0
    SENT_EARLY = 1
    STREAM = 2
    PEER_GONE = 3
    RULE = 4
    DISABLE = 5
    BLOCKING = 6
    UNREAD = 7
    OWN_FIN = 8


class Pending(ct.Structure):
    _fields_ = [("key", SockKey), ("owner", Owner)]


class Rule(ct.Structure):
    _fields_ = [
        ("flags", ct.c_uint32),
        ("ip", ct.c_uint32 * 4),
        ("mask", ct.c_uint32 * 4),
        ("port_lo", ct.c_uint16),
        ("port_hi", ct.c_uint16),
        ("uid", ct.c_uint32),
        ("gid", ct.c_uint32),
    ]


class RuleSet(ct.Structure):
    _fields_ = [("count", ct.c_uint32), ("n_accept", ct.c_uint32), ("rules", Rule * MAX_RULES)]


class Control(ct.Structure):
    _fields_ = [
        ("dump_on", ct.c_uint32),
        ("dump_ip", ct.c_uint32 * 4),
        ("dump_mask", ct.c_uint32 * 4),
        ("dump_port", ct.c_uint32),
        ("snaplen", ct.c_uint32),
    ]


class Meta(ct.Structure):
    _fields_ = [("cgroup", ct.c_char * 256), ("config", ct.c_char * 256), ("enabled_at", ct.c_uint64)]


class Stat(enum.IntEnum):
    SOCKHASH_FULL = 0
    PROXY_FULL = 1
    HELPER_FULL = 2
    UNPAIRED_REMOVED = 3
    TAINTED = 4
    REFUSED = 5
    REDIRECT_FAILED = 6
    DUMP_LOST = 7
    ACCELERATED = 8
    CLOSED_MSGS = 9
    CLOSED_BYTES = 10
    DEMOTED = 11
    DRAINED = 12
    BLOCKING = 13
    CLOSED_PASSED = 14
    EVENTS_LOST = 15
    UNREAD = 16
    SHORT = 17
    LISTED = 18


STAT_MAX = len(Stat)


class EventType(enum.IntEnum):
    ACCELERATED = 1
    REFUSED = 2
    CLOSED = 3
    REDIRECT_FAILED = 4
    DEMOTED = 5


class Event(ct.Structure):
    _fields_ = [
        ("ts_ns", ct.c_uint64),
        ("type", ct.c_uint32),
        ("rule", ct.c_uint32),
        ("key", SockKey),
        ("peer", SockKey),
        ("owner", Owner),
        ("peer_owner", Owner),
        ("msgs", ct.c_uint64),
        ("bytes", ct.c_uint64),
        ("passed", ct.c_uint64),
    ]


class DumpEvent(ct.Structure):
    _fields_ = [
        ("ts_ns", ct.c_uint64),
        ("key", SockKey),
        ("len", ct.c_uint32),
        ("caplen", ct.c_uint32),
        ("active", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("data", ct.c_uint8 * MAX_SNAPLEN),
    ]


DUMP_HEADER_SIZE = DumpEvent.data.offset
