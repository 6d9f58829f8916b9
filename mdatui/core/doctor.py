"""Preflight: can this host run the accelerator, and if not, what to do.

Each check is a small function of a Host, the few facts it reads (kernel release and config,
mounts, paths, limits); tests build a Host with any of them faked. A check returns a Check: ok, or
text that says what to do. A required check that fails means enable would fail (most often as a
BCC compile or verifier error, which names no cause); the others only make something work less
well. Nothing here imports BCC: the console runs these checks, and BCC would load LLVM into it.
"""

from __future__ import annotations

import ctypes.util
import gzip
import os
import platform
import re
import resource
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import NamedTuple

from .kernel import system
from .kernel.btf import offsets
from .kernel.instance import DEFAULT_PIN_DIR, Instance, NotEnabled
from .kernel.loader import GUARD_MEMBERS

# bpf_probe_read_kernel, the newest helper bpf/*.c calls, came in 5.5; sockhash and sk_msg in 4.18.
MIN_KERNEL = (5, 5)
# tcp_bpf_ioctl (6.5) makes FIONREAD on a socket in a sockhash count what was redirected to it.
FIONREAD_KERNEL = (6, 5)
GUARD_KERNEL = (5, 15)  # bpf_task_pt_regs, which bpf/blocked_readers.c calls
# From 5.11 BPF maps are charged to the memory cgroup, and RLIMIT_MEMLOCK no longer applies.
MEMCG_KERNEL = (5, 11)
FULL_SHARE = 0.9  # a map this full leaves new connections on the normal path soon
WATCHED_MAPS = ("sock_ops_map", "sock_proxy_map", "sock_helper_map")

CONFIG_OPTIONS = {
    "CONFIG_BPF_SYSCALL": "the bpf() system call",
    "CONFIG_CGROUP_BPF": "BPF programs on cgroups (sock_ops, sock_create)",
    "CONFIG_NET_SOCK_MSG": "sockhash and sk_msg redirects",
}


class Check(NamedTuple):
    ok: bool
    text: str             # what was found, or what to do; no final period (the console adds one)
    required: bool = True  # False: the accelerator runs without it, some part less well

    def line(self) -> str:
        return ("ok   " if self.ok else "FAIL " if self.required else "warn ") + self.text


def read_config(release: str) -> str | None:
    """The running kernel's build config, or None when neither place has it."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f.read()
    except OSError:
        pass
    try:
        return Path(f"/boot/config-{release}").read_text()
    except OSError:
        return None


def _map_use(pin_dir: str) -> dict[str, tuple[int, int]] | None:
    """(entries, capacity) of the watched maps of the accelerator pinned at pin_dir; None: none."""
    try:
        inst = Instance(pin_dir)
    except NotEnabled:
        return None
    with inst:
        return {name: (inst.maps[name].count(), inst.map_capacity(name)) for name in WATCHED_MAPS}


def _bcc_dir() -> str | None:
    spec = find_spec("bcc")  # finds the package without running it
    return os.path.dirname(spec.origin) if spec and spec.origin else None


@dataclass
class Host:
    """What the checks look at; every field defaults to this host's and may be faked."""

    release: str = field(default_factory=platform.release)
    config: str | None = None  # the kernel config's text; read from the host when left None
    mounts: list[tuple[str, str]] = field(default_factory=system.mounts)
    euid: int = field(default_factory=os.geteuid)
    btf: str = "/sys/kernel/btf/vmlinux"
    bpffs: str = system.BPFFS
    modules: str = "/lib/modules"
    kheaders: str = "/sys/kernel/kheaders.tar.xz"
    lockdown: str = "/sys/kernel/security/lockdown"
    bcc_dir: str | None = field(default_factory=lambda: _bcc_dir())  # looked up at each Host
    libbcc: Callable[[], str | None] = partial(ctypes.util.find_library, "bcc")
    which: Callable[[str], str | None] = shutil.which
    memlock: tuple[int, int] = field(
        default_factory=lambda: resource.getrlimit(resource.RLIMIT_MEMLOCK))
    pin_dir: str = DEFAULT_PIN_DIR
    map_use: Callable[[str], dict[str, tuple[int, int]] | None] = _map_use

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = read_config(self.release) or ""

    def option(self, name: str) -> str | None:
        """A config option's value ('y', 'm', ...); None when it is not set or there is no config."""
        m = re.search(rf"^{name}=(.*)$", self.config, re.MULTILINE)
        return m[1].strip('"') if m else None

    def version(self) -> tuple[int, int]:
        m = re.match(r"(\d+)\.(\d+)", self.release)
        return (int(m[1]), int(m[2])) if m else (0, 0)


def _v(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def root(h: Host) -> Check:
    if h.euid == 0:
        return Check(True, "root")
    return Check(False, "not root: run it as root (or with sudo) (loading BPF programs and pinning maps needs "
                        "CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")


def kernel(h: Host) -> Check:
    if h.version() >= MIN_KERNEL:
        return Check(True, f"kernel {h.release}")
    return Check(False, f"kernel {h.release} is too old: boot Linux {_v(MIN_KERNEL)} or later "
                        "(the programs call bpf_probe_read_kernel)")


def config_options(h: Host) -> list[Check]:
    if not h.config:
        return [Check(False, f"kernel config not found in /proc/config.gz or /boot/config-"
                             f"{h.release}: `modprobe configs` to check {', '.join(CONFIG_OPTIONS)}",
                      required=False)]
    out = []
    for name, what in CONFIG_OPTIONS.items():
        if h.option(name) == "y":
            out.append(Check(True, f"{name}=y: {what}"))
        else:
            out.append(Check(False, f"{name} is not set: {what} is missing; use a kernel "
                                    f"built with {name}=y"))
    return out


def btf(h: Host) -> Check:
    if not os.path.exists(h.btf):
        return Check(False, f"no BTF at {h.btf}: mdatui runs without it (BCC compiles against the "
                             "headers) but neither tells ends held to one CPU apart (small "
                             "TCP_NODELAY streams are faster off the fast path there) nor sees a peer "
                             "that does not read (its sender is never stopped), and `mdatui serve` "
                             "looks for blocked readers in /proc, thread by thread; "
                             "CONFIG_DEBUG_INFO_BTF=y gives it",
                     required=False)
    found = offsets(GUARD_MEMBERS, Path(h.btf))
    missing = sorted(member for macro, member in GUARD_MEMBERS.items() if macro not in found)
    if missing or h.version() < GUARD_KERNEL:
        lacks = (f"its BTF has no {', '.join(missing)}" if missing
                 else f"it is older than {_v(GUARD_KERNEL)}")
        return Check(False, f"BTF at {h.btf}, but the kernel cannot run bpf/blocked_readers.c "
                            f"({lacks}): `mdatui serve` looks for blocked readers in /proc, thread "
                            "by thread, some 5 µs a thread of the cgroup ten times a second",
                     required=False)
    return Check(True, f"BTF at {h.btf}; blocked readers are listed by a task iterator")


def cgroup2(h: Host) -> Check:
    found = [point for point, fstype in h.mounts if fstype == "cgroup2"]
    if found:
        return Check(True, f"cgroup2 mounted at {found[0]}")
    return Check(False, "no cgroup v2 hierarchy is mounted: mount one "
                        "(mount -t cgroup2 none /sys/fs/cgroup/unified)")


def bpffs(h: Host) -> Check:
    pin = Path(h.pin_dir)
    mounted = [point for point, fstype in h.mounts
               if fstype == "bpf" and (Path(point) == pin or Path(point) in pin.parents)]
    if mounted:
        return Check(True, f"bpffs mounted at {mounted[0]}")
    if os.path.isdir(h.bpffs) and h.euid == 0:
        return Check(True, f"bpffs not mounted; enable mounts it at {h.bpffs}")
    return Check(False, f"no bpffs at {h.bpffs}: mount it (mount -t bpf bpf {h.bpffs})")


def headers(h: Host) -> Check:
    include = os.path.join(h.modules, h.release, "build", "include")
    if os.path.isdir(include):
        return Check(True, f"kernel headers at {include}")
    if os.path.exists(h.kheaders):  # BCC unpacks CONFIG_IKHEADERS' archive when there are none
        return Check(True, f"kernel headers from {h.kheaders}")
    return Check(False, f"no kernel headers at {include}: BCC needs them to compile; install "
                        "them (apt-get install linux-headers-$(uname -r), or run scripts/setup)")


def bcc(h: Host) -> Check:
    if h.bcc_dir is None:
        return Check(False, "BCC is not importable: apt-get install python3-bpfcc, and use a venv "
                            "made with --system-site-packages (the PyPI package `bcc` is another project)")
    if h.libbcc() is None:  # the Python package loads it by name, as it is imported
        return Check(False, "libbcc.so.0 not found: apt-get install python3-bpfcc (it brings libbpfcc)")
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", _read(os.path.join(h.bcc_dir, "version.py")))
    return Check(True, f"BCC {m[1] if m else '(version unknown)'} at {h.bcc_dir}")


def iptables(h: Host) -> Check:
    path = h.which("iptables")
    if path:
        return Check(True, f"iptables at {path}")
    return Check(False, "iptables not found: sidecars' REDIRECT rules (and the demo) need it; "
                        "apt-get install iptables", required=False)


def lockdown(h: Host) -> Check:
    text = _read(h.lockdown)
    m = re.search(r"\[(\w+)\]", text)
    if m:
        mode, where = m[1], h.lockdown
    else:
        forced = [mode for mode in ("confidentiality", "integrity")
                  if h.option(f"CONFIG_LOCK_DOWN_KERNEL_FORCE_{mode.upper()}") == "y"]
        mode = forced[0] if forced else "none" if h.config else "unknown"
        where = "the kernel config" if h.config else f"no {h.lockdown}, no kernel config"
    if mode == "confidentiality":
        return Check(False, f"lockdown is confidentiality ({where}): it refuses "
                            "bpf_probe_read_kernel; boot with lockdown=integrity or none")
    return Check(True, f"lockdown {mode} ({where})")


def memlock(h: Host) -> Check:
    if h.version() >= MEMCG_KERNEL:
        return Check(True, "memlock: BPF memory is charged to the memory cgroup "
                           f"(kernel {_v(MEMCG_KERNEL)} or later)")
    soft, hard = h.memlock
    if soft == resource.RLIM_INFINITY or hard == resource.RLIM_INFINITY or h.euid == 0:
        return Check(True, "memlock: BCC raises RLIMIT_MEMLOCK as it loads")
    return Check(False, f"memlock is limited to {soft} bytes and cannot be raised: the maps will "
                        "not fit; run as root or `ulimit -l unlimited`")


def capacity(h: Host) -> Check:
    try:
        use = h.map_use(h.pin_dir)
    except (PermissionError, system.SetupError) as e:
        return Check(False, f"cannot read the maps at {h.pin_dir} ({e}): run it as root",
                     required=False)
    if use is None:
        return Check(True, f"map capacity: no accelerator pinned at {h.pin_dir}")
    worst = max(use, key=lambda name: use[name][0] / max(use[name][1], 1))
    entries, room = use[worst]
    if entries < FULL_SHARE * room:
        return Check(True, f"map capacity: {worst} {entries} of {room} (the fullest)")
    return Check(False, f"{worst} holds {entries} of {room}: new connections soon take the normal "
                        "path; disable, then enable with a larger --max-sockets", required=False)


def fionread(h: Host) -> Check:
    # Checking it for real takes an enabled accelerator and a connection in it
    # (tests/test_semantics.py's fionread case); the kernel version tells enough here.
    if h.version() >= FIONREAD_KERNEL:
        return Check(True, f"FIONREAD counts redirected bytes (kernel {_v(FIONREAD_KERNEL)} or later)")
    return Check(False, f"kernel {h.release}: FIONREAD may not count redirected bytes, and "
                        "`mdatui serve` may take ends out of the sockhash before their readers "
                        f"have read them, losing those bytes; use Linux {_v(FIONREAD_KERNEL)} or later", required=False)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


CHECKS: Sequence[Callable[[Host], Check | list[Check]]] = (
    root, kernel, config_options, btf, cgroup2, bpffs, headers, bcc, iptables, lockdown, memlock,
    capacity, fionread)


def run(host: Host | None = None) -> list[Check]:
    host = host or Host()
    out: list[Check] = []
    for check in CHECKS:
        found = check(host)
        out.extend(found if isinstance(found, list) else [found])
    return out


def blocking(checks: Sequence[Check]) -> bool:
    """Whether a failed check means the accelerator cannot run."""
    return any(not c.ok and c.required for c in checks)
