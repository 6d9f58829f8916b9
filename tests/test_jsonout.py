"""`query --json/--jsonl --connections` streamed from the columns (jsonout.py) against the object
path it replaced (Connection.to_json of every row), field for field."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest

from bench.scripting import snapshot_of, synthetic_table
from mdatui.cli.main import main
from mdatui.core import jsonout, snapshot
from mdatui.core.snapshot import Snapshot

from .test_columns import mesh

FIELDS = ["local", "remote", "netns", "peer", "state", "role", "msgs", "bytes", "passed", "age_s",
          "owner"]


def with_draining(n: int, seed: int, v6: bool = False) -> Snapshot:
    """mesh's connections, a few of them draining (stopped, still in the sockhash), with ages
    that are no whole seconds."""
    conns = mesh(n, seed, v6=v6)
    conns = [replace(c, age_s=c.age_s + i / 7,  # ages to the ms, as they are read
                     state="draining" if c.state == "accelerated" and c.in_sockhash and i % 9 == 0
                     else c.state)
             for i, c in enumerate(conns)]
    return Snapshot(taken_at=1.0, enabled=True, pin_dir="/x", connections=conns)


def objects(snap: Snapshot) -> list[dict]:
    return [c.to_json() for c in snap.table.connections()]


def test_each_line_is_the_objects_json_text():
    """On mesh's ends and on bench.console's (kernel records, ages from since_ns)."""
    for snap in (with_draining(2500, 3), snapshot_of(synthetic_table(2000))):
        lines = list(jsonout.connection_lines(snap.table))
        want = objects(snap)
        assert lines == [json.dumps(o) for o in want]
    assert {o["state"] for o in objects(with_draining(2500, 3))} == {
        "accelerated", "pending", "normal", "draining"}


def test_ipv6_ends_are_bracketed_as_the_objects_say_them(monkeypatch):
    """Addresses of both families in a chunk (the names kept across chunks), IPv6 ones as
    "[v6]:port" in the end and in its peer, IPv4 ones dotted."""
    monkeypatch.setattr(jsonout, "CHUNK", 100)
    snap = with_draining(600, 8, v6=True)
    lines = list(jsonout.connection_lines(snap.table))
    assert lines == [json.dumps(o) for o in objects(snap)]
    rows = [json.loads(line) for line in lines]
    v6 = [r for r in rows if r["local"].startswith("[2001:2:0:") and r["peer"]]
    assert any(r["peer"]["remote"].startswith("[2001:2:0:") for r in v6)
    assert any(r["local"].startswith("[::1]:") for r in rows)
    assert any(r["local"].startswith("198.19.") for r in rows)


def test_rows_past_a_chunk_come_in_order(monkeypatch):
    monkeypatch.setattr(jsonout, "CHUNK", 7)
    snap = with_draining(300, 4)
    assert [json.loads(line) for line in jsonout.connection_lines(snap.table)] == objects(snap)


def test_json_is_what_to_json_says_with_every_connection():
    snap = with_draining(2000, 5)
    out = io.StringIO()
    jsonout.write_json(snap, out, connections=True)
    doc = json.loads(out.getvalue())
    assert doc == snap.to_json(connections=True)
    assert list(doc["connections"][0]) == FIELDS
    assert any(c["owner"]["uid"] is None for c in doc["connections"])  # unknown owners: null


def test_json_without_connections_or_ends_or_accelerator():
    for snap, connections in ((with_draining(50, 6), False),
                              (Snapshot(taken_at=1.0, enabled=True, pin_dir="/x"), True),
                              (snapshot.disabled("/x"), True)):
        out = io.StringIO()
        jsonout.write_json(snap, out, connections=connections)
        assert out.getvalue() == json.dumps(snap.to_json(connections=connections), indent=2) + "\n"


def test_jsonl_is_the_summary_then_one_line_per_connection():
    snap = with_draining(1500, 7)
    out = io.StringIO()
    jsonout.write_jsonl(snap, out, connections=True)
    first, *rest = out.getvalue().splitlines()
    assert json.loads(first) == snap.to_json()
    assert [json.loads(line) for line in rest] == objects(snap)
    out = io.StringIO()
    jsonout.write_jsonl(snap, out)
    assert out.getvalue().splitlines() == [first]


def test_query_jsonl_on_a_pin_dir_without_accelerator(tmp_path, capsys):
    assert main(["query", "--jsonl", "--connections", "--pin-dir", str(tmp_path)]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [
        {"enabled": False, "pin_dir": str(tmp_path), "cgroup": ""}]
    with pytest.raises(SystemExit):  # one format at a time
        main(["query", "--json", "--jsonl", "--pin-dir", str(tmp_path)])
    assert "not allowed with argument" in capsys.readouterr().err


def test_short_lived_destinations_in_json_and_in_words():
    dests = [snapshot.ShortLived(f"198.18.0.{i}:80", 0, 1 + i / 4) for i in range(1, 6)]
    snap = Snapshot(taken_at=1.0, enabled=True, pin_dir="/x", stats={"short": 900},
                    short_lived=dests)
    assert snap.to_json()["short_lived"][0] == {"destination": "198.18.0.1:80", "netns": 0,
                                                "msgs_per_connection": 1.25}
    assert snap.kept_off() == ("900 short-lived connections; now to 198.18.0.1:80 (1.2 msgs each), "
                               "198.18.0.2:80 (1.5 msgs each), 198.18.0.3:80 (1.8 msgs each) and "
                               "2 more")
    assert replace(snap, short_lived=[]).kept_off() == "900 short-lived connections"
