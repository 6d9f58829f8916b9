"""Data-path benchmark: issue #11's workloads over the plain stack and through mdatui, as ratios.

Two identical labs are built side by side and the accelerator is attached to one of them only
(its own cgroup), so runs alternate between plain and accelerated without reloading anything;
each pair swaps which side goes first, so that a drift in the machine's load falls on both
alike. Every case runs in both topologies:

  same-pod      client and server in one netns, over 127.0.0.1
  cross-pod     two netns joined by a veth (198.18.0.0/15)
  peer-outside  (sockperf 64 B only, not in the issue) server in the client's netns but outside
                the lab's cgroup: the client never pairs; what that socket pays (goal <= 2 %)

Cases (bench/dp_cases.py, targets from issue #11 item 3): sockperf throughput at 64 B, 1 KiB and
16 KiB with Nagle (sockperf's default in that mode) and with TCP_NODELAY (--tcp-avoid-nodelay);
iperf3 -l 128 and -l 128K; sockperf ping-pong 64 B and 16 KiB (round trips); the mesh
(bench/dp_mesh.py: wrk -> iptables REDIRECT -> haproxy sidecar -> nginx, 50 connections), and
the same with a new connection for every request and for every 4th (mesh-close and
mesh-close/4req, not in the issue; TIME_WAIT ports are reused in the mesh's namespaces). For
every accelerated run the lab's mda_stats counters are read just before its client starts and
after it ended, and the ends of its connections in the maps are counted by state at 3/4 of the
run: the table says which path its connections took.

    sudo .venv/bin/python -m bench.datapath [--quick] [--only REGEX] [--pairs 3] [--seconds 2] [--json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdatui import lab as labm  # noqa: E402
from mdatui.core.kernel import abi, system
from mdatui.core import reader
from mdatui.core import lifecycle
from mdatui.core import service, snapshot  # noqa: E402
from mdatui.core.kernel.instance import Instance  # noqa: E402
from bench import dp_cases, dp_mesh, dp_tools  # noqa: E402
from bench.dp_cases import Case  # noqa: E402
from bench.dp_tools import SOCKPERF_IDLE, RunFailed  # noqa: E402
from bench.report import run_and_print  # noqa: E402

NEXT_GAP = 0.3  # seconds between one sockperf test and the next one's: the first one's exit
LOOK_AT = 0.75  # of a run, when its connections' ends are counted by state
PORTS = {  # topology -> sockperf server port, iperf3 port
    "same-pod": (7001, 7101), "cross-pod": (7002, 7102), "peer-outside": (7003, 0)}
TOOLS = ("sockperf", "iperf3", "wrk", "haproxy", "nginx")


@dataclass
class Side:
    """One lab and where its servers listen; inst is None on the plain side."""
    label: str
    lab: labm.Lab
    pod: str
    peer: str
    peer_ip: str
    mesh: dict[str, dp_mesh.Service]
    inst: Instance | None = None
    sockperf: dict[str, subprocess.Popen] = field(default_factory=dict)  # topology -> server

    def address(self, topo: str) -> tuple[str, str, str]:
        """(client netns, server netns, server ip) of a topology."""
        if topo == "cross-pod":
            return self.pod, self.peer, self.peer_ip
        return self.pod, self.pod, "127.0.0.1"


def build(label: str, lab: labm.Lab, subnet: int, tmp: Path, need_mesh: bool) -> Side:
    """Namespaces, the veth, the sockperf servers and (when a mesh case runs) the mesh."""
    pod = lab.add_netns("pod")
    peer = lab.add_netns("peer")
    peer_ip = f"198.18.{subnet}.2"
    lab.link(pod, f"198.18.{subnet}.1/24", peer, f"{peer_ip}/24")
    side = Side(label, lab, pod, peer, peer_ip, {})
    for topo in PORTS:
        sockperf_server(side, topo)
    if need_mesh:
        side.mesh = dp_mesh.build(lab, tmp / label, pod, peer, peer_ip)
    return side


def sockperf_server(side: Side, topo: str) -> None:
    _, server_ns, ip = side.address(topo)
    side.sockperf[topo] = dp_tools.sockperf_server(side.lab, server_ns, ip, PORTS[topo][0],
                                                   inside=topo != "peer-outside")


def case_ports(side: Side, case: Case) -> set[int]:
    if case.tool.startswith("mesh"):
        return set(side.mesh[case.topology].ports)
    sockperf, iperf = PORTS[case.topology]
    return {iperf if case.tool == "iperf3" else sockperf}


def start(side: Side, case: Case, seconds: int) -> dp_tools.Client:
    client_ns, server_ns, ip = side.address(case.topology)
    if case.tool in ("sockperf-tp", "sockperf-pp"):
        if side.sockperf[case.topology].poll() is not None:  # a run broke it: the next gets a new one
            sockperf_server(side, case.topology)
        return dp_tools.Sockperf(side.lab, client_ns, ip, PORTS[case.topology][0],
                                 case.tool.split("-")[1], case.size, seconds, case.nodelay)
    if case.tool == "iperf3":
        return dp_tools.Iperf3(side.lab, client_ns, server_ns, ip, PORTS[case.topology][1],
                               case.size, seconds)
    return dp_tools.Wrk(side.lab, client_ns, side.mesh[case.topology].url, seconds,
                        case.per_conn, side.mesh[case.topology].tmp)


def states(snap: snapshot.Snapshot, ports: set[int]) -> dict[str, int]:
    """The ends of a case's connections in sock_proxy_map, by state."""
    def port(addr: str) -> int:
        return int(addr.rsplit(":", 1)[1])
    return dict(Counter(c.state for c in snap.connections
                        if port(c.end.local) in ports or port(c.end.remote) in ports))


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def measure(plain: Side, accel: Side, cases: list[Case], pairs: int, seconds: int,
            progress) -> list[dict]:
    """Alternating runs: pair i runs plain first when i is even, accelerated first when odd.

    A sockperf client idles 2 s before its test, so the next one is started while the current
    one measures and begins its test just after; never two accelerated ones at once, so that
    the counters read before and after an accelerated run are its own. Both sides take the same
    look at the maps mid-run, so the probing costs them alike.
    """
    cells, jobs = [], []
    for case in cases:
        cell = {"case": case, "plain": [], "accel": [], "deltas": [], "states": []}
        cells.append(cell)
        for i in range(pairs):
            jobs += [(cell, side) for side in ((plain, accel) if i % 2 == 0 else (accel, plain))]

    def launch(n: int):
        """Start job n; a failure to start is its result."""
        cell, side = jobs[n]
        before = accel.inst.stats()
        try:
            return start(side, cell["case"], seconds), before
        except RunFailed as e:
            return e, before

    def overlaps(n: int) -> bool:
        (cell, side), (ncell, nside) = jobs[n], jobs[n + 1]
        return (cell["case"].tool.startswith("sockperf") and ncell["case"].tool.startswith("sockperf")
                and not (side is accel and nside is accel))

    upcoming = launch(0)
    for n, (cell, side) in enumerate(jobs):
        (client, before), upcoming = upcoming, None
        case = cell["case"]
        look = {}
        try:
            if isinstance(client, Exception):
                raise client
            client.started()
            t0 = time.monotonic()
            events = [(LOOK_AT * seconds, "look")]
            if n + 1 < len(jobs) and overlaps(n):
                events.append((max(0.0, seconds + NEXT_GAP - SOCKPERF_IDLE), "launch"))
            for offset, what in sorted(events):
                time.sleep(max(0.0, t0 + offset - time.monotonic()))
                if what == "look":
                    look = states(reader.read(accel.inst), case_ports(side, case))
                else:
                    upcoming = launch(n + 1)
            values = client.result()
        except RunFailed as e:
            if not isinstance(client, Exception):
                client.abandon()
            values = {"error": str(e)}
        cell[side.label].append(values)
        extra = ""
        if side is accel:
            time.sleep(0.05)  # the server's end closes just after the client's
            delta = _delta(accel.inst.stats(), before)
            cell["deltas"].append(delta)
            cell["states"].append(look)
            moved = {k: v for k, v in delta.items() if v and k not in dp_cases.QUIET}
            extra = f"  stats {moved}  ends at {LOOK_AT:.0%}: {look}"
        shown = values.get("error", "").splitlines()[0] if "error" in values else \
            " ".join(f"{k}={v:.4g}" for k, v in values.items())
        progress(f"[{n + 1}/{len(jobs)}] {case.name} {side.label}: {shown}{extra}")
        if upcoming is None and n + 1 < len(jobs):
            upcoming = launch(n + 1)
    return cells


@contextmanager
def _uninterrupted():
    """Teardown must not be cut short by a second Ctrl-C: the pins would stay behind."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _service_gone(served: list[str], progress, seconds: float = 10) -> None:
    """enable started `mdatui serve` for the pin dir; after disable it stays while ends drain,
    and the labs' sockets are closed by now: wait until it has gone, and say so if it has not."""
    for pin_dir in served:
        deadline = time.monotonic() + seconds
        while service.running(pin_dir) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = service.running(pin_dir)
        if pid is not None:
            progress(f"warning: mdatui serve (pid {pid}) for {pin_dir} still runs {seconds:g} s after "
                     "the labs closed")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run(cases: list[Case], pairs: int, seconds: int, progress, nodelay_streams: str = "stack") -> dict:
    system.require_root("the data-path benchmark")
    tools = {c.tool.split("-")[0] for c in cases}
    needed = {"sockperf"} | ({"iperf3"} if "iperf3" in tools else set()) | \
        ({"wrk", "haproxy", "nginx"} if "mesh" in tools else set())
    missing = sorted(t for t in needed if not shutil.which(t))
    if missing:
        raise system.SetupError(f"not installed: {' '.join(missing)} (scripts/setup installs them)")
    started = time.monotonic()
    env = {"cpus": len(os.sched_getaffinity(0)), "load_start": _load(), "kernel": os.uname().release,
           "sockperf": dp_tools.sockperf_version(),
           "iperf3": dp_tools.iperf3_version() if shutil.which("iperf3") else "-",
           "wrk": dp_tools.wrk_version() if shutil.which("wrk") else "-",
           "nodelay_streams": nodelay_streams}
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="mdatui-bench-"))
        os.chmod(tmp, 0o755)  # the mesh's haproxy runs as uid 1337 and reads its config there
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)  # after the labs killed nginx, haproxy
        served: list[str] = []
        stack.callback(_service_gone, served, progress)  # once the labs closed their sockets
        plain_lab = stack.enter_context(labm.Lab("bench-plain"))
        accel_lab = stack.enter_context(labm.Lab("bench-accel"))
        pin_dir = f"{system.BPFFS}/{accel_lab.name}"
        served.append(pin_dir)
        progress("compiling and attaching the accelerator to the accelerated lab's cgroup ...")
        try:
            inst = lifecycle.enable(cgroup=accel_lab.cgroup, pin_dir=pin_dir,
                                    nodelay_streams=nodelay_streams).instance
        except BaseException:
            with _uninterrupted():
                try:
                    lifecycle.disable(pin_dir)  # whatever a cut-short enable pinned
                except Exception:
                    pass
            raise

        def teardown():
            with _uninterrupted():
                inst.close()
                lifecycle.disable(pin_dir)
        stack.callback(teardown)  # runs before the labs close: detach while the cgroup exists
        need_mesh = "mesh" in tools
        plain = build("plain", plain_lab, 1, tmp, need_mesh)
        accel = build("accel", accel_lab, 2, tmp, need_mesh)
        accel.inst = inst
        cells = measure(plain, accel, cases, pairs, seconds, progress)
    env["load_end"] = _load()
    return {"pairs": pairs, "seconds": seconds, "environment": env,
            "elapsed_s": round(time.monotonic() - started, 1),
            "cases": [c.name for c in cases], "rows": dp_cases.rows(cells)}


def _cpu_list(text: str) -> set[int]:
    try:
        cpus = {int(x) for x in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of CPU numbers") from None
    if not cpus <= os.sched_getaffinity(0):
        raise argparse.ArgumentTypeError(
            f"this process may run on CPUs {sorted(os.sched_getaffinity(0))}, not {sorted(cpus)}")
    return cpus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, help="alternating plain/accelerated pairs per case (default 3)")
    ap.add_argument("--seconds", type=int, help="seconds per run, whole (default 2)")
    ap.add_argument("--only", metavar="REGEX",
                    help="cases whose name matches, e.g. 'mesh', 'cross-pod/iperf3', 'tp/64B', "
                         "'sockperf-pp' (--list shows the names)")
    ap.add_argument("--quick", action="store_true",
                    help="development run, about a minute: 1 pair x 1 s, and without --only a "
                         "subset (64 B streams, iperf3 128 B, ping-pong 64 B, the mesh)")
    ap.add_argument("--list", action="store_true", help="print the case names and exit")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ap.add_argument("--cpus", type=_cpu_list, metavar="LIST",
                    help="run every process of both labs on these CPUs only, e.g. '0' or '0,1': "
                         "on one CPU a round trip pays no wake-up of an idle vCPU, so what is "
                         "left is the data path's own cost")
    ap.add_argument("--nodelay-streams", choices=abi.NODELAY_STREAMS, default="stack",
                    help="as `mdatui enable --nodelay-streams`: run the TCP_NODELAY cases with "
                         "'fast' to see whether this machine's fast path beats the stack for "
                         "such streams (default stack)")
    args = ap.parse_args(argv)
    pairs = args.pairs or (1 if args.quick else 3)
    seconds = args.seconds or (1 if args.quick else 2)
    cases = dp_cases.select(args.only, args.quick)
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    if not cases or pairs < 1 or seconds < 1:
        ap.error("no case matches --only" if not cases else "pairs >= 1, seconds >= 1")
    if args.cpus:
        os.sched_setaffinity(0, args.cpus)  # the labs' processes inherit it
    runs = len(cases) * pairs * 2
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    progress(f"{len(cases)} cases, {runs} runs, about {runs * (seconds + 0.6) + 20:.0f} s")
    return run_and_print(lambda: run(cases, pairs, seconds, progress, args.nodelay_streams),
                         dp_cases.table, args.json)


if __name__ == "__main__":
    sys.exit(main())
