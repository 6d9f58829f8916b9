"""bench.datapath without a kernel: the clients' output parsed, cases selected, rows judged."""

from __future__ import annotations

import json

import pytest

from bench import datapath, dp_cases, dp_tools

WRK = """Running 2s test @ http://127.0.0.1:9080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  412.51us   9.87ms   80.11%
  Latency Distribution
     50%  988.00us
     75%    1.30ms
     90%    1.62ms
     99%    2.50ms
  84234 requests in 2.00s, 60.33MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  42117.20
Transfer/sec:     30.16MB
"""


class FakeClient(dp_tools.Client):
    def __init__(self, out: str):  # no process: finish() is given its output
        self.out = out.encode()

    def finish(self) -> str:
        return self.out.decode()


def test_wrk_output():
    c = FakeClient(WRK)
    assert dp_tools.Wrk.result(c) == {"req/s": 42117.2, "lat p50": 988.0, "lat p90": 1620.0,
                                      "errors": 3.0}


def test_wrk_output_without_numbers_is_a_failed_run():
    with pytest.raises(dp_tools.RunFailed):
        dp_tools.Wrk.result(FakeClient("unable to connect to 127.0.0.1:9080 Connection refused\n"))


def test_sockperf_output():
    tp = FakeClient("sockperf: Summary: Message Rate is 294263 [msg/sec]\n"
                    "sockperf: Summary: BandWidth is 17.960 MBps (143.68 Mbps)\n")
    tp.mode = "tp"
    assert dp_tools.Sockperf.result(tp) == {"msg rate": 294263.0, "bandwidth": 17.96}
    pp = FakeClient("sockperf: ====> avg-rtt=22.840 (std-dev=10.1)\n"
                    "sockperf: ---> percentile 99.000 =   92.170\n"
                    "sockperf: ---> percentile 50.000 =   17.720\n")
    pp.mode = "pp"
    assert dp_tools.Sockperf.result(pp) == {"rtt avg": 22.84, "rtt p50": 17.72, "rtt p99": 92.17}


def test_case_names_select_and_quick():
    names = [c.name for c in dp_cases.all_cases()]
    assert len(names) == len(set(names))
    assert "cross-pod/sockperf-tp/1K/nodelay" in names and "same-pod/mesh" in names
    assert [c.name for c in dp_cases.select("cross-pod/iperf3", False)] == \
        ["cross-pod/iperf3/128B", "cross-pod/iperf3/128K"]
    quick = [c.name for c in dp_cases.select(None, True)]
    assert "same-pod/mesh" in quick and "same-pod/sockperf-tp/16K/nagle" not in quick
    goal = {c.name: c.metrics[0].target for c in dp_cases.all_cases()}
    assert goal["cross-pod/iperf3/128K"] == 4.0 and goal["same-pod/iperf3/128K"] == 1.0
    assert goal["same-pod/sockperf-pp/16K"] == 0.8 and goal["cross-pod/mesh"] == 1.8
    assert goal["same-pod/mesh-close"] == 1.0 and "same-pod/mesh-close" not in quick
    assert goal["cross-pod/mesh-close/4req"] == 1.0


def test_paths_shares():
    p = dp_cases.paths([{"accelerated": 2, "demoted": 1, "refused": 0, "closed_bytes": 99},
                        {"accelerated": 1, "unpaired_removed": 1, "short": 4, "draining": 3}])
    assert p["connections"] == 8
    assert p["shares"] == {"fast path to the end": 0.25, "left the fast path": 0.125,
                           "refused": 0.0, "unpaired": 0.125, "short-lived": 0.5}
    assert p["others"] == {"draining": 3}  # a counter this bench does not know yet is shown
    assert dp_cases.paths_text(p) == \
        "8 conn: fast 25% left 12% unpaired 12% short 50% (demoted 1) draining 3"


def test_rows_judge_ratios_against_targets():
    cases = {c.name: c for c in dp_cases.all_cases()}
    cells = [
        {"case": cases["same-pod/sockperf-tp/64B/nagle"], "deltas": [], "states": [],
         "plain": [{"msg rate": 100.0, "bandwidth": 1.0}] * 3,
         "accel": [{"msg rate": 90.0, "bandwidth": 0.9}, {"msg rate": 120.0, "bandwidth": 1.2},
                   {"msg rate": 110.0, "bandwidth": 1.1}]},
        {"case": cases["same-pod/sockperf-pp/64B"], "deltas": [], "states": [],
         "plain": [{"rtt p50": 10.0, "rtt p99": 20.0, "rtt avg": 11.0}],
         "accel": [{"error": "sockperf hung, killed"}]},
    ]
    rows = {(r["case"], r["metric"]): r for r in dp_cases.rows(cells)}
    tp = rows[("same-pod/sockperf-tp/64B/nagle", "msg rate")]
    assert tp["ratio"] == pytest.approx(1.1) and tp["verdict"] == "PASS"
    assert (tp["pair_ratio_min"], tp["pair_ratio_max"]) == (pytest.approx(0.9), pytest.approx(1.2))
    pp = rows[("same-pod/sockperf-pp/64B", "rtt p50")]
    assert pp["ratio"] is None and pp["verdict"] == "FAIL" and pp["notes"] == ["1 run(s) failed"]
    json.dumps(list(rows.values()))  # --json prints them as they are


@pytest.mark.parametrize("text, error", [
    ("x", "argument --cpus: 'x' is not a comma-separated list of CPU numbers"),
    ("0,4096", "argument --cpus: this process may run on CPUs"),
])
def test_cpus_that_cannot_be_used_are_refused_by_name(text, error, capsys):
    with pytest.raises(SystemExit) as e:
        datapath.main(["--cpus", text, "--list"])
    assert e.value.code == 2
    assert error in capsys.readouterr().err

