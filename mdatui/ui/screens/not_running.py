"""Shown instead of the main screen while nothing runs at the pin dir, or it cannot be read."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, LoadingIndicator, Static
from textual.worker import Worker, WorkerState

from ...core.backend import Unavailable
from ..widgets.key_bar import KeyBar


class NotRunningScreen(Screen):
    CSS_PATH = "not_running.tcss"
    BINDINGS = [
        Binding("e", "enable", "Enable"),
        Binding("q", "app.quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="nr-box"):
            yield Static(id="nr-what")
            yield Static(id="nr-offer")
            yield LoadingIndicator(id="nr-busy")
            with Horizontal(id="nr-buttons"):
                yield Button("Enable", id="nr-enable", variant="primary")
                yield Button("Quit", id="nr-quit", variant="default")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#nr-box").border_title = "mdatui"
        self.query_one("#nr-busy").display = False
        self.watch(self.app, "problem", self._explain, init=True)

    def _explain(self, problem: str | None) -> None:
        backend = self.app.backend
        if problem:
            what, (possible, offer) = problem, (False, "")
        else:
            what = f"The accelerator is not running: nothing is pinned at {backend.pin_dir}."
            possible, offer = backend.enable_offer()
        self.query_one("#nr-what", Static).update(what)
        first, _, notes = offer.partition("\n")
        self.query_one("#nr-offer", Static).update(
            f"Enable will {first}." + (f"\n{notes}" if notes else "") if possible else offer)
        self.query_one("#nr-enable", Button).disabled = not possible
        self.query_one("#nr-enable" if possible else "#nr-quit", Button).focus()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "enable":
            return not self.query_one("#nr-enable", Button).disabled
        return True

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "nr-enable":
            self.action_enable()
        else:
            self.app.exit(0)

    def action_enable(self) -> None:
        self.query_one("#nr-enable", Button).disabled = True
        self.query_one("#nr-busy").display = True
        self.query_one("#nr-offer", Static).update("Compiling and attaching the BPF programs…")
        self._enable()

    @work(thread=True, exclusive=True, group="enable", exit_on_error=False)
    def _enable(self) -> str:
        return self.app.backend.enable()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "enable":
            return
        if event.state is WorkerState.SUCCESS:
            self.app.notify(event.worker.result, title="mdatui")
            self.app.action_refresh_now()  # the next frame finds it running and closes this screen
        elif event.state is WorkerState.ERROR:
            error = event.worker.error
            message = str(error) if isinstance(error, Unavailable) else repr(error)
            self.query_one("#nr-busy").display = False
            self.query_one("#nr-offer", Static).update(f"[b red]Enable failed:[/] {message}")
            self.query_one("#nr-enable", Button).disabled = False
