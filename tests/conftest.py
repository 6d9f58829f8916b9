"""Shared fixtures. Kernel tests run in a private cgroup + netns (mdatui.lab) and remove
everything they made; under CI=true a kernel test that cannot run fails instead of skipping."""

from __future__ import annotations

import os

import pytest

from mdatui import lab as labmod
from mdatui.core import lifecycle
from mdatui.core.kernel import system
from mdatui.core.kernel.instance import NotEnabled

IN_CI = os.environ.get("CI") == "true"


def _kernel_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "Debian's python3-bpfcc is not importable (run scripts/setup)"
    try:
        system.cgroup2_root()
    except system.SetupError as e:
        return str(e)
    return None


@pytest.fixture
def kernel():
    reason = _kernel_unavailable()
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


def pytest_collection_modifyitems(items):
    for item in items:
        if "kernel" in item.keywords:
            item.fixturenames.insert(0, "kernel")


@pytest.fixture
def lab(kernel):
    with labmod.Lab("t") as lab:
        yield lab


@pytest.fixture
def pin_dir(lab):
    path = f"/sys/fs/bpf/{lab.name}"
    yield path
    try:
        lifecycle.disable(path)
    except NotEnabled:
        pass


@pytest.fixture
def accel(lab, pin_dir):
    """The accelerator attached to the lab's cgroup only."""
    inst = lifecycle.enable(cgroup=lab.cgroup, pin_dir=pin_dir).instance
    yield inst
    inst.close()
