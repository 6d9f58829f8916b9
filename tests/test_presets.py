"""`mdatui rules preset istio`: the diff it shows, the file it writes, what those rules accelerate,
its errors, and --apply loading them into the running kernel."""

from __future__ import annotations

import pytest

from mdatui.cli import main as cli
from mdatui.core import rules

from .test_rules_kernel import accelerated, pods  # noqa: F401  (pods: a fixture)

SEED = """\
# accelerate only 192.168.1.0/24 connections of uid 1337 processes
chain --ip 192.168.1.0/24 --uid-owner 1337 --j ACCEPT
chain --port 15006 -j RETURN"""

ISTIO_RULES = [
    "chain --port 15001 -j ACCEPT",
    "chain --port 15006 -j ACCEPT",
    "chain --uid-owner 1337 -j ACCEPT",
    "chain --port 15000 -j RETURN",
    "chain --port 15020 -j RETURN",
    "chain --port 15021 -j RETURN",
    "chain --port 15090 -j RETURN",
]


def preset(tmp_path, *extra: str) -> list[str]:
    """Runs the command on a pin dir where nothing runs; its exit status is asserted by callers."""
    return ["rules", "preset", "istio", "--pin-dir", str(tmp_path / "no-pins"), *extra]


def test_shows_a_diff_against_the_current_file_then_writes_it(tmp_path, capsys):
    config = tmp_path / "oncn-mda.conf"
    config.write_text(SEED)
    assert cli.main(preset(tmp_path, "--config", str(config))) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"--- {config}", f"+++ {config} (preset istio)"]
    assert out[2].startswith("@@ -1,3 +1,")  # the seed's three lines, all replaced
    assert "-chain --ip 192.168.1.0/24 --uid-owner 1337 --j ACCEPT" in out
    assert "-chain --port 15006 -j RETURN" in out
    assert "\\ No newline at end of file" in out  # the seed's last line has none
    assert ("+chain --port 15021 -j RETURN  # health (kubelet's readiness probes): "
            "should see the normal stack") in out
    assert out[-1] == (f"saved {config} (7 rules); mdatui is not enabled: "
                       f"`mdatui enable --cgroup DIR --config {config}` loads them")
    written = rules.load(config)
    assert [rules.format_rule(r) for r in written.rules] == ISTIO_RULES
    # Every rule says why, on its own line.
    assert all("  # " in line for line in written.text().splitlines() if line.startswith("chain"))


def test_a_second_run_changes_nothing(tmp_path, capsys):
    config = tmp_path / "istio.conf"
    assert cli.main(preset(tmp_path, "--config", str(config))) == 0
    first = config.read_text()
    capsys.readouterr()
    assert cli.main(preset(tmp_path, "--config", str(config))) == 0
    assert capsys.readouterr().out == f"{config} holds the istio preset already\n"
    assert config.read_text() == first


def judge(ports, uids) -> rules.Verdict:
    written = rules.parse("".join(f"{r}\n" for r in ISTIO_RULES)).rules
    return rules.judge(written, rules.ConnView(("10.0.0.1", "10.0.0.2", "10.0.0.2"), ports, uids,
                                               (None, None)))


@pytest.mark.parametrize("hop, ports, uids, verdict", [
    # (connecting end's port, original destination port, accepting end's port), owners
    ("app -> its Envoy", (41000, 9080, 15001), (1000, 1337), (True, 0)),
    ("Envoy -> peer Envoy", (41001, 9080, 15006), (1337, 1337), (True, 1)),
    ("Envoy -> app", (41002, 9080, 9080), (1337, 1000), (True, 2)),
    ("app -> app outside the mesh", (41003, 8080, 8080), (1000, 1001), (False, None)),
    ("pilot-agent -> Envoy admin", (41004, 15000, 15000), (1337, 1337), (False, 3)),
    ("probe of health", (41005, 15021, 15021), (0, 1337), (False, 5)),
    ("scrape of Envoy's stats", (41006, 15090, 15090), (65534, 1337), (False, 6)),
])
def test_what_the_preset_accelerates_and_keeps_out(hop, ports, uids, verdict):
    assert judge(ports, uids) == verdict, hop


@pytest.mark.parametrize("where, says", [
    ("missing-dir/oncn-mda.conf", "no such directory"),
    (".", "is a directory: give --config a rules file"),
])
def test_a_bad_config_path_is_an_error_and_writes_nothing(tmp_path, capsys, where, says):
    path = tmp_path / where
    assert cli.main(preset(tmp_path, "--config", str(path))) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(str(path)) and says in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_apply_without_a_running_accelerator_writes_nothing(tmp_path, capsys):
    config = tmp_path / "oncn-mda.conf"
    assert cli.main(preset(tmp_path, "--config", str(config), "--apply")) == 1
    assert "is not enabled at" in capsys.readouterr().err
    assert not config.exists()


@pytest.mark.kernel
def test_apply_loads_the_preset_into_the_running_kernel(lab, accel, pods, pin_dir, tmp_path, capsys):  # noqa: F811
    a, _ = pods
    config = tmp_path / "oncn-mda.conf"
    config.write_text("# nothing yet\n")
    assert cli.main(["rules", "preset", "istio", "--config", str(config), "--pin-dir", pin_dir,
                     "--apply"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"--- {config}", f"+++ {config} (preset istio)"]
    assert "-# nothing yet" in out
    assert ("+chain --uid-owner 1337 -j ACCEPT  # Envoy on either end: also sidecar -> app, which "
            "no capture port marks") in out
    assert out[-1] == (f"saved {config}; loaded 7 rules into the kernel; 0 accelerated connections "
                       "taken off the fast path; newly accepted traffic is accelerated from its "
                       "next connection on")
    running = rules.from_ruleset(accel.active_rules())
    assert [rules.format_rule(r) for r in running] == ISTIO_RULES
    assert accelerated(lab, accel, a, "198.18.1.2:15006", uid=1000)      # inbound capture port
    assert accelerated(lab, accel, a, "198.18.1.2:7000", uid=1337)       # Envoy's own connection
    assert not accelerated(lab, accel, a, "198.18.1.2:7000", uid=1000)   # no Envoy end: not the mesh's
    assert not accelerated(lab, accel, a, "198.18.1.2:7000", "--source-port", "15021",
                           uid=1337)                                     # health port kept out
