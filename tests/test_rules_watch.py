"""`mdatui rules watch` against the real kernel, on a rules file mounted as the kubelet mounts a
ConfigMap: each version swapped in by its `..data` symlink is loaded; a bad one is reported by
line and the rules that run stay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from mdatui.core import rules

from .kubelet import ConfigMapDir, Lines

ONE = "chain --port 7000 -j RETURN\n"
TWO = "# two rules\nchain --port 7005 -j RETURN\nchain --ip 198.18.0.0/15 -j ACCEPT\n"
BAD = "chain --port 7005 -j RETURN\nchain --port 99999 -j ACCEPT\n"


def mdatui(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mdatui.cli.main", *args], capture_output=True,
                          text=True, timeout=60, **kw)


def watch(path: str, pin_dir: str) -> Lines:
    proc = subprocess.Popen([sys.executable, "-m", "mdatui.cli.main", "rules", "watch", path,
                             "--pin-dir", pin_dir, "--interval", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return Lines(proc)


def kernel_rules(accel) -> list[str]:
    """The rules of the kernel's live set, read back from sock_param_map."""
    return [rules.format_rule(r) for r in rules.from_ruleset(accel.active_rules())]


def listed(path: str, pin_dir: str) -> dict:
    done = mdatui("rules", "list", "--json", "--config", path, "--pin-dir", pin_dir)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def stop(out: Lines, sig: int = signal.SIGTERM) -> int:
    if out.proc.poll() is None:
        out.proc.send_signal(sig)
    try:
        return out.finish(timeout=10)
    except subprocess.TimeoutExpired:
        out.proc.kill()
        out.proc.wait(5)
        raise


@pytest.mark.kernel
def test_each_version_the_kubelet_swaps_in_is_loaded_and_a_bad_one_keeps_the_rules_running(
        accel, pin_dir, tmp_path):
    cm = ConfigMapDir(tmp_path / "rules")
    cm.write({"oncn-mda.conf": ONE})
    path = cm.path("oncn-mda.conf")
    assert kernel_rules(accel) == []
    out = watch(path, pin_dir)
    try:
        i, line = out.wait_for("applied 1 rules from")
        assert line.startswith(f"applied 1 rules from {path}; 0 accelerated connections taken off")
        assert kernel_rules(accel) == ["chain --port 7000 -j RETURN"]
        assert listed(path, pin_dir)["in_kernel"] is True

        cm.write({"oncn-mda.conf": TWO})
        i, _ = out.wait_for("applied 2 rules from", after=i + 1)
        assert kernel_rules(accel) == ["chain --port 7005 -j RETURN", "chain --ip 198.18.0.0/15 -j ACCEPT"]
        assert listed(path, pin_dir)["in_kernel"] is True

        cm.write({"oncn-mda.conf": BAD})
        i, error = out.wait_for(f"{path}:2:", after=i + 1)      # file and line of the error
        assert "99999" in error
        i, _ = out.wait_for(f"rules watch: {path} not applied; the 2 rules loaded before keep running",
                            after=i + 1)
        assert kernel_rules(accel) == ["chain --port 7005 -j RETURN", "chain --ip 198.18.0.0/15 -j ACCEPT"]

        # Fixed with the rules that run: nothing to load.
        cm.write({"oncn-mda.conf": "# fixed\n" + TWO})
        i, _ = out.wait_for(f"{path}: 2 rules, as the kernel runs them already", after=i + 1)

        # The key taken out of the ConfigMap, then back.
        cm.write({"other": "x\n"})
        i, _ = out.wait_for(f"{path}: No such file or directory; the rules loaded before keep running",
                            after=i + 1)
        assert len(kernel_rules(accel)) == 2
        cm.write({"oncn-mda.conf": ONE})
        i, _ = out.wait_for("applied 1 rules from", after=i + 1)
        assert kernel_rules(accel) == ["chain --port 7000 -j RETURN"]
    finally:
        code = stop(out)
    assert code == 0, out.text()
    assert out.lines[-1] == f"stopped watching {path}"
    # one line per version (two for the bad one: its error, then what stays), one at the start
    # and one at the stop: nothing is said twice while a version stays
    assert len(out.lines) == 1 + 6 + 1 + 1, out.text()


@pytest.mark.kernel
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_watch_cleanly_and_leaves_the_rules_loaded(accel, pin_dir, tmp_path, sig):
    cm = ConfigMapDir(tmp_path / "rules")
    cm.write({"oncn-mda.conf": ONE})
    out = watch(cm.path("oncn-mda.conf"), pin_dir)
    try:
        out.wait_for("applied 1 rules from")
    finally:
        code = stop(out, sig)
    assert code == 0, out.text()
    assert out.lines[-1].startswith("stopped watching")
    assert "Traceback" not in out.text()
    assert kernel_rules(accel) == ["chain --port 7000 -j RETURN"]
    # `rules apply` loads a file through the same code, and says it in the same words.
    cm.write({"oncn-mda.conf": TWO})
    done = mdatui("rules", "apply", cm.path("oncn-mda.conf"), "--pin-dir", pin_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"applied 2 rules from {cm.path('oncn-mda.conf')}; 0 accelerated")
    assert kernel_rules(accel) == ["chain --port 7005 -j RETURN", "chain --ip 198.18.0.0/15 -j ACCEPT"]


def test_watch_without_an_accelerator_says_so_and_exits_1(tmp_path):
    done = mdatui("rules", "watch", str(tmp_path / "x.conf"), "--pin-dir", str(tmp_path / "none"))
    assert done.returncode == 1
    assert done.stderr.strip() == (f"mdatui is not enabled at {tmp_path / 'none'}: run `mdatui enable "
                                   "--cgroup DIR --config FILE` first")


def test_interval_out_of_range_is_refused(tmp_path):
    done = mdatui("rules", "watch", "--interval", "0", "--pin-dir", str(tmp_path))
    assert done.returncode == 2 and "out of range" in done.stderr
    assert not os.path.exists(tmp_path / "x")
