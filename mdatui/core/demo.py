"""A small service mesh on this node, for `mdatui demo`: real traffic through real sidecars.

    pod "app" 198.18.0.1                         pod "svc" 198.18.0.2
    app clients --(nat OUTPUT REDIRECT :80)--> sidecar :15001 ---veth---> sidecar :15006 --> server :9080
                                                                (nat PREROUTING REDIRECT :9080)

Every hop is a TCP connection that the accelerator pairs: app to its sidecar across the REDIRECT,
sidecar to sidecar across the veth, sidecar to server over loopback. Everything lives in a Lab
(its own cgroup and namespaces); the accelerator is attached to that cgroup only.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from . import loader
from .instance import Instance
from .lab import Lab

TRAFFIC = "mdatui.core.traffic"
SIDECAR_UID = 1337  # Istio's proxy uid: its own connections are not redirected back to it


@dataclass
class Demo:
    lab: Lab
    pin_dir: str
    instance: Instance


def _build(lab: Lab, clients: int, seconds: float) -> None:
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


@contextmanager
def running(clients: int = 3, seconds: float = 1800):
    """Build the mesh, accelerate it, and take everything away afterwards."""
    with Lab("demo") as lab:
        pin_dir = f"/sys/fs/bpf/{lab.name}"
        inst = loader.enable(cgroup=lab.cgroup, pin_dir=pin_dir).instance
        try:
            _build(lab, clients, seconds)
            yield Demo(lab, pin_dir, inst)
        finally:
            inst.close()
            loader.disable(pin_dir)
