"""Rules: the chain rules as a table; edit them, see what a change would do, apply, save, revert.

Three copies are in play and the status line says how they differ: the rules file, what the
kernel runs (read back from it every refresh), and the edited table.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Static
from textual.worker import Worker, WorkerState

from ...core import apply, rules
from ...core.backend import Frame, RulesDoc, Unavailable
from ...core.ends import ACCELERATED
from ...core.verdicts import BothEnds, ConnectionPairs, preview
from ..screens.rule_form import RuleFormScreen
from .base import View

SHOWN_CHANGES = 12  # connections listed by name in the preview; the rest are counted


def _no_frame() -> None:
    """A reference to no frame."""


def _copy(config: rules.Config, path: str) -> rules.Config:
    return rules.parse(config.text(), path)


def _matches(rule: rules.Rule, pairs: ConnectionPairs | None) -> int:
    """Accelerated connections the rule matches."""
    return 0 if pairs is None else int(np.count_nonzero(pairs.matching(rule)))


def _ports(ports: tuple[int, int] | None) -> str:
    if ports is None:
        return "any"
    lo, hi = ports
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _pair_text(pair: BothEnds) -> str:
    c = pair.connecting
    return f"{c.end.local} → {c.end.remote}"


def _rules_count(n: int) -> str:
    return f"{n} rule" if n == 1 else f"{n} rules"


def kernel_vs_file(kernel: list[rules.Rule], file: list[rules.Rule]) -> Text:
    """Whether the kernel runs the file's rules (as it sees them: users and groups by number),
    and if not, the first place they part."""
    at = rules.first_difference(kernel, file)
    if at is None:
        return Text("same as file", style="green")
    if at == len(file):
        how = f"it runs {_rules_count(len(kernel) - at)} the file has not, from rule {at}: {kernel[at]}"
    elif at == len(kernel):
        how = f"it lacks the file's {_rules_count(len(file) - at)} from rule {at}: {file[at]}"
    else:
        how = f"rule {at} is {kernel[at]} there, {file[at]} in the file"
    return Text(f"differs: {how}", style="bold red")


class RulesView(View):
    MAIN = "#rules-table"
    BINDINGS = [
        Binding("a", "add", "Add"),
        Binding("e", "edit", "Edit"),
        Binding("x,delete", "delete", "Delete"),
        Binding("K,shift+up", "move(-1)", "Move up", key_display="K", show=False),
        Binding("J,shift+down", "move(1)", "Move down", key_display="J", show=False),
        Binding("A", "apply", "Apply"),
        Binding("S", "save", "Save"),
        Binding("R", "revert", "Revert"),
    ]

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.doc: RulesDoc | None = None
        self.edited: rules.Config = rules.Config()
        self._frame: Frame | None = None
        self._drawn: Callable[[], Frame | None] = _no_frame  # the frame the tab shows
        self._load_error: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="rules-status")
        with Horizontal(id="rules-body"):
            yield DataTable(id="rules-table", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="rules-preview-box"):
                yield Static(id="rules-preview")

    def on_mount(self) -> None:
        table = self.query_one("#rules-table", DataTable)
        for label, key in (("#", "n"), ("Target", "target"), ("IP", "ip"), ("Port", "port"),
                           ("User", "uid"), ("Group", "gid"), ("Matches", "matches")):
            table.add_column(label, key=key)
        self.query_one("#rules-preview-box").border_title = "If applied now"
        self.reload()

    # ------------------------------------------------------------ loading

    def reload(self) -> None:
        """The file as it is on disk."""
        try:
            doc = self.app.backend.load_rules()
        except (OSError, rules.ParseError, Unavailable) as e:
            self._load_error = str(e)
            self.app.note(f"rules: {e}", "error")
            self._show_rules()
            return
        self.doc, self._load_error = doc, None
        self.edited = _copy(doc.config, doc.path)
        self._show_rules()

    def shows_nothing_new(self, frame: Frame) -> bool:
        # Rule match counts and the preview come from the ends, the status from the live rules.
        return self.same_ends(frame) and frame.snapshot.active_rules == self._latest.snapshot.active_rules

    def show_frame(self, frame: Frame) -> None:
        self._frame = frame
        self._show_rules()

    def forget_frame(self) -> None:
        self._frame = None

    def catch_up(self) -> None:
        # Opened again before a frame with other ends or rules came: the tab shows that frame
        # already. Counting each rule's matches among 200,000 ends, then laying the tab out
        # again for its status and preview, cost a switch some 30 ms more than other tabs'.
        if self._latest is not None and self._latest is self._drawn():
            self._frame = self._latest  # what edits count and preview against, as show_frame
            return
        super().catch_up()

    # ------------------------------------------------------------ rendering

    def _unapplied(self) -> bool:
        """Whether the edited table differs from what the kernel runs (known once a frame is)."""
        return (self._frame is not None and
                rules.first_difference(self._frame.snapshot.active_rules, self.edited.rules) is not None)

    def _show_rules(self) -> None:
        self._render_table()
        self._render_status()
        self._render_preview()
        # Weakly: a hidden tab lets go of its frame (forget_frame).
        self._drawn = weakref.ref(self._frame) if self._frame is not None else _no_frame

    def _render_table(self) -> None:
        table = self.query_one("#rules-table", DataTable)
        keep = table.cursor_row
        table.clear()
        # Once for all rules: finding the pairs among 200,000 ends is most of a rule's count.
        pairs = ConnectionPairs.of(self._frame.snapshot.table, ACCELERATED) if self._frame else None
        for i, rule in enumerate(self.edited.rules):
            style = "green" if rule.target is rules.Target.ACCEPT else "yellow"
            table.add_row(
                str(i), Text(rule.target.value, style=style),
                str(rule.net) if rule.net else "any",
                _ports(rule.ports),
                str(rule.uid) if rule.uid else "any", str(rule.gid) if rule.gid else "any",
                Text(str(_matches(rule, pairs)), justify="right"))
        if self.edited.rules:
            table.move_cursor(row=min(keep, len(self.edited.rules) - 1), animate=False)

    def _render_status(self) -> None:
        status = self.query_one("#rules-status", Static)
        if self._load_error:
            status.update(Text(f"cannot read the rules: {self._load_error}", style="bold red"))
            return
        if self.doc is None:
            return
        text = Text.assemble(("file ", "dim"), self.doc.path,
                             "" if self.doc.exists else (" (not created yet)", "yellow"),
                             ("  ·  ", "dim"), f"{len(self.edited.rules)} rules")
        if self._frame is not None:
            text.append("  ·  in kernel: ", style="dim")
            text.append_text(kernel_vs_file(self._frame.snapshot.active_rules, self.doc.config.rules))
        unapplied = self._unapplied()
        unsaved = self.edited.text() != self.doc.config.text()
        if unapplied or unsaved:
            what = [w for w, on in (("not applied", unapplied), ("not saved", unsaved)) if on]
            text.append(f"  ·  edited, {' and '.join(what)}", style="bold yellow")
        status.update(text)

    def _render_preview(self) -> None:
        pane = self.query_one("#rules-preview", Static)
        if not self._unapplied():
            pane.update(Text("The table is what the kernel runs: nothing to apply.", style="dim"))
            return
        change = preview(self._frame.snapshot.table, self.edited.rules, SHOWN_CHANGES)
        out = Table.grid()
        out.add_column(overflow="fold")
        out.add_row(Text(f"{change.taken_off} open connections leave the fast path",
                         style="bold red" if change.taken_off else "bold"))
        for pair, rule in change.first_taken_off:
            why = "no ACCEPT rule matches" if rule is None else f"rule {rule}"
            out.add_row(Text.assemble("  − ", _pair_text(pair), (f"  ({why})", "dim")))
        out.add_row(Text(f"{change.put_on} on the normal path accepted again: they stay there, "
                         "connections like them are accelerated", style="bold green" if change.put_on else "bold"))
        for pair in change.first_put_on:
            out.add_row(Text.assemble("  + ", _pair_text(pair)))
        hidden = max(0, change.taken_off - SHOWN_CHANGES) + max(0, change.put_on - SHOWN_CHANGES)
        if hidden:
            out.add_row(Text(f"  … and {hidden} more", style="dim"))
        pane.update(out)

    # ------------------------------------------------------------ editing

    def _selected(self) -> int | None:
        table = self.query_one("#rules-table", DataTable)
        return table.cursor_row if self.edited.rules else None

    def action_add(self) -> None:
        def done(rule: rules.Rule | None) -> None:
            if rule is not None:
                try:
                    index = self.edited.add(rule)
                except ValueError as e:
                    self.app.notify(str(e), severity="error")
                    return
                self._show_rules()
                self.query_one("#rules-table", DataTable).move_cursor(row=index, animate=False)
        self.app.push_screen(RuleFormScreen("Add rule"), done)

    def action_edit(self) -> None:
        index = self._selected()
        if index is None:
            return

        def done(rule: rules.Rule | None) -> None:
            if rule is not None:
                self.edited.replace(index, rule)
                self._show_rules()
        self.app.push_screen(RuleFormScreen(f"Edit rule {index}", self.edited.rules[index]), done)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_edit()

    def action_delete(self) -> None:
        index = self._selected()
        if index is not None:
            self.edited.delete(index)
            self._show_rules()

    def action_move(self, step: int) -> None:
        index = self._selected()
        if index is None or not 0 <= index + step < len(self.edited.rules):
            return
        self.edited.move(index, index + step)
        self._show_rules()
        self.query_one("#rules-table", DataTable).move_cursor(row=index + step, animate=False)

    # ------------------------------------------------------------ apply, save, revert

    def action_apply(self) -> None:
        self._apply(_copy(self.edited, self.doc.path if self.doc else "<rules>"))

    @work(thread=True, exclusive=True, group="rules-apply", exit_on_error=False)
    def _apply(self, config: rules.Config) -> apply.Applied:
        return self.app.backend.apply_rules(config)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "rules-apply":
            return
        if event.state is WorkerState.SUCCESS:
            done = event.worker.result
            self.app.note(f"rules applied: {done.rules} rules live, "
                          f"{done.taken_off} connections taken off the fast path")
            self.app.action_refresh_now()  # the status follows with the kernel's rules read back
        elif event.state is WorkerState.ERROR:
            self.app.note(f"rules not applied: {event.worker.error}", "error")
            self.app.notify(str(event.worker.error), title="Rules not applied", severity="error")

    def action_save(self) -> None:
        if self.doc is None:
            return
        try:
            self.app.backend.save_rules(self.edited, self.doc.path)
        except OSError as e:
            self.app.notify(str(e), title="Rules not saved", severity="error")
            self.app.note(f"rules not saved: {e}", "error")
            return
        self.app.note(f"rules saved to {self.doc.path} ({len(self.edited.rules)} rules)")
        self.reload()

    def action_revert(self) -> None:
        """Back to the file: edits that were not saved are dropped; the kernel is not touched."""
        self.reload()
        self.app.note("rules reverted to the file")

    def commands(self):
        yield SystemCommand("Rules: apply", "Make the edited rules live", self.action_apply)
        yield SystemCommand("Rules: save", "Write the edited rules to the file", self.action_save)
        yield SystemCommand("Rules: revert", "Drop unsaved edits, back to the file",
                            self.action_revert)
