"""Prometheus metrics of a pinned accelerator: `mdatui metrics` and `mdatui serve --metrics`.

A custom collector reads the pinned maps at each scrape, the way `mdatui query --json` does
(reader.read: the same Snapshot, the same totals and pair counts), and opens the pins anew each
time: an exporter that held them would keep a disabled accelerator's sockhash alive, and one
enabled again later is found. Labels are bounded: map names, end states, pair health, the rules
of the live set (at most abi.MAX_RULES); never a connection.

A scrape reads what `query` reads: at 200,000 ends the kernel's walks of sock_proxy_map and of
the sockhash take some 0.5 s, and the metrics worked out of the table 54 ms of CPU more (198,000
synthetic ends, bench.console's); at a few thousand ends it is milliseconds. Scrape every 10-15 s
at that size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from . import reader, rules
from .ends import ACCELERATED, NORMAL, PENDING
from .kernel.instance import Instance, NotEnabled
from .snapshot import Snapshot, disabled
from .verdicts import ConnectionPairs

# Each kernel counter (abi.Stat, by the name Instance.stats gives it) as a Prometheus counter:
# name (without _total), labels, help. CLOSED_* are not on their own: they are the part of the
# redirected and stack totals that closed ends took with them (see totals()).
STAT_COUNTERS: dict[str, tuple[str, dict[str, str], str]] = {
    "sockhash_full": ("mdatui_map_full", {"map": "sock_ops_map"},
                      "Ends left on the normal path because a map was full"),
    "proxy_full": ("mdatui_map_full", {"map": "sock_proxy_map"}, ""),
    "helper_full": ("mdatui_map_full", {"map": "sock_helper_map"}, ""),
    "accelerated": ("mdatui_accelerated_connections", {},
                    "Connections paired onto the fast path since enable"),
    "refused": ("mdatui_refused_by_rule", {}, "Connections the chain rules kept off the fast path"),
    "redirect_failed": ("mdatui_redirect_failed", {},
                        "Ends whose redirect failed (peer gone unannounced); they went on over the stack"),
    "demoted": ("mdatui_handed_back", {}, "Ends whose stream was handed back to the stack, which moves it faster"),
    "tainted": ("mdatui_sent_before_paired", {}, "Ends that sent before they were paired and so never redirect"),
    "unpaired_removed": ("mdatui_unpaired_removed", {},
                         "Connecting ends whose peer never paired, taken out of the sockhash"),
    "drained": ("mdatui_drained", {},
                "Ends that stopped redirecting and left the sockhash once their reader had read all"),
    "listed": ("mdatui_stopped_redirecting", {},
               "Ends that stopped redirecting, or were asked to: each drains, then leaves the sockhash"),
    "blocking": ("mdatui_blocking", {}, "Connections kept off the fast path: blocking full-duplex readers"),
    "dump_lost": ("mdatui_dump_records_lost", {},
                  "Dump records (copies of redirected messages) the kernel could not hand to the reader"),
    "short": ("mdatui_short_lived_kept_off", {},
              "New connections left to the stack: their destination's connections carry few messages"),
    "unread": ("mdatui_reader_fell_behind", {},
               "Ends whose peer read too slowly or not at all; they went on over the stack"),
    "events_lost": ("mdatui_event_records_lost", {},
                    "Event records the kernel could not hand to a reader (its ring was full)"),
}
TOTALS = ("closed_msgs", "closed_bytes", "closed_passed")

END_STATES = ("accelerated", "pending", "draining", "normal")


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT ([v6]:PORT; an empty host is every IPv4 address) as (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"'{text}' is not HOST:PORT (e.g. 127.0.0.1:9477 or [::]:9477; port 0: "
                         "any free one)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


def read_pinned(pin_dir: str) -> Snapshot:
    """What `mdatui query` reads: the accelerator pinned at pin_dir, or a disabled snapshot."""
    try:
        inst = Instance(pin_dir)
    except NotEnabled:
        return disabled(pin_dir)
    with inst:
        return reader.read(inst)


def totals(snap: Snapshot) -> dict[str, int]:
    """Messages and bytes redirected, and messages sent over the stack, since enable: the
    ends open now and what closed ones took with them."""
    passed = int(snap.table.counters["passed"].sum())
    return {"redirected_messages": snap.redirected_msgs, "redirected_bytes": snap.redirected_bytes,
            "stack_messages": snap.stats.get("closed_passed", 0) + passed}


def end_states(snap: Snapshot) -> dict[str, int]:
    """Ends in sock_proxy_map by the state `query --connections` gives them."""
    table = snap.table
    counts = np.bincount(table.state, minlength=3)
    draining = int(np.count_nonzero(table.draining))
    return {"accelerated": int(counts[ACCELERATED]), "pending": int(counts[PENDING]),
            "draining": draining, "normal": int(counts[NORMAL]) - draining}


def rule_connections(snap: Snapshot) -> list[tuple[str, str, str, int]]:
    """(rule number as `rules list` gives it, target, rule text, open accelerated connections
    whose verdict it decided), judged over the table by core.verdicts; rule "none" counts those
    no rule decided (accelerated because the set has no ACCEPT rule)."""
    live = snap.active_rules
    pairs = ConnectionPairs.of(snap.table, ACCELERATED)
    if len(pairs):
        _, decided = pairs.judge(live)
        counts = np.bincount(decided + 1, minlength=len(live) + 1).tolist()
    else:
        counts = [0] * (len(live) + 1)
    out = [(str(i + 1), r.target.value, rules.format_rule(r), counts[i + 1]) for i, r in enumerate(live)]
    out.append(("none", "", "", counts[0]))
    return out


class MdatuiCollector(Collector):
    """Reads the accelerator at pin_dir at each scrape. Scrapes that come together are served
    one after the other (the maps are read once for each)."""

    def __init__(self, pin_dir: str):
        self.pin_dir = pin_dir
        self._lock = threading.Lock()
        # Highest value exported per counter for one enabled accelerator: an end that closes
        # between the read of the ends and that of the kernel counters is counted twice for one
        # read, and a counter that then went down would look like a reset to rate().
        self._instance: tuple | None = None
        self._high: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            began = time.monotonic()
            snap = read_pinned(self.pin_dir)
            metrics = list(self.metrics(snap))
            took = GaugeMetricFamily("mdatui_read_seconds", "Time this scrape took to read the maps")
            took.add_metric([], time.monotonic() - began)
            metrics.append(took)
        return iter(metrics)

    def _counter(self, name: str, value: float) -> float:
        value = max(value, self._high.get(name, 0))
        self._high[name] = value
        return value

    def metrics(self, snap: Snapshot) -> Iterator[Metric]:
        enabled = GaugeMetricFamily("mdatui_enabled", "1 when an accelerator is pinned at the pin dir",
                                    labels=["pin_dir"])
        enabled.add_metric([snap.pin_dir], 1 if snap.enabled else 0)
        yield enabled
        if not snap.enabled:
            return
        instance = (snap.enabled_at, snap.cgroup, tuple(sorted(snap.programs.items())))
        if instance != self._instance:
            self._instance, self._high = instance, {}

        info = InfoMetricFamily("mdatui", "The accelerator: its cgroup and rules file")
        info.add_metric([], {"cgroup": snap.cgroup, "config": snap.config})
        yield info
        g = GaugeMetricFamily("mdatui_enabled_time_seconds", "When it was enabled (unix time)")
        g.add_metric([], snap.enabled_at)
        yield g

        for name, value in totals(snap).items():
            unit_help = {"redirected_messages": "Messages redirected straight into the peer socket",
                         "redirected_bytes": "Bytes redirected straight into the peer socket",
                         "stack_messages": "Messages of accelerator-managed ends that went through the "
                                           "TCP/IP stack"}[name]
            c = CounterMetricFamily(f"mdatui_{name}", unit_help)
            c.add_metric([], self._counter(name, value))
            yield c

        families: dict[str, CounterMetricFamily] = {}
        for stat, (name, labels, text) in STAT_COUNTERS.items():
            if name not in families:
                families[name] = CounterMetricFamily(name, text, labels=list(labels))
            key = name + "".join(f",{k}={v}" for k, v in labels.items())
            families[name].add_metric(list(labels.values()),
                                      self._counter(key, snap.stats.get(stat, 0)))
        yield from families.values()

        g = GaugeMetricFamily("mdatui_accelerated_pairs", "Connections whose two ends redirect now")
        g.add_metric([], snap.pairs)
        yield g
        g = GaugeMetricFamily("mdatui_pairs", "Connections in sock_proxy_map by health (the console's "
                              "Pairs tab)", labels=["health"])
        for health, n in snap.pairing.counts().items():
            g.add_metric([health], n)
        yield g
        g = GaugeMetricFamily("mdatui_ends", "Ends in sock_proxy_map by state", labels=["state"])
        for state, n in end_states(snap).items():
            g.add_metric([state], n)
        yield g

        entries = GaugeMetricFamily("mdatui_map_entries", "Entries in each map", labels=["map"])
        capacity = GaugeMetricFamily("mdatui_map_capacity", "Entries each map can hold", labels=["map"])
        for name, m in snap.maps.items():
            entries.add_metric([name], m["entries"])
            capacity.add_metric([name], m["capacity"])
        yield entries
        yield capacity

        g = GaugeMetricFamily("mdatui_rules_active", "Rules in the live set")
        g.add_metric([], snap.rules_active)
        yield g
        g = GaugeMetricFamily("mdatui_rule_connections",
                              "Open accelerated connections whose verdict each live rule decided "
                              "(rule as numbered by `mdatui rules list`; none: no rule did)",
                              labels=["rule", "target", "chain"])
        for number, target, text, n in rule_connections(snap):
            g.add_metric([number, target, text], n)
        yield g

        g = GaugeMetricFamily("mdatui_dump_on", "1 while the dump copies redirected messages")
        g.add_metric([], 1 if snap.dump and snap.dump.on else 0)
        yield g
        g = GaugeMetricFamily("mdatui_nodelay_streams_fast",
                              "1 while TCP_NODELAY streams on two CPUs keep the fast path "
                              "(enable --nodelay-streams fast), 0 while they go back to the stack")
        g.add_metric([], 1 if snap.nodelay_streams == "fast" else 0)
        yield g
        g = GaugeMetricFamily("mdatui_drain_service_running", "1 while `mdatui serve` runs for the pin dir")
        g.add_metric([], 0 if snap.service is None else 1)
        yield g
        if snap.service_usage is not None:
            c = CounterMetricFamily("mdatui_drain_service_cpu_seconds",
                                    "CPU time `mdatui serve` has taken since it started (user and system)")
            c.add_metric([], snap.service_usage.cpu_s)
            yield c
            g = GaugeMetricFamily("mdatui_drain_service_resident_bytes", "Resident memory of `mdatui serve`")
            g.add_metric([], snap.service_usage.rss)
            yield g


def registry(pin_dir: str) -> CollectorRegistry:
    """A registry with the collector of pin_dir alone (none of the client's process metrics)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MdatuiCollector(pin_dir))
    return reg


def listen(listen_at: str, pin_dir: str):
    """Serve /metrics of pin_dir at HOST:PORT in a daemon thread; returns the HTTP server
    (server_address says where it listens; shutdown() stops it). ValueError when listen_at is
    not HOST:PORT, OSError when the address cannot be bound."""
    from prometheus_client import start_http_server
    host, port = parse_listen(listen_at)
    server, _thread = start_http_server(port, addr=host, registry=registry(pin_dir))
    return server

