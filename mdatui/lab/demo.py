"""A small service mesh on this node, for `mdatui demo`: real traffic through real sidecars.

    pod "app" 198.18.0.1                         pod "svc" 198.18.0.2
    app clients --(nat OUTPUT REDIRECT :80)--> sidecar :15001 ---veth---> sidecar :15006 --> server :9080
                                                                (nat PREROUTING REDIRECT :9080)

Every hop is a TCP connection that the accelerator pairs: app to its sidecar across the REDIRECT,
sidecar to sidecar across the veth, sidecar to server over loopback. Everything lives in a Lab
(its own cgroup and namespaces); the accelerator is attached to that cgroup only, and its rules
are a scratch copy that the console may edit.

Everything the demo makes is named after it (mdatui-demo-PID-N: cgroups, namespaces, the pin
dir, the rules file under /run/mdatui), and a guardian process removes all of it once the demo
ends, however it ends: `q`, an exception, a signal, or even SIGKILL of the demo. What a demo
and its guardian both killed left, `mdatui demo --clean` finds by those names.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import lab as labm
from ..core import guardian, lifecycle, resources, service
from ..core.kernel import system
from ..core.kernel.instance import Instance, NotEnabled

TRAFFIC = "mdatui.lab.traffic"
SIDECAR_UID = 1337  # Istio's proxy uid: its own connections are not redirected back to it
RUN_DIR = Path("/run/mdatui")
BPFFS = Path("/sys/fs/bpf")
NAME = re.compile(r"mdatui-demo-(\d+)-")
TEARDOWN_S = 5  # the bound from a signal to nothing left


def prefix_of(pid: int) -> str:
    """What the names of everything demo `pid` made start with."""
    return f"mdatui-demo-{pid}-"


@dataclass
class Demo:
    lab: labm.Lab
    pin_dir: str
    instance: Instance
    rules: str   # the scratch rules file the accelerator was enabled with


def _build(lab: labm.Lab, clients: int, seconds: float) -> None:
    app, svc = lab.add_netns("app"), lab.add_netns("svc")
    lab.link(app, "198.18.0.1/24", svc, "198.18.0.2/24")
    lab.iptables(app, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "80",
                 "-m", "owner", "!", "--uid-owner", str(SIDECAR_UID),
                 "-j", "REDIRECT", "--to-ports", "15001")
    lab.iptables(svc, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9080",
                 "-j", "REDIRECT", "--to-ports", "15006")
    lab.iptables(svc, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "owner",
                 "--uid-owner", str(SIDECAR_UID), "-j", "RETURN")
    servers = [
        (svc, ["echo", "--port", "9080", "--host", "127.0.0.1"], None),
        (svc, ["proxy", "--port", "15006", "--to", "127.0.0.1:9080"], SIDECAR_UID),
        (app, ["proxy", "--port", "15001", "--to", "198.18.0.2:9080"], SIDECAR_UID),
    ]
    for ns, args, uid in servers:
        p = lab.python([TRAFFIC, *args], netns=ns, uid=uid)
        if p.stdout.readline().strip() != b"READY":
            raise RuntimeError(f"demo {args[0]} did not start: {p.stderr.read().decode()[-500:]}")
    for i in range(clients):
        lab.python([TRAFFIC, "chat", "--to", "198.18.0.2:80", "--seconds", str(seconds),
                    "--rate", str(10 * (i + 1)), "--size", str(256 << i)], netns=app)


def _scratch_rules(name: str) -> str:
    """A copy of the shipped rules (comments only: everything is accelerated) for the demo's
    console to edit: never the repository's file or /etc's."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = RUN_DIR / f"{name}.conf"
    shutil.copyfile(resources.DEFAULT_CONFIG, path)
    return str(path)


@contextmanager
def running(clients: int = 3, seconds: float = 1800):
    """Build the mesh, accelerate it, and take everything away afterwards (the guardian does,
    also when this process dies on the way)."""
    prefix = prefix_of(os.getpid())
    keeper = guardian.start(__name__, prefix)
    try:
        lab = labm.Lab("demo")
        pin_dir = str(BPFFS / lab.name)
        rules = _scratch_rules(lab.name)
        inst = lifecycle.enable(cgroup=lab.cgroup, pin_dir=pin_dir, config=rules).instance
        try:
            _build(lab, clients, seconds)
            yield Demo(lab, pin_dir, inst, rules)
        finally:
            inst.close()
    finally:
        guardian.release(keeper, TEARDOWN_S)


# ---------------------------------------------------------------- teardown by name

def remove(prefix: str) -> list[str]:
    """Everything of the demos whose names start with prefix, idempotently: their processes
    (by cgroup), accelerators (detached, unpinned, their `mdatui serve` stopped), namespaces
    (with their veths and iptables rules), cgroups and rules files. Says what it removed."""
    root = system.cgroup2_root()
    cgroups = sorted(str(Path(root, n)) for n in os.listdir(root) if n.startswith(prefix))
    for cg in cgroups:
        _kill_all(cg)  # first: connections that close now leave nothing draining
    pins = sorted(str(p) for p in BPFFS.glob(prefix + "*"))
    for pin in pins:
        try:
            lifecycle.disable(pin)
        except (NotEnabled, OSError):  # half made (enable was cut short), or half removed
            _unpin(pin)
        service.stop(pin)
    netns = [ns for ns in _netns() if ns.startswith(prefix)]
    for ns in netns:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for cg in cgroups:
        labm.remove_cgroup(cg)
    files = sorted(str(p) for p in RUN_DIR.glob(prefix + "*"))
    for f in files:
        Path(f).unlink(missing_ok=True)
    return [*cgroups, *pins, *netns, *files]


def _unpin(pin: str) -> None:
    """What is pinned there, when it is no whole accelerator: programs it attached went with
    the cgroup, which remove() takes away next."""
    for entry in Path(pin).glob("*"):
        entry.unlink(missing_ok=True)
    try:
        os.rmdir(pin)
    except FileNotFoundError:
        pass


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_all(cgroup: str, timeout: float = 2.0) -> None:
    """Every process in the cgroup, at once (cgroup.kill, Linux 5.14), then until it is empty."""
    try:
        Path(cgroup, "cgroup.kill").write_text("1")
        deadline = time.monotonic() + timeout
        while "populated 1" in Path(cgroup, "cgroup.events").read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
    except FileNotFoundError:
        pass  # removed meanwhile (another teardown of the same demo)


def leftovers() -> dict[int, list[str]]:
    """What demos that no longer run left, by the pid in their names."""
    root = system.cgroup2_root()
    names = [*os.listdir(root), *(p.name for p in BPFFS.iterdir()), *_netns(),
             *(p.name for p in RUN_DIR.glob("mdatui-demo-*"))]
    found: dict[int, list[str]] = {}
    for name in names:
        m = NAME.match(name)
        if m and not _is_demo(int(m[1])):
            found.setdefault(int(m[1]), []).append(name)
    return found


def _is_demo(pid: int) -> bool:
    """Whether pid is a running demo (or its guardian), not a pid reused by something else."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"mdatui" in cmdline


def clean() -> list[str]:
    """`mdatui demo --clean`: remove what demos that no longer run left."""
    return [item for pid in leftovers() for item in remove(prefix_of(pid))]


if __name__ == "__main__" and sys.argv[1:2] == ["--guard"]:
    guardian.wait_for_owner()
    remove(sys.argv[2])
