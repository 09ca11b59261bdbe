"""When written bytes leave: a callback once the bytes written to a stream so far have been
handed to the socket (docs/architecture.md §5.1). The MH measures a frame's residence with it
(its arrival → its last byte sent, for each subscriber).

A watch is checked at the end of every flush of its connection. On aioquic it is exact: the
offset below which nothing of the stream waits to be sent (``dt_sent_offset``; a lost range
waits again, for its retransmission) has reached the end written when the watch was set. A
core that does not say (``None``: qh3 2.1 keeps its send buffers in Rust) resolves the watch at
the first flush after the write, which undercounts the time a write waits for the congestion
window or the peer's credit. A watch of a stream reset (by us, or by the peer's STOP_SENDING)
or whose session is gone is dropped, on either core. A callback that raises is logged; it
never reaches the connection's error boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._streams import StreamState

logger = logging.getLogger(__name__)

# Watches waiting per connection; a watch beyond it is refused (``add`` returns False): a
# connection that sends nothing for long (no credit, no window) cannot grow the list.
MAX_WATCHES = 256

Watch = tuple["StreamState", "int | None", Callable[[float], None]]


class SentWatch:
    """The watches of one connection, oldest first."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: list[Watch] = []

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def add(
        self,
        quic: Any,
        state: StreamState,
        callback: Callable[[float], None],
        now: float,
        flush_pending: bool,
    ) -> bool:
        """Call ``callback(now)`` once what was written to the stream so far has left (at
        once if it already has: the flush may have run while the write returned); never if
        the stream goes first (reset, or discarded). False: refused, too many waiting."""
        if _gone(state):
            return False
        end = quic.dt_write_offset(state.stream_id)
        if end is None:  # the core does not say: the next flush, or the last one
            if not flush_pending:
                _call(callback, now)
                return True
        elif end < 0:
            return False  # the stream is gone: nothing of it will leave
        elif quic.dt_sent_offset(state.stream_id) >= end:
            _call(callback, now)
            return True
        if len(self._waiting) >= MAX_WATCHES:
            return False
        self._waiting.append((state, end, callback))
        return True

    def resolve(self, quic: Any, now: float) -> None:
        """After a flush at ``now``: call the watches whose bytes have all left (a watch a
        callback adds waits for the next flush)."""
        waiting, self._waiting = self._waiting, []
        keep: list[Watch] = []
        due: list[Callable[[float], None]] = []
        sent = quic.dt_sent_offset
        for watch in waiting:
            state, end, callback = watch
            if _gone(state):
                continue
            offset = sent(state.stream_id)
            if end is None or offset is None or offset >= end:
                due.append(callback)
            elif offset >= 0:  # still waiting (< 0: the stream is gone, dropped)
                keep.append(watch)
        self._waiting = keep + self._waiting
        for callback in due:
            _call(callback, now)


def _gone(state: StreamState) -> bool:
    return state.send_reset or state.send_error is not None


def _call(callback: Callable[[float], None], now: float) -> None:
    try:
        callback(now)
    except Exception:
        logger.exception("a when_sent callback raised (ignored)")
