"""The main screen: a status line, one tab per view, the keys in the footer."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.reactive import Reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Input, TabPane, TabbedContent

from ..views.base import View
from ..views.connections import ConnectionsView
from ..views.dump import DumpView
from ..views.events import EventsView
from ..views.overview import OverviewView
from ..views.pairs import PairsView
from ..views.rules import RulesView
from ..widgets.key_bar import KeyBar
from ..widgets.status_bar import StatusBar

# (tab id, title), in the order of the tabs and of their number keys.
TABS = (
    ("overview", "Overview"),
    ("connections", "Connections"),
    ("pairs", "Pairs"),
    ("dump", "Dump"),
    ("rules", "Rules"),
    ("events", "Events"),
)
_VIEWS: dict[str, type[View]] = {
    "overview": OverviewView,
    "connections": ConnectionsView,
    "pairs": PairsView,
    "dump": DumpView,
    "rules": RulesView,
    "events": EventsView,
}


class MainScreen(Screen):
    CSS_PATH = ["main.tcss", *(f"../views/{tab_id}.tcss" for tab_id, _ in TABS)]
    # Medium terminals get two columns of panels; wide ones put detail panes beside their
    # tables instead of under them (the dump's and rules' tables need about 100 columns of their
    # own); the connections table needs some 140, so its detail pane waits for wider ones.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (90, "-medium"), (160, "-wide"), (200, "-wider")]
    # Priority bindings: a tab's number is acted on as the app takes the key, not once the key
    # has gone from the focused widget up through each of its containers' queues to the app
    # (five to seven of them: the tab switch started some 8 ms later). A field still gets the
    # digits typed into it (check_action).
    BINDINGS = [
        Binding(str(n), f"show_tab('{tab_id}')", title, show=False, priority=True)
        for n, (tab_id, title) in enumerate(TABS, 1)
    ]

    # Textual repaints the whole screen when the focus moves (a reactive's default), though
    # what the focus changes is drawn by the widgets it leaves and enters, restyled and
    # repainted on their own: a tab switch composed the screen a second time (2-4 ms at 200x50).
    focused: Reactive[Widget | None] = Reactive(None, repaint=False)

    def compose(self) -> ComposeResult:
        yield StatusBar()
        with TabbedContent(initial="overview"):
            for n, (tab_id, title) in enumerate(TABS, 1):
                with TabPane(f"[dim]{n}[/] {title}", id=tab_id):
                    yield _VIEWS[tab_id](id=f"{tab_id}-view")
        yield KeyBar()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return action != "show_tab" or not isinstance(self.focused, Input)

    def view(self, tab_id: str) -> View:
        return self.query_one(f"#{tab_id}-view", View)

    def action_show_tab(self, tab_id: str) -> None:
        self.query_one(TabbedContent).active = tab_id
        self.view(tab_id).focus_main()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        view = self.view(event.pane.id)
        view.catch_up()
        view.focus_main()

    def commands(self) -> Iterable[SystemCommand]:
        """What the views offer the command palette."""
        for tab_id, _ in TABS:
            yield from self.view(tab_id).commands()
