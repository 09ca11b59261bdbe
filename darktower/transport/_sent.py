"""When written bytes leave: a callback once the bytes written to a stream so far have been
handed to the socket (docs/architecture.md §5.1). The MH measures a frame's residence with it
(its arrival → its last byte sent, for each subscriber).

A watch is checked at the end of every flush of its connection. On aioquic it is exact: the
stream's first-transmission offset (``dt_sent_offset``) has reached the end written when the
watch was set. A core that does not say (``None``: qh3 2.1 keeps its send buffers in Rust)
resolves the watch at the first flush after the write, which undercounts the time a write
waits for the congestion window or the peer's credit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Watches waiting per connection; a watch beyond it is refused (``add`` returns False): a
# connection that sends nothing for long (no credit, no window) cannot grow the list.
MAX_WATCHES = 256

Watch = tuple[int, "int | None", Callable[[float], None]]


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
        stream_id: int,
        callback: Callable[[float], None],
        now: float,
        flush_pending: bool,
    ) -> bool:
        """Call ``callback(now)`` once what was written to ``stream_id`` so far has left (at
        once if it already has: the flush may have run while the write returned); never if
        the stream goes first (reset, or discarded). False: refused, too many waiting."""
        end = quic.dt_write_offset(stream_id)
        if end is None:  # the core does not say: the next flush, or the last one
            if not flush_pending:
                callback(now)
                return True
        elif end < 0:
            return False  # the stream is gone: nothing of it will leave
        elif quic.dt_sent_offset(stream_id) >= end:
            callback(now)
            return True
        if len(self._waiting) >= MAX_WATCHES:
            return False
        self._waiting.append((stream_id, end, callback))
        return True

    def resolve(self, quic: Any, now: float) -> None:
        """After a flush at ``now``: call the watches whose bytes have all left."""
        keep: list[Watch] = []
        sent = quic.dt_sent_offset
        for watch in self._waiting:
            stream_id, end, callback = watch
            offset = sent(stream_id)
            if end is None or offset is None or offset >= end:
                callback(now)
            elif offset >= 0:  # still waiting (< 0: the stream is gone, dropped)
                keep.append(watch)
        self._waiting = keep
