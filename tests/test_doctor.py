"""`mdatui doctor`: every check passes on this host; each faked failure says what to do; enable
and the console's offer show only what fails, and stop when the accelerator cannot run."""

from __future__ import annotations

import os
import resource

import pytest

from mdatui.cli import main as cli
from mdatui.core import doctor
from mdatui.core.backend import LiveBackend

GOOD_CONFIG = "CONFIG_BPF_SYSCALL=y\nCONFIG_CGROUP_BPF=y\nCONFIG_NET_SOCK_MSG=y\n"


def host(**faked) -> doctor.Host:
    """This host, with the given facts faked."""
    return doctor.Host(**faked)


def failing(h: doctor.Host) -> list[str]:
    return [c.line() for c in doctor.run(h) if not c.ok]


def test_this_host_passes_every_check(capsys):
    if os.geteuid() != 0:
        pytest.skip("the root check fails without root")
    assert cli.main(["doctor", "--pin-dir", "/sys/fs/bpf/mdatui-doctor-test-none"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("ok   ") for line in lines), lines
    said = "\n".join(lines)
    for expected in ("kernel " + os.uname().release, "CONFIG_BPF_SYSCALL=y", "CONFIG_CGROUP_BPF=y",
                     "CONFIG_NET_SOCK_MSG=y", "blocked readers are listed by a task iterator",
                     "cgroup2 mounted at", "bpffs",
                     "kernel headers", "BCC 0.", "iptables at", "lockdown", "memlock",
                     "no accelerator pinned", "FIONREAD"):
        assert expected in said


# (faked facts, text of the one line that fails, whether it stops the accelerator)
FAILURES = {
    "not root": ({"euid": 1000}, "not root: run it as root (or with sudo)", True),
    "old kernel": ({"release": "5.4.0-150-generic", "config": GOOD_CONFIG},
                   "kernel 5.4.0-150-generic is too old: boot Linux 5.5 or later", True),
    "no sk_msg": ({"config": GOOD_CONFIG.replace("CONFIG_NET_SOCK_MSG=y", "# CONFIG_NET_SOCK_MSG is not set")},
                  "CONFIG_NET_SOCK_MSG is not set: sockhash and sk_msg redirects is missing; use a "
                  "kernel built with CONFIG_NET_SOCK_MSG=y", True),
    "no cgroup bpf": ({"config": GOOD_CONFIG.replace("CONFIG_CGROUP_BPF=y", "")},
                      "CONFIG_CGROUP_BPF is not set", True),
    "no bpf syscall": ({"config": GOOD_CONFIG.replace("CONFIG_BPF_SYSCALL=y", "CONFIG_BPF_SYSCALL=n")},
                       "CONFIG_BPF_SYSCALL is not set", True),
    "no config": ({"config": ""}, "kernel config not found in /proc/config.gz or /boot/config-"
                  f"{os.uname().release}: `modprobe configs` to check CONFIG_BPF_SYSCALL", False),
    "no BTF": ({"btf": "/nonexistent/vmlinux"}, "CONFIG_DEBUG_INFO_BTF=y gives it", False),
    "no cgroup2": ({"mounts": [("/sys/fs/bpf", "bpf")]},
                   "no cgroup v2 hierarchy is mounted: mount one (mount -t cgroup2", True),
    "no bpffs": ({"mounts": [("/sys/fs/cgroup", "cgroup2")], "bpffs": "/nonexistent/bpf"},
                 "no bpffs at /nonexistent/bpf: mount it (mount -t bpf bpf /nonexistent/bpf)", True),
    "no headers": ({"modules": "/nonexistent", "kheaders": "/nonexistent/kheaders.tar.xz"},
                   "BCC needs them to compile; install them (apt-get install linux-headers-$(uname -r)", True),
    "no BCC": ({"bcc_dir": None}, "BCC is not importable: apt-get install python3-bpfcc", True),
    "no libbcc": ({"libbcc": lambda: None}, "libbcc.so.0 not found: apt-get install python3-bpfcc", True),
    "no iptables": ({"which": lambda name: None}, "iptables not found: ", False),
    "confidentiality": ({"lockdown": "/nonexistent",
                         "config": GOOD_CONFIG + "CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY=y\n"},
                        "lockdown is confidentiality (the kernel config): it refuses "
                        "bpf_probe_read_kernel; boot with lockdown=integrity or none", True),
    "full maps": ({"map_use": lambda pin: {"sock_ops_map": (9500, 10000), "sock_proxy_map": (10, 10000)}},
                  "sock_ops_map holds 9500 of 10000: new connections soon take the normal path; "
                  "disable, then enable with a larger --max-sockets", False),
}


@pytest.mark.parametrize("name", FAILURES)
def test_each_failure_says_what_to_do(name):
    faked, says, stops = FAILURES[name]
    lines = failing(host(**faked))
    # An old kernel also lacks what its release names (headers) and newer kernels' fixes.
    assert len(lines) == 1 or "release" in faked, lines
    [line] = [line for line in lines if says in line]
    assert line.startswith("FAIL " if stops else "warn ")
    assert doctor.blocking(doctor.run(host(**faked))) is stops


def test_lockdown_file_wins_over_the_config(tmp_path):
    state = tmp_path / "lockdown"
    state.write_text("none integrity [confidentiality]\n")
    assert failing(host(lockdown=str(state), config=GOOD_CONFIG)) == [
        "FAIL lockdown is confidentiality (" + str(state) + "): it refuses bpf_probe_read_kernel; "
        "boot with lockdown=integrity or none"]
    state.write_text("none [integrity] confidentiality\n")
    assert failing(host(lockdown=str(state), config=GOOD_CONFIG)) == []


def test_an_old_kernel_also_warns_of_memlock_fionread_and_the_guards_iterator():
    lines = failing(host(release="5.4.0", config=GOOD_CONFIG, euid=1000,
                         memlock=(65536, 65536)))
    assert (f"warn BTF at {doctor.Host.btf}, but the kernel cannot run bpf/blocked_readers.c (it "
            "is older than 5.15): `mdatui serve` looks for blocked readers in /proc, thread by "
            "thread, some 5 µs a thread of the cgroup ten times a second") in lines
    assert ("FAIL memlock is limited to 65536 bytes and cannot be raised: the maps will not fit; "
            "run as root or `ulimit -l unlimited`") in lines
    assert any(line.startswith("warn kernel 5.4.0: FIONREAD may not count redirected bytes")
               for line in lines)
    as_root = failing(host(release="5.4.0", config=GOOD_CONFIG, memlock=(65536, 65536)))
    assert not any("memlock" in line for line in as_root)  # BCC raises it as it loads
    unlimited = failing(host(release="5.4.0", config=GOOD_CONFIG, euid=1000,
                             memlock=(resource.RLIM_INFINITY,) * 2))
    assert not any("memlock" in line for line in unlimited)


def test_enable_prints_only_what_fails_and_stops_before_loading(monkeypatch, capsys):
    if os.geteuid() != 0:
        pytest.skip("without root the root check fails too")
    monkeypatch.setattr(doctor, "read_config", lambda release: GOOD_CONFIG.replace("CONFIG_CGROUP_BPF=y", ""))
    monkeypatch.setattr(cli.lifecycle, "enable", lambda **kw: pytest.fail("enable went on"))
    assert cli.main(["enable", "--cgroup", "/nonexistent/cgroup",
                     "--pin-dir", "/sys/fs/bpf/mdatui-doctor-test-none"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("FAIL CONFIG_CGROUP_BPF is not set")
    assert err[1:] == ["mdatui: this host cannot run the accelerator: do what the FAIL lines say "
                       "(`mdatui doctor` lists every check)"]


def test_doctor_exits_1_when_the_accelerator_cannot_run(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "read_config", lambda release: "")
    monkeypatch.setattr(doctor, "_bcc_dir", lambda: None)
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL BCC is not importable" in out and "warn kernel config not found" in out
    assert "ok   cgroup2 mounted at" in out  # every check is listed, not only those that fail


def test_console_offer_lists_what_fails(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("without root the offer says only that it needs root")
    backend = LiveBackend("/sys/fs/bpf/mdatui-doctor-test-none", cgroup="/nonexistent/cgroup")
    possible, offer = backend.enable_offer()
    assert possible and "\n" not in offer  # this host: nothing to add to the offer
    monkeypatch.setattr(doctor, "read_config", lambda release: None)
    possible, offer = backend.enable_offer()
    assert possible and offer.splitlines()[0].startswith("attach to /nonexistent/cgroup with the rules in")
    assert offer.splitlines()[1].startswith("warn kernel config not found")
    monkeypatch.setattr(doctor, "read_config", lambda release: GOOD_CONFIG.replace("CONFIG_NET_SOCK_MSG=y", ""))
    possible, offer = backend.enable_offer()
    assert not possible
    assert offer.splitlines()[:2] == ["This host cannot run the accelerator:",
                                      "FAIL CONFIG_NET_SOCK_MSG is not set: sockhash and sk_msg "
                                      "redirects is missing; use a kernel built with CONFIG_NET_SOCK_MSG=y"]


@pytest.mark.kernel
def test_map_capacity_of_a_running_accelerator(accel, pin_dir):
    """The maps are read for real (faked full in FAILURES)."""
    check = doctor.capacity(doctor.Host(pin_dir=pin_dir))
    room = accel.map_capacity("sock_ops_map")
    assert check.ok and check.text.startswith("map capacity: ") and f" of {room} (the fullest)" in check.text
