"""Records mdatui would misread are refused, by map; the raw system calls are the machine's."""

from __future__ import annotations

import ctypes as ct

import pytest

from mdatui.cli.main import main
from mdatui.core.backend import LiveBackend, Unavailable
from mdatui.core.kernel import abi, instance, system


def test_system_calls_are_numbered_for_the_machine():
    assert system.syscall_number("bpf", "x86_64") == 321
    assert system.syscall_number("perf_event_open", "x86_64") == 298
    assert system.syscall_number("bpf", "aarch64") == 280
    assert system.syscall_number("perf_event_open", "aarch64") == 241
    with pytest.raises(system.SetupError) as e:
        system.syscall_number("bpf", "riscv64")
    assert str(e.value) == "mdatui knows the bpf system call on x86_64 and aarch64, not on riscv64"


@pytest.mark.kernel
def test_a_map_whose_values_mdatui_would_misread_is_refused_by_name(accel, monkeypatch, capsys):
    class LongerConn(ct.Structure):  # as if bpf/mdatui.h had lost a field abi.py still has
        _fields_ = [("conn", abi.Conn), ("added", ct.c_uint64)]

    monkeypatch.setitem(instance.MAPS, "sock_proxy_map", (abi.SockKey, LongerConn))
    key, value = ct.sizeof(abi.SockKey), ct.sizeof(abi.Conn)
    expected = (f"{accel.pin_dir}/sock_proxy_map holds {key}-byte keys and {value}-byte values "
                f"where this mdatui reads {key} and {value + 8} (SockKey/LongerConn): the "
                "accelerator pinned there comes from another version of mdatui; disable it with "
                "that version")

    assert main(["query", "--pin-dir", accel.pin_dir]) == 1
    assert capsys.readouterr().err == f"mdatui: {expected}\n"

    backend = LiveBackend(accel.pin_dir)
    with pytest.raises(Unavailable) as e:
        backend.snapshot(True)
    assert str(e.value) == expected


@pytest.mark.kernel
def test_an_accelerator_without_a_map_this_mdatui_reads_is_refused_by_name(accel, monkeypatch, capsys):
    """As one an earlier version enabled, before mda_policy: not taken for one being disabled."""
    monkeypatch.setitem(instance.MAPS, "mda_later", (ct.c_uint32, ct.c_uint32))
    expected = (f"{accel.pin_dir}/mda_later is missing: the accelerator pinned there comes from "
                "another version of mdatui; disable it with that version")
    assert main(["query", "--pin-dir", accel.pin_dir]) == 1
    assert capsys.readouterr().err == f"mdatui: {expected}\n"
    assert main(["disable", "--pin-dir", accel.pin_dir]) == 1
    assert capsys.readouterr().err == f"mdatui: {expected}\n"
