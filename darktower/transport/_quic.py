"""The one subclass of aioquic's QuicConnection: stream credit follows what the application read.

aioquic raises a stream's MAX_STREAM_DATA as data *arrives* (doubling the window), so a reader
that never reads would buffer without bound. Here, for the streams the driver owns, the credit
is ``consumed + window``: it is raised only as the application consumes data. Other streams
(HTTP/3 control, QPACK, request streams) keep aioquic's policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.packet import QuicFrameType

# Returns the offset the application has consumed up to, or None for streams we do not manage.
ConsumedLookup = Callable[[int], int | None]


class CreditedQuicConnection(QuicConnection):
    def __init__(self, *, consumed: ConsumedLookup, window: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._dt_consumed = consumed
        self._dt_window = window

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        if not stream.max_stream_data_local:
            return  # our own unidirectional stream: nothing to receive, no credit to give
        consumed = self._dt_consumed(stream.stream_id)
        if consumed is None:
            super()._write_stream_limits(builder, space, stream)
            return
        target = consumed + self._dt_window
        # Raise in steps of half a window so one frame covers many reads.
        if target - stream.max_stream_data_local >= self._dt_window // 2:
            stream.max_stream_data_local = target
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
