"""A one-field question over the current screen, e.g. where to save a file."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class PromptScreen(ModalScreen[str | None]):
    """Dismisses with the text entered, or None when cancelled with escape."""

    CSS_PATH = "prompt.tcss"
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, question: str, value: str = "") -> None:
        super().__init__()
        self._title, self._question, self._default = title, question, value

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt-box"):
            yield Static(self._question)
            yield Input(self._default, id="prompt-input")
            yield Static("enter to confirm, escape to cancel", classes="prompt-hint")

    def on_mount(self) -> None:
        self.query_one("#prompt-box").border_title = self._title

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.dismiss(event.value.strip())
