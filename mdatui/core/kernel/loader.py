"""Compile the BPF programs with BCC, attach them to a cgroup and pin them; or take them away.

What is loaded keeps running in the kernel after the process exits: cgroup attachments hold the
programs and the pins hold the maps, and everything is found again through the pins.
core.lifecycle puts these steps together with the drain service into `enable` and `disable`.
"""

from __future__ import annotations

import ctypes as ct
import os
import time
from pathlib import Path
from typing import NamedTuple

from .. import resources
from . import abi, bpfsys, btf, system
from .instance import MAPS, PROGRAMS, READER_ITER, Instance, NotEnabled

BPF_DIR = Path(os.environ.get("MDATUI_BPF_DIR", resources.BPF_DIR))
HEADER = "mdatui.h"
SOURCES = ("sock_owner.c", "sock_ops.c", "sk_msg.c", "blocked_readers.c")
# Kernel struct members the programs read, as -D macros of their offsets in the running kernel.
# What a kernel lacks is left out: without the CPU one no end is known to be held to one CPU,
# without the psock ones a reader that falls behind is not seen (bpf/sk_msg.c) and an end that
# shuts down leaves the fast path drained, not at once (bpf/sock_ops.c, mda_own_fin).
KERNEL_MEMBERS = {
    "MDA_TASK_NR_CPUS_ALLOWED": "task_struct.nr_cpus_allowed",
    "MDA_OFF_SK_MSG_SK_REDIR": "sk_msg.sk_redir",
    "MDA_OFF_SOCK_USER_DATA": "sock.sk_user_data",
    "MDA_OFF_PSOCK_MSG_TOT_LEN": "sk_psock.msg_tot_len",
    "MDA_OFF_PSOCK_REFCNT": "sk_psock.refcnt",
    "MDA_OFF_SOCK_OPS_SK": "bpf_sock_ops_kern.sk",
    "MDA_OFF_SOCK_SK_SOCKET": "sock.sk_socket",
    "MDA_OFF_SOCKET_FILE": "socket.file",
    "MDA_OFF_FILE_F_FLAGS": "file.f_flags",
}
# What blocked_readers.c reads; it is compiled (MDA_GUARD_ITER) only when the BTF gives all.
GUARD_MEMBERS = {
    "MDA_OFF_TASK_STATE": "task_struct.__state",
    "MDA_OFF_TASK_FLAGS": "task_struct.flags",
    "MDA_OFF_TASK_TGID": "task_struct.tgid",
    "MDA_OFF_TASK_SIGNAL": "task_struct.signal",
    "MDA_OFF_SIGNAL_NR_THREADS": "signal_struct.nr_threads",
    "MDA_OFF_REGS_SYSCALL": "pt_regs.orig_ax",  # x86-64's names
    "MDA_OFF_REGS_ARG0": "pt_regs.di",
}
SYSCTL = "/proc/sys/net/ipv4"


class Loaded(NamedTuple):
    instance: Instance
    already: bool  # True: it was running; nothing new was attached


def resolve_cgroup(cgroup: str | None) -> str:
    root = system.cgroup2_root()
    path = Path(cgroup or root).resolve()
    if not path.is_dir():
        raise system.SetupError(f"cgroup {path} does not exist: create it (mkdir) or pick another")
    if path != Path(root) and Path(root) not in path.parents:
        raise system.SetupError(f"{path} is not inside the cgroup v2 hierarchy mounted at {root}")
    return str(path)


def _compile(max_sockets: int):
    from bcc import BPF  # imported here: query and the console never need the compiler

    # One text, not #includes: BCC loads as programs, and rewrites map calls in, only what is in
    # its main file. The header goes first; its include guard makes the files' #include no-ops.
    text = "\n".join((BPF_DIR / src).read_text() for src in (HEADER, *SOURCES))
    unread_max, unread_cap = _unread_limits()
    cflags = [f"-I{BPF_DIR}", f"-DMDA_MAX_SOCKS={max_sockets}", f"-DMDA_UNREAD_MAX={unread_max}U",
              f"-DMDA_UNREAD_CAP={unread_cap}U", f"-DMDA_SHORT_MSGS={abi.SHORT_MSGS}",
              f"-DMDA_SHORT_MIN={abi.SHORT_MIN}"]
    cflags += [f"-D{macro}={offset}" for macro, offset in btf.offsets(KERNEL_MEMBERS).items()]
    guard = btf.offsets(GUARD_MEMBERS)
    if len(guard) == len(GUARD_MEMBERS):
        cflags += [f"-D{macro}={offset}" for macro, offset in guard.items()]
        cflags += [f"-DMDA_NR_{name.upper()}={system.syscall_number(name)}" for name in abi.READ_CALLS]
        cflags.append("-DMDA_GUARD_ITER")
    try:
        return BPF(text=text.encode(), cflags=cflags)
    except Exception as e:  # BCC raises bare Exception on compile or load failure
        raise system.SetupError(
            f"could not load the BPF programs ({e}); the kernel needs CONFIG_BPF_SYSCALL, "
            "CONFIG_NET_SOCK_MSG and CONFIG_CGROUP_BPF") from e


def _unread_limits() -> tuple[int, int]:
    """What TCP lets a receiver hold unread (tcp_rmem's maximum), and the most the fast path lets
    one (a quarter of tcp_mem's pressure threshold): see bpf/sk_msg.c."""
    def sysctl(name: str, field: int, default: int) -> int:
        try:
            return int(Path(SYSCTL, name).read_text().split()[field])
        except (OSError, IndexError, ValueError):
            return default
    rmem_max = sysctl("tcp_rmem", 2, 6 << 20)
    pressure = sysctl("tcp_mem", 1, 1 << 18) * os.sysconf("SC_PAGE_SIZE")
    return rmem_max, min(max(pressure // 4, rmem_max), 0xFFFFFFFF)  # msg_tot_len is 32 bits


def load(cgroup: str | None, pin_dir: str, config: str, ruleset: abi.RuleSet | None,
         max_sockets: int, nodelay_streams: str | None = None) -> Loaded:
    """Load and attach, or find what is already running there (and load the new rules into it).
    nodelay_streams: one of abi.NODELAY_STREAMS, or None to keep what runs ("stack" when new)."""
    system.require_root("enable")
    cg = resolve_cgroup(cgroup)
    system.ensure_bpffs(pin_dir)
    try:
        inst = Instance(pin_dir)
    except NotEnabled:
        pass
    else:
        if inst.cgroup != cg:
            held = inst.cgroup
            inst.close()
            raise system.SetupError(
                f"{pin_dir} already holds an accelerator for cgroup {held}: "
                "run `mdatui disable` first, or choose another --pin-dir")
        if ruleset is not None:
            inst.load_rules(ruleset)
        if nodelay_streams is not None:
            inst.nodelay_streams = nodelay_streams
        return Loaded(inst, already=True)

    if not 2 <= max_sockets <= 1 << 24:
        raise system.SetupError(f"--max-sockets {max_sockets} is out of range 2-16777216")
    b = _compile(max_sockets)
    from bcc import BPF, BPFAttachType
    from bcc.libbcc import lib

    pinned: list[str] = []
    attached: list[tuple[object, int, int]] = []
    cg_fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
    try:
        Path(pin_dir).mkdir(parents=True, exist_ok=True)
        fns = {
            "mda_sock_create": b.load_func(b"mda_sock_create", BPF.CGROUP_SOCK),
            "mda_sock_ops": b.load_func(b"mda_sock_ops", BPF.SOCK_OPS),
            "mda_sk_msg": b.load_func(b"mda_sk_msg", BPF.SK_MSG),
        }
        meta = abi.Meta(cgroup=cg.encode(), config=config.encode(), enabled_at=int(time.time()))
        b[b"mda_meta"][ct.c_int(0)] = meta
        ctl = abi.Control(snaplen=128)
        b[b"mda_control"][ct.c_int(0)] = ctl
        if ruleset is not None:
            b[b"sock_param_map"][ct.c_int(0)] = ruleset
        b[b"mda_policy"][ct.c_int(0)] = ct.c_uint32(abi.NODELAY_STREAMS.index(nodelay_streams or "stack"))

        # Filled before pinned, and sock_ops_map (what Instance looks for) pinned last: a reader
        # that finds the accelerator finds it whole (the console polling while it enables once
        # saw one with no cgroup and no rules).
        pinned += _pin_reader_iterator(b, pin_dir)
        for prog in PROGRAMS:
            path = os.path.join(pin_dir, prog.pin)
            bpfsys.obj_pin(fns[prog.func].fd, path)
            pinned.append(path)
        for name in sorted(MAPS, key=lambda name: name == "sock_ops_map"):
            fd = lib.bpf_table_fd(b.module, name.encode())
            if fd < 0:
                raise system.SetupError(f"BPF map {name} was not created")
            path = os.path.join(pin_dir, name)
            bpfsys.obj_pin(fd, path)
            pinned.append(path)

        sockhash = lib.bpf_table_fd(b.module, b"sock_ops_map")
        BPF.attach_func(fns["mda_sk_msg"], sockhash, BPFAttachType.SK_MSG_VERDICT)
        attached.append((fns["mda_sk_msg"], sockhash, BPFAttachType.SK_MSG_VERDICT))
        # Owners are recorded before sock_ops can pair anything; ALLOW_MULTI leaves other tools'
        # programs on the same cgroup in place.
        for func, atype in (("mda_sock_create", BPFAttachType.CGROUP_INET_SOCK_CREATE),
                            ("mda_sock_ops", BPFAttachType.CGROUP_SOCK_OPS)):
            BPF.attach_func(fns[func], cg_fd, atype, bpfsys.BPF_F_ALLOW_MULTI)
            attached.append((fns[func], cg_fd, atype))
    except BaseException as e:
        for fn, target, atype in reversed(attached):
            BPF.detach_func(fn, target, atype)
        for path in pinned:
            os.unlink(path)
        _rmdir_quietly(pin_dir)
        if isinstance(e, bpfsys.BpfError):
            raise system.SetupError(f"could not attach to {cg}: {e.strerror}") from e
        raise
    finally:
        os.close(cg_fd)
    b.cleanup()
    return Loaded(Instance(pin_dir), already=False)


def _pin_reader_iterator(b, pin_dir: str) -> list[str]:
    """Pin blocked_readers.c's iterator where `mdatui serve` reads it (instance.READER_ITER);
    nothing where this kernel cannot run it: the guard then walks /proc."""
    from bcc import BPF
    try:
        fn = b.load_func(b"bpf_iter__task", BPF.TRACING)
        link = bpfsys.link_create(fn.fd, bpfsys.ATTACH_TRACE_ITER)
    except Exception:  # not compiled (a member missing from the BTF), or refused
        return []
    try:
        path = os.path.join(pin_dir, READER_ITER)
        bpfsys.obj_pin(link, path)
    finally:
        os.close(link)
    return [path]


def detach(pin_dir: str, cg: str) -> None:
    """Take the programs off the cgroup; the maps stay pinned."""
    try:
        cg_fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return  # the cgroup went away, and its attachments with it
    try:
        for prog in PROGRAMS:
            if not prog.on_cgroup:
                continue
            fd = bpfsys.obj_get(os.path.join(pin_dir, prog.pin))
            try:
                bpfsys.prog_detach(fd, cg_fd, prog.attach)
            except FileNotFoundError:
                pass
            except bpfsys.BpfError as e:
                if e.errno != 2:
                    raise
            finally:
                os.close(fd)
    finally:
        os.close(cg_fd)


def unpin(pin_dir: str) -> None:
    # sock_ops_map first: from then on Instance finds nothing enabled (see load).
    for entry in sorted(os.listdir(pin_dir), key=lambda entry: entry != "sock_ops_map"):
        os.unlink(os.path.join(pin_dir, entry))
    _rmdir_quietly(pin_dir)


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
