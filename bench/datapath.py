"""Data-path benchmark: sockperf latency and throughput over the plain stack and through mdatui.

Two identical labs are built and the accelerator is attached to one of them only, so runs can
alternate between plain and accelerated without reloading anything; each pair swaps which one
goes first, so that a drift in the machine's load falls on both alike. Topologies:

  same-pod      client and server in one netns, over 127.0.0.1: the two ends pair
  cross-pod     two netns joined by a veth (198.18.0.0/15): the two ends pair
  peer-outside  server in the client's netns but outside the lab's cgroup: the client's end never
                pairs, so this shows what an unpaired socket pays (goal: at most 2 %)

Every accelerated run is checked against the maps while it runs: both ends of its connection are
in the sockhash and the client's message counter moves (or, for peer-outside, its end is in no map).
A run costs about max(seconds + 0.3, 2.1) s: sockperf idles 2 s before each test, and that idle
time overlaps the run before it.

    sudo .venv/bin/python -m bench.datapath [--quick] [--pairs 3] [--seconds 2] [--json]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdatui.core import lab as labm  # noqa: E402
from mdatui.core import loader, snapshot, system  # noqa: E402
from mdatui.core.instance import Instance  # noqa: E402
from bench.report import run_and_print  # noqa: E402

TOPOLOGIES = ("same-pod", "cross-pod", "peer-outside")
PAIRED = {"same-pod": True, "cross-pod": True, "peer-outside": False}
TESTS = ("ping-pong", "throughput")
SERVER_START_SECONDS = 5
RUN_SLACK_SECONDS = 15  # beyond its expected time, before a sockperf client counts as hung
# sockperf's client sleeps 0.1 s before connecting and a fixed 2 s after it, then measures;
# the first 0.4 s of a ping-pong test are warm-up that its statistics leave out.
SOCKPERF_IDLE = 2.1
SOCKPERF_WARMUP = 0.4
NEXT_GAP = 0.3  # seconds between one client's test and the next one's: the first one's exit
UNPAIRED_GOAL_PCT = 2.0
ROBUST = ("rtt p50", "msg rate")  # what the unpaired cost is judged on: avg and p99 follow outliers
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Metric:
    name: str
    test: str
    pattern: str
    unit: str
    higher_is_better: bool


# Ping-pong runs with --full-rtt: latencies are round trips, not sockperf's default half of one.
METRICS = (
    Metric("rtt avg", "ping-pong", r"avg-rtt=\s*([\d.]+)", "usec", False),
    Metric("rtt p50", "ping-pong", r"percentile 50\.000 =\s*([\d.]+)", "usec", False),
    Metric("rtt p99", "ping-pong", r"percentile 99\.000 =\s*([\d.]+)", "usec", False),
    Metric("msg rate", "throughput", r"Message Rate is\s*([\d.]+)", "msg/s", True),
    Metric("bandwidth", "throughput", r"BandWidth is\s*([\d.]+) MBps", "MBps", True),
)


def parse(test: str, text: str) -> dict[str, float]:
    """The numbers of one sockperf client run, by metric name."""
    text = ANSI.sub("", text)
    out = {}
    for m in METRICS:
        if m.test != test:
            continue
        found = re.search(m.pattern, text)
        if not found:
            raise RuntimeError(f"sockperf {test}: no '{m.name}' in its output:\n{text[-2000:]}")
        out[m.name] = float(found.group(1))
    return out


@dataclass(frozen=True)
class Target:
    netns: str  # where the client runs
    ip: str
    port: int


@dataclass
class Side:
    """One lab with a sockperf server per topology; inst is None on the plain side."""
    label: str
    lab: labm.Lab
    targets: dict[str, Target]
    inst: Instance | None = None


def build(lab: labm.Lab, subnet: int) -> dict[str, Target]:
    """Namespaces, the veth and three listening sockperf servers; returns where clients go."""
    pod = lab.add_netns("pod")
    peer = lab.add_netns("peer")
    lab.link(pod, f"198.18.{subnet}.1/24", peer, f"198.18.{subnet}.2/24")
    servers = {  # topology -> (target, server netns, server in the lab's cgroup)
        "same-pod": (Target(pod, "127.0.0.1", 7001), pod, True),
        "cross-pod": (Target(pod, f"198.18.{subnet}.2", 7002), peer, True),
        "peer-outside": (Target(pod, "127.0.0.1", 7003), pod, False),
    }
    for target, netns, inside in servers.values():
        srv = lab.spawn(["sockperf", "server", "--tcp", "-i", target.ip, "-p", str(target.port)],
                        netns=netns, inside=inside,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(srv, target.port)
    return {topo: target for topo, (target, _, _) in servers.items()}


def _wait_listening(proc: subprocess.Popen, port: int) -> None:
    """/proc/PID/net/tcp lists the sockets of the namespace PID lives in."""
    want = f":{port:04X} "
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sockperf server on port {port} exited with {proc.returncode}")
        try:
            lines = Path(f"/proc/{proc.pid}/net/tcp").read_text().splitlines()[1:]
        except OSError:
            lines = []
        if any(want in line and line.split()[3] == "0A" for line in lines):  # 0A: LISTEN
            return
        time.sleep(0.05)
    raise RuntimeError(f"sockperf server on port {port} did not listen within {SERVER_START_SECONDS} s")


class Client:
    """One sockperf client, read as it goes: it sleeps 2 s after connecting, then says
    "Starting test..." and measures for --seconds."""

    def __init__(self, side: Side, topo: str, test: str, size: int, seconds: int):
        self.side, self.topo, self.test = side, topo, test
        self.target = side.targets[topo]
        t = self.target
        self.argv = ["sockperf", test, "--tcp", "-i", t.ip, "-p", str(t.port), "-m", str(size),
                     "-t", str(seconds)]
        if test == "ping-pong":
            self.argv.append("--full-rtt")
        self.proc = side.lab.spawn(self.argv, netns=t.netns, stderr=subprocess.STDOUT)
        self.out = b""
        self.deadline = time.monotonic() + SOCKPERF_IDLE + seconds + RUN_SLACK_SECONDS

    def _read_until(self, marker: bytes | None) -> None:
        """Read output until marker shows up, or to the end when marker is None."""
        fd = self.proc.stdout.fileno()
        while marker is None or marker not in self.out:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{' '.join(self.argv)} hung:\n{self._tail()}")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return
                self.out += chunk

    def _tail(self) -> str:
        return ANSI.sub("", self.out.decode(errors="replace"))[-2000:]

    def started(self) -> None:
        self._read_until(b"Starting test")
        if b"Starting test" not in self.out:
            raise RuntimeError(f"{' '.join(self.argv)} ended before its test:\n{self._tail()}")

    def port(self) -> int | None:
        """The client's own port: its socket's inode, found in its namespace's table."""
        inodes = set()
        fd_dir = f"/proc/{self.proc.pid}/fd"
        for fd in os.listdir(fd_dir):
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
        for line in Path(f"/proc/{self.proc.pid}/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes and int(f[2].rsplit(":", 1)[1], 16) == self.target.port:
                return int(f[1].rsplit(":", 1)[1], 16)
        return None

    def result(self) -> dict[str, float]:
        self._read_until(None)
        self.proc.wait(timeout=RUN_SLACK_SECONDS)
        if self.proc.returncode != 0:
            raise RuntimeError(f"{' '.join(self.argv)} exited {self.proc.returncode}:\n{self._tail()}")
        return parse(self.test, self.out.decode(errors="replace"))


def _ends(snap: snapshot.Snapshot, port: int) -> dict[str, snapshot.Connection]:
    """The client's end and the server's end of the connection from client port `port`."""
    found = {}
    for c in snap.connections:
        if c.end.local.endswith(f":{port}"):
            found["client"] = c
        elif c.end.remote.endswith(f":{port}"):
            found["server"] = c
    return found


def verify(topo: str, port: int | None, first: snapshot.Snapshot, second: snapshot.Snapshot) -> bool:
    """Paired topologies: both ends accelerated in the sockhash and the client's messages
    redirected between the two looks. peer-outside: the client's end in no map at all."""
    if port is None:
        return False
    a, b = _ends(first, port), _ends(second, port)
    if not PAIRED[topo]:
        return not a and not b
    if set(a) != {"client", "server"} or set(b) != {"client", "server"}:
        return False
    ok = all(c.state == "accelerated" and c.in_sockhash for c in b.values())
    return ok and b["client"].msgs > a["client"].msgs


def measure(plain: Side, accel: Side, topologies, sizes, pairs, seconds, progress) -> list[dict]:
    """Alternating runs (pair i runs plain first when i is even, accelerated first when odd).

    Each client is started while the one before it measures, so that its 2 s idle start
    overlaps that run; its test begins only once that run is over. Both sides take the same
    two looks at the maps mid-run, so the probing costs them alike; only accelerated runs are
    judged by them.
    """
    cells, jobs = [], []
    for topo in topologies:
        for size in sizes:
            for test in TESTS:
                cell = {"topology": topo, "size": size, "test": test,
                        "plain": [], "accel": [], "verified": []}
                cells.append(cell)
                for i in range(pairs):
                    jobs += [(cell, side) for side in ((plain, accel) if i % 2 == 0 else (accel, plain))]

    def start(job) -> Client:
        cell, side = job
        return Client(side, cell["topology"], cell["test"], cell["size"], seconds)

    upcoming = start(jobs[0])
    for n, (cell, side) in enumerate(jobs):
        client, upcoming = upcoming, None
        client.started()
        t0 = time.monotonic()
        port = client.port()
        launch = (max(0.0, seconds + NEXT_GAP - SOCKPERF_IDLE), "launch")
        looks = [(SOCKPERF_WARMUP + f * (seconds - SOCKPERF_WARMUP), "look") for f in (0.25, 0.75)]
        snaps = []
        for offset, what in sorted([launch, *looks]):
            time.sleep(max(0.0, t0 + offset - time.monotonic()))
            if what == "look":
                snaps.append(snapshot.read(accel.inst))
            elif n + 1 < len(jobs):
                upcoming = start(jobs[n + 1])
        values = client.result()
        cell[side.label].append(values)
        check = ""
        if side is accel:
            ok = verify(cell["topology"], port, *snaps)
            cell["verified"].append(ok)
            check = f" check={'ok' if ok else 'FAILED'}"
        shown = " ".join(f"{k}={v:g}" for k, v in values.items())
        progress(f"[{n + 1}/{len(jobs)}] {cell['topology']} {cell['size']}B {cell['test']} "
                 f"{side.label}: {shown}{check}")
    return cells


def rows(cells: list[dict]) -> list[dict]:
    """One row per metric: medians over the pairs, their ratio, and the spread of per-pair ratios."""
    out = []
    for cell in cells:
        n = len(cell["verified"])
        good = sum(cell["verified"])
        what = "redirected" if PAIRED[cell["topology"]] else "unpaired"
        check = f"{what} {good}/{n}" + ("" if good == n else " FAIL")
        for m in METRICS:
            if m.test != cell["test"]:
                continue
            p = [run[m.name] for run in cell["plain"]]
            a = [run[m.name] for run in cell["accel"]]
            pm, am = statistics.median(p), statistics.median(a)
            ratio = am / pm if pm else float("nan")
            per_pair = [y / x for x, y in zip(p, a) if x]
            # How much slower the accelerated side is, in %: negative when it is faster.
            cost = ((1 - ratio) if m.higher_is_better else (ratio - 1)) * 100
            out.append({
                "topology": cell["topology"], "size": cell["size"], "metric": m.name,
                "unit": m.unit, "plain_median": pm, "accel_median": am, "ratio": ratio,
                "higher_is_better": m.higher_is_better,
                "cost_pct": cost,
                "verdict": f"{abs(cost):.1f}% {'worse' if cost > 0 else 'better'}",
                "pair_ratio_min": min(per_pair, default=float("nan")),
                "pair_ratio_max": max(per_pair, default=float("nan")),
                "check": check, "plain": p, "accel": a,
            })
    return out


def unpaired_cost(table_rows: list[dict]) -> dict | None:
    """What sockets whose peer is outside pay (goal: <= 2 %), judged on the median latency and
    the message rate, against the noise: the widest spread of single-pair ratios."""
    costs = [r for r in table_rows if r["topology"] == "peer-outside" and r["metric"] in ROBUST]
    if not costs:
        return None
    worst = max(costs, key=lambda r: r["cost_pct"])
    noise = 100 * max(max(abs(r["pair_ratio_min"] - 1), abs(r["pair_ratio_max"] - 1)) for r in costs)
    if worst["cost_pct"] <= UNPAIRED_GOAL_PCT:
        verdict = "met"
    elif worst["cost_pct"] <= noise:
        verdict = "not resolved: within the noise"
    else:
        verdict = "NOT met"
    return {"worst_pct": worst["cost_pct"], "worst": f"{worst['size']}B {worst['metric']}",
            "mean_pct": statistics.mean(r["cost_pct"] for r in costs), "noise_pct": noise,
            "verdict": verdict}


def table(result: dict) -> str:
    head = ("topology", "size", "metric", "unit", "plain med", "accel med",
            "accel/plain", "pair ratios", "verdict", "check")
    # Bandwidth is the message rate times the size: same ratios, so it shares that row.
    bandwidth = {(r["topology"], r["size"]): r for r in result["rows"] if r["metric"] == "bandwidth"}
    lines = []
    for r in result["rows"]:
        if r["metric"] == "bandwidth":
            continue
        unit, plain, accel = r["unit"], _num(r["plain_median"]), _num(r["accel_median"])
        bw = bandwidth.get((r["topology"], r["size"])) if r["metric"] == "msg rate" else None
        if bw:
            unit += " (MBps)"
            plain += f" ({_num(bw['plain_median'])})"
            accel += f" ({_num(bw['accel_median'])})"
        lines.append((r["topology"], str(r["size"]), r["metric"], unit, plain, accel,
                      f"{r['ratio']:.3f}", f"{r['pair_ratio_min']:.2f}-{r['pair_ratio_max']:.2f}",
                      r["verdict"], r["check"]))
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    env = result["environment"]
    text = [
        f"mdatui data path, sockperf {env['sockperf']}: {result['pairs']} alternating pairs x "
        f"{result['seconds']} s per run, {env['cpus']} CPUs, took {result['elapsed_s']:.0f} s",
        f"load average at start {env['load_start']}, at end {env['load_end']}",
        "accel/plain: rtt (usec) < 1 = accelerator lowers latency; msg rate > 1 = accelerator faster.",
        "pair ratios: lowest and highest accel/plain of single pairs (the noise).",
        "",
        fmt.format(*head),
        fmt.format(*("-" * w for w in widths)),
    ]
    text += [fmt.format(*line) for line in lines]
    cost = result["unpaired_cost"]
    if cost:
        text.append(
            f"\npeer-outside (unpaired) cost on {' and '.join(ROBUST)}, accel vs plain "
            f"(negative = accel faster): mean {cost['mean_pct']:+.1f}%, worst {cost['worst_pct']:+.1f}% "
            f"({cost['worst']}); pair noise up to {cost['noise_pct']:.0f}%; "
            f"goal <= {UNPAIRED_GOAL_PCT:g}%: {cost['verdict']}")
    return "\n".join(text)


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 1000 else f"{v:.2f}"


def _sockperf_version() -> str:
    out = subprocess.run(["sockperf", "--version"], capture_output=True, text=True).stdout
    found = re.search(r"version\s+(\S+)", out)
    return found.group(1) if found else "?"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextmanager
def _uninterrupted():
    """Teardown must not be cut short by a second Ctrl-C: the pins would stay behind."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def run(topologies, sizes, pairs, seconds, progress) -> dict:
    system.require_root("the data-path benchmark")
    if not shutil.which("sockperf"):
        raise system.SetupError("sockperf is not installed: apt-get install sockperf (scripts/setup does)")
    started = time.monotonic()
    env = {"cpus": os.cpu_count(), "load_start": _load(), "sockperf": _sockperf_version()}
    with ExitStack() as stack:
        plain_lab = stack.enter_context(labm.Lab("bench-plain"))
        accel_lab = stack.enter_context(labm.Lab("bench-accel"))
        pin_dir = f"{system.BPFFS}/{accel_lab.name}"
        progress("compiling and attaching the accelerator to the accelerated lab ...")
        inst = loader.enable(cgroup=accel_lab.cgroup, pin_dir=pin_dir).instance

        def teardown():
            with _uninterrupted():
                inst.close()
                loader.disable(pin_dir)
        stack.callback(teardown)  # runs before the labs close: detach while the cgroup exists
        plain = Side("plain", plain_lab, build(plain_lab, subnet=1))
        accel = Side("accel", accel_lab, build(accel_lab, subnet=2), inst)
        cells = measure(plain, accel, topologies, sizes, pairs, seconds, progress)
    env["load_end"] = _load()
    table_rows = rows(cells)
    return {"pairs": pairs, "seconds": seconds, "sizes": sizes, "environment": env,
            "elapsed_s": time.monotonic() - started, "rows": table_rows,
            "unpaired_cost": unpaired_cost(table_rows)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, help="alternating plain/accelerated pairs per cell (default 3)")
    ap.add_argument("--seconds", type=int, help="seconds per sockperf run, whole (default 2)")
    ap.add_argument("--sizes", help="message sizes in bytes, comma separated (default 64,1024,16384)")
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES),
                    help=f"comma separated subset of {','.join(TOPOLOGIES)}")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run, under a minute: 1 pair, 1 s, size 64 unless given")
    ap.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    args = ap.parse_args(argv)
    pairs = args.pairs or (1 if args.quick else 3)
    seconds = args.seconds or (1 if args.quick else 2)
    sizes = [int(s) for s in (args.sizes or ("64" if args.quick else "64,1024,16384")).split(",")]
    topologies = args.topologies.split(",")
    unknown = set(topologies) - set(TOPOLOGIES)
    if unknown or pairs < 1 or seconds < 1 or min(sizes) < 14:  # sockperf's smallest message
        ap.error(f"bad arguments: topologies {sorted(unknown) or 'ok'}, pairs >= 1, seconds >= 1, sizes >= 14")
    runs = len(topologies) * len(sizes) * len(TESTS) * pairs * 2
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    progress(f"{runs} runs, about {runs * max(seconds + NEXT_GAP, SOCKPERF_IDLE) + 10:.0f} s")
    return run_and_print(lambda: run(topologies, sizes, pairs, seconds, progress), table, args.json)

if __name__ == "__main__":
    sys.exit(main())
