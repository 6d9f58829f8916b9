"""Rules as text: one `chain` line, and a whole file kept as a document that saves back as read."""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from ..kernel import abi
from .model import MAX_ID, NamedId, ParseError, Rule, RuleError, Target, format_rule


class _Bad(Exception):
    """A value is wrong; the message says how."""


# Option -> the Rule field it sets.
_OPTIONS = {
    "--ip": "net", "-i": "net",
    "--port": "ports", "--ports": "ports", "-p": "ports",
    "--uid-owner": "uid", "-u": "uid",
    "--gid-owner": "gid", "-g": "gid",
    "-j": "target", "--j": "target", "--jump": "target",
}
_CIDR = re.compile(r"([0-9A-Fa-f:.]+)(?:/([0-9]+))?", re.ASCII)
_IPV4ISH = re.compile(r"[0-9./]+", re.ASCII)  # what an IPv4 CIDR is written with
_PORTS = re.compile(r"([0-9]+)(?:-([0-9]+))?", re.ASCII)
_NUMBER = re.compile(r"[0-9]+", re.ASCII)
_TOKEN = re.compile(r"\S+")


def _bounded(digits: str, hi: int) -> int | None:
    """int(digits) if it is at most hi, else None. Length first: int() refuses very long strings."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(hi)) or int(digits) > hi:
        return None
    return int(digits)


def _parse_ip(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An IPv4 or IPv6 CIDR, or an address (a /32 or /128)."""
    m = _CIDR.fullmatch(text)
    version = 6 if ":" in text else 4 if _IPV4ISH.fullmatch(text) else None
    kind = {4: "an IPv4 CIDR", 6: "an IPv6 CIDR", None: "an IPv4 or IPv6 CIDR"}[version]
    try:
        address = ipaddress.ip_address(m[1]) if m and version else None
    except ValueError:
        address = None
    if address is None or address.version != version:
        raise _Bad(f"'{text}' is not {kind}")
    bits = address.max_prefixlen
    prefix = bits if m[2] is None else _bounded(m[2], bits)
    if prefix is None:
        raise _Bad(f"'{text}': prefix length must be 0-{bits}")
    net = ipaddress.ip_network((address, prefix), strict=False)
    if net.network_address != address:
        raise _Bad(f"'{text}' has host bits set; did you mean {net}")
    if net.version == 6 and prefix >= 96 and net.network_address.ipv4_mapped is not None:
        # The kernel keeps IPv4 rules in this form (core.addrs): one way to write each rule.
        mapped = ipaddress.IPv4Network((net.network_address.ipv4_mapped, prefix - 96))
        raise _Bad(f"'{text}' is an IPv4-mapped network; write it as {mapped}")
    return net


def _parse_ports(text: str) -> tuple[int, int]:
    m = _PORTS.fullmatch(text)
    if not m:
        raise _Bad(f"'{text}' is not a port or port range (N or N-M)")
    ends = []
    for digits in (m[1], m[2] or m[1]):
        port = _bounded(digits, 65535)
        if not port:
            raise _Bad(f"port {digits} is out of range 1-65535")
        ends.append(port)
    lo, hi = ends
    if lo > hi:
        raise _Bad(f"port range '{text}' is reversed; did you mean {hi}-{lo}")
    return lo, hi


def _owner_parser(kind: str, lookup: Callable[[str], int]) -> Callable[[str], NamedId]:
    def parse(text: str) -> NamedId:
        if _NUMBER.fullmatch(text):
            number = _bounded(text, MAX_ID)
            if number is None:
                raise _Bad(f"{kind} id {text} is out of range 0-{MAX_ID}")
            return NamedId(number)
        try:
            return NamedId(lookup(text), text)
        except (KeyError, ValueError):  # ValueError: a NUL or unencodable character in the name
            raise _Bad(f"unknown {kind} '{text}'") from None
    return parse


def _parse_target(text: str) -> Target:
    try:
        return Target(text.upper())
    except ValueError:
        raise _Bad(f"'{text}' is not a target; use ACCEPT or RETURN") from None


_VALUE_PARSERS = {
    "net": _parse_ip,
    "ports": _parse_ports,
    "uid": _owner_parser("user", lambda name: pwd.getpwnam(name).pw_uid),
    "gid": _owner_parser("group", lambda name: grp.getgrnam(name).gr_gid),
    "target": _parse_target,
}


def _code(line: str) -> str:
    """The line without its comment."""
    return line.split("#", 1)[0]


def _parse_line(line: str, path: str, line_no: int) -> tuple[Rule | None, list[RuleError]]:
    """The rule on a line (None if it has none or a wrong one) and what is wrong with it."""
    tokens = list(_TOKEN.finditer(_code(line)))
    errors: list[RuleError] = []

    def error(token: re.Match, message: str) -> None:
        errors.append(RuleError(path, line_no, token.start() + 1, message))

    if not tokens:
        return None, errors
    if tokens[0][0] != "chain":
        error(tokens[0], f"expected 'chain' at the start of a rule, got '{tokens[0][0]}'")
        return None, errors
    fields: dict[str, object] = {}
    seen: dict[str, re.Match] = {}
    i = 1
    while i < len(tokens):
        option = tokens[i]
        field = _OPTIONS.get(option[0])
        i += 1
        if field is None:
            error(option, f"unknown option '{option[0]}'" if option[0].startswith("-")
                  else f"unexpected '{option[0]}'; options start with -")
            # What follows is most likely its value: one mistake, one error.
            if i < len(tokens) and tokens[i][0] not in _OPTIONS:
                i += 1
            continue
        if field in seen:
            error(option, f"duplicate option '{option[0]}' (already given at column {seen[field].start() + 1})")
        seen.setdefault(field, option)
        if i == len(tokens) or tokens[i][0] in _OPTIONS:
            error(option, f"option '{option[0]}' needs a value")
            continue
        value = tokens[i]
        i += 1
        try:
            fields[field] = _VALUE_PARSERS[field](value[0])
        except _Bad as bad:
            error(value, str(bad))
    if "target" not in seen:
        error(tokens[0], "rule has no target; add -j ACCEPT or -j RETURN")
    if errors:
        return None, errors
    return Rule(**fields), errors


def parse_rule(text: str, path: str = "<rule>") -> Rule:
    """One rule, as typed into an editor or on the command line; errors are relative to text."""
    if "\n" in text:
        raise ParseError([RuleError(path, 1, text.index("\n") + 1, "a rule is a single line")])
    rule, errors = _parse_line(text, path, 1)
    if errors:
        raise ParseError(errors)
    if rule is None:
        raise ParseError([RuleError(path, 1, 1, "no rule here; a rule starts with 'chain'")])
    return rule


# ---------------------------------------------------------------- the whole file

@dataclass
class _Line:
    text: str  # verbatim, line ending included, so that saving an unedited file changes nothing
    rule: Rule | None


class Config:
    """A rules file as a document: its rules, plus the comments, blank lines and order around them.

    Edits rewrite only the rule lines involved, in canonical form; every other line stays as read.
    """

    def __init__(self, lines: list[_Line] | None = None):
        self._lines = lines or []

    @property
    def rules(self) -> list[Rule]:
        return [line.rule for line in self._lines if line.rule is not None]

    def text(self) -> str:
        return "".join(line.text for line in self._lines)

    def add(self, rule: Rule) -> int:
        """Appends a rule at the end of the file; returns its index."""
        count = len(self.rules)
        if count >= abi.MAX_RULES:
            raise ValueError(f"at most {abi.MAX_RULES} rules fit in the kernel")
        self._lines.append(_Line(format_rule(rule) + "\n", rule))
        self._seal()
        return count

    def delete(self, index: int) -> Rule:
        return self._lines.pop(self._position(index)).rule

    def replace(self, index: int, rule: Rule) -> None:
        """Rewrites rule `index`, keeping a comment that trails it."""
        line = self._lines[self._position(index)]
        body = line.text.rstrip("\r\n")
        code, hash_, comment = body.partition("#")
        trailer = code[len(code.rstrip()):] + hash_ + comment if hash_ else ""
        line.text = format_rule(rule) + trailer + line.text[len(body):]
        line.rule = rule

    def move(self, index: int, to: int) -> None:
        """Moves rule `index` to become rule `to`; the lines around it stay where they are."""
        line = self._lines[self._position(index)]
        if not 0 <= to < len(self.rules):
            raise IndexError(f"no rule {to}")
        if index == to:
            return
        self._lines.remove(line)
        if to < len(self.rules):
            self._lines.insert(self._position(to), line)
        else:
            self._lines.insert(self._position(to - 1) + 1, line)
        self._seal()

    def _seal(self) -> None:
        """Ends every line but the last with a newline: a file's unterminated last line may no
        longer be last after an edit, and would otherwise merge with the line after it."""
        for line in self._lines[:-1]:
            if not line.text.endswith("\n"):
                line.text += "\n"

    def _position(self, index: int) -> int:
        positions = [i for i, line in enumerate(self._lines) if line.rule is not None]
        if not 0 <= index < len(positions):
            raise IndexError(f"no rule {index}")
        return positions[index]


def parse(text: str, path: str = "oncn-mda.conf") -> Config:
    """A whole rules file; ParseError carries every error in it, not only the first."""
    pieces = text.split("\n")
    raw = [piece + "\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    lines: list[_Line] = []
    errors: list[RuleError] = []
    count = 0
    for line_no, line_text in enumerate(raw, 1):
        rule, line_errors = _parse_line(line_text, path, line_no)
        errors += line_errors
        if _code(line_text).strip():
            count += 1
            if count == abi.MAX_RULES + 1:
                col = len(line_text) - len(line_text.lstrip()) + 1
                errors.append(RuleError(path, line_no, col,
                                        f"too many rules: at most {abi.MAX_RULES} fit in the kernel"))
        lines.append(_Line(line_text, rule))
    if errors:
        raise ParseError(errors)
    return Config(lines)


# surrogateescape: bytes that are not UTF-8 (a latin-1 comment, say) survive load -> save as they were
_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}


def load(path: str | os.PathLike) -> Config:
    """Reads and parses a rules file. A missing file is an error (FileNotFoundError names it)."""
    with open(path, **_ENCODING) as f:
        return parse(f.read(), os.fspath(path))


def save(config: Config, path: str | os.PathLike) -> None:
    """Writes atomically: readers see the old file or the new one, never a half-written one."""
    target = os.path.realpath(path)  # replace the file a symlink points to, not the link
    directory = os.path.dirname(target)
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", **_ENCODING) as f:
            f.write(config.text())
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        os.unlink(temp)
        raise
    # Until the directory is synced, a crash can still bring back the old name.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
