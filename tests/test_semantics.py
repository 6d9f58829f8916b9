"""TCP semantics, side by side: the same plain socket programs run over the normal stack and
accelerated, and a user must not be able to tell them apart (issue 11, items 2 and 4).

Each test runs its scenario twice, in two labs (own cgroup and namespaces): plain, with no
accelerator anywhere, and accelerated, with the accelerator attached to that lab's cgroup only.
It compares what the programs saw field by field (bytes by hash and position, return values,
errno names, end-of-file) and checks that the accelerated run really went through the fast path.
The programs are in tests/semantic_peers.py; one case alone:

    .venv/bin/python -m pytest -p no:cacheprovider tests/test_semantics.py -k peek
    .venv/bin/python -m pytest -p no:cacheprovider "tests/test_semantics.py::test_socket_calls[rst]"

The cases (the brief's numbers):
  1  test_blocking_full_duplex_through_a_redirected_proxy  writer + reader threads, 4 connections,
     REDIRECT -> blocking threaded proxy -> echo, every byte checked at its position
  2  test_blocking_full_duplex_with_toggles_and_live_rule_changes  the same, 12 connections a
     second apart, disable/enable twice and a live RETURN rule (then none) mid-transfer
  3  half_close          shutdown(SHUT_WR) one side, the other still sends, then reads EOF (the
                         shut-down end leaves the sockhash at its shutdown: bpf/sock_ops.c)
  +  shutdown_then_read  a blocking client sends, shuts down and reads the reply to EOF, from a
                         server that waits in select(): 16 connections (a test of its own)
  +  unread_when_closed  the side that shut down first reads all its peer sent before its FIN,
                         though that FIN took its socket to CLOSE (mdatui lost it before 2026-12-03)
  4  rst                 close with unread data (and SO_LINGER 0) -> ECONNRESET, then EPIPE
  5  rcvtimeo            SO_RCVTIMEO: EAGAIN after the timeout; woken early by data and by FIN
  6  peek                MSG_PEEK then recv return the same bytes; blocking peek; peek at EOF
  7  waitall             MSG_WAITALL across several sends; cut short by EOF
  8  fionread            FIONREAD (SIOCINQ) and SIOCOUTQ values a user can rely on
  9  epoll_et            EPOLLET: one event per arrival, drain to EAGAIN, IN|RDHUP at FIN
  10 sendfile_splice     os.sendfile from a file; os.splice from the socket into a file
  11 never_reads         writer fills the buffers: EAGAIN (non-blocking) / blocks; all read intact
  12 blocked_reader_fin  a reader blocked in recv() gets b"" when the peer half-closes or closes
  +  handback_order      bytes redirected and unread when a live rule takes the pair off the fast
                         path, then bytes over TCP, both directions; and a loopback stream of
                         small writes handed back with the reader behind: read in order (item 4)

A case the accelerator deliberately leaves on the normal path goes into LEFT_ON_NORMAL_PATH: then
the accelerated run must show that it was counted as such, and the results must still match.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from mdatui.core import apply, lifecycle, reader, rules
from mdatui.core.kernel import btf, loader
from mdatui.core.kernel.instance import NotEnabled
from mdatui.lab import Lab

pytestmark = pytest.mark.kernel

REPO = str(Path(__file__).resolve().parents[1])
PEERS = "tests.semantic_peers"
SVC_PORT, PROXY_PORT, ECHO_PORT = 80, 15001, 7000

# Cases the accelerator leaves on the normal path on purpose (found at run time, counted):
# their accelerated run must show that in the counters instead of redirected messages.
LEFT_ON_NORMAL_PATH: set[str] = set()
NOT_ACCELERATED_COUNTERS = ("refused", "tainted", "demoted", "redirect_failed", "sockhash_full",
                            "proxy_full", "helper_full", "unpaired_removed")


# ------------------------------------------------------------------ processes and their output

class Peer:
    """A program in a lab whose stdout is read as JSON lines, never blocking past a deadline."""

    def __init__(self, lab: Lab, args: list[str], netns: str, stdin: bool = False, **kw):
        self.args = args
        self.err = tempfile.TemporaryFile()  # a pipe nobody reads could fill and block it
        extra = {"stdin": subprocess.PIPE} if stdin else {"stdin": subprocess.DEVNULL}
        self.proc = lab.python([PEERS, *args], netns=netns, cwd=REPO, stderr=self.err,
                               **extra, **kw)
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf, self.eof = b"", False

    def _pump(self, timeout: float) -> None:
        if self.eof:
            time.sleep(min(timeout, 0.05))
            return
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if ready:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            if chunk:
                self.buf += chunk
            else:
                self.eof = True

    def _take(self) -> dict | None:
        if b"\n" not in self.buf:
            return None
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def line(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            got = self._take()
            if got is not None:
                return got
            if self.eof:
                raise RuntimeError(f"{self.args} ended without a report: {self.stderr()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.args}: no report within {timeout:g} s; {self.stderr()}")
            self._pump(left)

    def lines(self, seconds: float) -> list[dict]:
        """Whatever it says within `seconds`."""
        out, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())
            while (got := self._take()) is not None:
                out.append(got)
        return out

    def stderr(self) -> str:
        self.err.seek(0)
        text = self.err.read().decode(errors="replace").strip()
        return f"stderr: {text[-1500:]}" if text else "no stderr"

    def tell(self) -> None:
        self.proc.stdin.write(b"\n")
        self.proc.stdin.flush()

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)


def start_server(lab: Lab, args: list[str], netns: str) -> Peer:
    peer = Peer(lab, args, netns)
    assert peer.line(15) == {"event": "ready"}
    return peer


# ------------------------------------------------------------------ the accelerator

class Accel:
    """The accelerator on one lab's cgroup; what it redirected is summed over enable/disable."""

    def __init__(self, lab: Lab):
        self.lab, self.pin_dir = lab, f"/sys/fs/bpf/{lab.name}"
        self.inst = None
        self.totals = {"accelerated": 0, "redirected_msgs": 0, "not_accelerated": 0, "blocking": 0}
        self.events: list[str] = []
        self.last_stats: dict = {}
        self.taken_off: list[int] = []

    def enable(self) -> None:
        self.inst = lifecycle.enable(cgroup=self.lab.cgroup, pin_dir=self.pin_dir).instance
        self.events.append("enable")

    def count(self) -> dict:
        """This enable's counters so far, closed ends and open ones."""
        stats = self.inst.stats()
        return {"accelerated": stats["accelerated"],
                "redirected_msgs": stats["closed_msgs"] + reader.read(self.inst).redirected_msgs,
                "not_accelerated": sum(stats.get(k, 0) for k in NOT_ACCELERATED_COUNTERS),
                "blocking": stats.get("blocking", 0), "stats": stats}

    def wait_closed(self, seconds: float = 5) -> None:
        deadline = time.monotonic() + seconds
        while self.inst.maps["sock_proxy_map"].count() and time.monotonic() < deadline:
            time.sleep(0.05)

    def disable(self) -> None:
        if self.inst is None:
            return
        counted = self.count()
        for k in self.totals:
            self.totals[k] += counted[k]
        self.last_stats = counted["stats"]
        self.inst.close()
        self.inst = None
        lifecycle.disable(self.pin_dir)
        self.events.append("disable")

    def apply_rules(self, text: str) -> int:
        done = apply.apply(self.inst, rules.parse(text, "<test>"), None)
        self.events.append(f"rules {text.strip() or '(none)'}: {done.taken_off} pair(s) taken off")
        return done.taken_off

    def close(self) -> None:
        """Cleanup, also after a failure: nothing stays attached or pinned."""
        if self.inst is not None:
            self.inst.close()
            self.inst = None
        try:
            lifecycle.disable(self.pin_dir)
        except NotEnabled:
            pass


def check_accelerated(name: str, acc: Accel, pairs: int = 1) -> None:
    t = acc.totals
    if name in LEFT_ON_NORMAL_PATH:
        assert t["not_accelerated"] > 0, (
            f"{name} is meant to stay on the normal path, but no counter says so: {acc.last_stats}")
        return
    # A blocking full-duplex reader found at run time takes its connection off the fast path
    # (core/guard.py), counted, possibly before any message was redirected.
    kept_off = acc.totals["blocking"] > 0
    assert t["accelerated"] >= pairs and (t["redirected_msgs"] > 0 or kept_off), (
        f"the accelerated run of {name} was not accelerated: {t['accelerated']} pair(s) "
        f"accelerated, {t['redirected_msgs']} message(s) redirected (want >= {pairs} and > 0); "
        f"counters {acc.last_stats}")


# ------------------------------------------------------------------ comparing

def flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def assert_same(what: str, plain: dict, accel: dict, info: str = "") -> None:
    p, a = flatten(plain), flatten(accel)
    keys = list(p) + [k for k in a if k not in p]
    diff = [f"  {k}:\n      plain       {p.get(k, '<missing>')!r}\n"
            f"      accelerated {a.get(k, '<missing>')!r}" for k in keys if p.get(k) != a.get(k)]
    if diff:
        pytest.fail(f"{what}: accelerated differs from plain TCP in {len(diff)} field(s):\n"
                    + "\n".join(diff) + (f"\n{info}" if info else ""), pytrace=False)


# ------------------------------------------------------------------ one-process cases (3-12)

CASE_NAMES = ["half_close", "unread_when_closed", "rst", "rcvtimeo", "peek", "waitall", "fionread",
              "epoll_et", "sendfile_splice", "never_reads", "blocked_reader_fin", "handback_order"]

# What plain TCP gives, so that a broken scenario is not mistaken for a pass.
PLAIN_MUST = {
    "half_close": {"server_end": "EOF", "client_send_after_own_shutdown": "error EPIPE"},
    "shutdown_then_read": {"replies": {"intact EOF": 16}},
    "unread_when_closed": {"server_end": "EOF", "client_got_all": True, "client_end": "EOF"},
    "rst": {"recv_after_peer_closed_unread": "error ECONNRESET",
            "blocked_recv_when_peer_closed_unread": "error ECONNRESET"},
    "rcvtimeo": {"idle_recv": "error EAGAIN", "idle_recv_returned_after_timeout": True,
                 "recv_fin_during_wait": "EOF"},
    "peek": {"recv_is_what_was_peeked": True},
    "waitall": {"waitall_is_all_sent": True, "waitall_1MiB_is_all_sent": True},
    "fionread": {"inq_after_12345_B": 12345, "inq_after_reading_345": 12000},
    "epoll_et": {"after_send": ["IN"], "again_without_reading": [], "fin": ["IN|RDHUP"]},
    "sendfile_splice": {"sendfile_sent": 3_012_345},
    "never_reads": {"nonblocking_writer_stops_with": "EAGAIN", "reader_got_everything": True},
    "blocked_reader_fin": {"peer_shutdown": "EOF", "peer_shutdown_while_sending": "EOF"},
    "handback_order": {"from_c_received_all": True, "from_s_received_all": True},
}


def run_case(lab: Lab, name: str, acc: Accel | None) -> dict:
    peer = Peer(lab, ["case", name, "--port", "7000", "--timeout", "20"],
                lab.add_netns("pod"), stdin=True)
    for _ in range(5):
        out = peer.line(40)
        if "pause" not in out:
            break
        if acc is not None and out["pause"].startswith("take"):
            # off the fast path, as a live rule change takes it
            acc.taken_off.append(acc.apply_rules("chain --port 7000 -j RETURN\n"))
        elif acc is not None and out["pause"].startswith("restore"):
            acc.apply_rules("")
        peer.tell()
    peer.proc.wait(10)
    if acc is not None:
        acc.wait_closed()
    return out


# What tcp_bpf (the kernel's receive and send path of a socket in a sockhash) does differently
# from TCP, on this kernel, that mdatui cannot correct from its programs and does not yet detect
# at run time to keep such connections off the fast path (issue #11). Each case stays in the
# matrix: a strict one fails the run the day it behaves like TCP, so that its mark is removed.
TCP_BPF_GAPS = {
    # tcp_bpf_recvmsg returns EAGAIN when a blocked reader is woken without redirected data:
    # here by the state change of its own socket (its FIN acknowledged). An end with nothing
    # unread leaves the sockhash at its own shutdown (half_close passes since); this one still
    # had redirected bytes to read then. Racy: not strict.
    "blocked_reader_fin": ("a reader blocked in recv() gets EAGAIN instead of EOF", False),
    # tcp_close decides between FIN and RST on the TCP receive queue alone, not the redirected one.
    "rst": ("closing with unread redirected bytes sends FIN, not RST", True),
    # sk_msg_recvmsg returns what is queued; MSG_WAITALL is not honoured.
    "waitall": ("MSG_WAITALL returns short reads", True),
    # splice reads the TCP receive queue only; redirected bytes never reach it.
    "sendfile_splice": ("splice() from the socket blocks on redirected bytes", True),
}
# Redirected bytes are charged to the receiver, not the sender's buffer: sk_msg.c sees a peer that
# does not read only where the kernel counts a psock's unread bytes (msg_tot_len, which came with
# the FIONREAD fix) and its BTF says where that count sits.
if {"MDA_OFF_PSOCK_MSG_TOT_LEN", "MDA_OFF_SK_MSG_SK_REDIR"} - set(btf.offsets(loader.KERNEL_MEMBERS)):
    TCP_BPF_GAPS["never_reads"] = ("a sender to a peer that never reads is never told EAGAIN", True)


def _case(name: str):
    if name not in TCP_BPF_GAPS:
        return name
    reason, strict = TCP_BPF_GAPS[name]
    return pytest.param(name, marks=pytest.mark.xfail(reason=f"tcp_bpf: {reason}", strict=strict))


def case_both(name: str) -> tuple[dict, dict, Accel, str]:
    """The case run plain, then accelerated; the plain run must give what TCP gives."""
    with Lab("sem") as lab:
        plain = run_case(lab, name, None)
    with Lab("sem") as lab:
        acc = Accel(lab)
        try:
            acc.enable()
            accel = run_case(lab, name, acc)
            acc.disable()
        finally:
            acc.close()
    info = (f"plain run:       {json.dumps(plain)}\naccelerated run: {json.dumps(accel)}\n"
            f"accelerator: {acc.events} totals {acc.totals}\ncounters at the end: {acc.last_stats}")
    print(info)
    assert plain["hang"] is None and plain["crash"] is None, f"the plain run itself failed\n{info}"
    wrong = {k: (plain["results"].get(k), v) for k, v in PLAIN_MUST[name].items()
             if plain["results"].get(k) != v}
    assert not wrong, f"the scenario is broken: plain TCP gave (got, want) {wrong}\n{info}"
    return plain, accel, acc, info


@pytest.mark.parametrize("name", [_case(n) for n in CASE_NAMES])
def test_socket_calls(name):
    plain, accel, acc, info = case_both(name)
    if name == "handback_order":  # bytes in both queues only if the pair really left the fast path
        assert acc.taken_off == [1], f"the RETURN rule took off {acc.taken_off} pair(s)\n{info}"
    if name == "never_reads":  # the sender is stopped by TCP, once its connection went back to it
        assert acc.last_stats["unread"] == 1, f"no end was stopped for its peer's backlog\n{info}"
    assert_same(name, {k: plain[k] for k in ("results", "hang", "crash")},
                {k: accel[k] for k in ("results", "hang", "crash")}, info)
    check_accelerated(name, acc)


def test_a_blocking_client_that_shuts_down_then_reads_gets_its_replies():
    """shutdown_then_read, 16 connections. Before mda_own_fin (bpf/sock_ops.c) every accelerated
    one's read got EAGAIN with nothing read (8 of 8). Now the end leaves the fast path inside
    shutdown(), unless at that moment a thread of the peer is inside a call on its socket (the
    server reading the request, here): then it leaves drained, and its read can still get
    EAGAIN (1 of 8 in a run). Never a reply cut short or wrong."""
    plain, accel, acc, info = case_both("shutdown_then_read")
    assert accel["hang"] is None and accel["crash"] is None, info
    replies = accel["results"]["replies"]
    assert set(replies) <= {"intact EOF", "0 B error EAGAIN"}, info
    assert replies.get("intact EOF", 0) >= 12, info
    check_accelerated("shutdown_then_read", acc)


# ------------------------------------------------------------------ blocking full duplex (1, 2)

def mesh(lab: Lab) -> tuple[str, list[Peer]]:
    """app -> nat OUTPUT REDIRECT :80 -> the plainest proxy :15001 -> echo :7000, in one pod
    (the app's destination 198.18.0.2 is across a veth, as in the demo)."""
    app, svc = lab.add_netns("app"), lab.add_netns("svc")
    lab.link(app, "198.18.0.1/24", svc, "198.18.0.2/24")
    lab.iptables(app, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", str(SVC_PORT),
                 "-j", "REDIRECT", "--to-ports", str(PROXY_PORT))
    echo = start_server(lab, ["echo", "--port", str(ECHO_PORT), "--host", "127.0.0.1"], app)
    proxy = start_server(lab, ["proxy", "--port", str(PROXY_PORT),
                               "--to", f"127.0.0.1:{ECHO_PORT}"], app)
    return app, [echo, proxy]


RATE = 20_000_000  # bytes/s per writer: enough to keep both queues busy, CPU left for enable


def duplex_run(lab: Lab, conns: int, seconds: float, stagger: float, hang_after: float,
               during=None) -> dict:
    app, servers = mesh(lab)
    client = Peer(lab, ["duplex", "--to", f"198.18.0.2:{SVC_PORT}", "--conns", str(conns),
                        "--seconds", str(seconds), "--stagger", str(stagger),
                        "--timeout", str(hang_after), "--rate", str(RATE)], app)
    if during:
        during()
    out = client.line(hang_after + 30)
    if out["hangs"]:
        for s in servers:  # what each server thread was doing when the client gave up
            s.signal(signal.SIGUSR1)
    said = {name: s.lines(1.5 if out["hangs"] else 0.5) for name, s in zip(("echo", "proxy"), servers)}
    out["server_errors"] = sorted(f"{name} {e['thread']}: {e['error']}"
                                  for name, lines in said.items() for e in lines
                                  if e.get("event") == "error")
    out["server_done"] = {name: sum(1 for e in lines if e.get("event") == "done")
                          for name, lines in said.items()}
    out["server_threads"] = {name: e["threads"] for name, lines in said.items() for e in lines
                             if e.get("event") == "threads"}
    return out


def duplex_view(out: dict) -> dict:
    """What a user relies on: per connection intact, at end-of-file, no error; no hang.
    (How many bytes went through depends on the speed, so it is reported, not compared.)"""
    return {
        "connections_intact": out["intact"],
        "conns": [{"connected": c["connected"], "eof": c["eof"], "first_bad_offset": c["first_bad"],
                   "all_echoed": c["received"] == c["sent"], "errors": c["errors"]}
                  for c in out["conns"]],
        "hangs": out["hangs"],
        "server_errors": out["server_errors"],
        "server_connections_done": out["server_done"],
    }


def duplex_info(plain: dict, accel: dict, acc: Accel) -> str:
    def sent(out):
        return ", ".join(f"conn{c['conn']} {c['sent']}/{c['received']}" for c in out["conns"])
    return (f"bytes sent/echoed: plain {sent(plain)}\n"
            f"                   accelerated {sent(accel)}\n"
            f"accelerated run's server threads at the hang: {accel['server_threads']}\n"
            f"accelerator: {acc.events} totals {acc.totals}\ncounters at the end: {acc.last_stats}")


def duplex_both(name: str, conns: int, during=None, **kw) -> tuple[dict, Accel]:
    """The duplex run in a plain lab, then in an accelerated one with during(acc) running
    beside it; the plain run must be clean and the accelerated one the same."""
    with Lab("sem") as lab:
        plain = duplex_run(lab, conns=conns, **kw)
    with Lab("sem") as lab:
        acc = Accel(lab)
        try:
            acc.enable()
            accel = duplex_run(lab, conns=conns, during=during and (lambda: during(acc)), **kw)
            acc.wait_closed()
            acc.disable()
        finally:
            acc.close()
    info = duplex_info(plain, accel, acc)
    print(info)
    assert plain["intact"] == conns and not plain["hangs"], f"plain run failed: {plain}"
    assert_same(name, duplex_view(plain), duplex_view(accel), info)
    return info, acc


def test_blocking_full_duplex_through_a_redirected_proxy():
    """4 connections, each a writer and a reader thread, through a REDIRECT to a blocking
    threaded proxy and on to an echo server; every echoed byte checked at its position."""
    info, acc = duplex_both("blocking full duplex", conns=4, seconds=3, stagger=0, hang_after=20)
    # app<->proxy and proxy<->echo for each of the 4 connections
    check_accelerated("blocking full duplex", acc, pairs=8)
    # tcp_bpf cannot serve a thread blocked in recv() while another thread uses the socket:
    # mdatui serve found them at run time and took them off the fast path (core/guard.py).
    assert acc.totals["blocking"] >= 2, info


@pytest.mark.xfail(reason="tcp_bpf: a read blocked before mdatui serve took the connection off "
                   "the fast path can still get EAGAIN (no byte is lost, reordered or hung)",
                   strict=False)
def test_blocking_full_duplex_with_toggles_and_live_rule_changes():
    """The same, with 12 connections started a second apart, while the accelerator is disabled
    and enabled twice and a live RETURN rule takes the open connections off the fast path."""
    taken_off = []

    def toggles(acc: Accel) -> None:
        t0 = time.monotonic()

        def at(t: float) -> None:
            time.sleep(max(0.0, t0 + t - time.monotonic()))
        at(1.0)
        acc.disable()           # conns 0 and 1 are accelerated and mid-transfer
        acc.enable()            # conns started from here on are accelerated
        time.sleep(1.2)
        taken_off.append(acc.apply_rules(f"chain --port {SVC_PORT} -j RETURN\n"
                                         f"chain --port {ECHO_PORT} -j RETURN\n"))
        time.sleep(0.8)
        acc.apply_rules("")     # back to no rules: new connections accelerated again
        time.sleep(1.2)
        acc.disable()
        acc.enable()
        acc.events.append(f"last enable {time.monotonic() - t0:.1f} s after the start")

    _, acc = duplex_both("blocking full duplex with toggles", conns=12, during=toggles,
                         seconds=3, stagger=1.0, hang_after=30)
    check_accelerated("blocking full duplex with toggles", acc, pairs=4)
    # The rule takes off what is still accelerated by then; mdatui serve may have taken these
    # blocking full-duplex connections off the fast path before it (core/guard.py), counted.
    assert taken_off and (taken_off[0] > 0 or acc.totals["blocking"] > 0), (
        f"the live RETURN rule found no accelerated pair to take off: {acc.events}")
