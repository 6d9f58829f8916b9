"""What the host offers: root, the cgroup v2 mount, bpffs."""

from __future__ import annotations

import ctypes as ct
import os
import platform
import subprocess
from pathlib import Path

# The C library, errno kept for ct.get_errno(): for the calls Python's os module lacks (bpf,
# perf_event_open, setns, poll that returns on EINTR, mallopt).
libc = ct.CDLL(None, use_errno=True)
libc.syscall.restype = ct.c_long

BPFFS = "/sys/fs/bpf"

# The system calls glibc has no wrapper for, and those that read a socket (as
# /proc/PID/task/TID/syscall names them), by machine (arch/x86/entry/syscalls/syscall_64.tbl,
# include/uapi/asm-generic/unistd.h).
_SYSCALLS = {
    "x86_64": {"bpf": 321, "perf_event_open": 298, "pidfd_getfd": 438,
               "read": 0, "readv": 19, "recvfrom": 45, "recvmsg": 47},
    "aarch64": {"bpf": 280, "perf_event_open": 241, "pidfd_getfd": 438,
                "read": 63, "readv": 65, "recvfrom": 207, "recvmsg": 212},
}


class SetupError(RuntimeError):
    """The host cannot run the accelerator as asked; the message says what to do."""


def syscall_number(name: str, machine: str | None = None) -> int:
    machine = machine or platform.machine()
    try:
        return _SYSCALLS[machine][name]
    except KeyError:
        raise SetupError(f"mdatui knows the {name} system call on {' and '.join(_SYSCALLS)}, "
                         f"not on {machine}") from None


def require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise SetupError(f"{action} needs root (it loads BPF programs and pins maps): run it as root (or with sudo)")


def mounts(path: str = "/proc/mounts") -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount, in mount order."""
    out = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3:
                out.append((fields[1].replace("\\040", " "), fields[2]))
    return out


def cgroup2_root(path: str = "/proc/mounts") -> str:
    for point, fstype in mounts(path):
        if fstype == "cgroup2":
            return point
    raise SetupError("no cgroup v2 hierarchy is mounted: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified)")


def ensure_bpffs(pin_dir: str) -> None:
    """Mount bpffs at /sys/fs/bpf when the pin dir lives there and nothing is mounted yet."""
    pin = Path(pin_dir).resolve()
    mounted = [Path(p) for p, fstype in mounts() if fstype == "bpf"]
    if any(pin == m or m in pin.parents for m in mounted):
        return
    bpffs = Path(BPFFS)
    if bpffs != pin and bpffs not in pin.parents:
        raise SetupError(f"{pin_dir} is not on a bpf filesystem: mount one there (mount -t bpf bpf DIR)")
    bpffs.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "bpf", "bpf", BPFFS], capture_output=True, text=True)
    if done.returncode != 0:
        raise SetupError(f"could not mount bpffs at {BPFFS}: mount it by hand (mount -t bpf bpf {BPFFS})")


# mallopt(3)
_M_MMAP_THRESHOLD = -3
_LARGE_BLOCK = 4 << 20


def unmap_large_blocks() -> None:
    """Blocks of 4 MiB and more are mapped on their own and unmapped when freed. glibc would
    raise this threshold after the first such free (up to 32 MiB), and then keep the console's
    map reads (25 MiB a read at 200,000 ends) in heaps that fragment: 40-50 MB more resident
    memory, measured with bench/console.py. Smaller blocks stay in the heap, where reusing them
    costs no page faults."""
    libc.mallopt(_M_MMAP_THRESHOLD, _LARGE_BLOCK)
