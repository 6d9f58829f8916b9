"""The clients bench.datapath runs, one per measured run: sockperf, iperf3 and wrk.

Each client is a process in a lab (its cgroup, a netns) with a deadline: past it, the run counts
as hung, the process is killed by its pid and the run is recorded as failed (RunFailed), never
waited for. `started()` returns once the client measures; `result()` returns its numbers by
metric name.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SERVER_START_SECONDS = 5
RUN_SLACK_SECONDS = 15  # beyond its expected time, before a client counts as hung
# sockperf's client sleeps 0.1 s before connecting and a fixed 2 s after it, then measures;
# the first 0.4 s of a ping-pong test are warm-up that its statistics leave out.
SOCKPERF_IDLE = 2.1
SOCKPERF_WARMUP = 0.4
WRK_CONNECTIONS = 50


class RunFailed(RuntimeError):
    """One run ended without numbers: it exited badly, printed nothing usable, or hung."""


def wait_listening(proc: subprocess.Popen, port: int, what: str) -> None:
    """/proc/PID/net/tcp lists the sockets of the namespace PID lives in."""
    want = f":{port:04X} "
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunFailed(f"{what} on port {port} exited with {proc.returncode}")
        try:
            lines = Path(f"/proc/{proc.pid}/net/tcp").read_text().splitlines()[1:]
        except OSError:
            lines = []
        if any(want in line and line.split()[3] == "0A" for line in lines):  # 0A: LISTEN
            return
        time.sleep(0.02)
    raise RunFailed(f"{what} on port {port} did not listen within {SERVER_START_SECONDS} s")


def kill(proc: subprocess.Popen) -> None:
    """By its pid, and reaped."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


class Client:
    """A client process whose output (stdout and stderr together) is read as it goes."""

    expected_s = 0.0  # how long it should take; RUN_SLACK_SECONDS more and it is hung

    def __init__(self, lab, argv: list[str], netns: str):
        self.argv = argv
        self.proc = lab.spawn(argv, netns=netns, stderr=subprocess.STDOUT)
        self.out = b""
        self.deadline = time.monotonic() + self.expected_s + RUN_SLACK_SECONDS

    def read_until(self, marker: bytes | None) -> None:
        """Read output until marker shows up, or to the end when marker is None."""
        fd = self.proc.stdout.fileno()
        while marker is None or marker not in self.out:
            left = self.deadline - time.monotonic()
            if left <= 0:
                kill(self.proc)
                raise RunFailed(f"{' '.join(self.argv)} hung, killed:\n{self.tail()}")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return
                self.out += chunk

    def tail(self) -> str:
        return ANSI.sub("", self.out.decode(errors="replace"))[-1500:]

    def started(self) -> None:
        """Returns when the client measures."""

    def finish(self) -> str:
        """All of its output, once it exited 0."""
        self.read_until(None)
        try:
            self.proc.wait(timeout=max(0.1, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill(self.proc)
            raise RunFailed(f"{' '.join(self.argv)} did not exit, killed:\n{self.tail()}")
        if self.proc.returncode != 0:
            raise RunFailed(f"{' '.join(self.argv)} exited {self.proc.returncode}:\n{self.tail()}")
        return ANSI.sub("", self.out.decode(errors="replace"))

    def abandon(self) -> None:
        kill(self.proc)


def _search(pattern: str, text: str, what: str) -> float:
    found = re.search(pattern, text)
    if not found:
        raise RunFailed(f"no {what} in the output:\n{text[-1500:]}")
    return float(found.group(1))


# ---------------------------------------------------------------- sockperf

def sockperf_server(lab, netns: str, ip: str, port: int, inside: bool = True) -> subprocess.Popen:
    srv = lab.spawn(["sockperf", "server", "--tcp", "-i", ip, "-p", str(port)],
                    netns=netns, inside=inside,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(srv, port, "sockperf server")
    return srv


class Sockperf(Client):
    """sockperf throughput (`tp`) or ping-pong (`pp`, with --full-rtt: round trips).

    Throughput mode runs with Nagle by default and `--tcp-avoid-nodelay` sets TCP_NODELAY on
    the client's socket there (checked with strace on 3.7: the flag toggles sockperf's default,
    which is the other way round in ping-pong mode). So nodelay=True adds the flag to `tp`.
    It sleeps 2 s after connecting, then says "Starting test..." and measures for `seconds`.
    """

    def __init__(self, lab, netns: str, ip: str, port: int, mode: str, size: int,
                 seconds: int, nodelay: bool = False):
        self.mode = mode
        self.expected_s = SOCKPERF_IDLE + seconds
        argv = ["sockperf", "throughput" if mode == "tp" else "ping-pong", "--tcp", "-i", ip,
                "-p", str(port), "-m", str(size), "-t", str(seconds)]
        if mode == "pp":
            argv.append("--full-rtt")
        elif nodelay:
            argv.append("--tcp-avoid-nodelay")
        super().__init__(lab, argv, netns)

    def started(self) -> None:
        self.read_until(b"Starting test")
        if b"Starting test" not in self.out:
            raise RunFailed(f"{' '.join(self.argv)} ended before its test:\n{self.tail()}")

    def result(self) -> dict[str, float]:
        text = self.finish()
        if self.mode == "tp":
            return {"msg rate": _search(r"Message Rate is\s*([\d.]+)", text, "message rate"),
                    "bandwidth": _search(r"BandWidth is\s*([\d.]+) MBps", text, "bandwidth")}
        return {"rtt avg": _search(r"avg-rtt=\s*([\d.]+)", text, "average rtt"),
                "rtt p50": _search(r"percentile 50\.000 =\s*([\d.]+)", text, "rtt p50"),
                "rtt p99": _search(r"percentile 99\.000 =\s*([\d.]+)", text, "rtt p99")}


def sockperf_version() -> str:
    out = subprocess.run(["sockperf", "--version"], capture_output=True, text=True).stdout
    found = re.search(r"version\s+(\S+)", out)
    return found.group(1) if found else "?"


# ---------------------------------------------------------------- iperf3

class Iperf3(Client):
    """A one-off server (`-s -1`: it exits after one test) and a client with `-l` writes,
    Nagle on (iperf3's default), `--json`. The receiver's rate counts."""

    def __init__(self, lab, client_ns: str, server_ns: str, ip: str, port: int, size: int,
                 seconds: int):
        self.expected_s = seconds + 1
        self.server = lab.spawn(["iperf3", "-s", "-1", "-B", ip, "-p", str(port)], netns=server_ns,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(self.server, port, "iperf3 server")
        except RunFailed:
            kill(self.server)
            raise
        super().__init__(lab, ["iperf3", "-c", ip, "-p", str(port), "-l", str(size),
                               "-t", str(seconds), "--json"], client_ns)

    def result(self) -> dict[str, float]:
        try:
            text = self.finish()
        except RunFailed as e:
            self.abandon()
            raise RunFailed(f"{e}\n{_iperf_error(self.out)}") from None
        finally:
            try:
                self.server.wait(timeout=3)
            except subprocess.TimeoutExpired:
                kill(self.server)
        data = json.loads(text[text.index("{"):])
        if data.get("error"):
            raise RunFailed(f"iperf3: {data['error']}")
        end = data["end"]
        return {"Gbit/s": end["sum_received"]["bits_per_second"] / 1e9,
                "retransmits": float(end["sum_sent"].get("retransmits", 0))}

    def abandon(self) -> None:
        kill(self.proc)
        kill(self.server)


def _iperf_error(out: bytes) -> str:
    try:
        return str(json.loads(out.decode(errors="replace")).get("error", ""))
    except ValueError:
        return ""


def iperf3_version() -> str:
    out = subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout
    return out.split()[1] if out.split()[1:] else "?"


# ---------------------------------------------------------------- wrk

_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def _latency_us(text: str, pct: int) -> float:
    found = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    if not found:
        raise RunFailed(f"no {pct}% latency in wrk's output:\n{text[-1500:]}")
    return float(found.group(1)) * _UNITS[found.group(2)]


# Every n-th request of a wrk thread asks the server to close: its connections carry n requests
# on average, and wrk opens a new one in place of each.
WRK_CLOSE_EVERY = """local n = 0
request = function()
  n = n + 1
  if n %% %d == 0 then return wrk.format(nil, nil, {["Connection"] = "close"}) end
  return wrk.format()
end
"""


class Wrk(Client):
    """wrk with its default 2 threads, 50 connections, --latency (exact percentiles); with
    per_conn, a new connection after that many requests on average (1: `Connection: close` on
    every request, as HTTP/1.0 clients do; more: a Lua script written into `scripts`)."""

    def __init__(self, lab, netns: str, url: str, seconds: int, per_conn: int = 0,
                 scripts: Path | None = None):
        self.expected_s = seconds + 1
        closing = []
        if per_conn == 1:
            closing = ["-H", "Connection: close"]
        elif per_conn:
            script = scripts / f"wrk-close-every-{per_conn}.lua"
            script.write_text(WRK_CLOSE_EVERY % per_conn)
            closing = ["-s", str(script)]
        super().__init__(lab, ["wrk", "-t2", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s",
                               "--timeout", "2s", "--latency", *closing, url], netns)

    def result(self) -> dict[str, float]:
        text = self.finish()
        errors = 0.0
        found = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        if found:
            errors += sum(int(x) for x in found.groups())
        found = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        if found:
            errors += int(found.group(1))
        return {"req/s": _search(r"Requests/sec:\s*([\d.]+)", text, "requests/s"),
                "lat p50": _latency_us(text, 50), "lat p90": _latency_us(text, 90),
                "errors": errors}


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    found = re.search(r"wrk\s+(\S+)", out.stdout + out.stderr)
    return found.group(1) if found else "?"
