"""`?`: the keys that work where you are, and what each tab shows."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

# Moving around tables and fields works as everywhere else; listing it would bury the rest.
_NAVIGATION = {"up", "down", "left", "right", "pageup", "pagedown", "home", "end", "enter",
               "tab", "shift+tab", "ctrl+home", "ctrl+end", "shift+up", "shift+down",
               "shift+left", "shift+right", "ctrl+pageup", "ctrl+pagedown", "escape", "ctrl+c"}

ABOUT = """\
[b]Tabs[/b] (number keys, a click, or the command palette with ctrl+p)
  [b]1 Overview[/b]     state, cgroup, uptime, traffic now and over the last minutes, map use
  [b]2 Connections[/b]  every accelerated end; / filters as you type, s sorts (S reverses),
                 a click on a column header sorts by it; the pane shows the selected end
                 and its peer with live counters
  [b]3 Pairs[/b]        each connection's two ends together, marked ok (accelerated), normal
                 (on the normal path), pending, one-sided or stale
  [b]4 Dump[/b]         what accelerated connections send (tcpdump cannot see it): start/stop,
                 ip/port filter, snaplen, pause to scroll back, hex view, save as pcap
  [b]5 Rules[/b]        the chain rules: edit, see which open connections a change takes off
                 the fast path, apply live, save to the file, revert to it
  [b]6 Events[/b]       connections accelerated, refused, demoted, closed, and what the console
                 did; counted since the log opened and, by the kernel, since enable
[b]Refresh[/b]  + and - change how often the maps are read; ctrl+r reads them now. With some
         100,000 ends or more, reading them takes longer than a twentieth of the time
         between refreshes: they are then read every other refresh or less often,
         as the status line says ("ends every 2s")"""


def _keys_table(screen: Screen) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    seen: set[str] = set()
    for key, active in screen.active_bindings.items():
        binding: Binding = active.binding
        if key in _NAVIGATION or not binding.description or binding.description in seen:
            continue
        seen.add(binding.description)
        table.add_row(screen.app.get_key_display(binding), binding.description)
    return table


class HelpScreen(ModalScreen[None]):
    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, beneath: Screen) -> None:
        super().__init__()
        self._beneath = beneath

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(Text("Keys here", style="bold"), classes="help-heading")
            yield Static(_keys_table(self._beneath), id="help-keys")
            yield Static(ABOUT, id="help-about")

    def on_mount(self) -> None:
        self.query_one("#help-box").border_title = "Help"
        self.query_one("#help-box").border_subtitle = "esc to close"
