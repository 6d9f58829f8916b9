"""Add or edit one chain rule. Every keystroke re-parses it with the rules parser, so the form
shows exactly the messages `mdatui rules check` would, under the field they are about."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from ...core import rules

# Form field -> the option it writes; in the order the canonical form writes them.
FIELDS = (("ip", "--ip", "CIDR, e.g. 10.0.0.0/8"), ("port", "--port", "N or N-M"),
          ("uid", "--uid-owner", "user name or uid"), ("gid", "--gid-owner", "group name or gid"))


def compose_line(target: str, values: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """The rule line for the form's fields, and the 1-based columns each field's option and value
    take in it, so that each parser error can be shown under the field it is about."""
    line, spans = "chain", {}
    for name, option, _ in FIELDS:
        value = values.get(name, "").strip()
        if value:
            start = len(line) + 2
            line += f" {option} {value}"
            spans[name] = (start, len(line))
    start = len(line) + 2
    line += f" -j {target}"
    spans["target"] = (start, len(line))
    return line, spans


def field_of(col: int, spans: dict[str, tuple[int, int]]) -> str:
    return next((name for name, (start, end) in spans.items() if start <= col <= end), "target")


class RuleFormScreen(ModalScreen[rules.Rule | None]):
    """Dismisses with the rule, or None when cancelled. Nothing is applied here."""

    CSS_PATH = "rule_form.tcss"
    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("ctrl+s", "submit", "Done"),
    ]

    def __init__(self, title: str, rule: rules.Rule | None = None) -> None:
        super().__init__()
        self._title = title
        self._initial = rule
        self.rule: rules.Rule | None = None

    def compose(self) -> ComposeResult:
        rule = self._initial
        with Vertical(id="rf-box"):
            with Grid(id="rf-grid"):
                yield Label("target")
                yield Select([("ACCEPT", "ACCEPT"), ("RETURN", "RETURN")], allow_blank=False,
                             value=rule.target.value if rule else "RETURN", id="rf-target", compact=True)
                yield Static(id="rf-target-error", classes="rf-error")
                for name, option, hint in FIELDS:
                    yield Label(option.lstrip("-"))
                    yield Input(self._initial_value(name), placeholder=f"any ({hint})", id=f"rf-{name}",
                                compact=True)
                    yield Static(id=f"rf-{name}-error", classes="rf-error")
            yield Static(id="rf-line")
            with Horizontal(id="rf-buttons"):
                yield Button("Done", id="rf-ok", variant="primary", compact=True)
                yield Button("Cancel", id="rf-cancel", compact=True)

    def _initial_value(self, name: str) -> str:
        rule = self._initial
        if rule is None:
            return ""
        value = {"ip": rule.net, "uid": rule.uid, "gid": rule.gid}.get(name)
        if name == "port" and rule.ports:
            lo, hi = rule.ports
            value = str(lo) if lo == hi else f"{lo}-{hi}"
        return "" if value is None else str(value)

    def on_mount(self) -> None:
        self.query_one("#rf-box").border_title = self._title
        self._validate()
        self.query_one("#rf-ip", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._validate()

    def on_select_changed(self, event: Select.Changed) -> None:
        self._validate()

    def _validate(self) -> None:
        values = {name: self.query_one(f"#rf-{name}", Input).value for name, _, _ in FIELDS}
        line, spans = compose_line(str(self.query_one("#rf-target", Select).value), values)
        errors: dict[str, list[str]] = {}
        try:
            self.rule = rules.parse_rule(line)
        except rules.ParseError as e:
            self.rule = None
            for err in e.errors:
                errors.setdefault(field_of(err.col, spans), []).append(err.message)
        for name in ("target", *(n for n, _, _ in FIELDS)):
            messages = errors.get(name, [])
            error = self.query_one(f"#rf-{name}-error", Static)
            error.update(Text("\n".join(messages), style="red"))
            error.display = bool(messages)
            if name != "target":
                self.query_one(f"#rf-{name}", Input).set_class(bool(messages), "-invalid")
        shown = rules.format_rule(self.rule) if self.rule else line
        self.query_one("#rf-line", Static).update(
            Text.assemble(("rule  ", "dim"), (shown, "bold" if self.rule else "red")))
        self.query_one("#rf-ok", Button).disabled = self.rule is None

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "rf-ok":
            self.action_submit()
        else:
            self.dismiss(None)

    def action_submit(self) -> None:
        if self.rule is not None:
            self.dismiss(self.rule)
