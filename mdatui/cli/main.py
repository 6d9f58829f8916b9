"""`mdatui` entry point: the console by default, scriptable subcommands beside it."""

from __future__ import annotations

import argparse
import sys

from ..core import doctor, jsonout, lifecycle, reader, snapshot, units
from ..core.backend import DUMP_KEEP
from ..core.kernel import abi, system
from ..core.kernel.instance import DEFAULT_PIN_DIR, Instance, NotEnabled
from .args import seconds_within, whole_within
from .errors import CliError

DEMO_CLIENTS_MAX = 8  # the n-th sends 256 B << (n - 1) a message: 32 KiB for the 8th
DEMO_SECONDS_MAX = 7 * 86400


def _pin_arg(p: argparse.ArgumentParser, default: str = argparse.SUPPRESS) -> None:
    """--pin-dir. A subcommand's own takes no default, so that `mdatui --pin-dir D query` means
    D, as `mdatui query --pin-dir D` does (argparse would let the subcommand's default win)."""
    p.add_argument("--pin-dir", default=default,
                   help=f"where maps and programs are pinned (default {DEFAULT_PIN_DIR})")


def _preflight(pin_dir: str) -> None:
    """Print the checks that fail; stop when one of them means the accelerator cannot run."""
    checks = doctor.run(doctor.Host(pin_dir=pin_dir))
    for c in checks:
        if not c.ok:
            print(c.line(), file=sys.stderr)
    if doctor.blocking(checks):
        raise CliError("mdatui: this host cannot run the accelerator: do what the FAIL lines say "
                       "(`mdatui doctor` lists every check)")


def cmd_doctor(a) -> int:
    checks = doctor.run(doctor.Host(pin_dir=a.pin_dir))
    for c in checks:
        print(c.line())
    return 1 if doctor.blocking(checks) else 0


def cmd_enable(a) -> int:
    from . import rules_cmd
    if a.cgroup is None:
        raise CliError("mdatui: enable needs --cgroup DIR, the cgroup v2 directory whose processes' "
                       "TCP connections are accelerated (the pods' cgroup); the cgroup2 root, "
                       f"--cgroup {system.cgroup2_root()}, means every connection of this host, the "
                       "one you may be logged in over included")
    _preflight(a.pin_dir)
    ruleset, config = rules_cmd.ruleset_for_enable(a.config)
    res = lifecycle.enable(cgroup=a.cgroup, pin_dir=a.pin_dir, config=config, ruleset=ruleset,
                        max_sockets=a.max_sockets, serve=not a.no_serve,
                        nodelay_streams=a.nodelay_streams)
    with res.instance as inst:
        ids = ", ".join(f"{k}={v}" for k, v in inst.program_ids().items())
        if res.already:
            what = "rules reloaded" if ruleset is not None else "nothing attached twice"
            print(f"already enabled on {inst.cgroup} ({what}); programs {ids}")
        else:
            print(f"enabled on {inst.cgroup}; pinned at {inst.pin_dir}; programs {ids}")
        print("TCP_NODELAY streams: " + snapshot.nodelay_text(inst.nodelay_streams))
    if res.service is None:
        print("drain service: not running; start `mdatui serve` (ends that leave the fast path "
              "stay in the sockhash until it runs)")
    else:
        print(f"drain service: running (pid {res.service})")
    return 0


def cmd_serve(a) -> int:
    from ..core import service
    system.require_root("serve")
    if a.metrics:
        from . import metrics_cmd
        metrics_cmd.start(a.metrics, a.pin_dir)
    return service.serve(a.pin_dir)


def cmd_disable(a) -> int:
    try:
        res = lifecycle.disable(a.pin_dir)
    except NotEnabled:
        print(f"not enabled: nothing pinned at {a.pin_dir}")
        return 0
    said = [f"disabled on {res.cgroup}; open connections continue over the normal stack"]
    if res.left:
        said.append(f"{res.left} ends drained and left the sockhash")
    if res.handed:
        said.append(f"{res.handed} still draining: `mdatui serve` finishes them")
    print("; ".join(said))
    return 0


def cmd_query(a) -> int:
    try:
        inst = Instance(a.pin_dir)
    except NotEnabled:
        snap = snapshot.disabled(a.pin_dir)
    except PermissionError:
        raise CliError("mdatui: query needs root to open the pinned maps: run it as root (or with sudo)") from None
    else:
        with inst:
            snap = reader.read(inst)
    if a.json or a.jsonl:
        (jsonout.write_jsonl if a.jsonl else jsonout.write_json)(snap, sys.stdout, a.connections)
        return 0
    if not snap.enabled:
        print(f"mdatui: not enabled (nothing pinned at {a.pin_dir})")
        return 0
    print(f"mdatui: enabled on {snap.cgroup}")
    print("  programs: " + ", ".join(f"{k} id {v}" for k, v in snap.programs.items()))
    for name, m in snap.maps.items():
        print(f"  {name}: {m['entries']} entries (of {m['capacity']})")
    print(f"  rules: {snap.rules_active} active; config {snap.config or '(none)'}")
    print("  drain service: " + (snap.service_text() or "not running (start `mdatui serve`)"))
    print("  TCP_NODELAY streams: " + snapshot.nodelay_text(snap.nodelay_streams))
    print(f"  redirected: {snap.redirected_msgs} msgs, {units.size(snap.redirected_bytes)}; "
          f"{snap.pairs} pairs now")
    if snap.stats.get("short") or snap.short_lived:
        print("  kept off: " + snap.kept_off())
    noisy = {k: v for k, v in snap.stats.items() if v and k.endswith(("full", "failed", "lost"))}
    if noisy:
        print("  fallbacks: " + ", ".join(f"{k}={v}" for k, v in noisy.items()))
    if a.connections:
        print(f"  {'LOCAL':<22} {'REMOTE':<22} {'STATE':<12} {'MSGS':>10} {'BYTES':>12} {'PASSED':>8}")
        for c in snap.connections:
            print(f"  {c.end.local:<22} {c.end.remote:<22} {c.state:<12} {c.msgs:>10} "
                  f"{c.bytes:>12} {c.passed:>8}")
    return 0


def cmd_demo(a) -> int:
    from ..lab import demo
    system.require_root("demo")
    if a.clean:
        removed = demo.clean()
        print("\n".join(f"removed {item}" for item in removed) or "nothing left by earlier demos")
        return 0
    print("demo: building pods, sidecars and traffic in a private cgroup ...", file=sys.stderr)
    with demo.running(clients=a.clients, seconds=a.seconds) as d:
        if a.no_console:
            import time
            time.sleep(a.seconds)
            snap = reader.read(d.instance)
            jsonout.write_json(snap, sys.stdout, connections=True)
            return 0
        from ..ui.app import run_console
        return run_console(d.pin_dir, interval=a.refresh, dump_keep=a.dump_keep)


def _messages(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of messages") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: the dump keeps at least 1 message")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mdatui", description=__doc__)
    _pin_arg(ap, DEFAULT_PIN_DIR)
    ap.add_argument("--refresh", type=seconds_within(0.1, 60), default=1.0, metavar="SECONDS",
                    help="how often the console reads the maps (default 1)")
    ap.add_argument("--dump-keep", type=_messages, default=DUMP_KEEP, metavar="N",
                    help=f"messages the Dump tab keeps, the newest (default {DUMP_KEEP})")
    ap.add_argument("--config", help="rules the console's enable offer loads")
    ap.add_argument("--cgroup", help="cgroup the console's enable offer attaches to "
                    "(default: the cgroup2 root, every TCP connection of the host)")
    sub = ap.add_subparsers(dest="cmd")

    p = sub.add_parser("enable", help="load and attach the accelerator, then exit")
    # Like --pin-dir, these also count when given before `enable` (no default of their own).
    p.add_argument("--config", default=argparse.SUPPRESS,
                   help="chain rules file to load (default: none, accelerate all)")
    p.add_argument("--cgroup", default=argparse.SUPPRESS, metavar="DIR",
                   help="cgroup v2 directory to attach to (required; the cgroup2 root "
                   "accelerates every TCP connection of the host)")
    p.add_argument("--max-sockets", type=int, default=abi.MAX_SOCKS,
                   help=f"sockets the maps hold, two per connection (default {abi.MAX_SOCKS})")
    p.add_argument("--no-serve", action="store_true",
                   help="do not start `mdatui serve` (systemd runs it as the unit's process)")
    p.add_argument("--nodelay-streams", choices=abi.NODELAY_STREAMS,
                   help="where a stream of TCP_NODELAY writes whose ends are on two CPUs goes: back "
                        "to the stack (the default: on some machines the fast path is slower for "
                        "it) or kept on the fast path (measure first: README, Streams); on a "
                        "running accelerator, changes it from then on")
    _pin_arg(p)
    p.set_defaults(func=cmd_enable)

    p = sub.add_parser("doctor", help="check that this host can run the accelerator (exit 0 if so)")
    _pin_arg(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("serve", help="the resident part: takes drained ends out of the sockhash")
    from . import metrics_cmd
    p.add_argument("--metrics", type=metrics_cmd.listen_arg, metavar="HOST:PORT",
                   help="also serve Prometheus metrics at http://HOST:PORT/metrics (as `mdatui metrics`)")
    _pin_arg(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("disable", help="detach and unpin; connections continue unaccelerated")
    _pin_arg(p)
    p.set_defaults(func=cmd_disable)

    p = sub.add_parser("query", help="state of the accelerator")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--jsonl", action="store_true",
                     help="JSON lines: the --json object without connections, then one per end")
    p.add_argument("--connections", action="store_true", help="list every accelerated end")
    _pin_arg(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("demo", help="build a small mesh in private namespaces and watch it")
    p.add_argument("--refresh", type=seconds_within(0.1, 60), default=argparse.SUPPRESS, metavar="SECONDS",
                   help="how often the console reads the maps (default 1)")
    p.add_argument("--dump-keep", type=_messages, default=argparse.SUPPRESS, metavar="N",
                   help=f"messages the Dump tab keeps, the newest (default {DUMP_KEEP})")
    p.add_argument("--clients", type=whole_within(1, DEMO_CLIENTS_MAX), default=3, metavar="N",
                   help=f"client processes through the mesh, the n-th sending 10n messages a second "
                        f"of 256 B << (n - 1) (default 3, at most {DEMO_CLIENTS_MAX})")
    p.add_argument("--seconds", type=seconds_within(1, DEMO_SECONDS_MAX), default=1800, metavar="S",
                   help="traffic stops after this long (default 1800, at most a week)")
    p.add_argument("--no-console", action="store_true",
                   help="print the accelerator's state after --seconds instead of opening the console")
    p.add_argument("--clean", action="store_true",
                   help="remove what demos that were killed left (namespaces, cgroups, pins, processes)")
    p.set_defaults(func=cmd_demo)

    from . import rules_cmd
    rules_cmd.add_parser(sub, _pin_arg)
    from . import dump_cmd
    dump_cmd.add_parser(sub, _pin_arg)
    metrics_cmd.add_parser(sub, _pin_arg)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        if a.cmd is None:
            from ..ui.app import run_console
            return run_console(a.pin_dir, interval=a.refresh, config=a.config, cgroup=a.cgroup,
                               dump_keep=a.dump_keep)
        return a.func(a)
    except CliError as e:
        print(e, file=sys.stderr)
        return 1
    except (system.SetupError, NotEnabled) as e:
        print(f"mdatui: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
