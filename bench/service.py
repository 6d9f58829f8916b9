"""What `mdatui serve` costs while nothing happens: its share of a CPU with idle accelerated
connections in the cgroup, processes of several threads beside them (a sidecar's; the
blocking-reader guard looks at every thread of such a process, every 100 ms), nothing to drain.

    python -m bench.service [--connections 1000] [--processes 4] [--threads 8] [--seconds 30] [--json]

The connections are real loopback ones (bench.real_conns, as `bench.console --real` opens them;
the first batch chats every second) in a lab cgroup and netns; everything is killed by pid and
removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.console import held_pod, progress  # noqa: E402
from bench.report import run_and_print  # noqa: E402
from mdatui.core import service  # noqa: E402

SETTLE_S = 3  # after the last connection: the guard's eager looks end 0.2 s after it
SLEEPER = "import threading, time\n" \
          "[threading.Thread(target=time.sleep, args=(3600,), daemon=True).start() for _ in range({n})]\n" \
          "time.sleep(3600)\n"


def run(connections: int, processes: int, threads: int, seconds: float) -> dict:
    out: dict = {"connections": connections, "processes": processes, "threads": threads,
                 "seconds": seconds}
    with held_pod("sbench", connections) as (lab, ns, pin_dir, holders, opened):
        out["real"] = opened
        holders += [lab.spawn([sys.executable, "-c", SLEEPER.format(n=threads - 1)], netns=ns)
                    for _ in range(processes)]
        time.sleep(SETTLE_S)
        pid = service.running(pin_dir)
        if pid is None:
            raise RuntimeError("mdatui serve is not running")
        proc = psutil.Process(pid)
        progress(f"measuring mdatui serve (pid {pid}) for {seconds} s")
        before, t = proc.cpu_times(), time.monotonic()
        time.sleep(seconds)
        after, wall = proc.cpu_times(), time.monotonic() - t
        out["cpu_percent"] = round(100 * (after.user + after.system - before.user - before.system)
                                   / wall, 2)
        out["user_percent"] = round(100 * (after.user - before.user) / wall, 2)
        out["rss_mb"] = round(proc.memory_info().rss / 2**20, 1)
        out["holders_alive"] = f"{sum(p.poll() is None for p in holders)}/{len(holders)}"
    return out


def table(r: dict) -> str:
    return (f"mdatui serve, idle, with {r['connections']} connections and {r['processes']} "
            f"processes of {r['threads']} threads in the cgroup: {r['cpu_percent']} % of a CPU "
            f"({r['user_percent']} % in user space) over {r['seconds']} s, {r['rss_mb']} MB "
            f"resident; holders alive {r['holders_alive']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    return run_and_print(lambda: run(a.connections, a.processes, a.threads, a.seconds), table,
                         a.json)


if __name__ == "__main__":
    raise SystemExit(main())
