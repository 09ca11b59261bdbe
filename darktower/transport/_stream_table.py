"""The table of an aioquic connection's streams that leaves our own unidirectional streams out
of ``values()`` (docs/architecture.md §5.1)."""

from __future__ import annotations

from typing import Any


class StreamTable(dict[int, Any]):
    """aioquic's ``QuicConnection._streams``, by stream id, as a dict in every way but one:
    ``values()`` gives only the streams this side receives on.

    aioquic reads ``values()`` in one place, the loop of ``_write_application`` that offers
    every stream a MAX_STREAM_DATA frame in every packet it builds. A unidirectional stream
    this side opened has no receive credit to give (its ``max_stream_data_local`` is 0, and
    aioquic's ``_write_stream_limits`` does nothing for it), and they are most of an MH's
    streams: one per subscription, so that each packet to a subscriber cost more the larger
    its meeting. ``tests/transport/test_stream_table.py`` checks that aioquic still reads the
    table only through ``get``, ``[]``, ``in``, ``pop`` and ``values()``."""

    __slots__ = ("_receiving",)

    def __init__(self) -> None:
        super().__init__()
        self._receiving: dict[int, Any] = {}

    def __setitem__(self, stream_id: int, stream: Any) -> None:
        super().__setitem__(stream_id, stream)
        if stream.max_stream_data_local:
            self._receiving[stream_id] = stream
        else:
            self._receiving.pop(stream_id, None)

    def __delitem__(self, stream_id: int) -> None:
        super().__delitem__(stream_id)
        self._receiving.pop(stream_id, None)

    def pop(self, stream_id: int, *default: Any) -> Any:
        self._receiving.pop(stream_id, None)
        return super().pop(stream_id, *default)

    def values(self) -> Any:
        return self._receiving.values()
