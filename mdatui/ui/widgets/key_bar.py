"""The line of keys at the bottom: what the keys do where the focus is, drawn as one line of text.

Textual's Footer mounts a widget per key and mounts them all anew whenever the bindings change,
which a tab switch does two or three times as the focus moves; with 20 to 50 keys that was half
of a tab switch's time (100 -> 50 ms median at 200x50, bench/console.py). This line is redrawn
once per refresh at most, and only when its keys changed. A click on a key presses it.
"""

from __future__ import annotations

from typing import NamedTuple

from rich.text import Text
from textual import events
from textual.screen import Screen
from textual.widget import Widget


class Key(NamedTuple):
    key: str        # what simulate_key presses
    shown: str      # how the key is written
    description: str
    enabled: bool


class KeyBar(Widget):
    COMPONENT_CLASSES = {"key-bar--key", "key-bar--description", "key-bar--disabled"}

    def __init__(self) -> None:
        super().__init__()
        self._keys: tuple[Key, ...] = ()
        self._spans: list[tuple[int, int, str]] = []  # (first cell, past last cell, key)
        self._pending = False
        self._screen: Screen | None = None  # kept: a screen being removed detaches us first

    def on_mount(self) -> None:
        self._screen = self.screen
        self._screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._bindings_changed(self._screen)

    def on_unmount(self) -> None:
        if self._screen is not None:
            self._screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen) -> None:
        if screen is self._screen and not self._pending:
            self._pending = True
            self.call_after_refresh(self._take_keys)

    def _take_keys(self) -> None:
        self._pending = False
        if not self.is_attached:  # the screen went away before the refresh came
            return
        keys = self.shown_keys()
        if keys != self._keys:
            self._keys = keys
            self.refresh()

    def shown_keys(self) -> tuple[Key, ...]:
        """The screen's active bindings that ask to be shown, one per action (the first, as
        Footer does), the command palette's last."""
        app = self.app
        by_action: dict[str, Key] = {}
        palette = None
        for _node, binding, enabled, _tooltip in self.screen.active_bindings.values():
            if app.ENABLE_COMMAND_PALETTE and binding.key == app.COMMAND_PALETTE_BINDING:
                palette = Key(binding.key, app.get_key_display(binding), binding.description, enabled)
            elif binding.show:
                by_action.setdefault(binding.action, Key(
                    binding.key, app.get_key_display(binding), binding.description, enabled))
        return (*by_action.values(), *([palette] if palette else []))

    def render(self) -> Text:
        key_style = self.get_component_rich_style("key-bar--key")
        description_style = self.get_component_rich_style("key-bar--description")
        disabled_style = self.get_component_rich_style("key-bar--disabled")
        line, self._spans = Text(no_wrap=True, overflow="ellipsis", end=""), []
        for key in self._keys:
            start = line.cell_len
            line.append(f" {key.shown} ", key_style if key.enabled else disabled_style)
            line.append(f"{key.description} ", description_style if key.enabled else disabled_style)
            self._spans.append((start, line.cell_len, key.key))
        return line

    def on_click(self, event: events.Click) -> None:
        for start, stop, key in self._spans:
            if start <= event.x < stop:
                event.stop()
                self.app.simulate_key(key)
                return
