"""The accelerator on the real kernel: bytes delivered intact, really redirected, maps kept clean."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from mdatui.cli import main as cli_main
from mdatui.core import lifecycle, metrics, reader, rules, service, service_status
from mdatui.core.ends import Connection
from mdatui.core.kernel import system
from mdatui.core.kernel.instance import Instance

from . import peers

pytestmark = pytest.mark.kernel

MB50 = 50_000_000
CHUNK = 1 << 16


def lo_packets(netns: str) -> int:
    out = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", "lo"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["stats64"]["rx"]["packets"]


def ends(inst) -> dict[tuple[str, str], Connection]:
    return {(c.end.local, c.end.remote): c for c in reader.read(inst).connections}


def service_gone(pin_dir: str, seconds: float) -> bool:
    """Whether `mdatui serve` for pin_dir has ended within seconds."""
    deadline = time.monotonic() + seconds
    while service.running(pin_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    return service.running(pin_dir) is None


def wait_maps_empty(inst, seconds: float = 5) -> dict[str, int]:
    deadline = time.monotonic() + seconds
    while True:
        counts = {name: inst.maps[name].count()
                  for name in ("sock_ops_map", "sock_proxy_map", "sock_helper_map")}
        if not any(counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def test_loopback_echo_bypasses_the_stack(lab, accel):
    ns = lab.add_netns("pod")
    peers.server(lab, "echo", 7000, ns)
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes", str(MB50),
                       "--chunk", str(CHUNK), "--echo", hold=True)
    local = peers.report(cli)["local"]

    found = ends(accel)
    mine, theirs = found[(local, "127.0.0.1:7000")], found[("127.0.0.1:7000", local)]
    assert mine.state == theirs.state == "accelerated"
    assert mine.in_sockhash and theirs.in_sockhash
    assert mine.peer == theirs.end and theirs.peer == mine.end
    assert mine.end.netns and mine.end.netns == theirs.end.netns  # loopback: keyed by netns

    before = lo_packets(ns)
    peers.proceed(cli)
    done = peers.report(cli, timeout=120)
    lo_moved = lo_packets(ns) - before
    assert done["received"] == MB50
    assert done["sha256_received"] == done["sha256_sent"]
    # Over the stack 50 MB each way is well over 1,500 packets on lo; redirected, none.
    assert lo_moved < 50, f"{lo_moved} packets crossed lo"

    found = ends(accel)
    mine, theirs = found[(local, "127.0.0.1:7000")], found[("127.0.0.1:7000", local)]
    assert (mine.bytes, mine.msgs, mine.passed) == (MB50, -(-MB50 // CHUNK), 0)
    assert (theirs.bytes, theirs.passed) == (MB50, 0)

    peers.proceed(cli)
    cli.wait(10)
    assert wait_maps_empty(accel) == {"sock_ops_map": 0, "sock_proxy_map": 0, "sock_helper_map": 0}
    assert accel.stats()["closed_bytes"] == 2 * MB50


def test_connection_outside_the_cgroup_is_never_in_the_maps(lab, accel):
    ns = lab.add_netns("pod")
    peers.server(lab, "echo", 7001, ns, False)
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7001", "--bytes", "100000", "--echo",
                       inside=False, hold=True)
    local = peers.report(cli)["local"]
    peers.proceed(cli)
    done = peers.report(cli)
    assert done["sha256_received"] == done["sha256_sent"]
    assert not any(local in key for key in ends(accel))
    assert accel.maps["sock_ops_map"].count() == 0


def test_client_whose_server_is_outside_leaves_the_sockhash(lab, accel):
    ns = lab.add_netns("pod")
    sink = peers.server(lab, "sink", 7002, ns, False)
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7002", "--bytes", "1000000", hold=True)
    local = peers.report(cli)["local"]
    assert ends(accel)[(local, "127.0.0.1:7002")].state == "pending"
    peers.proceed(cli)
    done = peers.report(cli)
    # Its first acknowledged data took it out: it no longer runs the sk_msg program.
    assert (local, "127.0.0.1:7002") not in ends(accel)
    assert accel.maps["sock_ops_map"].count() == 0
    assert accel.stats()["unpaired_removed"] == 1
    peers.proceed(cli)
    assert peers.report(sink)["sha256"] == done["sha256_sent"]


# The two families of a pod with a sidecar: its address and a service's, where a port-80
# connection goes, the loopback address the sidecar and the app listen on.
SIDECAR = {
    "ipv4": dict(pod="198.18.0.1/24", svc="198.18.0.2/24", service="198.18.0.2:80", lo="127.0.0.1",
                 listen="0.0.0.0", v6=False),
    "ipv6": dict(pod="2001:2::1/64", svc="2001:2::2/64", service="[2001:2::2]:80", lo="[::1]",
                 listen="::", v6=True),
}


def pod_with_sidecar_redirect(lab, family: str = "ipv4") -> str:
    """A pod at 198.18.0.1 (or 2001:2::1) whose outbound port-80 connections go to its sidecar
    on :15001, as Istio sets it up (nat OUTPUT REDIRECT)."""
    f = SIDECAR[family]
    ns, elsewhere = lab.add_netns("pod"), lab.add_netns("svc")
    lab.link(ns, f["pod"], elsewhere, f["svc"])
    lab.iptables(ns, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "80",
                 "-j", "REDIRECT", "--to-ports", "15001", v6=f["v6"])
    return ns


@pytest.mark.parametrize("family", SIDECAR)
def test_sidecar_legs_behind_iptables_redirect_are_paired(lab, accel, family):
    f = SIDECAR[family]
    ns = pod_with_sidecar_redirect(lab, family)
    peers.server(lab, "echo", 7000, ns, True, "--host", f["lo"].strip("[]"))
    upstream_at = f"{f['lo']}:7000"
    peers.server(lab, "proxy", 15001, ns, True, "--host", f["listen"], "--to", upstream_at)

    cli = peers.client(lab, ns, "send", "--to", f["service"], "--bytes", "5000000",
                       "--echo", hold=True)
    local = peers.report(cli)["local"]
    peers.proceed(cli)
    done = peers.report(cli)
    assert done["sha256_received"] == done["sha256_sent"]

    found = ends(accel)
    app = found[(local, f["service"])]            # the app still sees its original destination
    sidecar = found[(f"{f['lo']}:15001", local)]  # the proxy sees the REDIRECTed address
    assert app.state == sidecar.state == "accelerated"
    assert app.peer == sidecar.end and sidecar.peer == app.end
    assert app.bytes == 5_000_000 and sidecar.bytes == 5_000_000
    upstream = [c for c in found.values() if c.end.remote == upstream_at]
    assert len(upstream) == 1 and upstream[0].state == "accelerated"
    assert upstream[0].bytes == 5_000_000
    peers.proceed(cli)


def test_two_pods_with_the_same_loopback_address_do_not_cross(lab, accel):
    pods = [lab.add_netns("a"), lab.add_netns("b")]
    for ns in pods:
        peers.server(lab, "echo", 7000, ns)
    sizes = [3_000_000, 7_000_000]
    clients = [peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes", str(n),
                            "--echo", hold=True) for ns, n in zip(pods, sizes)]
    locals_ = [peers.report(c)["local"] for c in clients]
    for c in clients:
        peers.proceed(c)
    results = [peers.report(c) for c in clients]
    for r, n in zip(results, sizes):
        assert r["received"] == n and r["sha256_received"] == r["sha256_sent"]
    # The two pods' port spaces are their own: both clients may get the same local port, so
    # each end is told by its owner too.
    conns = reader.read(accel).connections
    cookies = set()
    for client, local, n in zip(clients, locals_, sizes):
        [mine] = [c for c in conns
                  if (c.end.local, c.end.remote, c.owner.pid) == (local, "127.0.0.1:7000", client.pid)]
        assert mine.state == "accelerated" and mine.bytes == n
        assert mine.peer.netns == mine.end.netns
        cookies.add(mine.end.netns)
    assert len(cookies) == 2
    for c in clients:
        peers.proceed(c)


def test_pod_to_pod_over_a_veth_is_accelerated(lab, accel):
    """Full duplex at full speed: the client's reader thread and the echo server's threads wait
    in select() before they read, so mdatui serve's guard must leave them on the fast path,
    although they are often seen asleep in recv() (on the socket's lock, while a sender holds
    it), with bytes waiting."""
    a, b = lab.add_netns("a"), lab.add_netns("b")
    lab.link(a, "198.18.1.1/24", b, "198.18.1.2/24")
    peers.server(lab, "echo", 7000, b)
    total = 500_000_000
    cli = peers.client(lab, a, "send", "--to", "198.18.1.2:7000", "--bytes", str(total), "--echo",
                       hold=True)
    local = peers.report(cli)["local"]
    peers.proceed(cli)
    done = peers.report(cli)
    assert done["sha256_received"] == done["sha256_sent"]
    found = ends(accel)
    mine, theirs = found[(local, "198.18.1.2:7000")], found[("198.18.1.2:7000", local)]
    assert (mine.state, theirs.state, accel.stats()["blocking"]) == ("accelerated",) * 2 + (0,)
    assert mine.end.netns == 0 and theirs.end.netns == 0  # distinct addresses need no netns
    assert mine.bytes == theirs.bytes == total
    peers.proceed(cli)


@pytest.mark.parametrize("chunk, nodelay, handed_back", [
    (100, False, True), (8192, False, True), (20000, False, False), (100, True, True), (20000, True, True)])
def test_a_stream_is_handed_back_unless_nagle_would_slow_its_large_writes(
        lab, accel, chunk, nodelay, handed_back):
    """With Nagle the stack coalesces writes under MDA_STREAM_SMALL and beats the fast path, and
    holds larger ones back for acks; TCP_NODELAY streams go back at any size on two CPUs
    (MDA_STREAM_RUN in bpf/mdatui.h)."""
    ns = lab.add_netns("pod")
    peers.server(lab, "sink", 7000, ns)
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes", str(200 * chunk),
                       "--chunk", str(chunk), *(["--nodelay"] if nodelay else []), hold=True)
    local = peers.report(cli)["local"]
    peers.proceed(cli)
    assert peers.report(cli)["state"] == "done"
    if handed_back:
        wait_drained(accel, 2)
    mine = ends(accel)[(local, "127.0.0.1:7000")]
    stats = accel.stats()
    assert (mine.state, mine.msgs, stats["demoted"], stats["listed"]) == (
        ("normal", 64, 1, 2) if handed_back else ("accelerated", 200, 0, 0))
    peers.proceed(cli)


def stream_to_the_end(accel, cli, remote: str, handed_back: bool) -> tuple[Connection, dict]:
    """Let a --hold sender send all; its end (once drained, when handed back) and its report."""
    local = peers.report(cli)["local"]
    peers.proceed(cli)
    done = peers.report(cli)
    if handed_back:
        wait_drained(accel, 2)
    return ends(accel)[(local, remote)], done


@contextlib.contextmanager
def held_to(cpu_index: int):
    """Processes started meanwhile may run on one CPU only (they inherit this one's affinity)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {sorted(before)[cpu_index]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.parametrize("pod_to_pod, chunk, client_cpu, handed_back", [
    (False, 100, 0, True), (False, 6000, 0, True), (False, 10000, 0, False), (False, 10000, 1, True),
    (True, 1000, 0, True), (True, 64, 0, False), (True, 5000, 0, False), (True, 5000, 1, True)])
def test_a_tcp_nodelay_stream_keeps_the_fast_path_only_on_one_cpu_with_writes_it_wins(
        lab, accel, pod_to_pod, chunk, client_cpu, handed_back):
    """On one CPU no vCPU is woken for each redirected write: the fast path keeps TCP_NODELAY
    streams of large writes, and over a veth of writes under MDA_STREAM_TINY_VETH; the stack
    batches a time slice of the others. With the ends on two CPUs every such stream goes back."""
    a = lab.add_netns("pod")
    b, to = a, "127.0.0.1:7000"
    if pod_to_pod:
        b, to = lab.add_netns("peer"), "198.18.1.2:7000"
        lab.link(a, "198.18.1.1/24", b, "198.18.1.2/24")
    with held_to(0):
        sink = peers.server(lab, "sink", 7000, b)
    with held_to(client_cpu):
        cli = peers.client(lab, a, "send", "--to", to, "--bytes", str(200 * chunk),
                           "--chunk", str(chunk), "--nodelay", hold=True)
    mine, done = stream_to_the_end(accel, cli, to, handed_back)
    assert (mine.state, mine.msgs, accel.stats()["demoted"]) == (
        ("normal", 64, 1) if handed_back else ("accelerated", 200, 0))
    peers.proceed(cli)
    assert peers.report(sink)["sha256"] == done["sha256_sent"]


def test_an_operator_keeps_tcp_nodelay_streams_on_the_fast_path_and_hands_them_back(lab, pin_dir):
    """`enable --nodelay-streams fast` is for a machine where the fast path measured ahead for
    such streams; said again with `stack` on the running accelerator, the next stream goes back.
    enable and query say which holds."""
    on = mdatui("enable", "--cgroup", lab.cgroup, "--pin-dir", pin_dir, "--nodelay-streams", "fast")
    assert on.returncode == 0, on.stderr
    assert "TCP_NODELAY streams: kept on the fast path (--nodelay-streams fast)" in on.stdout.splitlines()
    ns = lab.add_netns("pod")
    with Instance(pin_dir) as inst:
        for port, policy, handed_back in ((7000, "fast", False), (7001, "stack", True)):
            if policy == "stack":
                again = mdatui("enable", "--cgroup", lab.cgroup, "--pin-dir", pin_dir,
                               "--nodelay-streams", "stack")
                assert again.stdout.startswith(f"already enabled on {lab.cgroup}"), again.stderr
                assert "TCP_NODELAY streams: handed back to the stack (--nodelay-streams stack)" in \
                    again.stdout.splitlines()
            with held_to(0):
                sink = peers.server(lab, "sink", port, ns)
            with held_to(1):  # the ends on two CPUs
                cli = peers.client(lab, ns, "send", "--to", f"127.0.0.1:{port}", "--bytes", "2000000",
                                   "--chunk", "10000", "--nodelay", hold=True)
            mine, done = stream_to_the_end(inst, cli, f"127.0.0.1:{port}", handed_back)
            assert (mine.state, mine.msgs, inst.stats()["demoted"]) == (
                ("normal", 64, 1) if handed_back else ("accelerated", 200, 0))
            peers.proceed(cli)
            assert peers.report(sink)["sha256"] == done["sha256_sent"]
    query = mdatui("query", "--pin-dir", pin_dir)
    assert "  TCP_NODELAY streams: handed back to the stack (--nodelay-streams stack)" in \
        query.stdout.splitlines()
    assert json.loads(mdatui("query", "--json", "--pin-dir", pin_dir).stdout)["nodelay_streams"] == "stack"


@pytest.mark.parametrize("chunk, handed_back", [(100, True), (1000, False)])
def test_pod_to_pod_streams_of_small_writes_go_back_to_the_stack(lab, accel, chunk, handed_back):
    """Over a veth the fast path wins from a few hundred bytes a write (MDA_STREAM_SMALL_VETH)."""
    a, b = lab.add_netns("a"), lab.add_netns("b")
    lab.link(a, "198.18.1.1/24", b, "198.18.1.2/24")
    sink = peers.server(lab, "sink", 7000, b)
    cli = peers.client(lab, a, "send", "--to", "198.18.1.2:7000", "--bytes", str(100 * chunk),
                       "--chunk", str(chunk), hold=True)
    mine, done = stream_to_the_end(accel, cli, "198.18.1.2:7000", handed_back)
    assert (mine.state, mine.in_sockhash) == (("normal", False) if handed_back
                                              else ("accelerated", True))
    assert mine.msgs == (64 if handed_back else 100)
    assert accel.stats()["demoted"] == int(handed_back)
    peers.proceed(cli)
    assert peers.report(sink)["sha256"] == done["sha256_sent"]


def test_a_reader_that_stops_reading_sends_its_connection_back_to_the_stack(lab, accel):
    """Redirected bytes are charged to the reader, and nothing would stop the sender: once the
    reader is more than TCP's largest receive buffer behind and reads nothing for a second, the
    connection goes back to the stack (bpf/sk_msg.c), and no byte is lost or reordered."""
    ns = lab.add_netns("pod")
    sink = peers.server(lab, "sink", 7000, ns, True, "--delay", "4")
    total = 192 << 20  # at some 64 MB/s: the reader is far behind for well over a second
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes", str(total),
                       "--pause", "0.001", hold=True)
    mine, done = stream_to_the_end(accel, cli, "127.0.0.1:7000", handed_back=True)
    assert (mine.state, accel.stats()["unread"]) == ("normal", 1)
    assert 0 < mine.bytes < total  # redirected until then, the rest through the stack
    peers.proceed(cli)
    got = peers.report(sink, timeout=60)
    assert (got["bytes"], got["sha256"]) == (total, done["sha256_sent"])


def test_ten_thousand_connections_leave_every_map_empty(lab, accel):
    """Four exchanges each: eight messages, enough for every connection to be accelerated."""
    ns = lab.add_netns("pod")
    peers.server(lab, "echo", 7000, ns)
    churn = peers.client(lab, ns, "churn", "--to", "127.0.0.1:7000", "--count", "10000",
                         "--exchanges", "4")
    assert peers.report(churn, timeout=240) == {"connections": 10000, "echoed": 10000}
    assert wait_maps_empty(accel) == {"sock_ops_map": 0, "sock_proxy_map": 0, "sock_helper_map": 0}
    stats = accel.stats()
    assert (stats["accelerated"], stats["short"]) == (10000, 0)
    assert stats["sockhash_full"] == stats["proxy_full"] == stats["helper_full"] == 0


def test_short_lived_connections_stay_on_the_stack_until_they_grow_longer(lab, accel):
    """A destination whose connections carry two messages each is left to the stack after the
    first eight, but for one connection in 16; once its connections carry 16 messages, those
    probes bring it back onto the fast path."""
    ns = lab.add_netns("pod")
    peers.server(lab, "echo", 7000, ns)
    short = peers.client(lab, ns, "churn", "--to", "127.0.0.1:7000", "--count", "400")
    assert peers.report(short, timeout=60) == {"connections": 400, "echoed": 400}
    stats = accel.stats()
    assert stats["accelerated"] + stats["short"] == 400
    # probes: every 16th; a close counted after the next connect may let one more through
    assert 8 + 392 // 16 <= stats["accelerated"] <= 8 + 392 // 16 + 3, stats
    [dest] = reader.read(accel).short_lived
    assert (dest.destination, 1.5 <= dest.msgs_per_conn <= 2.5) == ("127.0.0.1:7000", True), dest
    shown = json.loads(mdatui("query", "--json", "--pin-dir", accel.pin_dir).stdout)
    assert shown["stats"]["short"] == stats["short"]
    assert [d["destination"] for d in shown["short_lived"]] == ["127.0.0.1:7000"]
    said = mdatui("query", "--pin-dir", accel.pin_dir).stdout
    assert f"kept off: {stats['short']} short-lived connections; now to 127.0.0.1:7000 (" in said
    assert re.search(r"drain service: running \(pid \d+, \d+\.\d % of a CPU since it started\)", said)
    longer = peers.client(lab, ns, "churn", "--to", "127.0.0.1:7000", "--count", "200",
                          "--exchanges", "8")
    assert peers.report(longer, timeout=60) == {"connections": 200, "echoed": 200}
    after = accel.stats()
    assert after["accelerated"] + after["short"] == 600
    assert after["accelerated"] - stats["accelerated"] > 100, after
    assert reader.read(accel).short_lived == []
    assert wait_maps_empty(accel) == {"sock_ops_map": 0, "sock_proxy_map": 0, "sock_helper_map": 0}


def test_disable_during_a_transfer_loses_no_byte(lab, pin_dir):
    ns = lab.add_netns("pod")
    inst = lifecycle.enable(cgroup=lab.cgroup, pin_dir=pin_dir).instance
    sink = peers.server(lab, "sink", 7000, ns)
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes", "100000000",
                       "--pause", "0.001")
    deadline = time.monotonic() + 10
    while reader.read(inst).redirected_bytes == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    moved = reader.read(inst).redirected_bytes
    inst.close()
    lifecycle.disable(pin_dir)
    done = peers.report(cli, timeout=120)
    got = peers.report(sink)
    assert 0 < moved < 100_000_000, "the transfer was accelerated when disable came"
    assert (got["bytes"], got["sha256"]) == (100_000_000, done["sha256_sent"])


def mdatui(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    prefix = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups"] if user else []
    return subprocess.run([*prefix, sys.executable, "-m", "mdatui.cli.main", *args],
                          capture_output=True, text=True, timeout=120)


def test_disable_drains_an_idle_connection_which_goes_on_over_the_stack(lab, pin_dir):
    ns = lab.add_netns("pod")
    assert mdatui("enable", "--cgroup", lab.cgroup, "--pin-dir", pin_dir).returncode == 0
    peers.server(lab, "echo", 7000, ns)
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes", "3000000", "--echo",
                       hold=True)
    peers.report(cli)  # connected and paired, nothing sent yet
    off = mdatui("disable", "--pin-dir", pin_dir)
    assert off.stdout.strip() == (f"disabled on {lab.cgroup}; open connections continue over the "
                                  "normal stack; 2 ends drained and left the sockhash")
    peers.proceed(cli)
    done = peers.report(cli)
    assert done["received"] == 3_000_000 and done["sha256_received"] == done["sha256_sent"]
    peers.proceed(cli)


def test_an_end_disable_hands_over_leaves_once_read_though_disable_took_its_peer_out(lab, pin_dir):
    """disable takes the idle client end out at once but must leave the sink's end, whose
    reader is behind, to the service: which takes it out once read, although its peer, gone
    from the sockhash and never told to stop, left no entry to say so."""
    ns = lab.add_netns("pod")
    lifecycle.enable(cgroup=lab.cgroup, pin_dir=pin_dir).instance.close()
    sink = peers.server(lab, "sink", 7000, ns, True, "--delay", "5")
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes", "200000", hold=True)
    peers.report(cli)
    peers.proceed(cli)
    sent = peers.report(cli)  # in the sink's queue, unread; the client idles, its socket open
    result = lifecycle.disable(pin_dir)
    assert (result.left, result.handed) == (1, 1)
    assert service.running(pin_dir) is not None
    assert service_gone(pin_dir, 15), "the service still waits for the sink's end"
    peers.proceed(cli)
    got = peers.report(sink)
    assert (got["bytes"], got["sha256"]) == (200_000, sent["sha256_sent"])


def test_an_end_closed_while_it_drains_keeps_what_it_has_not_read(lab, pin_dir):
    """The sink shut its sending side down first, so the client's FIN, coming after disable,
    takes its end to CLOSE with 200,000 B unread. A closed socket has no peer name, so the
    service can no longer find it to ask FIONREAD: it must not take the end out for that."""
    ns = lab.add_netns("pod")
    lifecycle.enable(cgroup=lab.cgroup, pin_dir=pin_dir).instance.close()
    sink = peers.server(lab, "sink", 7000, ns, True, "--delay", "6", "--shut-first")
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes", "200000", hold=True)
    peers.report(cli)
    peers.proceed(cli)
    sent = peers.report(cli)
    result = lifecycle.disable(pin_dir)
    assert (result.left, result.handed) == (1, 1)
    peers.proceed(cli)  # closes: its FIN closes the sink's end
    got = peers.report(sink)
    assert (got["bytes"], got["sha256"]) == (200_000, sent["sha256_sent"])
    assert service_gone(pin_dir, 5), "the service still waits for the closed end"


def test_the_service_starts_while_someone_asks_whether_it_runs(lab, pin_dir):
    """running() holds a shared lock on the pid file for an instant; a service starting then
    waits it out instead of exiting as 'already running' (which failed CI once)."""
    lifecycle.enable(cgroup=lab.cgroup, pin_dir=pin_dir, serve=False).instance.close()
    path = service_status.pidfile(pin_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as probe:
        fcntl.flock(probe, fcntl.LOCK_SH)
        child = subprocess.Popen([sys.executable, "-m", "mdatui.cli.main", "serve",
                                  "--pin-dir", pin_dir], stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
    deadline = time.monotonic() + 15
    while service.running(pin_dir) != child.pid and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.poll() is None and service.running(pin_dir) == child.pid, child.stderr
    service.stop(pin_dir)
    child.wait(10)


def test_enable_and_disable_twice_say_what_they_did(lab, pin_dir):
    scope = ["--cgroup", lab.cgroup, "--pin-dir", pin_dir]
    first, second = mdatui("enable", *scope), mdatui("enable", *scope)
    assert first.returncode == 0 and first.stdout.startswith(f"enabled on {lab.cgroup}")
    assert second.returncode == 0
    assert second.stdout.startswith(f"already enabled on {lab.cgroup} (nothing attached twice)")

    q = json.loads(mdatui("query", "--json", "--connections", "--pin-dir", pin_dir).stdout)
    assert q["enabled"] is True and q["cgroup"] == lab.cgroup
    assert q["maps"]["sock_ops_map"] == {"entries": 0, "capacity": 262144}
    assert q["connections"] == [] and q["totals"]["redirected_msgs"] == 0

    other = mdatui("enable", "--cgroup", lab.outside, "--pin-dir", pin_dir)
    assert other.returncode == 1
    assert f"{pin_dir} already holds an accelerator for cgroup {lab.cgroup}" in other.stderr

    off, again = mdatui("disable", "--pin-dir", pin_dir), mdatui("disable", "--pin-dir", pin_dir)
    assert off.returncode == 0 and off.stdout.startswith(f"disabled on {lab.cgroup}")
    assert again.returncode == 0 and again.stdout.strip() == f"not enabled: nothing pinned at {pin_dir}"
    assert json.loads(mdatui("query", "--json", "--pin-dir", pin_dir).stdout)["enabled"] is False


def test_enable_without_root_explains_and_attaches_nothing(lab, pin_dir):
    res = mdatui("enable", "--cgroup", lab.cgroup, "--pin-dir", pin_dir, user="nobody")
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        "FAIL not root: run it as root (or with sudo) (loading BPF programs and pinning maps needs "
        "CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)",
        "mdatui: this host cannot run the accelerator: do what the FAIL lines say "
        "(`mdatui doctor` lists every check)"]
    assert mdatui("query", "--json", "--pin-dir", pin_dir).stdout.count('"enabled": false') == 1


def test_enable_without_a_cgroup_names_the_root_and_attaches_nothing(monkeypatch, capsys, pin_dir):
    # In this process, with enable itself made to fail: a regression must not reach the root.
    monkeypatch.setattr(cli_main.lifecycle, "enable", lambda **kw: pytest.fail("enable went on"))
    monkeypatch.setattr(cli_main, "_preflight", lambda pin_dir: pytest.fail("preflight went on"))
    assert cli_main.main(["enable", "--pin-dir", pin_dir]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mdatui: enable needs --cgroup DIR")
    assert f"--cgroup {system.cgroup2_root()}, means every connection of this host" in err
    assert not os.path.exists(pin_dir)


def test_options_given_before_the_subcommand_count(lab, pin_dir, tmp_path):
    # argparse lets a subcommand's own default win over the same option given before it: then
    # `mdatui --pin-dir D disable` disabled the default accelerator and `--config` was dropped.
    bad = tmp_path / "bad.conf"
    bad.write_text("chain --port 70000 -j RETURN\n")
    res = mdatui("--config", str(bad), "enable", "--cgroup", lab.cgroup, "--pin-dir", pin_dir)
    assert res.returncode == 1 and f"{bad}:1:14: port 70000 is out of range" in res.stderr
    assert mdatui("--pin-dir", pin_dir, "query").stdout.strip() == f"mdatui: not enabled (nothing pinned at {pin_dir})"

    on = mdatui("--cgroup", lab.cgroup, "--pin-dir", pin_dir, "enable")
    assert on.returncode == 0 and on.stdout.startswith(f"enabled on {lab.cgroup}; pinned at {pin_dir}")
    assert json.loads(mdatui("--pin-dir", pin_dir, "query", "--json").stdout)["cgroup"] == lab.cgroup
    off = mdatui("--pin-dir", pin_dir, "disable")
    assert off.returncode == 0 and off.stdout.startswith(f"disabled on {lab.cgroup}")


def test_enable_on_a_missing_cgroup_names_it(lab, pin_dir):
    res = mdatui("enable", "--cgroup", lab.cgroup + "-nope", "--pin-dir", pin_dir)
    assert res.returncode == 1
    assert f"cgroup {lab.cgroup}-nope does not exist" in res.stderr


def test_a_full_map_falls_back_to_the_stack_and_is_counted(lab, pin_dir):
    ns = lab.add_netns("pod")
    inst = lifecycle.enable(cgroup=lab.cgroup, pin_dir=pin_dir, max_sockets=6).instance
    try:
        peers.server(lab, "echo", 7000, ns)
        clients, locals_ = [], []
        for _ in range(5):  # one at a time: started together, their ends could interleave
            clients.append(peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes",
                                        "2000000", "--echo", hold=True))
            locals_.append(peers.report(clients[-1])["local"])
        for c in clients:
            peers.proceed(c)
        for c in clients:
            done = peers.report(c)
            assert done["sha256_received"] == done["sha256_sent"]
        states = {c.end.local: c.state for c in reader.read(inst).connections}
        # Three connections fill six sockets; the other two were never in the maps.
        assert sorted(str(states.get(local)) for local in locals_) == ["None"] * 2 + ["accelerated"] * 3
        assert inst.stats()["sockhash_full"] == 2
        for c in clients:
            peers.proceed(c)
    finally:
        inst.close()


def test_receive_only_client_whose_server_is_outside_leaves_the_sockhash(lab, accel):
    """A server that speaks first: the client never sends, and must not stay in the maps."""
    ns = lab.add_netns("pod")
    peers.server(lab, "push", 7003, ns, False, "--bytes", "3000000")
    cli = peers.client(lab, ns, "recv", "--from", "127.0.0.1:7003", "--bytes", "3000000",
                       hold=True)
    assert peers.report(cli)["bytes"] == 3_000_000
    # Still connected, and already out of every map.
    assert accel.maps["sock_ops_map"].count() == 0
    assert accel.maps["sock_proxy_map"].count() == 0
    assert accel.stats()["unpaired_removed"] == 1
    peers.proceed(cli)


def test_loopback_stream_of_small_writes_goes_back_to_the_stack(lab, accel):
    """Where the stack is faster (it coalesces small writes), the connection is handed back."""
    ns = lab.add_netns("pod")
    sink = peers.server(lab, "sink", 7000, ns)
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes", "1000000",
                       "--chunk", "100", hold=True)
    local = peers.report(cli)["local"]
    peers.proceed(cli)
    done = peers.report(cli)
    wait_drained(accel, 2)
    found = ends(accel)
    mine, theirs = found[(local, "127.0.0.1:7000")], found[("127.0.0.1:7000", local)]
    # MDA_STREAM_RUN messages redirected, then through the stack; once the sink had read them,
    # both ends left the sockhash (plain TCP: no program sees the rest of the stream, which
    # `passed` shows when the sink kept up, as it does on a quiet machine).
    assert mine.msgs == 64 and 0 < mine.passed <= 10_000 - 64
    assert (mine.state, mine.in_sockhash) == (theirs.state, theirs.in_sockhash) == ("normal", False)
    assert accel.stats()["demoted"] == 1
    peers.proceed(cli)
    assert peers.report(sink)["sha256"] == done["sha256_sent"]


def test_request_response_with_small_messages_keeps_the_fast_path(lab, accel):
    ns = lab.add_netns("pod")
    peers.server(lab, "echo", 7000, ns)
    chat = peers.client(lab, ns, "chat", "--to", "127.0.0.1:7000", "--seconds", "1",
                        "--rate", "1000", "--size", "64")
    requests = peers.report(chat)["requests"]
    assert requests > 100
    deadline = time.monotonic() + 5
    while accel.stats()["closed_msgs"] < 2 * requests and time.monotonic() < deadline:
        time.sleep(0.05)  # the server closes its end once it has read the client's FIN
    assert accel.stats()["closed_msgs"] == 2 * requests  # every request and reply redirected
    assert accel.stats()["demoted"] == 0


def test_request_response_through_a_redirected_sidecar_keeps_the_fast_path(lab, accel):
    """Only the sidecar's end is on a loopback address; the app's replies must still count."""
    ns = pod_with_sidecar_redirect(lab)
    peers.server(lab, "echo", 15001, ns)
    chat = peers.client(lab, ns, "chat", "--to", "198.18.0.2:80", "--seconds", "1",
                        "--rate", "1000", "--size", "64")
    assert peers.report(chat)["requests"] > 100
    assert accel.stats()["demoted"] == 0


def test_hand_back_with_bytes_in_both_queues_keeps_their_order(lab, accel):
    """A reader that falls behind: when the stream is handed back, what was redirected still
    waits in its queue while the rest arrives over TCP. The end drains, then leaves, in order."""
    ns = lab.add_netns("pod")
    sink = peers.server(lab, "sink", 7000, ns, True, "--delay", "2")
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes", "100000",
                       "--chunk", "100", hold=True)  # what is not redirected fits in TCP buffers
    local = peers.report(cli)["local"]
    peers.proceed(cli)
    done = peers.report(cli)
    theirs = ends(accel)[("127.0.0.1:7000", local)]
    # 64 messages redirected into the sink's queue, unread: it may not leave the sockhash yet.
    assert (theirs.state, theirs.in_sockhash) == ("draining", True)
    out = subprocess.run([sys.executable, "-m", "mdatui.cli.main", "query", "--json",
                          "--connections", "--pin-dir", accel.pin_dir],
                         capture_output=True, text=True, timeout=30, check=True)
    shown = json.loads(out.stdout)
    assert shown["service"]["running"]
    assert 0 < shown["service"]["cpu_share"] <= 1  # its start alone took some CPU
    assert {c["local"]: c["state"] for c in shown["connections"]}["127.0.0.1:7000"] == "draining"
    wait_drained(accel, 2)  # the sink reads from 2 s on; the connection stays open meanwhile
    found = ends(accel)
    assert {(c.state, c.in_sockhash) for c in found.values()} == {("normal", False)}
    peers.proceed(cli)
    assert peers.report(sink, timeout=30)["sha256"] == done["sha256_sent"]


def wait_drained(inst, n: int, seconds: float = 10) -> None:
    """Until n ends have left the sockhash after draining (mdatui serve, started by enable)."""
    deadline = time.monotonic() + seconds
    while inst.stats()["drained"] < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inst.stats()["drained"] == n



def echo_through(lab, accel, ns: str, to: str, nbytes: int) -> tuple[Connection, Connection]:
    """Both ends of one echoed transfer from ns to `to`, read while the client holds it open,
    after its bytes came back intact."""
    cli = peers.client(lab, ns, "send", "--to", to, "--bytes", str(nbytes), "--echo", hold=True)
    local = peers.report(cli)["local"]
    peers.proceed(cli)
    done = peers.report(cli, timeout=120)
    assert done["received"] == nbytes and done["sha256_received"] == done["sha256_sent"]
    found = ends(accel)
    mine = found[(local, to)]
    theirs = found[(mine.peer.local, mine.peer.remote)]
    peers.proceed(cli)
    return mine, theirs


def test_ipv6_loopback_is_accelerated(lab, accel):
    ns = lab.add_netns("pod")
    peers.server(lab, "echo", 7000, ns, True, "--host", "::1")
    before = lo_packets(ns)
    mine, theirs = echo_through(lab, accel, ns, "[::1]:7000", 20_000_000)
    assert mine.state == theirs.state == "accelerated"
    assert mine.peer == theirs.end and theirs.peer == mine.end
    assert mine.end.netns and mine.end.netns == theirs.end.netns  # loopback: keyed by netns
    assert mine.bytes == theirs.bytes == 20_000_000
    assert lo_packets(ns) - before < 200  # the handshake and FINs, not 20 MB of segments


def test_an_ipv4_client_of_a_dual_stack_server_is_accelerated(lab, accel):
    """The server's socket is IPv6 and sees the client as ::ffff:127.0.0.1; the client's is
    IPv4. Both keys hold the IPv4-mapped form, so the ends pair."""
    ns = lab.add_netns("pod")
    peers.server(lab, "echo", 7000, ns, True, "--host", "::")
    mine, theirs = echo_through(lab, accel, ns, "127.0.0.1:7000", 5_000_000)
    assert mine.state == theirs.state == "accelerated"
    assert theirs.end.local == "127.0.0.1:7000" and mine.bytes == theirs.bytes == 5_000_000


def test_ipv6_pod_to_pod_over_a_veth_is_accelerated(lab, accel):
    a, b = lab.add_netns("a"), lab.add_netns("b")
    lab.link(a, "2001:2::1/64", b, "2001:2::2/64")
    peers.server(lab, "echo", 7000, b, True, "--host", "::")
    mine, theirs = echo_through(lab, accel, a, "[2001:2::2]:7000", 8_000_000)
    assert mine.state == theirs.state == "accelerated"
    assert mine.end.local.startswith("[2001:2::1]:") and not mine.end.netns
    assert mine.bytes == theirs.bytes == 8_000_000



def test_a_reader_while_enable_runs_finds_nothing_or_the_whole_accelerator(lab, pin_dir):
    """The console polls while its offer to enable runs: each snapshot it reads is disabled, or
    names the cgroup and carries the rules (one once had neither, and the console took it)."""
    seen, stop = [], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            snap = metrics.read_pinned(pin_dir)
            seen.append((snap.enabled, snap.cgroup, snap.rules_active))

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        ruleset = rules.to_ruleset([rules.parse_rule("chain --port 15006 -j RETURN")])
        lifecycle.enable(cgroup=lab.cgroup, pin_dir=pin_dir, ruleset=ruleset, serve=False)
        time.sleep(0.2)
    finally:
        stop.set()
        watcher.join()
    assert seen[0] == (False, "", 0) and seen[-1] == (True, lab.cgroup, 1)
    assert set(seen) == {seen[0], seen[-1]}


def test_a_reader_while_disable_runs_finds_the_whole_accelerator_or_nothing(lab, pin_dir):
    """The same, the other way: while disable unpins, each read finds all of it or nothing."""
    ruleset = rules.to_ruleset([rules.parse_rule("chain --port 15006 -j RETURN")])
    lifecycle.enable(cgroup=lab.cgroup, pin_dir=pin_dir, ruleset=ruleset, serve=False)
    seen, failed, stop = [], [], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                snap = metrics.read_pinned(pin_dir)
            except Exception as e:  # what a console would show as a problem
                failed.append(repr(e))
            else:
                seen.append((snap.enabled, snap.cgroup, snap.rules_active))

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        time.sleep(0.2)
        lifecycle.disable(pin_dir)
        time.sleep(0.2)
    finally:
        stop.set()
        watcher.join()
    assert failed == []
    assert seen[0] == (True, lab.cgroup, 1) and seen[-1] == (False, "", 0)
    assert set(seen) == {seen[0], seen[-1]}
