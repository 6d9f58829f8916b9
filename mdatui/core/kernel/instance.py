"""A running accelerator, found through what `enable` pinned: its maps, programs and settings."""

from __future__ import annotations

import ctypes as ct
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import abi, bpfsys

DEFAULT_PIN_DIR = "/sys/fs/bpf/mdatui"

# Pinned map name -> (key type, value type). Perf arrays hold fds, filled by each reader.
MAPS = {
    "sock_ops_map": (abi.SockKey, ct.c_uint32),  # BCC's BPF_SOCKHASH: an int (a socket's fd)
    "sock_proxy_map": (abi.SockKey, abi.Conn),
    "sock_helper_map": (abi.SockKey, abi.Pending),
    "sock_param_map": (ct.c_uint32, abi.RuleSet),
    "mda_active_set": (ct.c_uint32, ct.c_uint32),
    "mda_policy": (ct.c_uint32, ct.c_uint32),
    "mda_control": (ct.c_uint32, abi.Control),
    "mda_stats": (ct.c_uint32, None),
    "mda_meta": (ct.c_uint32, abi.Meta),
    "sock_drain_map": (abi.SockKey, abi.Drain),
    "mda_dest_map": (abi.Dest, abi.DestStat),
    "mda_stop_req": (ct.c_uint32, ct.c_uint32),
    "mda_events": (ct.c_int32, ct.c_int32),
    "mda_dump": (ct.c_int32, ct.c_int32),
}


@dataclass(frozen=True)
class Program:
    pin: str       # file name under the pin dir
    func: str      # function in bpf/*.c
    attach: int    # bpfsys.ATTACH_*
    on_cgroup: bool


PROGRAMS = (
    Program("prog_sock_create", "mda_sock_create", bpfsys.ATTACH_CGROUP_INET_SOCK_CREATE, True),
    Program("prog_sock_ops", "mda_sock_ops", bpfsys.ATTACH_CGROUP_SOCK_OPS, True),
    Program("prog_sk_msg", "mda_sk_msg", bpfsys.ATTACH_SK_MSG_VERDICT, False),
)


# The pinned iterator link of bpf/blocked_readers.c (absent where the kernel cannot run it).
READER_ITER = "iter_blocked_readers"


class NotEnabled(LookupError):
    """Nothing is pinned at the pin dir."""


class Instance:
    """Open handles on a pinned accelerator. Cheap to open: nothing is compiled."""

    def __init__(self, pin_dir: str = DEFAULT_PIN_DIR):
        self.pin_dir = pin_dir
        if not Path(pin_dir, "sock_ops_map").exists():
            raise NotEnabled(f"mdatui is not enabled at {pin_dir}")
        self.maps: dict[str, bpfsys.Map] = {}
        self._programs: dict[str, int] = {}  # function -> fd
        self._capacity: dict[str, int] = {}
        # Everything is opened now, and held: disable unpins sock_ops_map first, then the rest,
        # so an instance opened is whole, and one that finds a pin gone meets a disable, unless
        # sock_ops_map is still there: then the pin never was (enable pins sock_ops_map last).
        path = ""
        try:
            for name, (key_type, value_type) in MAPS.items():
                path = os.path.join(pin_dir, name)
                self.maps[name] = bpfsys.Map.open(path, key_type, value_type)
                self.maps[name].check_layout(path)
            for prog in PROGRAMS:
                path = os.path.join(pin_dir, prog.pin)
                self._programs[prog.func] = bpfsys.obj_get(path)
        except bpfsys.BpfError as e:
            self.close()
            if e.errno != errno.ENOENT:
                raise
            if Path(pin_dir, "sock_ops_map").exists():
                raise bpfsys.LayoutMismatch(f"{path} is missing: {bpfsys.OTHER_VERSION}") from None
            raise NotEnabled(f"mdatui is being disabled at {pin_dir}") from None
        except BaseException:
            self.close()
            raise
        self.ncpus = len(_possible_cpus())

    def __enter__(self) -> "Instance":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps.clear()
        for fd in self._programs.values():
            os.close(fd)
        self._programs.clear()

    @property
    def meta(self) -> abi.Meta:
        return self.maps["mda_meta"].lookup(ct.c_uint32(0))

    @property
    def cgroup(self) -> str:
        return self.meta.cgroup.decode()

    @property
    def config(self) -> str:
        return self.meta.config.decode()

    def control(self) -> abi.Control:
        return self.maps["mda_control"].lookup(ct.c_uint32(0))

    def set_control(self, ctl: abi.Control) -> None:
        self.maps["mda_control"].update(ct.c_uint32(0), ctl)

    def stats(self) -> dict[str, int]:
        """Per-CPU counters summed, by name."""
        return {stat.name.lower(): self.stat(stat) for stat in abi.Stat}

    def stat(self, stat: abi.Stat) -> int:
        buf = (ct.c_uint64 * self.ncpus)()
        self.maps["mda_stats"].lookup_raw(ct.c_uint32(stat), buf)
        return sum(buf)

    def add_stat(self, stat: abi.Stat, n: int) -> None:
        """Add to a counter that only user space moves (its per-CPU slot 0)."""
        m = self.maps["mda_stats"]
        buf = (ct.c_uint64 * self.ncpus)()
        m.lookup_raw(ct.c_uint32(stat), buf)
        buf[0] += n
        m.update(ct.c_uint32(stat), buf)

    def program_ids(self) -> dict[str, int]:
        return {func: bpfsys.prog_info(fd).id for func, fd in self._programs.items()}

    def map_capacity(self, name: str) -> int:
        """max_entries, fixed when the map was made: asked of the kernel once (the console's
        reader needs it at every refresh)."""
        if name not in self._capacity:
            self._capacity[name] = bpfsys.map_info(self.maps[name].fd).max_entries
        return self._capacity[name]

    @property
    def active_set(self) -> int:
        return self.maps["mda_active_set"].lookup(ct.c_uint32(0)).value & 1

    @active_set.setter
    def active_set(self, index: int) -> None:
        self.maps["mda_active_set"].update(ct.c_uint32(0), ct.c_uint32(index))

    @property
    def nodelay_streams(self) -> str:
        """One of abi.NODELAY_STREAMS."""
        return abi.NODELAY_STREAMS[self.maps["mda_policy"].lookup(ct.c_uint32(0)).value]

    @nodelay_streams.setter
    def nodelay_streams(self, name: str) -> None:
        self.maps["mda_policy"].update(ct.c_uint32(0), ct.c_uint32(abi.NODELAY_STREAMS.index(name)))

    def request_stop(self, keys, reason: abi.Leave) -> int:
        """Ask these ends to stop redirecting; returns how many were asked.

        The programs carry it out at each end's next message or segment and leave the bytes in
        order (what was redirected is read before what then comes through the stack); `mdatui
        serve` takes each end out of the sockhash once its reader has taken every redirected
        byte. A sock_proxy_map value is never written from here: that would undo counters the
        programs add meanwhile."""
        drain = self.maps["sock_drain_map"]
        asked = 0
        now = time.monotonic_ns()  # CLOCK_MONOTONIC, the programs' bpf_ktime_get_ns
        for key in keys:
            try:
                drain.update(key, abi.Drain(now, reason, 1), bpfsys.BPF_NOEXIST)
                asked += 1
            except bpfsys.BpfError as e:
                if e.errno != errno.EEXIST:  # already stopped or asked: nothing to add
                    raise
        if asked:
            self.add_stat(abi.Stat.LISTED, asked)
            self.maps["mda_stop_req"].update(ct.c_uint32(0), ct.c_uint32(1))
        return asked

    def active_rules(self) -> abi.RuleSet:
        return self.maps["sock_param_map"].lookup(ct.c_uint32(self.active_set))

    def load_rules(self, ruleset: abi.RuleSet) -> None:
        """Fill the idle rule set, then make it live with one write of the index."""
        idle = self.active_set ^ 1
        self.maps["sock_param_map"].update(ct.c_uint32(idle), ruleset)
        self.active_set = idle


def _possible_cpus() -> list[int]:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus
