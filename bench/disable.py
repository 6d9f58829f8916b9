"""What `disable` costs with many live connections: how long the command takes, how many ends it
took out of the sockhash itself, how many it handed to `mdatui serve`, and how long the service
then needed until the last end had left.

    python -m bench.disable [--connections 100000] [--json]

Real idle loopback connections (bench.real_conns, as `bench.console --real` opens them; the
first batch chats every second) in a lab cgroup and netns; the holders are killed by pid at the
end, and the lab removed, also after a failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.console import held_pod, progress  # noqa: E402
from bench.report import run_and_print  # noqa: E402
from mdatui.core import lifecycle, service  # noqa: E402
from mdatui.core.kernel.instance import Instance  # noqa: E402

SERVICE_WAIT_S = 300  # the longest the service is given to finish draining


def run(connections: int) -> dict:
    out: dict = {"connections": connections}
    with held_pod("dbench", connections) as (_, _, pin_dir, holders, opened):
        out["real"] = opened
        time.sleep(2)
        with Instance(pin_dir) as inst:
            out["ends_before"] = inst.maps["sock_proxy_map"].count()
        progress(f"disable with {out['ends_before']} ends")
        t = time.monotonic()
        cpu = time.process_time()
        res = lifecycle.disable(pin_dir)
        out["disable_s"] = round(time.monotonic() - t, 2)
        out["disable_cpu_s"] = round(time.process_time() - cpu, 2)
        out["drained_by_disable"], out["handed_to_service"] = res.left, res.handed
        t = time.monotonic()
        while service.running(pin_dir) is not None and time.monotonic() - t < SERVICE_WAIT_S:
            time.sleep(0.2)
        out["service_s"] = round(time.monotonic() - t, 1)
        out["service_still_running"] = service.running(pin_dir) is not None
        alive = sum(p.poll() is None for p in holders)
        out["holders_alive"] = f"{alive}/{len(holders)}"  # no connection broke its holder
    return out


def table(r: dict) -> str:
    return (f"{r['ends_before']} ends: disable took {r['disable_s']} s ({r['disable_cpu_s']} s CPU), "
            f"took {r['drained_by_disable']} out itself, handed {r['handed_to_service']} to the "
            f"service, which finished {r['service_s']} s later"
            f"{' (still running)' if r['service_still_running'] else ''}; "
            f"holders alive {r['holders_alive']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    return run_and_print(lambda: run(a.connections), table, a.json)


if __name__ == "__main__":
    raise SystemExit(main())
