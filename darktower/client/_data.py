"""A session's data messages (docs/protocol.md §18.4): lossy application data (a cursor
position, a reaction) in WebTransport datagrams on the media connection, relayed by the MH.

Sending (``MeetingSession.send_data``) never waits: a message goes out as one datagram or is
dropped and counted (``DataMessages.send_dropped``, by reason) — beyond the MH's rate (the
session keeps the same token buckets, so that it does not spend its uplink on datagrams the MH
would drop), or while the media connection is being brought back. Nothing is retransmitted.

Receiving: the media connection hands every datagram to :meth:`DataMessages.on_datagram`;
the MH's padding (first byte 0, docs/protocol.md §17.2) is ignored, a malformed datagram is
counted (``malformed``), a data message is queued for the application (``async for message in
session.data``: :class:`~darktower.frames.DataMessage`, ``participant_id`` its sender). Data
messages are not end-to-end encrypted by the library, even in an encrypted meeting (an
application may encrypt its payload).
"""

from __future__ import annotations

import collections
from typing import Final

import trio

from darktower.frames import DataMessage, DataMessageError, decode_data, encode_data, is_padding

from ._seams import MediaLink
from ._streams import SessionState, _Ending

# Limit: data messages received and not yet taken by the application. Policy when full: the
# oldest is dropped and counted in ``DataMessages.dropped`` (they are lossy and the newest is
# worth most: a cursor's latest position).
DATA_BUFFER: Final = 256
# The MH's limits on what one participant sends (docs/protocol.md §18.4), kept by the sender
# too: token buckets holding one second. Beyond them ``send_data`` drops the message
# (``send_dropped["rate"]``).
DATA_MESSAGES_PER_S: Final = 30
DATA_BYTES_PER_S: Final = 32 * 1024


class _Bucket:
    """A token bucket of ``rate`` a second, holding one second's worth; time passed in."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = now

    def refill(self, now: float) -> None:
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now


class DataMessages(_Ending):
    """The session's data messages (see the module docstring): an async iterator of the
    received ones, and the counters of both directions. ``async for`` stops after a voluntary
    leave and raises SessionEnded after a server-side end, once the buffered messages were
    taken."""

    def __init__(self, session: SessionState, size: int = DATA_BUFFER) -> None:
        self._session = session
        self._send, self._receive = trio.open_memory_channel[DataMessage](max(1, size))
        self.received = 0  # data messages queued
        self.dropped = 0  # received, dropped because the queue was full
        self.malformed = 0  # datagrams that were neither padding nor a data message
        self.sent = 0  # datagrams handed to the media connection
        self.send_dropped: collections.Counter[str] = collections.Counter()  # rate, no_media
        now = trio.current_time()
        self._messages = _Bucket(DATA_MESSAGES_PER_S, now)
        self._bytes = _Bucket(DATA_BYTES_PER_S, now)

    def on_datagram(self, datagram: bytes) -> None:
        """One datagram from the MH (called by the media connection's reader)."""
        if is_padding(datagram):
            return
        try:
            message = decode_data(datagram)
        except DataMessageError:
            self.malformed += 1
            return
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self._receive.receive_nowait()  # full, so there is one to drop
            self.dropped += 1
            self._send.send_nowait(message)
        except trio.ClosedResourceError:
            return  # ended
        self.received += 1

    def send(self, media: MediaLink, payload: bytes, to: str | None) -> bool:
        """Send one data message on ``media``; False if it was dropped (counted). Raises
        ValueError for a payload over MAX_DATA_PAYLOAD bytes or a recipient that is not a
        participant id (a UUID)."""
        datagram = encode_data(payload, to)
        now = trio.current_time()
        self._messages.refill(now)
        self._bytes.refill(now)
        if self._messages.tokens < 1 or self._bytes.tokens < len(datagram):
            self.send_dropped["rate"] += 1
            return False
        try:
            media.send_datagram(datagram)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
            # The connection is gone (a new one is on its way) or its path takes no datagram
            # this large (DatagramTooLarge): lossy data, dropped.
            self.send_dropped["no_media"] += 1
            return False
        self._messages.tokens -= 1
        self._bytes.tokens -= len(datagram)
        self.sent += 1
        return True

    def _close(self) -> None:
        self._send.close()

    async def receive(self) -> DataMessage:
        """The next data message. Raises SessionEnded (server-side end) or trio.EndOfChannel
        (after leave()) once the session is over and the queue is empty. Cancel-safe."""
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            self._raise_end()
            raise

    def __aiter__(self) -> DataMessages:
        return self

    async def __anext__(self) -> DataMessage:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


__all__ = ["DATA_BUFFER", "DATA_BYTES_PER_S", "DATA_MESSAGES_PER_S", "DataMessages"]
