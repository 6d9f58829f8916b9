"""`mdatui query --json` and `--jsonl`: the snapshot as JSON, its connections streamed.

Connection.to_json makes one object per end and json.dumps them all at once: 200,000 ends took
8.8 s and hundreds of MB. Here the rows are written from the table's columns a chunk at a time,
as the same JSON text Connection.to_json gives (tests/test_jsonout.py holds them together), so
the time is spent formatting only and the memory a chunk needs stays the same for any number
of ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TextIO

import numpy as np

from . import addrs
from .ends import NORMAL, STATES
from .kernel import abi
from .snapshot import Snapshot
from .table import Table

CHUNK = 4096  # rows formatted at once: a few MB of strings at most
DRAINING = len(STATES)  # a fourth state code: NORMAL, and still in the sockhash
_STATE_NAMES = (*STATES, "draining")


def _ids(column: np.ndarray) -> list:
    """Owner ids as JSON text: abi.UNKNOWN_ID is an unknown owner, null (Owner.of_ids)."""
    return ["null" if v == abi.UNKNOWN_ID else v for v in column.tolist()]


def connection_lines(table: Table) -> Iterator[str]:
    """Each row of the table as one line of JSON: Connection.to_json's object, key for key."""
    for lines in connection_chunks(table):
        yield from lines


def connection_chunks(table: Table) -> Iterator[list[str]]:
    """connection_lines, CHUNK rows at a time: written with one call a chunk."""
    known: dict[bytes, str] = {}
    for start in range(0, len(table), CHUNK):
        rows = slice(start, start + CHUNK)
        keys, static, counters = table.keys[rows], table.static[rows], table.counters[rows]
        peer, owner = static["peer"], static["owner"]
        state = np.where((table.state[rows] == NORMAL) & table.in_sockhash[rows], DRAINING,
                         table.state[rows])
        columns = (
            addrs.texts(keys["local_ip"], known), keys["local_port"].tolist(),
            addrs.texts(keys["remote_ip"], known), keys["remote_port"].tolist(),
            keys["netns"].tolist(), (static["paired"] != 0).tolist(),
            addrs.texts(peer["local_ip"], known), peer["local_port"].tolist(),
            addrs.texts(peer["remote_ip"], known), peer["remote_port"].tolist(),
            [_STATE_NAMES[s] for s in state.tolist()],
            ["connecting" if a else "accepting" for a in static["active"].tolist()],
            counters["msgs"].tolist(), counters["bytes"].tolist(), counters["passed"].tolist(),
            [round(age, 3) for age in table.age_s[rows].tolist()],
            _ids(owner["pid"]), _ids(owner["uid"]), _ids(owner["gid"]))
        lines = []
        for (lip, lport, rip, rport, netns, paired, plip, plport, prip, prport, st, role,
             msgs, nbytes, passed, age, pid, uid, gid) in zip(*columns):
            peer_text = (f'{{"local": "{plip}:{plport}", "remote": "{prip}:{prport}"}}'
                         if paired else "null")
            lines.append(
                f'{{"local": "{lip}:{lport}", "remote": "{rip}:{rport}", "netns": {netns}, '
                f'"peer": {peer_text}, "state": "{st}", "role": "{role}", "msgs": {msgs}, '
                f'"bytes": {nbytes}, "passed": {passed}, "age_s": {age!r}, '
                f'"owner": {{"pid": {pid}, "uid": {uid}, "gid": {gid}}}}}')
        yield lines


def write_json(snap: Snapshot, out: TextIO, connections: bool = False) -> None:
    """Snapshot.to_json(connections) as one JSON document, indented, each connection on a line
    of its own."""
    head = json.dumps(snap.to_json(), indent=2)
    if not (connections and snap.enabled):
        out.write(head + "\n")
        return
    out.write(head[:-2] + ',\n  "connections": [')  # head ends with "\n}"
    sep = "\n    "
    for lines in connection_chunks(snap.table):
        out.write(sep + ",\n    ".join(lines))
        sep = ",\n    "
    out.write("\n  ]\n}\n" if len(snap.table) else "]\n}\n")


def write_jsonl(snap: Snapshot, out: TextIO, connections: bool = False) -> None:
    """JSON lines: Snapshot.to_json() without connections first, then one line per connection."""
    out.write(json.dumps(snap.to_json()) + "\n")
    if connections and snap.enabled:
        for lines in connection_chunks(snap.table):
            out.write("\n".join(lines) + "\n")
