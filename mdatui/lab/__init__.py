"""Private network namespaces and a cgroup to run real traffic in, and nothing else.

The demo, the benchmarks and the tests build their pods here. Processes join the cgroup first
and then the namespace (`ip netns exec` would remount /sys and hide the cgroup2 mount), and
everything made here is removed by `close()`, also after a failure.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..core.kernel import system

CLONE_NEWNET = 0x40000000
_serial = itertools.count()


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _enter(cgroup: str | None, netns: str | None, uid: int | None, gid: int | None) -> None:
    """Runs in the child between fork and exec; ids are dropped last, after the root-only steps."""
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if netns:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        if system.libc.setns(fd, CLONE_NEWNET) != 0:
            os._exit(127)
        os.close(fd)
    if gid is not None:
        os.setgroups([])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)


class Lab:
    """One cgroup under the cgroup2 root, any number of namespaces, and the processes in them."""

    def __init__(self, tag: str = "lab"):
        self.name = f"mdatui-{tag}-{os.getpid()}-{next(_serial)}"
        root = system.cgroup2_root()
        self.cgroup = os.path.join(root, self.name)
        os.mkdir(self.cgroup)
        self.outside = os.path.join(root, self.name + "-out")  # a sibling the programs don't see
        os.mkdir(self.outside)
        self.netns: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_netns(self, suffix: str) -> str:
        name = f"{self.name}-{suffix}"
        run("ip", "netns", "add", name)
        self.netns.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def link(self, ns_a: str, addr_a: str, ns_b: str, addr_b: str) -> None:
        """A veth between two namespaces; addresses as CIDR, e.g. 198.18.0.1/24 or 2001:2::1/64
        (IPv6 ones usable at once: no duplicate address detection)."""
        n = len(self.netns) + next(_serial)
        a, b = f"mda{os.getpid() % 10000}a{n}", f"mda{os.getpid() % 10000}b{n}"
        run("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
        for ns, dev, addr in ((ns_a, a, addr_a), (ns_b, b, addr_b)):
            run("ip", "-n", ns, "addr", "add", addr, "dev", dev, *(["nodad"] if ":" in addr else []))
            run("ip", "-n", ns, "link", "set", dev, "up")

    def iptables(self, netns: str, *rule: str, v6: bool = False) -> None:
        run("ip", "netns", "exec", netns, "ip6tables" if v6 else "iptables", "-w", *rule)

    def spawn(self, argv: list[str], netns: str | None = None, inside: bool = True,
              uid: int | None = None, gid: int | None = None, **popen) -> subprocess.Popen:
        """Start argv in a namespace, in the lab's cgroup (inside) or in its sibling (not),
        optionally as another uid/gid."""
        cg = self.cgroup if inside else self.outside
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        try:
            p = subprocess.Popen(argv, preexec_fn=lambda: _enter(cg, netns, uid, gid), **popen)
        except PermissionError as e:
            if uid is None:
                raise
            raise system.SetupError(
                f"uid {uid} may not run {e.filename or argv[0]}: install mdatui where every user "
                "can read it (not under /root, say)") from None
        self.procs.append(p)
        return p

    def python(self, module_args: list[str], **kw) -> subprocess.Popen:
        return self.spawn([sys.executable, "-m", *module_args], **kw)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
            for stream in (p.stdout, p.stderr, p.stdin):
                if stream:
                    stream.close()
        self.procs.clear()
        for ns in reversed(self.netns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.netns.clear()
        for cg in (self.cgroup, self.outside):
            remove_cgroup(cg)


def remove_cgroup(path: str) -> None:
    """rmdir fails while a process lingers in the cgroup; kill stragglers by pid and retry."""
    deadline = time.monotonic() + 5
    while Path(path).exists():
        try:
            os.rmdir(path)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            for pid in Path(path, "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
