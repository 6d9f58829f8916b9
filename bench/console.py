"""Console benchmark: the Textual console over maps that hold many connections.

Targets (the issue): with 100,000 connections in the maps one refresh costs at most 100 ms of CPU,
a key press is answered within 100 ms, and the console's resident memory stays at most 150 MB.

A private Lab gets the accelerator; a few real connections in it move their counters, and
--connections synthetic ones are written into the maps from user space: two ends each (so
sock_proxy_map holds twice as many entries), pointing at each other, in 198.19.0.0/16 or on a
pod's loopback, owned by real processes of the lab or by nobody known. Their ends are also put
into the sockhash (sock_ops_map), all under one listening socket of the lab's netns that never
carries a byte, so that reading the sockhash costs what it costs with that many real sockets.

The console runs in child processes, so that its peak RSS is its own (the parent compiled the
BPF programs): with the real connections only (the reference) and with the synthetic ones added,
each time one child for the poll worker's part alone and one for the app:

  refresh   LiveBackend.snapshot(fresh=True) + attribute() + Frame.next, as the poll worker
            runs them for a refresh that reads the ends, in thread CPU time; then
            MdaConsole(LiveBackend) headless at 200x50 refreshing at 1 Hz with each table tab
            shown: the UI thread's handling of a frame (the views' show_frame) and the whole
            process's CPU per refresh period over 6 refreshes (paint included; past some
            100,000 ends the console reads them every second refresh, see snapshot.Reader).
  keys      presses of tab numbers, sort keys, the filter and scrolling, with refreshes going
            on. Latency: from the key event's delivery to the app until the app and all widgets
            of its screen have empty message queues (Pilot's _wait_for_screen, repeated, as a
            handler often posts further messages) and the screen has repainted.
            (Pilot.press is not used for timing: it sleeps until the process is idle.)
  memory    peak RSS of the child (getrusage ru_maxrss).

With --real the lab holds --connections real loopback TCP connections instead, accelerated like
any other (bench/real_conns.py): batches of at most 8,500, each a server process listening on
127.1.0.k (four ports) and a client process bound to 127.2.0.k, every process holding its own
sockets (under the fd limit, which may not be raised past 20,000 here), idle but for five that
carry a message a second; `mdatui query --json` is read while they are held. --both makes the
synthetic run and then the real one, in a new lab, and prints them side by side. At the end the
holders are killed (by pid) and the synthetic ends deleted before the accelerator is disabled,
so that disable's drain has no 198,000 live ends to sweep.

    sudo .venv/bin/python -m bench.console [--connections 100000] [--seconds 10] [--json]
    sudo .venv/bin/python -m bench.console --real [--connections 100000]   # or --both
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes as ct
import json
import os
import random
import resource
import select
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.datapath import _uninterrupted  # noqa: E402  (teardown a second Ctrl-C cannot cut short)
from mdatui.core.kernel import abi, bpfsys  # noqa: E402
from mdatui import lab as labm  # noqa: E402
from mdatui.core import addrs, lifecycle  # noqa: E402
from mdatui.core.kernel.instance import Instance, NotEnabled  # noqa: E402
from bench.report import run_and_print  # noqa: E402

REFRESH_CPU_MS = 100.0
KEY_LATENCY_MS = 100.0
RSS_MB = 150.0
MIN_PRESSES = 20
TAB_FRAMES = 6  # per tab: past ~100,000 ends the console reads them every second refresh
FRAME_TIMEOUT_S = 300                        # the console before its optimisation took 20 s a frame
CHILD_TIMEOUT_S = 1800
ECHO_PORT = 7000
PODS = 200                                   # synthetic pod addresses, 198.19.x.y
SERVICE_PORTS = (80, 443, 8080, 15006, 9090, 5432, 6379, 3306)
SIDECAR_PORT = 15001
NETNS_BASE = 4026532000                      # made-up netns cookies of the pods' loopbacks
HELD_PER_HELPER = 15000                      # sockets per sockhash helper: under its fd limit
REAL_PER_PROCESS = 8500                      # --real: sockets per holder (at most 9,000 each)
REAL_PORTS = (20000, 20001, 20002, 20003)    # each server's listening ports
REAL_CHAT = 5                                # --real: connections that carry a message a second
REAL_BATCH_S = 120                           # --real: to open one batch
REAL_MAX = 200_000
REPO = Path(__file__).resolve().parents[1]

# The keys pressed, in order, starting on the Overview tab, repeated until the time is up; with
# the kind of action each one is (the filter's field takes the digits after the slash).
KEYS = (("2", "tab"), ("down", "scroll"), ("down", "scroll"), ("pagedown", "scroll"),
        ("s", "sort"), ("s", "sort"), ("S", "sort"), ("slash", "filter"), ("1", "filter"),
        ("9", "filter"), ("8", "filter"), ("full_stop", "filter"), ("escape", "filter"),
        ("end", "scroll"), ("home", "scroll"), ("3", "tab"), ("pagedown", "scroll"),
        ("s", "sort"), ("4", "tab"), ("5", "tab"), ("6", "tab"), ("1", "tab"), ("2", "tab"),
        ("up", "scroll"))
TAB_KEYS = {"overview": "1", "connections": "2", "pairs": "3"}


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the maps (parent)

def _ip(text: str) -> bytes:
    return addrs.pack(text)


def _pod_ip(pod: int) -> bytes:
    return _ip(f"198.19.{pod // 250}.{pod % 250 + 1}")


def _ktime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def synthetic_ends(n: int, pids: list[int], seed: int = 1):
    """(key, conn, in_sockhash) for n connections: mostly accelerated pairs, 2 % pending (a
    connecting end alone), 2 % on the normal path; one in ten on a pod's loopback."""
    rng = random.Random(seed)
    now = _ktime_ns()
    lo = _ip("127.0.0.1")
    for i in range(n):
        pod, port = i % PODS, 10000 + i // PODS
        if i % 10 == 0:
            netns = NETNS_BASE + pod
            client = abi.SockKey.of(lo, lo, port, SIDECAR_PORT, netns)
            server = abi.SockKey.of(lo, lo, SIDECAR_PORT, port, netns)
        else:
            dst = _pod_ip((i * 7 + 3) % PODS)
            service = SERVICE_PORTS[i % len(SERVICE_PORTS)]
            client = abi.SockKey.of(_pod_ip(pod), dst, port, service, 0)
            server = abi.SockKey.of(dst, _pod_ip(pod), service, port, 0)
        state = "pending" if i % 50 == 7 else "normal" if i % 50 == 13 else "accelerated"
        since = now - rng.randrange(1, 3600) * 10**9
        for key, peer, active in ((client, server, 1), (server, client, 0)):
            if state == "pending" and not active:
                continue
            msgs = rng.choice((0, 0, rng.randrange(1, 100), rng.randrange(100, 100000)))
            pid = rng.choice(pids) if rng.random() > 0.05 else abi.UNKNOWN_ID
            uid = rng.choice((0, 1337)) if pid != abi.UNKNOWN_ID else abi.UNKNOWN_ID
            conn = abi.Conn(peer=peer if state != "pending" else abi.SockKey(),
                            msgs=msgs, bytes=msgs * rng.randrange(64, 4096),
                            passed=rng.randrange(0, 5), since_ns=since,
                            owner=abi.Owner(pid, uid, uid), paired=int(state != "pending"),
                            tainted=int(state == "normal"), active=active)
            yield key, conn, state != "pending"


def hold(pin_dir: str, connections: int, pids: list[int], start: int, count: int) -> None:
    """A helper in the lab's netns: puts listening sockets into the sockhash under the keys of
    synthetic ends [start, start + count) that belong there, then keeps them until killed. One
    socket per entry (a socket with an sk_msg program takes one slot only); they share a port
    through SO_REUSEPORT and carry no byte. Helpers, because one process may hold few fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    keys = [k for k, _, in_sockhash in synthetic_ends(connections, pids) if in_sockhash]
    ops = bpfsys.Map.open(os.path.join(pin_dir, "sock_ops_map"), abi.SockKey, ct.c_uint64)
    fd_type = ct.c_uint64 if bpfsys.map_info(ops.fd).value_size == 8 else ct.c_uint32
    held, port = [], 0
    for key in keys[start:start + count]:
        s = socket.socket()
        held.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
        s.listen(1)
        ops.update(key, fd_type(s.fileno()))
    print("READY", flush=True)
    sys.stdin.read()  # until the lab kills this process


def fill(inst: Instance, lab: labm.Lab, ns: str, connections: int, pids: list[int]) -> int:
    """The synthetic ends into sock_proxy_map here, into the sockhash by helper processes."""
    proxy = inst.maps["sock_proxy_map"]
    ends = 0
    in_hash = 0
    for key, conn, in_sockhash in synthetic_ends(connections, pids):
        proxy.update(key, conn, bpfsys.BPF_NOEXIST)
        ends += 1
        in_hash += in_sockhash
    helpers = []
    for start in range(0, in_hash, HELD_PER_HELPER):
        helpers.append(lab.python(
            ["bench.console", "--hold", inst.pin_dir, "--connections", str(connections),
             "--pids", ",".join(map(str, pids)), "--slice", f"{start}:{HELD_PER_HELPER}"],
            netns=ns, inside=False, stdin=subprocess.PIPE, cwd=REPO))
    for h in helpers:
        if h.stdout.readline().strip() != b"READY":
            raise RuntimeError(f"sockhash helper failed: {h.stderr.read().decode()[-2000:]}")
    return ends


def unfill(pin_dir: str, connections: int, pids: list[int]) -> int:
    """The synthetic ends out of sock_proxy_map again before disable: no socket closes them, and
    disable's drain would otherwise sweep them all (minutes at 198,000 ends)."""
    proxy = bpfsys.Map.open(os.path.join(pin_dir, "sock_proxy_map"), abi.SockKey, abi.Conn)
    gone = 0
    try:
        for key, _, _ in synthetic_ends(connections, pids):
            gone += bool(proxy.delete(key))
    finally:
        proxy.close()
    return gone


def _kill(procs: list[subprocess.Popen]) -> None:
    """Holders killed by pid before disable, so that their ends close and leave the maps."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


# ---------------------------------------------------------------- the console (child)

def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _stats(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    return {"n": len(samples), "median": _ms(statistics.median(samples)), "max": _ms(max(samples))}


def measure_backend(pin_dir: str, rounds: int = 4) -> dict:
    """The poll worker's part of a refresh that reads the ends (as ctrl+r asks), without the UI:
    the first round decodes everything."""
    from mdatui.core.backend import Frame, LiveBackend

    backend = LiveBackend(pin_dir)
    parts = defaultdict(list)
    prev = None
    try:
        for _ in range(rounds):
            t0, k0 = time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD).ru_stime
            snap = backend.snapshot(fresh=True)
            t1, k1 = time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD).ru_stime
            now = backend.now()
            procs = backend.attribute(snap, now)
            t2 = time.thread_time()
            prev = Frame.next(prev, snap, now, procs)
            t3 = time.thread_time()
            for name, dt in (("snapshot", t1 - t0), ("of it in the kernel", k1 - k0),
                             ("attribute", t2 - t1), ("frame", t3 - t2), ("total", t3 - t0)):
                parts[name].append(dt)
            time.sleep(0.2)
        entries = len(prev.snapshot.connections)
    finally:
        backend.close()
    return {"entries": entries,
            "first_ms": {k: _ms(v[0]) for k, v in parts.items()},
            "warm_ms": {k: _ms(statistics.median(v[1:])) for k, v in parts.items()}}


def _key_event(key: str):
    from textual import events
    char = {"slash": "/", "full_stop": "."}.get(key, key if len(key) == 1 else None)
    return events.Key(key, char)


async def _settled(pilot) -> None:
    """Until the app and every widget of its screen have an empty message queue, each having
    processed what it had (Pilot's _wait_for_screen), and the screen has repainted."""
    app = pilot.app
    for _ in range(50):
        await pilot._wait_for_screen()
        if all(w._message_queue.empty() for w in (app, *app.screen.walk_children(with_self=True))):
            break
    app.screen._on_timer_update()


async def _timed_press(pilot, key: str) -> float:
    t0 = time.perf_counter()
    pilot.app._driver.send_message(_key_event(key))
    await _settled(pilot)
    return time.perf_counter() - t0


async def _frames(app, n: int, timeout: float) -> None:
    target = app.frames + n
    deadline = time.monotonic() + timeout
    while app.frames < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {n} frames within {timeout}s")
        await asyncio.sleep(0.01)


async def measure_app(pin_dir: str, seconds: float) -> dict:
    from mdatui.core import backend as core_console
    from mdatui.core.backend import LiveBackend
    from mdatui.ui.app import MdaConsole

    worker = defaultdict(list)   # thread CPU of the poll worker's calls
    ui_frame: list[float] = []   # UI thread CPU handling one Polled message

    class TimedBackend(LiveBackend):
        def snapshot(self, fresh=False):
            t = time.thread_time()
            try:
                return super().snapshot(fresh)
            finally:
                worker["snapshot"].append(time.thread_time() - t)

        def attribute(self, snap, now):
            t = time.thread_time()
            try:
                return super().attribute(snap, now)
            finally:
                worker["attribute"].append(time.thread_time() - t)

    # Instrumentation only: the benchmark wraps two methods of the classes it measures.
    frame_next = core_console.Frame.next.__func__
    on_polled = MdaConsole.on_polled

    def timed_next(cls, *a, **kw):
        t = time.thread_time()
        try:
            return frame_next(cls, *a, **kw)
        finally:
            worker["frame"].append(time.thread_time() - t)

    def timed_polled(self, message):
        t = time.thread_time()
        try:
            on_polled(self, message)
        finally:
            ui_frame.append(time.thread_time() - t)

    core_console.Frame.next = classmethod(timed_next)
    MdaConsole.on_polled = timed_polled
    tabs: dict[str, dict] = {}
    presses: list[tuple[str, str, float]] = []  # (key, kind, seconds)
    try:
        app = MdaConsole(TimedBackend(pin_dir), interval=1.0)
        async with app.run_test(size=(200, 50)) as pilot:
            await _frames(app, 2, FRAME_TIMEOUT_S)
            for tab, key in TAB_KEYS.items():
                await _timed_press(pilot, key)
                await _frames(app, 1, FRAME_TIMEOUT_S)
                cpu0, n0, ui0 = time.process_time(), app.frames, len(ui_frame)
                await _frames(app, TAB_FRAMES, FRAME_TIMEOUT_S)
                cpu = time.process_time() - cpu0
                tabs[tab] = {"process_cpu_per_refresh_ms": _ms(cpu / (app.frames - n0)),
                             "ui_frame_ms": _stats(ui_frame[ui0:])}
            await _timed_press(pilot, "1")
            await _frames(app, 1, FRAME_TIMEOUT_S)
            rng = random.Random(2)
            deadline = time.monotonic() + seconds
            hard_stop = time.monotonic() + max(4 * seconds, 120)
            i = 0
            while (time.monotonic() < deadline or len(presses) < MIN_PRESSES) \
                    and time.monotonic() < hard_stop:
                key, kind = KEYS[i % len(KEYS)]
                presses.append((key, kind, await _timed_press(pilot, key)))
                i += 1
                await asyncio.sleep(rng.uniform(0.05, 0.3))  # lands anywhere in the 1 s period
            shown_rows = app.screen.query_one("#conn-table").row_count
    finally:
        core_console.Frame.next = classmethod(frame_next)
        MdaConsole.on_polled = on_polled
    by_kind = defaultdict(list)
    for _, kind, dt in presses:
        by_kind[kind].append(dt)
    return {"worker_ms": {k: _stats(v[2:]) for k, v in worker.items()},
            "tabs": tabs,
            "keys": _stats([dt for *_, dt in presses]),
            "keys_by_kind": {k: _stats(v) for k, v in by_kind.items()},
            "slowest_keys": [(key, _ms(dt)) for key, _, dt in sorted(presses, key=lambda p: -p[2])[:5]],
            "conn_table_rows": shown_rows}


def _rss_mb(field: str) -> float:
    """VmRSS now or VmHWM, the peak; of this process's own memory (getrusage's ru_maxrss would
    carry the parent's peak over fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise LookupError(field)


def child(pin_dir: str, part: str, seconds: float) -> dict:
    """One part in a process of its own: the poll worker's reads alone would leave the console
    heaps of freed memory that its own worker thread (another malloc arena) does not reuse."""
    import mdatui.ui.app  # noqa: F401  (what the console imports, for the reference point)
    from mdatui.core.kernel import system
    system.unmap_large_blocks()  # as run_console does
    out = {"rss_mb": {"after_imports": _rss_mb("VmRSS")}}
    if part == "backend":
        out["backend"] = measure_backend(pin_dir)
    else:
        out["app"] = asyncio.run(measure_app(pin_dir, seconds))
    out["rss_mb"].update(peak=_rss_mb("VmHWM"), at_end=_rss_mb("VmRSS"))
    return out


def run_child(pin_dir: str, seconds: float) -> dict:
    out = {}
    for part in ("backend", "app"):
        argv = [sys.executable, "-m", "bench.console", "--child", pin_dir, "--part", part,
                "--seconds", str(seconds)]
        done = subprocess.run(argv, cwd=REPO, capture_output=True,
                              text=True, timeout=CHILD_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"console child ({part}) failed:\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout)
        out[part] = result[part]
        out[f"{part}_rss_mb"] = result["rss_mb"]
    out["rss_mb"] = out.pop("app_rss_mb")
    return out


# ---------------------------------------------------------------- orchestration (parent)

def _line(proc: subprocess.Popen, deadline: float) -> str:
    """The next line proc prints on stdout, or an error past the deadline."""
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
        raise RuntimeError(f"pid {proc.pid} said nothing in time")
    line = proc.stdout.readline().decode().strip()
    if not line:
        raise RuntimeError(f"pid {proc.pid} ended: {proc.stderr.read().decode()[-2000:]}")
    return line


def open_real(lab: labm.Lab, ns: str, connections: int, holders: list) -> dict:
    """connections real loopback TCP connections in the lab: per batch of at most
    REAL_PER_PROCESS a server process on 127.1.0.k (REAL_PORTS) and a client process bound to
    127.2.0.k, each holding its own sockets; batches one after another, each within
    REAL_BATCH_S."""
    t0 = time.monotonic()
    opened = accepted = 0
    for k, start in enumerate(range(0, connections, REAL_PER_PROCESS)):
        n = min(REAL_PER_PROCESS, connections - start)
        common = ["--addr", f"127.1.0.{k + 1}", "--ports", ",".join(map(str, REAL_PORTS)),
                  "--count", str(n), "--chat", str(REAL_CHAT if k == 0 else 0),
                  "--seconds", str(REAL_BATCH_S), "--hold", str(CHILD_TIMEOUT_S * 3)]
        deadline = time.monotonic() + REAL_BATCH_S + 10
        server = lab.python(["bench.real_conns", "serve", *common], netns=ns,
                            stdin=subprocess.PIPE, cwd=REPO)
        holders.append(server)
        if _line(server, deadline) != "LISTENING":
            raise RuntimeError("real_conns server did not listen")
        client = lab.python(["bench.real_conns", "connect", *common, "--src", f"127.2.0.{k + 1}"],
                            netns=ns, stdin=subprocess.PIPE, cwd=REPO)
        holders.append(client)
        got_c, got_s = (int(_line(p, deadline).split()[1]) for p in (client, server))
        opened, accepted = opened + got_c, accepted + got_s
        progress(f"  batch {k + 1}: {got_c}/{n} connected, {got_s} accepted "
                 f"({opened} in all, {time.monotonic() - t0:.0f}s)")
        if got_c < n or got_s < got_c:
            progress("  stopping: a batch fell short")
            break
    return {"asked": connections, "opened": opened, "accepted": accepted,
            "processes": 2 * (k + 1), "seconds_to_open": round(time.monotonic() - t0, 1)}


def _query_entries(pin_dir: str) -> dict:
    """What `mdatui query --json` says while the connections are held."""
    done = subprocess.run([sys.executable, "-m", "mdatui.cli.main", "query", "--json",
                           "--pin-dir", pin_dir], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        return {"error": done.stderr[-500:]}
    return json.loads(done.stdout)


def enabled_pod(stack: ExitStack, name: str, connections: int):
    """A lab with one pod, the accelerator enabled on it with room for the connections' ends:
    (lab, netns, pin dir, instance). The lab goes with the stack; disable is the caller's."""
    lab = stack.enter_context(labm.Lab(name))
    ns = lab.add_netns("pod")
    pin_dir = f"/sys/fs/bpf/{lab.name}"
    max_socks = max(abi.MAX_SOCKS, 1 << (2 * connections + 1024).bit_length())
    progress(f"enabling on {lab.cgroup} (max_sockets {max_socks})")
    inst = lifecycle.enable(cgroup=lab.cgroup, pin_dir=pin_dir, max_sockets=max_socks).instance
    return lab, ns, pin_dir, inst


@contextmanager
def held_pod(name: str, connections: int):
    """A lab pod with the accelerator enabled and `connections` real loopback connections held in
    it (open_real): (lab, netns, pin dir, holders, what open_real counted). On the way out, also
    after a failure or an interrupt, the holders are killed by pid, the accelerator is disabled
    unless the caller did so, and the lab is removed."""
    stack = ExitStack()
    try:
        lab, ns, pin_dir, inst = enabled_pod(stack, name, connections)
        inst.close()
        stack.callback(_disable_if_enabled, pin_dir)
        holders: list[subprocess.Popen] = []
        stack.callback(_kill, holders)
        opened = open_real(lab, ns, connections, holders) if connections else {}
        yield lab, ns, pin_dir, holders, opened
    finally:
        progress("removing everything")
        with _uninterrupted():
            stack.close()


def _disable_if_enabled(pin_dir: str) -> None:
    with suppress(NotEnabled):
        lifecycle.disable(pin_dir)


def run(connections: int, seconds: float, real: bool = False) -> dict:
    results: dict = {"connections": connections, "kind": "real" if real else "synthetic"}
    stack = ExitStack()
    try:
        lab, ns, pin_dir, inst = enabled_pod(stack, "cbench", connections)
        stack.callback(lifecycle.disable, pin_dir)
        stack.callback(inst.close)
        server = lab.python(["mdatui.lab.traffic", "echo", "--port", str(ECHO_PORT)], netns=ns)
        if server.stdout.readline().strip() != b"READY":
            raise RuntimeError("echo server did not start")
        chat_seconds = str(CHILD_TIMEOUT_S * 2 + 60)
        for rate in ("200", "50", "10"):
            lab.python(["mdatui.lab.traffic", "chat", "--to", f"127.0.0.1:{ECHO_PORT}",
                        "--seconds", chat_seconds, "--rate", rate], netns=ns)
        owners = [lab.spawn(["sleep", str(CHILD_TIMEOUT_S * 3)]) for _ in range(8)]
        pids = [os.getpid(), server.pid] + [p.pid for p in owners]
        time.sleep(1)

        progress("the console with the real connections only")
        results["reference"] = run_child(pin_dir, seconds)
        if real:
            progress(f"opening {connections} real connections")
            holders: list[subprocess.Popen] = []
            stack.callback(_kill, holders)  # before disable (the callbacks run last first)
            results["real"] = open_real(lab, ns, connections, holders)
            time.sleep(2)  # the last ends paired, the serve daemon's first scans over
            query = _query_entries(pin_dir)
            results["query"] = {k: v for k, v in query.items() if k != "connections"}
            results["synthetic_ends"] = 2 * results["real"]["opened"]
            progress(f"the console with {results['real']['opened']} real connections more")
        else:
            t = time.monotonic()
            stack.callback(unfill, pin_dir, connections, pids)  # before disable
            results["synthetic_ends"] = fill(inst, lab, ns, connections, pids)
            progress(f"wrote {results['synthetic_ends']} ends in {time.monotonic() - t:.1f}s; "
                     f"the console with {connections} more connections")
        results["loaded"] = run_child(pin_dir, seconds)
    finally:
        progress("removing everything")
        with _uninterrupted():
            stack.close()
    return results


def _verdict(value: float, limit: float) -> str:
    return f"{value:8.1f}  {value / limit:5.2f}x of {limit:g}  {'OK' if value <= limit else 'OVER'}"


def table(r: dict) -> str:
    if "synthetic" in r and "real" in r:  # --both
        return "\n\n".join((table(r["synthetic"]), table(r["real"]), side_by_side(r)))
    if r.get("kind") == "real":
        real, maps = r["real"], r["query"].get("maps", {})
        lines = [f"console benchmark: {real['opened']} real loopback connections of "
                 f"{real['asked']} asked ({real['accepted']} accepted), held by "
                 f"{real['processes']} processes, opened in {real['seconds_to_open']}s",
                 "  mdatui query --json while held: " + ", ".join(
                     f"{name} {m.get('entries')} entries" for name, m in maps.items())
                 + f"; {r['query'].get('totals', {}).get('pairs')} pairs"]
    else:
        lines = [f"console benchmark: {r['connections']} synthetic connections "
                 f"({r['synthetic_ends']} ends in sock_proxy_map and the sockhash)"]
    for name in ("reference", "loaded"):
        res = r[name]
        b, a = res["backend"], res["app"]
        lines.append(f"\n[{name}] {b['entries']} ends in the maps")
        lines.append("  refresh reading the ends, poll worker (thread CPU ms, first / warm median): " + ", ".join(
            f"{k} {b['first_ms'][k]}/{b['warm_ms'][k]}" for k in b["warm_ms"]))
        lines.append("  refresh in the app, poll worker median ms: " + ", ".join(
            f"{k} {v.get('median', '-')}" for k, v in a["worker_ms"].items()))
        for tab, t in a["tabs"].items():
            lines.append(f"  tab {tab:<12} UI frame handling median {t['ui_frame_ms'].get('median')}"
                         f" max {t['ui_frame_ms'].get('max')} ms; process CPU per refresh "
                         + _verdict(t["process_cpu_per_refresh_ms"], REFRESH_CPU_MS))
        k = a["keys"]
        lines.append(f"  key latency over {k['n']} presses: median {_verdict(k['median'], KEY_LATENCY_MS)}")
        lines.append(f"                             max    {_verdict(k['max'], KEY_LATENCY_MS)}")
        lines.append("    by kind (median/max ms): " + ", ".join(
            f"{kind} {s['median']}/{s['max']} (n={s['n']})" for kind, s in a["keys_by_kind"].items()))
        lines.append("    slowest: " + ", ".join(f"{key} {ms}" for key, ms in a["slowest_keys"]))
        rss = res["rss_mb"]
        lines.append(f"  peak RSS MB {_verdict(rss['peak'], RSS_MB)}"
                     f"  (after imports {rss['after_imports']}, at the end {rss['at_end']}; the "
                     f"poll worker's reads alone peaked at {res['backend_rss_mb']['peak']})")
    ref, load = r["reference"]["app"], r["loaded"]["app"]
    lines.append("\n[loaded / reference] the same run, minutes apart: what the ends cost")
    lines.append("  key latency: median " + _ratio(load["keys"]["median"], ref["keys"]["median"])
                 + ", max " + _ratio(load["keys"]["max"], ref["keys"]["max"]))
    lines.append("  process CPU per refresh: " + ", ".join(
        f"{tab} " + _ratio(t["process_cpu_per_refresh_ms"], ref["tabs"][tab]["process_cpu_per_refresh_ms"])
        for tab, t in load["tabs"].items()))
    lines.append("  peak RSS: " + _ratio(r["loaded"]["rss_mb"]["peak"], r["reference"]["rss_mb"]["peak"]))
    return "\n".join(lines)


def _summary(r: dict) -> dict[str, str]:
    b, a, rss = r["loaded"]["backend"], r["loaded"]["app"], r["loaded"]["rss_mb"]
    cpu = [t["process_cpu_per_refresh_ms"] for t in a["tabs"].values()]
    return {"ends in the maps": f"{b['entries']}",
            "poll worker, a refresh reading the ends (warm, CPU ms)": f"{b['warm_ms']['total']}"
            f" ({b['warm_ms']['of it in the kernel']} kernel)",
            "process CPU per 1 Hz refresh, by tab (ms)": f"{min(cpu)}-{max(cpu)}",
            "key press median / slowest (ms)": f"{a['keys']['median']} / {a['keys']['max']}",
            "peak RSS (MB)": f"{rss['peak']}"}


def side_by_side(r: dict) -> str:
    syn, real = _summary(r["synthetic"]), _summary(r["real"])
    lines = [f"{'':<58} {'synthetic':>20} {'real':>20}"]
    lines += [f"{k:<58} {syn[k]:>20} {real[k]:>20}" for k in syn]
    return "\n".join(lines)


def _ratio(loaded: float, reference: float) -> str:
    return f"{loaded / reference:.2f}x ({loaded:g} / {reference:g})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=100_000,
                    help="synthetic connections (two ends each) added to the maps")
    ap.add_argument("--seconds", type=float, default=10,
                    help=f"of key presses per run (at least {MIN_PRESSES} presses)")
    ap.add_argument("--real", action="store_true",
                    help="open --connections real loopback TCP connections in the lab instead "
                    f"(at most {REAL_MAX:,}; {REAL_PER_PROCESS:,} sockets a process)")
    ap.add_argument("--both", action="store_true",
                    help="the synthetic run, then the real one in a new lab, side by side")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--child", metavar="PIN_DIR", help=argparse.SUPPRESS)
    ap.add_argument("--part", choices=("backend", "app"), help=argparse.SUPPRESS)
    ap.add_argument("--hold", metavar="PIN_DIR", help=argparse.SUPPRESS)
    ap.add_argument("--pids", help=argparse.SUPPRESS)
    ap.add_argument("--slice", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.hold:
        start, count = map(int, args.slice.split(":"))
        hold(args.hold, args.connections, [int(p) for p in args.pids.split(",")], start, count)
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.part, args.seconds)))
        return 0
    if not 0 <= args.connections <= 4_000_000 or args.seconds <= 0:
        ap.error("--connections 0..4000000, --seconds > 0")
    if (args.real or args.both) and not 0 < args.connections <= REAL_MAX:
        ap.error(f"--real/--both: --connections 1..{REAL_MAX}")
    if args.both:
        return run_and_print(lambda: {"synthetic": run(args.connections, args.seconds),
                                      "real": run(args.connections, args.seconds, real=True)},
                             table, args.json)
    return run_and_print(lambda: run(args.connections, args.seconds, args.real), table, args.json)

if __name__ == "__main__":
    sys.exit(main())
