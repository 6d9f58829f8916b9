"""mdatui as a user installs it: a wheel in a fresh venv, away from the checkout, on a lab cgroup."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mdatui.core import apply
from mdatui.core.kernel.instance import PROGRAMS

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[1]
# Nothing may point the installed mdatui back at the checkout.
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MDATUI_BPF_DIR", "MDATUI_CONFIG")}


def _run(*argv, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=240, **kw)
    assert done.returncode == 0, f"{argv}: {done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def venv():
    """A fresh venv (seeing Debian's BCC) with a wheel of this checkout installed, and no copy of
    the checkout left anywhere it could fall back on; removed afterwards, also after a failure."""
    with tempfile.TemporaryDirectory(prefix="mdatui-wheel-") as tmp:
        os.chmod(tmp, 0o755)  # as under /opt or /usr/local: the demo's sidecars run as uid 1337
        src, dist, env = Path(tmp, "src"), Path(tmp, "dist"), Path(tmp, "venv")
        # A copy: pip builds in the source tree, and others may be working in the checkout.
        shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
            ".*", "*.egg-info", "build", "dist", "__pycache__", "tests", "bench"))
        # The checkout venv's setuptools builds it: no download just for the build backend.
        _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "-w", dist, src)
        shutil.rmtree(src)
        _run("/usr/bin/python3", "-m", "venv", "--system-site-packages", env)
        (wheel,) = dist.glob("mdatui-*.whl")
        _run(env / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel)
        yield env


def test_a_wheel_installed_outside_the_checkout_enables_queries_and_disables(venv, lab, pin_dir):
    def mdatui(*args: str) -> str:
        return _run(venv / "bin" / "mdatui", *args, cwd=venv, env=ENV).stdout

    # Compiling needs the BPF sources: only the copies inside the installed package are left.
    assert f"enabled on {lab.cgroup}; pinned at {pin_dir}" in mdatui(
        "enable", "--cgroup", lab.cgroup, "--pin-dir", pin_dir)
    query = json.loads(mdatui("query", "--json", "--pin-dir", pin_dir))
    assert query["enabled"] is True
    assert query["cgroup"] == lab.cgroup
    assert set(query["programs"]) == {p.func for p in PROGRAMS}

    packaged = next(venv.glob("lib/python3*/site-packages/mdatui/_data/etc/oncn-mda.conf"))
    default = apply.SYSTEM_CONFIG if apply.SYSTEM_CONFIG.exists() else packaged
    assert mdatui("rules", "check").startswith(f"{default}: ")

    assert f"disabled on {lab.cgroup}" in mdatui("disable", "--pin-dir", pin_dir)
    assert not Path(pin_dir).exists()


def _demo(venv: Path) -> subprocess.CompletedProcess:
    demo = subprocess.Popen([venv / "bin" / "mdatui", "demo", "--no-console", "--clients", "1",
                             "--seconds", "3"], cwd=venv, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)  # the demo removes its lab on the way out
            out, err = demo.communicate(timeout=30)
    return subprocess.CompletedProcess(demo.args, demo.returncode, out, err)


def test_the_demo_of_a_wheel_accelerates_its_mesh(venv):
    done = _demo(venv)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads(done.stdout)
    assert state["enabled"] is True
    assert "/mdatui-demo-" in state["cgroup"]
    assert state["totals"]["pairs"] >= 1
    assert state["totals"]["redirected_msgs"] > 0


def test_the_demo_of_a_wheel_only_root_can_reach_says_so(venv):
    os.chmod(venv.parent, 0o700)
    try:
        done = _demo(venv)
    finally:
        os.chmod(venv.parent, 0o755)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"mdatui: uid 1337 may not run {venv}/bin/python: install mdatui where every user can "
        "read it (not under /root, say)")
