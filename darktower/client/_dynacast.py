"""Which simulcast layers of one publication its subscribers take (dynacast, docs/protocol.md
§17.3).

The MH tells a publisher, in a ``StreamQualityUpdate`` with ``layers``, which of its layers
anyone receives; a layer nobody receives is paused: the publication drops what the application
still sends on it (counted), so encoding it costs no uplink, until an update says it is active
again, and then it starts again at a key frame. Sans-IO but for the wake of those who wait for
a change.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from ._events import LayerFeedback


class LayerStates:
    """The paused layers of one publication (``layer_ids``: its simulcast layers' ids; a plain
    stream has none and nothing here changes for it)."""

    def __init__(self, layer_ids: Iterable[str]) -> None:
        self.layer_ids = frozenset(layer_ids)
        self.paused: frozenset[str] = frozenset()
        self.changes = 0  # how often ``paused`` changed
        self._changed = trio.Event()

    def apply(self, feedback: Iterable[LayerFeedback]) -> list[str]:
        """Take one update's ``layers``: a layer it names is paused or active as it says (a
        layer it does not name, or not of this publication, is left as it is). Returns the
        layers that became active again, in the update's order (each needs a key frame)."""
        paused = set(self.paused)
        resumed = []
        for layer in feedback:
            if layer.layer_id not in self.layer_ids:
                continue
            if layer.active and layer.layer_id in paused:
                paused.discard(layer.layer_id)
                resumed.append(layer.layer_id)
            elif not layer.active:
                paused.add(layer.layer_id)
        self._set(frozenset(paused))
        return resumed

    def resume(self, layer_id: str) -> bool:
        """``layer_id`` is active again (the MH asked for its key frame: someone needs it);
        False if it was not paused."""
        if layer_id not in self.paused:
            return False
        self._set(self.paused - {layer_id})
        return True

    def reset(self) -> list[str]:
        """Every layer active again (a new media connection: that MH says anew what it needs);
        returns those that were paused."""
        resumed = sorted(self.paused)
        self._set(frozenset())
        return resumed

    def _set(self, paused: frozenset[str]) -> None:
        if paused != self.paused:
            self.paused = paused
            self.changes += 1
            self._changed.set()
            self._changed = trio.Event()

    @property
    def changed(self) -> trio.Event:
        """Set at the next change (or :meth:`wake`)."""
        return self._changed

    def wake(self) -> None:
        """Wake those who wait for a change (their publication is closed)."""
        self._changed.set()
        self._changed = trio.Event()


__all__ = ["LayerStates"]
