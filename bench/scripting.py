"""The scriptable side at scale, without a kernel: a rule preview, what Apply does besides the
kernel's walk, and `query --json/--jsonl --connections`, on bench.console's synthetic ends.

    .venv/bin/python -m bench.scripting [--connections 100000] [--kernel]

--kernel (root): also writes the synthetic ends into the maps of an accelerator enabled on a
lab cgroup (bench.console's fill) and times the commands themselves, as a user runs them.

Targets (issue 12): a preview or an Apply <= 100 ms of CPU at 200,000 ends besides the walk
of sock_proxy_map; 200,000 ends as JSON or JSON lines in <= 1.5 s with bounded memory.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.console import ECHO_PORT, fill, synthetic_ends  # noqa: E402
from bench.datapath import _uninterrupted  # noqa: E402
from mdatui.core.kernel import bpfsys  # noqa: E402
from mdatui import lab as labm  # noqa: E402
from mdatui.core.table import CONN, COUNTER_FIELDS, COUNTERS, KEY, STATIC, STATIC_FIELDS, Table
from mdatui.core import lifecycle
from mdatui.core.kernel.instance import Instance  # noqa: E402
from mdatui.core.kernel import abi
from mdatui.core import jsonout, rules, snapshot, verdicts  # noqa: E402

RULE_SETS = {
    "seed example": "chain --ip 198.19.0.0/16 --uid-owner 1337 -j ACCEPT\n"
                    "chain --port 15006 -j RETURN\n",
    "8 rules": "\n".join(f"chain --ip 198.19.{i}.0/24 --port {80 + i}-{90 + i} -j RETURN"
                         for i in range(7)) + "\nchain --gid-owner 0 -j ACCEPT\n",
}


def synthetic_table(connections: int, seed: int = 1) -> Table:
    """bench.console's synthetic ends as a Table, as read_ends would make of them."""
    ends = list(synthetic_ends(connections, pids=[1, 100, 200], seed=seed))
    keys = np.frombuffer(b"".join(bytes(k) for k, _, _ in ends), KEY)
    conns = np.frombuffer(b"".join(bytes(c) for _, c, _ in ends), CONN)
    static = np.zeros(len(ends), STATIC)
    for f in STATIC_FIELDS:
        static[f] = conns[f]
    counters = np.zeros(len(ends), COUNTERS)
    for f in COUNTER_FIELDS:
        counters[f] = conns[f]
    taken_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return Table(keys.copy(), static, counters, taken_ns,
                          np.array([held for _, _, held in ends], dtype=bool))


def snapshot_of(table: Table) -> snapshot.Snapshot:
    return snapshot.Snapshot(taken_at=table.taken_ns / 1e9, enabled=True, pin_dir="/bench",
                             table=table)


def _cpu_ms(fn, *args, **kwargs) -> tuple[float, object]:
    """CPU time of fn(*args, **kwargs) in ms."""
    t = time.process_time()
    out = fn(*args, **kwargs)
    return (time.process_time() - t) * 1000, out


def _apply_part(table: Table, edited: list[rules.Rule]) -> object:
    """What apply.apply does between reading sock_proxy_map and the bpf() calls that ask the
    ends to stop (apply.take_off_fast_path)."""
    keys = verdicts.preview(table, edited, first=0).off.keys()
    return (abi.SockKey * len(keys)).from_buffer_copy(keys.tobytes())


class _Null(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)


def _command(argv: list[str]) -> str:
    """Runs `mdatui ARGV` with its output to /dev/null: wall time, CPU (user + system, the
    kernel's map walks among it) and the child's peak resident memory."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    with open(os.devnull, "w") as null:
        subprocess.run([sys.executable, "-m", "mdatui.cli.main", *argv], stdout=null, check=True)
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return f"{wall:.2f} s wall, {cpu:.2f} s CPU, max RSS of a child so far {after.ru_maxrss / 1024:.0f} MB"


def _forget_synthetic(pin_dir: str) -> None:
    """Deletes the synthetic ends: no socket stands behind them, so disable would wait for
    each to drain (minutes at 198,000, a sweep of /proc per pass) for nothing."""
    proxy = bpfsys.Map.open(os.path.join(pin_dir, "sock_proxy_map"), abi.SockKey, abi.Conn)
    for key in list(proxy.keys()):
        proxy.delete(key)


def kernel_run(connections: int) -> None:
    lab = labm.Lab("sbench")
    pin_dir = f"/sys/fs/bpf/{lab.name}"
    enabled = False
    try:
        ns = lab.add_netns("pod")
        max_socks = 1 << (2 * connections + 1024).bit_length()
        lifecycle.enable(cgroup=lab.cgroup, pin_dir=pin_dir, max_sockets=max_socks).instance.close()
        enabled = True
        server = lab.python(["mdatui.lab.traffic", "echo", "--port", str(ECHO_PORT)], netns=ns)
        if server.stdout.readline().strip() != b"READY":
            raise RuntimeError("echo server did not start")
        with Instance(pin_dir) as inst:
            ends = fill(inst, lab, ns, connections, [os.getpid(), server.pid])
        print(f"kernel: {ends} ends in the maps")
        pins = ["--pin-dir", pin_dir]
        print("  query --json:", _command(["query", "--json", *pins]))
        for fmt in ("--json", "--jsonl"):
            print(f"  query {fmt} --connections:", _command(["query", fmt, "--connections", *pins]))
        # First a set that takes nothing off (the judge alone), then one that takes tens of
        # thousands of ends off (one bpf() update each asks them to stop).
        for what, text in (("nothing taken off", "chain --port 1 -j RETURN\n"),
                           ("seed example", RULE_SETS["seed example"])):
            with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
                f.write(text)
                f.flush()
                print(f"  rules apply ({what}):", _command(["rules", "apply", f.name, *pins]))
    finally:
        with _uninterrupted():  # teardown only: the pins would stay behind
            if enabled:
                _forget_synthetic(pin_dir)
                lifecycle.disable(pin_dir)
            lab.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=100_000)
    p.add_argument("--kernel", action="store_true", help="also time the commands on real maps")
    a = p.parse_args(argv)
    if a.kernel:
        kernel_run(a.connections)
    n = len(synthetic_table(a.connections))
    print(f"{a.connections} connections, {n} ends")
    for name, text in RULE_SETS.items():
        edited = rules.parse(text).rules
        table = synthetic_table(a.connections)  # fresh: the peers' rows are part of the cost
        ms, change = _cpu_ms(verdicts.preview, table, edited)
        # Apply: the same preview (first=0) and the keys of the ends to stop, fresh table again.
        apply_ms, _ = _cpu_ms(_apply_part, synthetic_table(a.connections), edited)
        print(f"rules '{name}': preview {ms:.1f} ms CPU, apply (besides the kernel) "
              f"{apply_ms:.1f} ms CPU; {change.taken_off} taken off, {change.put_on} put on")
    for fmt, write in (("--json", jsonout.write_json), ("--jsonl", jsonout.write_jsonl)):
        snap = snapshot_of(synthetic_table(a.connections))
        t, cpu = time.monotonic(), time.process_time()
        write(snap, _Null(), connections=True)
        wall, cpu = time.monotonic() - t, time.process_time() - cpu
        tracemalloc.start()  # again, for the memory alone: tracing slows allocations severalfold
        write(snap, _Null(), connections=True)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"query {fmt} --connections: {wall:.2f} s wall, {cpu:.2f} s CPU, "
              f"peak Python allocations {peak / 2**20:.1f} MB while writing")
        del snap
    snap = snapshot_of(synthetic_table(a.connections))
    t = time.monotonic()
    json.dumps(snap.to_json(connections=True), indent=2)
    print(f"the object path (Connection.to_json, json.dumps indent=2): {time.monotonic() - t:.2f} s; "
          f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
