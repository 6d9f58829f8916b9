"""What bench.datapath measures (the cases and their targets, from issue #11 item 3) and how a
run's numbers become its table: medians, accel/plain ratios, PASS/FAIL, and the paths the
accelerated lab's connections took."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

KIB = 1024


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool
    target: float | None = None  # on accel/plain: >= when higher is better, else <=
    shown: bool = True           # in the table (every metric is in --json)


@dataclass(frozen=True)
class Case:
    topology: str   # same-pod, cross-pod, peer-outside
    tool: str       # sockperf-tp, sockperf-pp, iperf3, mesh, mesh-close
    size: int = 0
    nodelay: bool = False
    metrics: tuple[Metric, ...] = field(default=(), compare=False)
    per_conn: int = 0  # mesh-close: requests per connection

    @property
    def name(self) -> str:
        """What --only matches, e.g. cross-pod/sockperf-tp/1K/nodelay, same-pod/mesh."""
        parts = [self.topology, self.tool]
        if self.size:
            parts.append(_size(self.size))
        if self.tool == "sockperf-tp":
            parts.append("nodelay" if self.nodelay else "nagle")
        if self.per_conn > 1:
            parts.append(f"{self.per_conn}req")
        return "/".join(parts)


def _size(n: int) -> str:
    return f"{n // KIB}K" if n >= KIB and n % KIB == 0 else f"{n}B"


def _tp(goal: float) -> tuple[Metric, ...]:
    return (Metric("msg rate", "msg/s", True, goal), Metric("bandwidth", "MBps", True, shown=False))


def _pp(goal: float) -> tuple[Metric, ...]:
    return (Metric("rtt p50", "usec", False, goal), Metric("rtt p99", "usec", False),
            Metric("rtt avg", "usec", False, shown=False))


def all_cases() -> list[Case]:
    cases = []
    for topo in ("same-pod", "cross-pod"):
        for size in (64, KIB, 16 * KIB):
            for nodelay in (False, True):
                cases.append(Case(topo, "sockperf-tp", size, nodelay, _tp(1.0)))
        for size in (128, 128 * KIB):
            goal = 4.0 if (topo, size) == ("cross-pod", 128 * KIB) else 1.0
            cases.append(Case(topo, "iperf3", size, metrics=(
                Metric("Gbit/s", "Gbit/s", True, goal), Metric("retransmits", "", False, shown=False))))
        for size in (64, 16 * KIB):
            cases.append(Case(topo, "sockperf-pp", size, metrics=_pp(0.8)))
        for tool, goal, per_conn in (("mesh", 1.8, 0), ("mesh-close", 1.0, 1),
                                     ("mesh-close", 1.0, 4)):
            cases.append(Case(topo, tool, per_conn=per_conn, metrics=(
                Metric("req/s", "req/s", True, goal), Metric("lat p50", "usec", False),
                Metric("lat p90", "usec", False), Metric("errors", "", False, shown=False))))
    # Not in issue #11: a client whose server is outside the cgroup never pairs; what does that
    # socket pay? (goal: at most 2 %)
    cases.append(Case("peer-outside", "sockperf-tp", 64, False, _tp(0.98)))
    cases.append(Case("peer-outside", "sockperf-pp", 64, metrics=_pp(1.02)))
    return cases


QUICK = re.compile(r"^(same|cross)-pod/(sockperf-tp/64B|iperf3/128B|sockperf-pp/64B|mesh$)")


def select(only: str | None, quick: bool) -> list[Case]:
    """--only: a regular expression searched in each case's name; --quick without --only: a
    short subset (64 B streams with and without Nagle, iperf3 128 B, ping-pong 64 B, the mesh)."""
    cases = all_cases()
    if only:
        pattern = re.compile(only)
        return [c for c in cases if pattern.search(c.name)]
    if quick:
        return [c for c in cases if QUICK.search(c.name)]
    return cases


# ---------------------------------------------------------------- paths

# Counters of mda_stats (inst.stats()) that say where a connection went. accelerated, refused,
# unpaired_removed and short (left to the stack: short-lived) count connections (one each, at
# its start); demoted (a stream handed back) and blocking (mdatui serve took a blocking
# full-duplex reader's connection off) count a connection that left the fast path,
# redirect_failed, tainted and unread an end that did. Counters the BPF side adds later show up
# in --json and, when they moved, in the table's paths column.
STARTS = ("accelerated", "refused", "unpaired_removed", "short")
LEAVES = ("demoted", "blocking", "redirect_failed", "tainted", "unread")
QUIET = ("closed_msgs", "closed_bytes", "dump_lost")


def paths(deltas: list[dict[str, int]]) -> dict:
    """The accelerated runs' counter deltas, summed, as shares of the connections seen."""
    total: dict[str, int] = {}
    for d in deltas:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    conns = sum(total.get(k, 0) for k in STARTS)
    acc = total.get("accelerated", 0)
    left = min(acc, sum(total.get(k, 0) for k in LEAVES))
    counts = {"fast path to the end": acc - left, "left the fast path": left,
              "refused": total.get("refused", 0), "unpaired": total.get("unpaired_removed", 0),
              "short-lived": total.get("short", 0)}
    shares = {k: (v / conns if conns else 0.0) for k, v in counts.items()}
    others = {k: v for k, v in total.items() if v and k not in STARTS + LEAVES + QUIET}
    return {"connections": conns, "shares": shares, "counters": total, "others": others}


def paths_text(p: dict) -> str:
    if not p["connections"]:
        return "no connection counted"
    short = {"fast path to the end": "fast", "left the fast path": "left", "refused": "refused",
             "unpaired": "unpaired", "short-lived": "short"}
    parts = [f"{short[k]} {v:.0%}" for k, v in p["shares"].items() if v]
    leaves = [f"{k} {p['counters'][k]}" for k in LEAVES if p["counters"].get(k)]
    if leaves:
        parts.append("(" + ", ".join(leaves) + ")")
    parts += [f"{k} {v}" for k, v in p["others"].items()]
    return f"{p['connections']} conn: " + " ".join(parts)


# ---------------------------------------------------------------- rows

def rows(cells: list[dict]) -> list[dict]:
    """One row per case and metric: medians over the runs that gave numbers, their ratio, the
    spread of single pairs' ratios, the target and PASS/FAIL."""
    out = []
    for cell in cells:
        case: Case = cell["case"]
        plain_ok = [r for r in cell["plain"] if "error" not in r]
        accel_ok = [r for r in cell["accel"] if "error" not in r]
        failed = (len(cell["plain"]) - len(plain_ok)) + (len(cell["accel"]) - len(accel_ok))
        p_info = paths(cell["deltas"])
        for m in case.metrics:
            p = [r[m.name] for r in plain_ok]
            a = [r[m.name] for r in accel_ok]
            pm = statistics.median(p) if p else None
            am = statistics.median(a) if a else None
            ratio = am / pm if pm and am is not None else None
            per_pair = [y / x for x, y in zip([r.get(m.name) for r in cell["plain"]],
                                             [r.get(m.name) for r in cell["accel"]])
                        if x and y is not None]
            verdict = ""
            if m.target is not None:
                if ratio is None:
                    verdict = "FAIL"
                elif m.higher_is_better:
                    verdict = "PASS" if ratio >= m.target else "FAIL"
                else:
                    verdict = "PASS" if ratio <= m.target else "FAIL"
            notes = []
            if failed:
                notes.append(f"{failed} run(s) failed")
                if verdict == "PASS":
                    verdict = "FAIL"
            errors = sum(r.get("errors", 0) for r in accel_ok)
            if errors and m.name == "req/s":
                notes.append(f"accel errors {errors:.0f}")
            out.append({
                "case": case.name, "topology": case.topology, "tool": case.tool,
                "size": case.size, "nodelay": case.nodelay, "per_conn": case.per_conn,
                "metric": m.name, "unit": m.unit,
                "shown": m.shown, "higher_is_better": m.higher_is_better,
                "plain": p, "accel": a, "plain_median": pm, "accel_median": am, "ratio": ratio,
                "pair_ratio_min": min(per_pair) if per_pair else None,
                "pair_ratio_max": max(per_pair) if per_pair else None,
                "target": (f"{'>=' if m.higher_is_better else '<='} {m.target:g}"
                           if m.target is not None else None),
                "verdict": verdict, "notes": notes, "paths": p_info,
                "states_mid_run": cell["states"],
                "errors": [r["error"] for r in cell["plain"] + cell["accel"] if "error" in r],
            })
    return out


TOOL_LABEL = {"sockperf-tp": "sockperf throughput", "sockperf-pp": "sockperf ping-pong",
              "iperf3": "iperf3", "mesh": "wrk>haproxy>nginx",
              "mesh-close": "wrk>haproxy>nginx, Connection: close"}  # per_conn 1


def _what(r: dict) -> str:
    label = TOOL_LABEL[r["tool"]]
    if r["tool"] == "iperf3":
        label += f" -l {_size(r['size'])}"
    elif r["size"]:
        label += f" {_size(r['size'])}"
    if r["tool"] == "sockperf-tp":
        label += " TCP_NODELAY" if r["nodelay"] else " Nagle"
    if r["per_conn"] > 1:
        label += f", {r['per_conn']} requests a connection"
    return label


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.3g}"


def table(result: dict) -> str:
    head = ("topology", "what", "metric", "plain", "accel", "accel/plain", "pair ratios", "target",
            "verdict", "paths (accel runs)")
    lines, last_case = [], None
    for r in result["rows"]:
        if not r["shown"]:
            continue
        first = r["case"] != last_case
        last_case = r["case"]
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        spread = (f"{r['pair_ratio_min']:.2f}-{r['pair_ratio_max']:.2f}"
                  if r["pair_ratio_min"] is not None else "-")
        verdict = " ".join([r["verdict"], *r["notes"]]).strip() or "-"
        lines.append((r["topology"] if first else "", _what(r) if first else "",
                      r["metric"] if r["unit"] in ("", r["metric"]) else f"{r['metric']} ({r['unit']})",
                      _num(r["plain_median"]),
                      _num(r["accel_median"]), ratio, spread, r["target"] or "-", verdict,
                      paths_text(r["paths"]) if first else ""))
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    env = result["environment"]
    passed = [r for r in result["rows"] if r["verdict"] == "PASS"]
    judged = [r for r in result["rows"] if r["verdict"]]
    text = [
        f"mdatui data path: medians of {result['pairs']} alternating plain/accelerated pairs, "
        f"{result['seconds']} s per run; {env['cpus']} CPU{'s' if env['cpus'] > 1 else ''}, "
        f"took {result['elapsed_s']:.0f} s",
        f"sockperf {env['sockperf']}, iperf3 {env['iperf3']}, wrk {env['wrk']}; load average "
        f"at start {env['load_start']}, at end {env['load_end']}; --nodelay-streams "
        f"{env['nodelay_streams']}",
        "accel/plain: throughput and req/s above 1 = accelerator faster; latency below 1 = "
        "accelerator faster. pairs: lowest-highest ratio of single pairs (the noise).",
        "paths: connections the accelerated runs made (mda_stats deltas): fast = on the fast "
        "path to the end, left = taken off it (demoted, blocking, redirect failed, tainted, a reader "
        "fell behind (unread); the last three count ends), refused by a rule, unpaired.",
        "",
        fmt.format(*head),
        fmt.format(*("-" * w for w in widths)),
    ]
    text += [fmt.format(*line) for line in lines]
    text.append(f"\n{len(passed)}/{len(judged)} targets met.")
    for r in result["rows"]:
        if r["errors"] and r["metric"] == result_first_metric(result, r["case"]):
            text.append(f"{r['case']}: " + " | ".join(e.splitlines()[0] for e in r["errors"]))
    return "\n".join(text)


def result_first_metric(result: dict, case: str) -> str:
    return next(r["metric"] for r in result["rows"] if r["case"] == case)
