"""Keys handled in the order they were typed, however fast they come (a paste, a fast typist).

Textual hands each key to the widget focused when the app takes the key from its queue, then
goes on with the next key at once: the key travels on through the widget's queue and its
parents' queues to the bindings (Tab moves the focus there). Keys that came in one burst
were all handed to the field focused before the first Tab had moved anything: "Tab Tab 9080"
in the rule form gave `9080` to the ip field instead of the uid-owner field.

KeysInOrder holds each key until the one before has been through every queue it can reach
(the focused widget's, its ancestors', the app's), and until a screen it opened has mounted,
which is where a form focuses its first field.
"""

from __future__ import annotations

from collections import deque
from time import monotonic

from textual import events
from textual.app import App
from textual.message_pump import MessagePump
from textual.timer import Timer

# A key whose trip was cut short (a widget removed before it took its turn) frees the next
# keys after this long at the latest.
STUCK_S = 0.5


class KeysInOrder(App):
    """A mixin for the App."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._keys_waiting: deque[events.Key] = deque()
        self._key_trip: int = 0            # of the key under way; 0: none
        self._trips = 0
        self._stuck: Timer | None = None
        self._key_done = 0.0               # monotonic() when the last key's trip ended

    def keys_idle(self, since_s: float = 0.0) -> bool:
        """No key is under way, held back or yet to be taken from the app's queue, nor was
        one handled in the last since_s seconds."""
        if self._key_trip or self._keys_waiting or monotonic() - self._key_done < since_s:
            return False
        return not any(isinstance(message, events.Key) for message in self._message_queue.values)

    async def on_event(self, event: events.Event) -> None:
        if not isinstance(event, events.Key) or event.is_forwarded:
            await super().on_event(event)
        elif self._key_trip:
            self._keys_waiting.append(event)
        else:
            await self._send_key(event)

    async def _send_key(self, key: events.Key) -> None:
        self._trips += 1
        trip = self._key_trip = self._trips
        target = self.focused or self.screen
        path: list[MessagePump] = [*target.ancestors_with_self]
        await super().on_event(key)  # to the focused widget, or a priority binding
        self._stuck = self.set_timer(STUCK_S, lambda: self._arrived(trip))
        self._follow(trip, path)

    def _follow(self, trip: int, path: list[MessagePump]) -> None:
        """Behind the key through each queue of path in turn: a callback posted to a queue
        runs once what was in it before (the key, bubbled there) has been handled."""
        while path:
            node = path.pop(0)
            if node.call_later(self._follow, trip, path):
                return
        # Once more through the app's queue: what handling the key put there runs first (a
        # widget's focus() is a callback on it).
        self.call_later(self._arrived, trip)

    def _arrived(self, trip: int) -> None:
        if trip != self._key_trip:
            return  # that trip is over already (the timer, or the callbacks)
        if not self.screen.is_mounted:  # a screen the key opened has yet to focus its field
            self.call_later(self._arrived, trip)
            return
        if self._stuck is not None:
            self._stuck.stop()
            self._stuck = None
        self._key_trip = 0
        self._key_done = monotonic()
        if self._keys_waiting:
            self.call_next(self._send_key, self._keys_waiting.popleft())
