"""A ConsoleBackend with fixed data: a small mesh as core Snapshot objects, events, dump records.

The console runs against it exactly as against the kernel; what it applies and saves is recorded.
"""

from __future__ import annotations

import io
import time

from rich.console import Console
from rich.text import Text

from mdatui.core import addrs, apply, dump, events, rules
from mdatui.core.backend import RulesDoc, Unavailable
from mdatui.core.ends import Connection, Endpoint, Owner
from mdatui.core.kernel import abi
from mdatui.core.procs import ProcessInfo
from mdatui.core.service_status import Usage
from mdatui.core.snapshot import DumpState, ShortLived, Snapshot, disabled
from mdatui.core.verdicts import preview

NOW = 1_700_000_100.0          # wall clock of every frame
ENABLED_AT = 1_700_000_000     # so uptime reads 1m40s
LO_NS = 4026531993             # netns cookie of the pod whose loopback the ends use
RULES_PATH = "/etc/oncn-mda/oncn-mda.conf"
RULES_TEXT = """\
# accelerate the mesh and the pods' loopback; never the legacy service on 9090; the mesh's IPv6
chain --ip 198.18.0.0/15 -j ACCEPT
chain --ip 127.0.0.0/8 -j ACCEPT
chain --port 9090 -j RETURN
chain --ip 2001:2::/48 -j ACCEPT
"""


def end(local: str, remote: str, netns: int = 0) -> Endpoint:
    return Endpoint(local, remote, netns)


def conn(local: str, remote: str, *, netns: int = 0, peer: Endpoint | None = None, state="accelerated",
         msgs=0, bytes=0, passed=0, age=60.0, pid=None, uid=0, active=False, in_sockhash=True):
    return Connection(end=end(local, remote, netns), peer=peer, state=state, msgs=msgs, bytes=bytes,
                      passed=passed, age_s=age, owner=Owner(pid, uid, uid), in_sockhash=in_sockhash,
                      active=active)


def connections(step: int) -> list[Connection]:
    """The mesh after `step` seconds of steady traffic."""
    s = step
    return [
        # app -> its sidecar, across an iptables REDIRECT (the connecting end keeps the original
        # destination); loopback, so keyed by the pod's netns.
        conn("127.0.0.1:40000", "198.18.0.2:80", netns=LO_NS, peer=end("127.0.0.1:15001", "127.0.0.1:40000", LO_NS),
             msgs=1000 + 50 * s, bytes=256_000 + 12_800 * s, age=90, pid=2001, active=True),
        conn("127.0.0.1:15001", "127.0.0.1:40000", netns=LO_NS, peer=end("127.0.0.1:40000", "198.18.0.2:80", LO_NS),
             msgs=1000 + 50 * s, bytes=256_000 + 12_800 * s, age=90, pid=2002, uid=1337),
        # sidecar -> sidecar over the veth
        conn("198.18.0.1:41000", "198.18.0.2:15006", peer=end("198.18.0.2:15006", "198.18.0.1:41000"),
             msgs=5000 + 200 * s, bytes=9_000_000 + 1_000_000 * s, age=3700, pid=2002, uid=1337, active=True),
        conn("198.18.0.2:15006", "198.18.0.1:41000", peer=end("198.18.0.1:41000", "198.18.0.2:15006"),
             msgs=5000 + 200 * s, bytes=4_000_000 + 500_000 * s, age=3700, pid=2003, uid=1337),
        # taken off the fast path when the RETURN rule for 9090 was applied
        conn("198.18.0.1:45000", "198.18.0.2:9090", peer=end("198.18.0.2:9090", "198.18.0.1:45000"),
             state="normal", msgs=10, bytes=4096, passed=7 + s, age=400, pid=2001, active=True,
             in_sockhash=False),
        conn("198.18.0.2:9090", "198.18.0.1:45000", peer=end("198.18.0.1:45000", "198.18.0.2:9090"),
             state="normal", msgs=10, bytes=4096, passed=5 + s, age=400, pid=2004, in_sockhash=False),
        # sidecar -> sidecar over IPv6 (the pods are dual-stack)
        conn("[2001:2::1]:42000", "[2001:2::2]:15006", peer=end("[2001:2::2]:15006", "[2001:2::1]:42000"),
             msgs=800 + 40 * s, bytes=1_200_000 + 60_000 * s, age=1800, pid=2002, uid=1337, active=True),
        conn("[2001:2::2]:15006", "[2001:2::1]:42000", peer=end("[2001:2::1]:42000", "[2001:2::2]:15006"),
             msgs=800 + 40 * s, bytes=700_000 + 30_000 * s, age=1800, pid=2003, uid=1337),
        # waiting for its peer
        conn("127.0.0.1:43000", "127.0.0.1:7000", netns=LO_NS, state="pending", age=0.2, pid=2005,
             active=True),
        # its peer's entry is gone
        conn("198.18.0.1:44000", "198.18.0.2:8080", peer=end("198.18.0.2:8080", "198.18.0.1:44000"),
             msgs=3, bytes=300, age=12, pid=None, uid=None, active=True),
    ]


def snapshot(step: int, ruleset: abi.RuleSet) -> Snapshot:
    conns = connections(step)
    return Snapshot(
        taken_at=1000.0 + step, enabled=True, pin_dir="/sys/fs/bpf/mdatui",
        cgroup="/sys/fs/cgroup/mesh", config=RULES_PATH, enabled_at=ENABLED_AT,
        programs={"mda_sock_create": 101, "mda_sock_ops": 102, "mda_sk_msg": 103},
        maps={"sock_ops_map": {"entries": 7, "capacity": 262144},
              "sock_proxy_map": {"entries": len(conns), "capacity": 262144},
              "sock_helper_map": {"entries": 1, "capacity": 262144}},
        connections=conns,
        stats={"accelerated": 40, "refused": 3, "demoted": 2, "tainted": 1, "redirect_failed": 0,
               "closed_msgs": 70_000, "closed_bytes": 90_000_000, "dump_lost": 0,
               "drained": 6, "blocking": 1, "short": 120},
        dump=DumpState(False, None, None, 128), active_rules=rules.from_ruleset(ruleset),
        service=4242, service_usage=Usage(cpu_s=42.0, cpu_share=0.011, rss=36 << 20),
        short_lived=[ShortLived("10.0.0.9:8080", 0, 2.0)])


PROCESSES = {
    2001: "python -m mdatui.lab.traffic chat --to 198.18.0.2:80",
    2002: "envoy --config sidecar-out.yaml",
    2003: "envoy --config sidecar-in.yaml",
    2004: "python -m mdatui.lab.traffic echo --port 9090",
    2005: "curl http://127.0.0.1:7000/",
}
USERS = {0: "root", 1337: "istio-proxy"}


def event_batch() -> list[events.Event]:
    ts = int(NOW * 1e9) - 5_000_000_000
    a, b = end("127.0.0.1:40000", "198.18.0.2:80", LO_NS), end("127.0.0.1:15001", "127.0.0.1:40000", LO_NS)
    return [
        events.Accelerated(ts, a, b, Owner(2001, 0, 0), peer_owner=Owner(2002, 1337, 1337)),
        events.Refused(ts + 1_000_000, end("198.18.0.1:46000", "198.18.0.2:9090"),
                       end("198.18.0.2:9090", "198.18.0.1:46000"), Owner(2001, 0, 0),
                       peer_owner=Owner(2004, 0, 0), rule=2),
        events.Closed(ts + 2_000_000, end("127.0.0.1:39000", "127.0.0.1:9080", LO_NS), None,
                      Owner(2003, 1337, 1337), msgs=12, bytes=3072, passed=0),
        events.RedirectFailed(ts + 3_000_000, end("198.18.0.1:45000", "198.18.0.2:9090"),
                              end("198.18.0.2:9090", "198.18.0.1:45000"), Owner(2001, 0, 0),
                              msgs=10, bytes=4096, passed=1),
        events.Demoted(ts + 4_000_000, end("127.0.0.1:41000", "127.0.0.1:9080", LO_NS),
                       end("127.0.0.1:9080", "127.0.0.1:41000", LO_NS), Owner(2001, 0, 0),
                       msgs=64, bytes=4096, passed=0),
    ]


def dump_batch(snaplen: int) -> list[dump.DumpRecord]:
    ts = int(NOW * 1e9) - 1_000_000_000
    request = b"GET /0 HTTP/1.1\r\nHost: demo\r\n\r\n" + b"." * 224
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    out = []
    for i in range(3):
        out.append(dump.DumpRecord(ts + 2 * i * 1000, "127.0.0.1:40000", "198.18.0.2:80", LO_NS,
                                   len(request), request[:snaplen], dump.Direction.TO_SERVER))
        out.append(dump.DumpRecord(ts + (2 * i + 1) * 1000, "127.0.0.1:15001", "127.0.0.1:40000",
                                   LO_NS, len(response), response[:snaplen], dump.Direction.TO_CLIENT))
    return out


def perf_record(rec: dump.DumpRecord) -> bytes:
    """A record as sk_msg writes it to the perf ring (dump.decode's input), stamped with its
    unix time: decoded with a wall offset of 0 it is rec again."""
    (local, local_port), (remote, remote_port) = map(addrs.split_endpoint, (rec.src, rec.dst))
    ev = abi.DumpEvent(ts_ns=rec.ts_ns, len=rec.len, caplen=len(rec.data),
                       active=rec.direction == dump.Direction.TO_SERVER,
                       key=abi.SockKey.of(local, remote, local_port, remote_port, rec.netns))
    return bytes(ev)[:abi.DUMP_HEADER_SIZE] + rec.data


class FakeEvents:
    def __init__(self, batch: list[events.Event]):
        self._batch = batch
        self.lost = 0
        self.closed = False

    def poll(self, timeout_s: float) -> list[events.Event]:
        batch, self._batch = self._batch, []
        if not batch:
            time.sleep(timeout_s)  # as the real one waits for records
        return batch

    def close(self) -> None:
        self.closed = True


class FakeDump:
    def __init__(self, backend: "FakeBackend", ip, port, snaplen: int):
        self.ip = dump.parse_ip(ip) if ip is not None else None
        self.port = dump.check_port(port) if port is not None else None
        self.snaplen = dump.check_snaplen(snaplen)
        self._backend = backend
        self._batches = 0
        self.lost = 0
        self.more(backend.dump_batches)

    def more(self, batches: int) -> None:
        """What the next polls return: this many more batches of dump_batch(), one a poll."""
        self._batches += batches

    def poll_raw(self, timeout_s: float) -> list[dump.Raw]:
        if not self._batches:
            time.sleep(timeout_s)
            return []
        self._batches -= 1
        return [(0, perf_record(rec)) for rec in dump_batch(self.snaplen)]

    def close(self) -> None:
        self._backend.dump_open = False


def shown(widget) -> str:
    """What a Static shows, as plain text."""
    content = widget.content
    if isinstance(content, Text):
        return content.plain
    if isinstance(content, str):
        return Text.from_markup(content).plain
    console = Console(width=300, file=io.StringIO(), color_system=None)
    console.print(content)
    return console.file.getvalue()


def screen_lines(app) -> list[str]:
    """What the terminal shows now, line by line, as plain text."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


async def wait_frames(pilot, n: int, timeout: float = 10.0) -> None:
    """Wait until the app has shown n frames, and for what they caused to settle."""
    deadline = time.monotonic() + timeout
    while pilot.app.frames < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {pilot.app.frames} of {n} frames within {timeout}s")
        await pilot.pause(0.02)
    await pilot.pause()


class FakeBackend:
    """Snapshots advance one second per call (steady rates), then stay at `steps`. The kernel
    runs the file's rules unless given a rules text of its own."""

    def __init__(self, enabled: bool = True, steps: int = 1, problem: str | None = None,
                 can_enable: bool = True, kernel_rules: str = RULES_TEXT):
        self.pin_dir = "/sys/fs/bpf/mdatui"
        self.enabled = enabled
        self.problem = problem
        self._can_enable = can_enable
        self._step = 0
        self._steps = steps
        self.file_text = RULES_TEXT
        self.ruleset = rules.to_ruleset(rules.parse(kernel_rules).rules)  # sock_param_map's live set
        self.applied: list[list[rules.Rule]] = []
        self.saved: list[tuple[str, str]] = []
        self.dump_open = False
        self.dumps_started: list[tuple] = []
        self.dump_batches = 1             # what a dump brings at first (FakeDump.more: later)
        self.dump: FakeDump | None = None  # the last one started
        self.events = FakeEvents(event_batch())
        self.enable_calls = 0
        self.fresh_reads = 0

    def snapshot(self, fresh: bool = False) -> Snapshot:
        self.fresh_reads += fresh
        if self.problem:
            raise Unavailable(self.problem)
        if not self.enabled:
            return disabled(self.pin_dir)
        snap = snapshot(self._step, self.ruleset)
        self._step = min(self._step + 1, self._steps)
        return snap

    def attribute(self, snap: Snapshot, now: float) -> dict[Endpoint, ProcessInfo]:
        return {c.end: ProcessInfo(c.owner.pid, PROCESSES.get(c.owner.pid), USERS.get(c.owner.uid))
                for c in snap.connections if c.owner.pid is not None}

    def now(self) -> float:
        return NOW

    def enable_offer(self) -> tuple[bool, str]:
        if not self._can_enable:
            return False, "enabling loads BPF programs and pins maps, which needs root: run mdatui with sudo"
        return True, f"attach to the root cgroup with the rules in {RULES_PATH}"

    def enable(self) -> str:
        self.enable_calls += 1
        self.enabled = True
        return "enabled on /sys/fs/cgroup with 3 rules"

    def open_events(self) -> FakeEvents:
        if not self.enabled:
            raise Unavailable(f"mdatui is not enabled at {self.pin_dir}")
        return self.events

    def start_dump(self, ip, port, snaplen) -> FakeDump:
        source = self.dump = FakeDump(self, ip, port, snaplen)
        self.dump_open = True
        self.dumps_started.append((ip, port, snaplen))
        return source

    def load_rules(self) -> RulesDoc:
        return RulesDoc(RULES_PATH, rules.parse(self.file_text, RULES_PATH), True)

    def apply_rules(self, config: rules.Config) -> apply.Applied:
        self.applied.append(config.rules)
        taken_off = preview(snapshot(self._step, self.ruleset).table, config.rules).taken_off
        self.ruleset = rules.to_ruleset(config.rules)
        return apply.Applied(len(config.rules), taken_off, None)

    def save_rules(self, config: rules.Config, path: str) -> None:
        self.saved.append((path, config.text()))
        self.file_text = config.text()

    def close(self) -> None:
        pass
