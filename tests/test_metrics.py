"""`mdatui metrics`: the exposition text (names, types, values), the endpoint on a real
accelerator, and a real Prometheus server scraping it while lab traffic runs."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import replace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from mdatui.core import lifecycle, metrics, rules
from mdatui.core.ends import ACCELERATED
from mdatui.core.kernel.abi import Stat
from mdatui.core.snapshot import disabled
from mdatui.core.verdicts import ConnectionPairs

from . import peers
from .ui import fake

IN_CI = os.environ.get("CI") == "true"


def exposition(collector: metrics.MdatuiCollector) -> str:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return generate_latest(reg).decode()


def parsed(text: str) -> dict[str, tuple[str, dict[tuple, float]]]:
    """family name -> (type, {sorted label items: value}) of every sample."""
    out = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = (fam.type, {tuple(sorted(s.labels.items())): s.value for s in fam.samples})
    return out


def sample(text: str, name: str, **labels) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(f"{name}{labels} not in the exposition")


def fake_collector(monkeypatch, snaps: list) -> metrics.MdatuiCollector:
    """A collector whose scrapes read snaps one after the other."""
    it = iter(snaps)
    monkeypatch.setattr(metrics, "read_pinned", lambda pin_dir: next(it))
    return metrics.MdatuiCollector("/sys/fs/bpf/mdatui")


RULESET = rules.to_ruleset(rules.parse(fake.RULES_TEXT).rules)


# ---------------------------------------------------------------- the exposition, no kernel

def test_every_kernel_counter_is_a_metric_or_part_of_a_total():
    covered = set(metrics.STAT_COUNTERS) | set(metrics.TOTALS)
    assert {stat.name.lower() for stat in Stat} <= covered
    assert not set(metrics.STAT_COUNTERS) & set(metrics.TOTALS)


def test_exposition_names_types_and_values_that_moved(monkeypatch):
    first, later = fake.snapshot(0, RULESET), fake.snapshot(5, RULESET)
    later.stats = {**later.stats, "refused": later.stats["refused"] + 2, "closed_passed": 40}
    later.nodelay_streams = "fast"
    c = fake_collector(monkeypatch, [first, later])
    one, two = exposition(c), exposition(c)
    fams = parsed(two)

    for name, (kind, _samples) in fams.items():
        assert name.startswith("mdatui_"), name
        assert kind in ("counter", "gauge", "info"), name
    counters = {n for n, (k, _) in fams.items() if k == "counter"}
    # The client's exposition writes counters as NAME_total.
    assert "# TYPE mdatui_redirected_bytes_total counter" in two
    assert counters >= {"mdatui_redirected_messages", "mdatui_redirected_bytes", "mdatui_stack_messages",
                        "mdatui_map_full", "mdatui_refused_by_rule", "mdatui_redirect_failed",
                        "mdatui_handed_back", "mdatui_drained", "mdatui_blocking",
                        "mdatui_dump_records_lost", "mdatui_event_records_lost",
                        "mdatui_accelerated_connections"}
    for stat, (name, labels, _) in metrics.STAT_COUNTERS.items():
        assert tuple(sorted(labels.items())) in fams[name][1], stat
    gauges = {n for n, (k, _) in fams.items() if k == "gauge"}
    assert gauges >= {"mdatui_enabled", "mdatui_accelerated_pairs", "mdatui_ends", "mdatui_pairs",
                      "mdatui_map_entries", "mdatui_map_capacity", "mdatui_rule_connections",
                      "mdatui_read_seconds"}

    # The numbers are query --json's.
    totals = later.to_json()["totals"]
    assert sample(two, "mdatui_redirected_bytes_total") == totals["redirected_bytes"]
    assert sample(two, "mdatui_redirected_messages_total") == totals["redirected_msgs"]
    assert sample(two, "mdatui_accelerated_pairs") == totals["pairs"]
    assert sample(two, "mdatui_map_capacity", map="sock_proxy_map") == 262144
    assert sample(two, "mdatui_map_entries", map="sock_proxy_map") == len(later.table)
    assert sample(two, "mdatui_stack_messages_total") == 40 + sum(c.passed for c in later.connections)
    assert sample(two, "mdatui_ends", state="accelerated") == sum(
        c.state == "accelerated" for c in later.connections)
    assert sample(two, "mdatui_drain_service_running") == 1
    assert (sample(one, "mdatui_nodelay_streams_fast"), sample(two, "mdatui_nodelay_streams_fast")) == (0, 1)
    # What moved between the scrapes.
    for name in ("mdatui_redirected_bytes_total", "mdatui_redirected_messages_total",
                 "mdatui_stack_messages_total", "mdatui_refused_by_rule_total"):
        assert sample(two, name) > sample(one, name), name
    # Labels stay bounded: maps, states, health, rules; no addresses.
    assert "127.0.0.1" not in two and "198.18.0.1:" not in two


def test_matches_per_rule_are_the_column_judges_verdicts(monkeypatch):
    snap = fake.snapshot(0, RULESET)
    text = exposition(fake_collector(monkeypatch, [snap]))
    got = {s.labels["rule"]: (s.labels["target"], s.value)
           for fam in text_string_to_metric_families(text) if fam.name == "mdatui_rule_connections"
           for s in fam.samples}
    live = snap.active_rules
    assert set(got) == {str(i + 1) for i in range(len(live))} | {"none"}
    assert [got[str(i + 1)][0] for i in range(len(live))] == [r.target.value for r in live]
    # Every accelerated pair is counted once, under the rule that accepted it.
    assert sum(v for _, v in got.values()) == len(ConnectionPairs.of(snap.table, ACCELERATED))
    assert got["1"][1] >= 1  # fake's 198.18/15 ACCEPT rule accepts its cross-pod pairs


def test_a_counter_never_goes_back_within_one_enable_and_starts_anew_with_the_next(monkeypatch):
    high, low = fake.snapshot(3, RULESET), fake.snapshot(0, RULESET)
    again = replace(fake.snapshot(0, RULESET), enabled_at=fake.ENABLED_AT + 60)
    c = fake_collector(monkeypatch, [high, low, again])
    texts = [exposition(c) for _ in range(3)]
    values = [sample(t, "mdatui_redirected_bytes_total") for t in texts]
    assert values[1] == values[0]  # a read that counted less is not a reset
    assert values[2] == again.redirected_bytes < values[0]  # another accelerator: from its own


def test_nothing_enabled_is_one_gauge(monkeypatch):
    text = exposition(fake_collector(monkeypatch, [disabled("/sys/fs/bpf/none")]))
    assert parsed(text)["mdatui_enabled"] == ("gauge", {(("pin_dir", "/sys/fs/bpf/none"),): 0.0})
    assert "mdatui_redirected_bytes_total" not in text


def test_the_grafana_dashboard_asks_for_metrics_the_exporter_has(monkeypatch):
    from pathlib import Path
    dashboard = json.loads((Path(__file__).parent.parent / "deploy/grafana-dashboard.json").read_text())
    text = exposition(fake_collector(monkeypatch, [fake.snapshot(0, RULESET)]))
    exported = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    asked = {name for p in panels for t in p["targets"] for name in re.findall(r"\bmdatui_\w+", t["expr"])}
    assert asked and asked <= exported, asked - exported
    assert all(p["targets"] for p in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


@pytest.mark.parametrize("text, want", [
    ("127.0.0.1:9477", ("127.0.0.1", 9477)), (":9477", ("0.0.0.0", 9477)),
    ("[::1]:9477", ("::1", 9477)), ("localhost:0", ("localhost", 0)),
])
def test_listen_address(text, want):
    assert metrics.parse_listen(text) == want


@pytest.mark.parametrize("text", ["9477", "host:", "host:http", "127.0.0.1:70000"])
def test_listen_address_refused(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        metrics.parse_listen(text)


@pytest.mark.skipif(os.geteuid() != 0, reason="metrics needs root")
def test_an_address_in_use_is_one_line_and_exit_1(capsys):
    from mdatui.cli.main import main
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["metrics", "--listen", f"127.0.0.1:{port}", "--pin-dir", "/nonexistent"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mdatui: cannot listen on 127.0.0.1:{port}: ") and err.count("\n") == 1


# ---------------------------------------------------------------- on the real kernel

def _line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise RuntimeError(f"{proc.args}: no line within {timeout}s: {proc.stderr.read()[-2000:]}")
    return line


def _stop(proc: subprocess.Popen) -> None:
    """End a process this test started, by its pid."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def _start_mdatui(*args: str) -> tuple[subprocess.Popen, str]:
    """`mdatui ARGS` in the background (outside the lab's cgroup), and the URL it says it serves."""
    proc = subprocess.Popen([sys.executable, "-m", "mdatui.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = _line(proc, 30)
    except BaseException:
        _stop(proc)
        raise
    assert line.startswith("mdatui metrics: http://"), line
    return proc, line.split()[2]


def _get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


@pytest.mark.kernel
def test_endpoint_counts_the_bytes_a_lab_connection_redirects(lab, accel, pin_dir):
    ns = lab.add_netns("pod")
    peers.server(lab, "echo", 7000, ns)
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes", "2000000", "--echo",
                       hold=True)
    peers.report(cli)
    exporter, url = _start_mdatui("metrics", "--listen", "127.0.0.1:0", "--pin-dir", pin_dir)
    try:
        before = _get(url)
        assert sample(before, "mdatui_enabled", pin_dir=pin_dir) == 1
        assert sample(before, "mdatui_ends", state="accelerated") == 2
        assert sample(before, "mdatui_accelerated_pairs") == 1
        assert sample(before, "mdatui_rule_connections", rule="none") == 1  # no rules: all
        peers.proceed(cli)
        done = peers.report(cli, timeout=60)
        assert done["received"] == 2_000_000
        after = _get(url)
    finally:
        _stop(exporter)
    moved = sample(after, "mdatui_redirected_bytes_total") - sample(before, "mdatui_redirected_bytes_total")
    assert moved == 4_000_000  # both directions, every byte
    assert sample(after, "mdatui_redirected_messages_total") > sample(before, "mdatui_redirected_messages_total")
    assert sample(after, "mdatui_accelerated_connections_total") >= 1
    assert sample(after, "mdatui_map_entries", map="sock_proxy_map") == 2
    assert exporter.returncode == 0  # SIGTERM ends it cleanly


@pytest.mark.kernel
def test_messages_via_the_stack_stay_counted_when_their_end_leaves(lab, accel, pin_dir):
    """A connecting end whose server is outside the cgroup sends its first flight through the
    stack and then leaves the maps: the kernel keeps its count (closed_passed)."""
    ns = lab.add_netns("pod")
    sink = peers.server(lab, "sink", 7002, ns, False)
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7002", "--bytes", "1000000", hold=True)
    peers.report(cli)
    peers.proceed(cli)
    peers.report(cli)
    c = metrics.MdatuiCollector(pin_dir)
    text = exposition(c)
    assert sample(text, "mdatui_unpaired_removed_total") == 1
    assert sample(text, "mdatui_map_entries", map="sock_proxy_map") == 0
    assert sample(text, "mdatui_stack_messages_total") >= 1
    assert sample(text, "mdatui_redirected_bytes_total") == 0
    peers.proceed(cli)
    peers.report(sink)


@pytest.mark.kernel
def test_serve_runs_the_endpoint_beside_the_drain_service(lab, pin_dir):
    lifecycle.enable(cgroup=lab.cgroup, pin_dir=pin_dir, serve=False).instance.close()
    service, url = _start_mdatui("serve", "--pin-dir", pin_dir, "--metrics", "127.0.0.1:0")
    try:
        deadline = time.monotonic() + 10
        while sample(page := _get(url), "mdatui_drain_service_running") != 1:
            assert time.monotonic() < deadline, "serve never showed as running"
            time.sleep(0.1)
        # It exports itself here: its start (Python, numpy, the maps) took CPU and memory.
        assert sample(page, "mdatui_drain_service_cpu_seconds_total") > 0.05
        assert sample(page, "mdatui_drain_service_resident_bytes") > 10 << 20
    finally:
        _stop(service)
    assert service.returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        reason = "Debian's prometheus package is not installed (run scripts/setup)"
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    return path


def _query(base: str, promql: str) -> list:
    out = json.loads(_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
    assert out["status"] == "success", out
    return out["data"]["result"]


@pytest.mark.kernel
def test_prometheus_scrapes_a_redirected_bytes_rate_while_traffic_runs(lab, accel, pin_dir, tmp_path):
    binary = _prometheus_binary()
    ns = lab.add_netns("pod")
    peers.server(lab, "echo", 7000, ns)
    exporter, url = _start_mdatui("metrics", "--listen", "127.0.0.1:0", "--pin-dir", pin_dir)
    target = urllib.parse.urlsplit(url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: mdatui\n"
        f"    static_configs:\n      - targets: ['{target}']\n")
    base = f"http://127.0.0.1:{_free_port()}"
    prom = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address={urllib.parse.urlsplit(base).netloc}", "--log.level=warn"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    chat = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if "Ready" in _get(f"{base}/-/ready", timeout=2):
                    break
            except OSError:
                pass
            assert prom.poll() is None, f"prometheus ended: {prom.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "prometheus was not ready within 60 s"
            time.sleep(0.2)
        # Requests and replies of 4 KiB, 50 a second, through an accelerated loopback pair.
        chat = peers.client(lab, ns, "chat", "--to", "127.0.0.1:7000", "--seconds", "40",
                            "--rate", "50", "--size", "4096")
        rate = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            time.sleep(1)
            rate = _query(base, "rate(mdatui_redirected_bytes_total[5s])")
            if rate and float(rate[0]["value"][1]) > 0:
                break
        assert rate, f"no mdatui_redirected_bytes_total in Prometheus: {_query(base, 'up')}"
        bytes_per_s = float(rate[0]["value"][1])
        # 50 requests a second, each 4 KiB out and back: some 400 KB/s when it runs at its pace.
        assert bytes_per_s > 0
        up = _query(base, 'up{job="mdatui"}')
        assert [float(r["value"][1]) for r in up] == [1.0]
        pairs = _query(base, "mdatui_accelerated_pairs")
        assert float(pairs[0]["value"][1]) >= 1
        print(f"Prometheus: rate(mdatui_redirected_bytes_total[5s]) = {bytes_per_s:.0f} B/s")
    finally:
        if chat is not None:
            _stop(chat)
        _stop(prom)
        _stop(exporter)
