"""`mdatui rules list|check|add|delete|apply|watch|preset`, and the rules `enable --config` loads."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading

from ..core import apply as live
from ..core import presets, rules
from ..core.kernel.instance import Instance, NotEnabled
from .args import seconds_within
from .errors import CliError as RulesError


def _load(path: str, text: str | None = None) -> rules.Config:
    """The rules file at path (or text, as read from it), or the error that names its lines."""
    try:
        return rules.load(path) if text is None else rules.parse(text, path)
    except FileNotFoundError:
        raise RulesError(f"{path}: no such file") from None
    except rules.ParseError as e:
        raise RulesError(str(e)) from None


def ruleset_for_enable(config: str | None):
    """(kernel rule set, absolute path) for `enable --config`; (None, "") without one."""
    if not config:
        return None, ""
    return rules.to_ruleset(_load(config).rules), os.path.abspath(config)


def _running(pin_dir: str) -> Instance | None:
    try:
        return Instance(pin_dir)
    except NotEnabled:
        return None


def _enabled(pin_dir: str) -> Instance:
    """The running accelerator, for commands that need one."""
    inst = _running(pin_dir)
    if inst is None:
        raise RulesError(f"mdatui is not enabled at {pin_dir}: run `mdatui enable --cgroup DIR --config FILE` first")
    return inst


def _commit(inst: Instance | None, config: rules.Config, path: str) -> str:
    """Kernel first when it runs, then the file; report what changed."""
    if inst is None:
        rules.save(config, path)
        return f"saved {path} (mdatui is not enabled: nothing loaded into the kernel)"
    done = live.apply(inst, config, path)
    return (f"saved {path}; loaded {done.rules} rules into the kernel; " + _effect(done))


def _effect(done: live.Applied) -> str:
    return (f"{done.taken_off} accelerated connections taken off the fast path; "
            "newly accepted traffic is accelerated from its next connection on")


def _rule_json(i: int, r: rules.Rule) -> dict:
    return {
        "number": i + 1,
        "rule": rules.format_rule(r),
        "target": r.target.value,
        "ip": str(r.net) if r.net else None,
        "ports": list(r.ports) if r.ports else None,
        "uid": r.uid.id if r.uid else None,
        "gid": r.gid.id if r.gid else None,
    }


def cmd_list(a) -> int:
    inst = _running(a.pin_dir)
    try:
        path = a.config or live.default_config(inst)
        config = _load(path)
        in_kernel = None
        if inst is not None:
            running = rules.from_ruleset(inst.active_rules())
            in_kernel = rules.first_difference(running, config.rules) is None
    finally:
        if inst:
            inst.close()
    if a.json:
        print(json.dumps({"config": path, "in_kernel": in_kernel,
                          "rules": [_rule_json(i, r) for i, r in enumerate(config.rules)]}, indent=2))
        return 0
    state = {None: "mdatui not enabled", True: "loaded in the kernel",
             False: "differs from the kernel: run `mdatui rules apply`"}[in_kernel]
    print(f"{path}: {len(config.rules)} rules ({state})")
    if not config.rules:
        print("  (no rules: every connection is accelerated)")
    for i, r in enumerate(config.rules):
        print(f"  {i + 1:>3}  {rules.format_rule(r)}")
    return 0


def cmd_check(a) -> int:
    path = a.file or live.default_config()
    config = _load(path)
    print(f"{path}: {len(config.rules)} rules, no errors")
    return 0


def _edit(a, change) -> int:
    inst = _running(a.pin_dir)
    try:
        path = a.config or live.default_config(inst)
        config = _load(path)
        said = change(config, path)
        print(said)
        print(_commit(inst, config, path))
    finally:
        if inst:
            inst.close()
    return 0


def cmd_add(a) -> int:
    try:
        rule = rules.parse_rule(a.rule, path="<rule>")
    except rules.ParseError as e:
        raise RulesError(str(e)) from None

    def change(config: rules.Config, path: str) -> str:
        try:
            n = config.add(rule)
        except ValueError as e:
            raise RulesError(f"{path}: {e}") from None
        return f"rule {n + 1}: {rules.format_rule(rule)}"
    return _edit(a, change)


def cmd_delete(a) -> int:
    def change(config: rules.Config, path: str) -> str:
        count = len(config.rules)
        if not 1 <= a.number <= count:
            raise RulesError(f"{path}: there is no rule {a.number} (it has {count})")
        gone = config.delete(a.number - 1)
        return f"deleted rule {a.number}: {rules.format_rule(gone)}"
    return _edit(a, change)


def cmd_apply(a) -> int:
    with _enabled(a.pin_dir) as inst:
        path = a.file or live.default_config(inst)
        said = _applied(inst, _load(path), path)
    print(said)
    return 0


def _applied(inst: Instance, config: rules.Config, path: str) -> str:
    """Load the rules of a file into the running kernel (the file is not written), as `rules
    apply` and each change `rules watch` sees do; the line they print."""
    done = live.apply(inst, config, None)
    return f"applied {done.rules} rules from {path}; " + _effect(done)


# ------------------------------------------------------------------------------ rules watch

def _say(line: str, error: bool = False) -> None:
    # One line at a time, at once: a container's stdout is a pipe, and its log is what is read.
    print(line, file=sys.stderr if error else sys.stdout, flush=True)


def _read_version(path: str) -> tuple[tuple[str, str], str]:
    """((resolved path, SHA-256 of the content), text) of the rules file as it is now.

    Kubernetes updates a mounted ConfigMap by writing a new directory and pointing the `..data`
    symlink at it, so the resolved path names a version; it is read through that path, so that
    path and content belong together even when the link is swapped meanwhile.
    """
    for _ in range(3):
        real = os.path.realpath(path)
        try:
            with open(real, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            if real == path:
                raise
            continue  # the version just resolved was swapped out and removed: resolve again
        return (real, hashlib.sha256(data).hexdigest()), data.decode("utf-8", "surrogateescape")
    raise FileNotFoundError(2, os.strerror(2), path)


class _Watcher:
    """Acts once on each version of the rules file: loads it when it differs from what the
    kernel runs, or says why not and leaves the kernel's rules as they are."""

    def __init__(self, path: str, pin_dir: str):
        self.path, self.pin_dir = path, pin_dir
        self.seen: tuple | None = None  # the version last acted on
        self.waiting = False            # said that nothing is enabled

    def tick(self) -> None:
        try:
            version, text = _read_version(self.path)
        except OSError as e:
            if ("unreadable", e.strerror) != self.seen:
                self.seen = ("unreadable", e.strerror)
                _say(f"{self.path}: {e.strerror or e}; the rules loaded before keep running", error=True)
            return
        if version == self.seen:
            return
        inst = _running(self.pin_dir)
        if inst is None:  # disabled meanwhile: tried again at each tick, said once
            if not self.waiting:
                _say(f"mdatui is not enabled at {self.pin_dir}: {self.path} is loaded when it is",
                     error=True)
            self.waiting = True
            return
        self.waiting = False
        with inst:
            self.seen = version
            self._act(inst, text)

    def _act(self, inst: Instance, text: str) -> None:
        running = rules.from_ruleset(inst.active_rules())
        kept = f"the {len(running)} rules loaded before keep running"
        try:
            config = _load(self.path, text)
        except RulesError as e:
            _say(f"{e}\nrules watch: {self.path} not applied; {kept}", error=True)
            return
        if rules.first_difference(running, config.rules) is None:
            _say(f"{self.path}: {len(config.rules)} rules, as the kernel runs them already")
            return
        try:
            _say(_applied(inst, config, self.path))
        except (OSError, ValueError) as e:
            _say(f"rules watch: the kernel did not take {self.path} ({e}); {kept}", error=True)


def cmd_watch(a) -> int:
    with _enabled(a.pin_dir) as inst:
        path = a.file or live.default_config(inst)
    stop = threading.Event()
    before = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _say(f"watching {path} every {a.interval:g} s: each change is checked and loaded into "
             f"the accelerator at {a.pin_dir}")
        watcher = _Watcher(path, a.pin_dir)
        while not stop.is_set():
            watcher.tick()  # a signal lets a change being loaded finish first
            stop.wait(a.interval)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    _say(f"stopped watching {path}")
    return 0


def _current_text(path: str) -> str:
    """The file a preset replaces, as it is ("" when there is none yet); errors say what is wrong
    with the path before anything is written."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return f.read()
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise RulesError(f"{path}: no such directory {parent}: give --config a file in "
                             "an existing directory") from None
        return ""
    except IsADirectoryError:
        raise RulesError(f"{path} is a directory: give --config a rules file") from None
    except OSError as e:
        raise RulesError(f"{path}: {e.strerror}") from None


def cmd_preset(a) -> int:
    preset = presets.load(a.name)
    inst = _running(a.pin_dir)
    try:
        if a.apply and inst is None:
            raise RulesError(f"mdatui is not enabled at {a.pin_dir}: run `mdatui enable --cgroup DIR "
                             "--config FILE` first, or leave out --apply")
        path = a.config or live.default_config(inst)
        change = presets.diff(_current_text(path), preset.text(), path, a.name)
        print(change or f"{path} holds the {a.name} preset already\n", end="")
        if a.apply:
            print(_commit(inst, preset, path))
        elif change:
            rules.save(preset, path)
            print(f"saved {path} ({len(preset.rules)} rules); "
                  + (f"not loaded: add --apply, or run `mdatui rules apply {path}`" if inst
                     else f"mdatui is not enabled: `mdatui enable --cgroup DIR --config {path}` loads them"))
    finally:
        if inst:
            inst.close()
    return 0


def add_parser(sub, pin_arg) -> None:
    top = sub.add_parser("rules", help="list, check, edit and apply chain rules")
    rsub = top.add_subparsers(dest="rules_cmd", required=True)

    def cmd(name: str, func, help: str) -> argparse.ArgumentParser:
        p = rsub.add_parser(name, help=help)
        pin_arg(p)
        p.set_defaults(func=func)
        return p

    p = cmd("list", cmd_list, "show the rules of the config file")
    p.add_argument("--json", action="store_true")
    p.add_argument("--config", default=argparse.SUPPRESS, help="rules file (default: the one enable loaded)")
    p = cmd("check", cmd_check, "validate a rules file; every error is listed")
    p.add_argument("file", nargs="?")
    p = cmd("add", cmd_add, "append a rule (applied live when enabled), e.g. 'chain --port 80 -j RETURN'")
    p.add_argument("rule")
    p.add_argument("--config", default=argparse.SUPPRESS)
    p = cmd("delete", cmd_delete, "delete rule N (as numbered by `rules list`)")
    p.add_argument("number", type=int)
    p.add_argument("--config", default=argparse.SUPPRESS)
    p = cmd("apply", cmd_apply, "load a rules file into the running kernel")
    p.add_argument("file", nargs="?")
    p = cmd("watch", cmd_watch, "load a rules file into the running kernel each time it changes "
            "(a mounted ConfigMap too); a bad version is reported and the rules running stay")
    p.add_argument("file", nargs="?")
    p.add_argument("--interval", type=seconds_within(0.05, 3600), default=2.0, metavar="SECONDS",
                   help="how often the file is looked at (default 2)")
    p = cmd("preset", cmd_preset, "replace the rules file with a preset, shown as a diff first")
    p.add_argument("name", choices=presets.NAMES)
    p.add_argument("--config", default=argparse.SUPPRESS,
                   help="rules file to write (default: the one enable loaded)")
    p.add_argument("--apply", action="store_true", help="also load it into the running kernel")

