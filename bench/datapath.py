"""Data-path benchmark: sockperf latency and throughput over the plain stack and through mdatui.

Two identical labs are built and the accelerator is attached to one of them only, so runs can
alternate between plain and accelerated without reloading anything; each pair swaps which one
goes first, so that a drift in the machine's load falls on both alike. Topologies:

  same-pod      client and server in one netns, over 127.0.0.1: the two ends pair
  cross-pod     two netns joined by a veth (198.18.0.0/15): the two ends pair
  peer-outside  server in the client's netns but outside the lab's cgroup: the client's end never
                pairs, so this shows what an unpaired socket pays (goal: at most 2 %)

Every accelerated run is checked against the maps while it runs: the pair is in the sockhash and
its message counters move (or, for peer-outside, nothing of it is in the sockhash).

    sudo .venv/bin/python -m bench.datapath [--quick] [--pairs 3] [--seconds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

TOPOLOGIES = ("same-pod", "cross-pod", "peer-outside")
PAIRED = {"same-pod": True, "cross-pod": True, "peer-outside": False}
TESTS = ("ping-pong", "throughput")
SERVER_START_SECONDS = 5
RUN_SLACK_SECONDS = 15   # beyond --seconds, before a sockperf client counts as hung
SOCKPERF_WARMUP = 0.4    # sockperf's fixed warm-up before it starts measuring
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


def _ends_in_sockhash(snap: snapshot.Snapshot, port: int) -> list[snapshot.Connection]:
    suffix = f":{port}"
    return [c for c in snap.connections if c.in_sockhash
            and (c.end.local.endswith(suffix) or c.end.remote.endswith(suffix))]


def run_once(side: Side, topo: str, test: str, size: int, seconds: int) -> tuple[dict, bool | None]:
    """One sockperf client run; with the accelerator, also whether the maps saw what topo expects."""
    t = side.targets[topo]
    argv = ["sockperf", test, "--tcp", "-i", t.ip, "-p", str(t.port), "-m", str(size), "-t", str(seconds)]
    if test == "ping-pong":
        argv.append("--full-rtt")
    before = snapshot.read(side.inst) if side.inst else None
    client = side.lab.spawn(argv, netns=t.netns)
    try:
        mid = None
        if side.inst:
            time.sleep(SOCKPERF_WARMUP + seconds / 2)  # connected and busy by now
            mid = snapshot.read(side.inst)
        out, err = client.communicate(timeout=seconds + RUN_SLACK_SECONDS)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    if client.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {client.returncode}: {err.decode()[-2000:]}")
    values = parse(test, out.decode() + err.decode())
    if not side.inst:
        return values, None
    moved = snapshot.read(side.inst).redirected_msgs - before.redirected_msgs
    ends = _ends_in_sockhash(mid, t.port)
    if PAIRED[topo]:
        ok = sum(c.state == "accelerated" for c in ends) == 2 and moved > 0
    else:
        ok = not ends and moved == 0
    return values, ok


def measure(plain: Side, accel: Side, topologies, sizes, pairs, seconds, progress) -> list[dict]:
    """Alternating runs; pair i runs plain first when i is even, accelerated first when odd."""
    cells = []
    total = len(topologies) * len(sizes) * len(TESTS) * pairs * 2
    done = 0
    for topo in topologies:
        for size in sizes:
            for test in TESTS:
                cell = {"topology": topo, "size": size, "test": test,
                        "plain": [], "accel": [], "verified": []}
                for i in range(pairs):
                    for side in ((plain, accel) if i % 2 == 0 else (accel, plain)):
                        values, ok = run_once(side, topo, test, size, seconds)
                        cell[side.label].append(values)
                        if ok is not None:
                            cell["verified"].append(ok)
                        done += 1
                        shown = " ".join(f"{k}={v:g}" for k, v in values.items())
                        check = "" if ok is None else f" check={'ok' if ok else 'FAILED'}"
                        progress(f"[{done}/{total}] {topo} {size}B {test} {side.label}: {shown}{check}")
                cells.append(cell)
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
            better = ratio > 1 if m.higher_is_better else ratio < 1
            change = abs(ratio - 1) * 100
            out.append({
                "topology": cell["topology"], "size": cell["size"], "metric": m.name,
                "unit": m.unit, "plain_median": pm, "accel_median": am, "ratio": ratio,
                "higher_is_better": m.higher_is_better,
                "verdict": f"{change:.1f}% {'better' if better else 'worse'}",
                "pair_ratio_min": min(per_pair, default=float("nan")),
                "pair_ratio_max": max(per_pair, default=float("nan")),
                "check": check, "plain": p, "accel": a,
            })
    return out


def table(result: dict) -> str:
    head = ("topology", "size", "metric", "unit", "plain med", "accel med",
            "accel/plain", "pair ratios", "verdict", "check")
    lines = []
    for r in result["rows"]:
        lines.append((r["topology"], str(r["size"]), r["metric"], r["unit"],
                      f"{r['plain_median']:.2f}", f"{r['accel_median']:.2f}", f"{r['ratio']:.3f}",
                      f"{r['pair_ratio_min']:.2f}-{r['pair_ratio_max']:.2f}", r["verdict"], r["check"]))
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    env = result["environment"]
    text = [
        f"mdatui data path, sockperf {env['sockperf']}: {result['pairs']} alternating pairs x "
        f"{result['seconds']} s per run, {env['cpus']} CPUs, took {result['elapsed_s']:.0f} s",
        f"load average at start {env['load_start']}, at end {env['load_end']}",
        "accel/plain: for rtt (usec) < 1 means the accelerator lowers latency; for msg rate and "
        "bandwidth > 1 means it is faster. pair ratios: lowest and highest accel/plain of single pairs.",
        "",
        fmt.format(*head),
        fmt.format(*("-" * w for w in widths)),
    ]
    text += [fmt.format(*line) for line in lines]
    return "\n".join(text)


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
    return {"pairs": pairs, "seconds": seconds, "sizes": sizes, "environment": env,
            "elapsed_s": time.monotonic() - started, "rows": rows(cells)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, help="alternating plain/accelerated pairs per cell (default 3)")
    ap.add_argument("--seconds", type=int, help="seconds per sockperf run, whole (default 2)")
    ap.add_argument("--sizes", help="message sizes in bytes, comma separated (default 64,1024,16384)")
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES),
                    help=f"comma separated subset of {','.join(TOPOLOGIES)}")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run, under a minute: 1 pair, 1 s, sizes 64,16384 unless given")
    ap.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    args = ap.parse_args(argv)
    pairs = args.pairs or (1 if args.quick else 3)
    seconds = args.seconds or (1 if args.quick else 2)
    sizes = [int(s) for s in (args.sizes or ("64,16384" if args.quick else "64,1024,16384")).split(",")]
    topologies = args.topologies.split(",")
    unknown = set(topologies) - set(TOPOLOGIES)
    if unknown or pairs < 1 or seconds < 1 or min(sizes) < 14:  # sockperf's smallest message
        ap.error(f"bad arguments: topologies {sorted(unknown) or 'ok'}, pairs >= 1, seconds >= 1, sizes >= 14")
    runs = len(topologies) * len(sizes) * len(TESTS) * pairs * 2
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    progress(f"{runs} runs, about {runs * (seconds + 0.3) + 15:.0f} s")
    # SIGTERM unwinds like Ctrl-C, so the labs and the accelerator are removed either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run(topologies, sizes, pairs, seconds, progress)
    except system.SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
