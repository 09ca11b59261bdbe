"""The GC's HTTP/3 request streams as error boundaries, inside hypercorn's QUIC listener.

An error while answering one request stream resets that stream only (:class:`GuardedH3Protocol`,
:class:`BoundedTaskGroup`); data for a stream hypercorn has forgotten is dropped
(:class:`StreamTable`). The listener that uses them is ``_http_quic.py`` (docs/decisions.md,
"hypercorn's HTTP/3 stream table is guarded").
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from aioquic.quic.connection import QuicConnectionState
from hypercorn.config import Config
from hypercorn.protocol.events import Body, Data, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h3 import H3Protocol
from hypercorn.trio.task_group import TaskGroup

from ._http_limits import H3_STREAM_SEND_BUFFER

logger = logging.getLogger("darktower.http")


class _DiscardStream:
    async def handle(self, event: Any) -> None:
        pass


_DISCARD = _DiscardStream()


class StreamTable(dict[int, Any]):
    """hypercorn's ``H3Protocol`` looks its streams up with ``streams[stream_id]``: data that
    arrives for a stream it has already answered and forgotten (a 413 sent before the whole
    body came) raised ``KeyError`` and took the whole QUIC listener down. Such data is dropped.
    """

    def __missing__(self, stream_id: int) -> Any:
        return _DISCARD


def guard_streams(connection: Any) -> None:
    h3 = getattr(connection, "h3", None)
    if h3 is not None and not isinstance(h3.streams, StreamTable):
        h3.streams = StreamTable(h3.streams)


def stream_cause(exc: BaseException) -> str:
    return f"quic_stream_error:{type(exc).__name__}"


class GuardedH3Protocol(H3Protocol):
    """hypercorn's ``H3Protocol`` whose sends are an error boundary per request stream.

    ``stream_send`` runs in the app's task (hypercorn's task group), outside the connection's
    error boundary: an answer on a stream the client has stopped or reset (aioquic raises
    ``RuntimeError``/``ValueError``) or in a state HTTP/3 no longer allows
    (``FrameUnexpected``) raised there, and the 500 hypercorn then sends from that task's
    ``finally`` raised again, out of the task group, ending the listener. Now the first error
    on a stream is handed to ``on_stream_error`` (which resets the stream) and every later
    send on that stream is dropped, as hypercorn's HTTP/2 protocol drops sends on a closed
    stream; the app is not told (its next sends succeed and go nowhere).

    A body is sent with backpressure: hypercorn hands every chunk to aioquic at once, whose
    send buffer then held a whole long body (a recording's download) in memory. A send of
    body data now returns once its stream holds at most :data:`H3_STREAM_SEND_BUFFER` bytes
    not yet acknowledged, or once the stream or the connection is gone; the listener calls
    :meth:`progress` whenever the connection has moved (packets in, a timer, its end).
    """

    def __init__(
        self, *args: Any, on_stream_error: Callable[[int, Exception], Awaitable[None]]
    ) -> None:
        super().__init__(*args)
        self._on_stream_error = on_stream_error
        self._failed_streams: set[int] = set()
        self._progress = trio.Event()

    def progress(self) -> None:
        """The connection has moved: body sends waiting for room look again."""
        self._progress.set()
        self._progress = trio.Event()

    def _buffered(self, stream_id: int) -> int:
        """Bytes of ``stream_id`` in the QUIC send buffer; 0 once nothing more can leave."""
        quic = self.connection._quic
        stream = quic._streams.get(stream_id)
        if (
            stream is None
            or stream_id in self._failed_streams
            or stream.sender._reset_error_code is not None
            or quic._state is not QuicConnectionState.CONNECTED
        ):
            return 0
        return stream.sender._buffer_stop - stream.sender._buffer_start

    async def _create_stream(self, request: Any) -> None:
        # hypercorn decodes the request's method and path as ASCII, its host as UTF-8, and
        # raises on a WebTransport CONNECT's unknown header: any of these ended the whole
        # connection. Now such a request resets its own stream and nothing else.
        try:
            await super()._create_stream(request)
        except Exception as exc:
            # Its later events go to the stream table's discard (no app was started: each
            # failure happens while hypercorn builds the request's scope).
            self.streams.pop(request.stream_id, None)
            await self._on_stream_error(request.stream_id, exc)

    async def stream_send(self, event: StreamEvent) -> None:
        stream_id = event.stream_id
        if stream_id in self._failed_streams:
            if isinstance(event, StreamClosed):  # hypercorn forgets the stream: so do we
                self._failed_streams.discard(stream_id)
                self.streams.pop(stream_id, None)
            return
        try:
            await super().stream_send(event)
            if isinstance(event, Body | Data):
                while self._buffered(stream_id) > H3_STREAM_SEND_BUFFER:
                    await self._progress.wait()
        except Exception as exc:
            self._failed_streams.add(stream_id)
            await self._on_stream_error(stream_id, exc)


class BoundedTaskGroup(TaskGroup):
    """hypercorn's trio task group, in which nothing an app's task raises ends the listener.

    hypercorn runs each request's app in a task that, in a ``finally``, calls the stream's
    ``send(None)`` (which may answer 500); an exception there escaped into this group's
    nursery. :class:`GuardedH3Protocol` keeps sends from raising; should anything still
    raise from that last call, it is counted (``quic_stream_error:<Type>``) and logged here.
    """

    def __init__(self, counters: Counter[str]) -> None:
        super().__init__()
        self._counters = counters

    async def spawn_app(
        self,
        app: Any,
        config: Config,
        scope: Any,
        send: Callable[[Any], Awaitable[None]],
    ) -> Callable[[Any], Awaitable[None]]:
        async def guarded_send(message: Any) -> None:
            if message is not None:
                await send(message)  # an error here is the app's, which hypercorn catches
                return
            try:
                await send(None)
            except Exception as exc:
                self._counters[stream_cause(exc)] += 1
                logger.warning(
                    "an HTTP/3 request ended with an error",
                    extra={"fields": {"error": repr(exc)[:200]}},
                )

        return await super().spawn_app(app, config, scope, guarded_send)
