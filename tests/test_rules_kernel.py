"""Chain rules in the running kernel: which real connections get accelerated."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time

import pytest

from mdatui.core import apply, reader, rules

from . import peers

pytestmark = pytest.mark.kernel

# The seed example of etc/oncn-mda.conf, with the test range 198.18.1.0/24 for 192.168.1.0/24.
SEED = """\
# accelerate only 198.18.1.0/24 connections of uid 1337 processes; never traffic with port 15006 at either end
chain --ip 198.18.1.0/24 --uid-owner 1337 --j ACCEPT
chain --port 15006 -j RETURN
"""


@pytest.fixture
def pods(lab, accel):
    """Pod a (198.18.1.1) and pod b (198.18.1.2, servers on 7000, 7005, 7011 and 15006)."""
    a, b = lab.add_netns("a"), lab.add_netns("b")
    lab.link(a, "198.18.1.1/24", b, "198.18.1.2/24")
    for port in (7000, 7005, 7011, 15006):
        peers.server(lab, "echo", port, b)
    return a, b


def load(accel, text: str) -> None:
    accel.load_rules(rules.to_ruleset(rules.parse(text).rules))


def accelerated(lab, accel, ns: str, to: str, *extra: str, **ids) -> bool:
    """Open a connection, move 64 KiB both ways, and tell whether it was redirected."""
    cli = peers.client(lab, ns, "send", "--to", to, "--bytes", "65536", "--echo", *extra,
                       hold=True, **ids)
    local = peers.report(cli)["local"]
    peers.proceed(cli)
    done = peers.report(cli)
    assert done["sha256_received"] == done["sha256_sent"]
    mine = next((c for c in reader.read(accel).connections if c.end.local == local), None)
    peers.proceed(cli)
    cli.wait(10)
    return mine is not None and mine.state == "accelerated" and mine.bytes == 65536


def test_seed_example_accelerates_only_what_its_comment_says(lab, accel, pods):
    a, _ = pods
    load(accel, SEED)
    assert reader.read(accel).active_rules == [  # read back from the kernel's live set
        rules.Rule(rules.Target.ACCEPT, ipaddress.IPv4Network("198.18.1.0/24"), uid=rules.NamedId(1337)),
        rules.Rule(rules.Target.RETURN, ports=(15006, 15006))]
    assert accelerated(lab, accel, a, "198.18.1.2:7000", uid=1337)
    assert not accelerated(lab, accel, a, "198.18.1.2:15006", uid=1337)        # server end
    assert not accelerated(lab, accel, a, "198.18.1.2:7000", "--source-port", "15006",
                           uid=1337)                                            # client end
    assert not accelerated(lab, accel, a, "198.18.1.2:7000", uid=1000)
    assert accel.stats()["refused"] == 3


@pytest.mark.parametrize("order", ["return-first", "accept-first"])
def test_return_beats_accept_in_either_order(lab, accel, pods, order):
    a, _ = pods
    lines = ["chain --port 7000 -j RETURN", "chain --ip 198.18.1.0/24 -j ACCEPT"]
    load(accel, "\n".join(lines if order == "return-first" else lines[::-1]))
    assert not accelerated(lab, accel, a, "198.18.1.2:7000")
    assert accelerated(lab, accel, a, "198.18.1.2:7005")


def test_port_range(lab, accel, pods):
    a, _ = pods
    load(accel, "chain --port 7000-7010 -j RETURN")
    assert not accelerated(lab, accel, a, "198.18.1.2:7005")
    assert accelerated(lab, accel, a, "198.18.1.2:7011")


def test_gid_owner(lab, accel, pods):
    a, _ = pods
    load(accel, "chain --gid-owner 1234 -j ACCEPT")
    assert accelerated(lab, accel, a, "198.18.1.2:7000", uid=1000, gid=1234)
    assert not accelerated(lab, accel, a, "198.18.1.2:7000", uid=1000, gid=4321)


def test_no_rules_accelerates_everything_and_only_return_refuses_its_match(lab, accel, pods):
    a, _ = pods
    assert accelerated(lab, accel, a, "198.18.1.2:7000", uid=1000)
    load(accel, "chain --uid-owner 1000 -j RETURN")
    assert not accelerated(lab, accel, a, "198.18.1.2:7000", uid=1000)
    assert accelerated(lab, accel, a, "198.18.1.2:7000", uid=1001)


def test_live_apply_takes_a_streaming_connection_off_the_fast_path(lab, accel, pin_dir, tmp_path):
    ns = lab.add_netns("pod")
    config = tmp_path / "oncn-mda.conf"
    config.write_text("# live\n")
    sink = peers.server(lab, "sink", 7000, ns)
    total = 40_000_000
    cli = peers.client(lab, ns, "send", "--to", "127.0.0.1:7000", "--bytes", str(total),
                       "--chunk", "65536", "--pause", "0.002")
    deadline = time.monotonic() + 10
    while reader.read(accel).redirected_bytes < 2_000_000 and time.monotonic() < deadline:
        time.sleep(0.02)

    out = subprocess.run([sys.executable, "-m", "mdatui.cli.main", "rules", "add",
                          "chain --port 7000 -j RETURN", "--config", str(config),
                          "--pin-dir", pin_dir], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "1 accelerated connections taken off the fast path" in out.stdout
    assert config.read_text() == "# live\nchain --port 7000 -j RETURN\n"

    mine = next(c for c in reader.read(accel).connections if c.active)
    time.sleep(0.5)
    later = next(c for c in reader.read(accel).connections if c.end == mine.end)
    assert later.bytes == mine.bytes < total      # no more redirects: the stack carries it,
    assert (later.state, later.in_sockhash) == ("normal", False)  # as plain TCP, drained
    stats = accel.stats()  # listed by `rules add`, stopped by the programs: counted once
    assert (stats["listed"], stats["drained"]) == (2, 2)
    done = peers.report(cli, timeout=120)
    assert peers.report(sink) == {"bytes": total, "sha256": done["sha256_sent"],
                                  "peer": done["local"]}


def test_failed_save_leaves_kernel_and_file_as_they_were(accel, tmp_path, monkeypatch):
    config = tmp_path / "oncn-mda.conf"
    config.write_text("chain --port 80 -j RETURN\n")
    before_kernel = bytes(accel.active_rules())
    doc = rules.load(config)
    doc.add(rules.parse_rule("chain --port 90 -j RETURN"))

    def broken_save(*_):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(rules, "save", broken_save)
    with pytest.raises(OSError):
        apply.apply(accel, doc, str(config))
    assert bytes(accel.active_rules()) == before_kernel
    assert config.read_text() == "chain --port 80 -j RETURN\n"
