"""A trio media client for the Media Handler (docs/protocol.md §7): publish streams, receive frames.

::

    async with open_media_client(url_with_token, server_certificate_hashes=[sha]) as media:
        camera = await media.publish(stream_id)
        await camera.send_frame(FrameType.VIDEO_KEY, payload)
        async for frame in media:            # every subscribed stream, demultiplex by
            ...                              # frame.stream_id

The MH opens one unidirectional stream per routed stream; the client reads each with its own
task and decoder into one bounded channel. Datagrams (data messages and the MH's padding,
docs/protocol.md §18.4) go to ``on_datagram`` when set, from a task of their own; without it
they are dropped.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from darktower.frames import Frame, FrameDecoder, FrameError, FrameFlags, FrameHeader, FrameType
from darktower.model import LeaveReason
from darktower.protocol import reason_from_close_code
from darktower.transport import (
    ClosedByPeer,
    ClosedLocally,
    Connection,
    TransportLimits,
    WebTransportReceiveStream,
    WebTransportSession,
    WebTransportStream,
    connect_webtransport,
    open_session,
)

# Limit: received frames buffered for the application. Policy when full: the stream readers
# wait, so QUIC flow control pushes back on the MH, whose per-subscription queue then drops by
# its policy (a slow application costs only its own frames).
MAX_BUFFERED_FRAMES = 1024
# Bytes read per receive on a subscribed stream.
RECEIVE_CHUNK = 64 * 1024

# Makes a frame's wire bytes of its header and payload (end-to-end encryption's hook).
Encryptor = Callable[[FrameHeader, bytes], bytes]


class MediaPublisher:
    """One published stream: a bidirectional QUIC stream that carries frames of one stream id.

    Numbers frames from 0 and stamps them with the wall clock unless told otherwise. With an
    ``encryptor`` (end-to-end encryption, docs/protocol.md §16) each frame is what it makes of
    the header and the payload: the header in clear, the payload encrypted.
    """

    def __init__(
        self,
        stream: WebTransportStream,
        stream_id: uuid.UUID,
        encryptor: Encryptor | None = None,
    ) -> None:
        self.stream = stream
        self.stream_id = stream_id
        self.sequence = 0
        self.encryptor = encryptor

    async def send_frame(
        self,
        frame_type: FrameType,
        payload: bytes,
        *,
        flags: FrameFlags = FrameFlags.END_OF_FRAME,
        timestamp_us: int | None = None,
        sequence: int | None = None,
        audio_level: int | None = None,
    ) -> bytes:
        """Encode (and encrypt, with an encryptor) and send one frame; return its wire bytes.
        ``audio_level`` (0..127, -dBov; None: not said) goes in the header, before it is
        encrypted (docs/protocol.md §17.1). Waits while flow control is full. Raises
        StreamReset if the MH reset the stream, SessionClosed once it is gone; the
        encryptor's ValueError for a payload too long, ValueError for a level out of range or
        on a frame that is not audio."""
        seq = self.sequence if sequence is None else sequence
        self.sequence = seq + 1
        header = FrameHeader(
            frame_type=frame_type,
            stream_id=self.stream_id,
            timestamp_us=int(time.time() * 1_000_000) if timestamp_us is None else timestamp_us,
            sequence=seq,
            payload_length=len(payload),
            flags=flags,
            audio_level=audio_level,
        )
        encryptor = self.encryptor
        data = header.encode() + payload if encryptor is None else encryptor(header, payload)
        await self.stream.send_all(data)
        return data

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (tests: malformed input)."""
        await self.stream.send_all(data)

    async def finish(self) -> None:
        """Finish the stream and wait until the MH has routed every frame sent on it (it
        finishes its side in answer). Raises StreamReset if the MH reset the stream instead."""
        await self.stream.send_eof()
        while await self.stream.receive_some():
            pass

    def abort(self) -> None:
        """Reset the stream: the MH ended it (a host's moderation, docs/protocol.md §18.2), so
        nothing more is sent or finished on it. Idempotent."""
        try:
            self.stream.reset(0)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def aclose(self) -> None:
        """Finish the stream (the MH ends its publish task). Idempotent."""
        try:
            await self.stream.send_eof()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass


class MediaClient:
    """A media connection to the MH: publish with :meth:`publish`, receive with
    :meth:`receive_frame` or ``async for``. Made by :func:`open_media_client`."""

    def __init__(
        self,
        session: WebTransportSession,
        frames: trio.MemoryReceiveChannel[Frame],
    ) -> None:
        self.session = session
        self._frames = frames
        self.stream_errors = 0  # subscribed streams that carried a malformed frame
        # Takes every datagram received (it must not block); None: they are dropped.
        self.on_datagram: Callable[[bytes], None] | None = None

    @property
    def removed_reason(self) -> LeaveReason | None:
        """Why the MH removed this participant, read from its close code (docs/protocol.md
        §9), or None (the session lives, or it ended otherwise)."""
        end = self.session.end
        return reason_from_close_code(end.code if isinstance(end, ClosedByPeer) else None)

    @property
    def lost(self) -> bool:
        """The session ended without this side closing it or the MH removing the participant
        (a lost connection, or a refusal): a fresh connection may bring the media back."""
        end = self.session.end
        return (
            end is not None and not isinstance(end, ClosedLocally) and self.removed_reason is None
        )

    async def publish(self, stream_id: str | uuid.UUID) -> MediaPublisher:
        """Open the bidirectional stream for ``stream_id`` (registered with the MC first)."""
        sid = stream_id if isinstance(stream_id, uuid.UUID) else uuid.UUID(stream_id)
        return MediaPublisher(await self.session.open_bidirectional_stream(), sid)

    async def receive_frame(self) -> Frame:
        """The next frame of any subscribed stream. Raises trio.EndOfChannel once the session
        ended and every buffered frame was taken."""
        return await self._frames.receive()

    async def receive_frames(self, max_frames: int = 64) -> list[Frame]:
        """The next frame and those already buffered behind it, at most ``max_frames``: one
        wake for a burst of frames. Raises trio.EndOfChannel as :meth:`receive_frame`."""
        frames = [await self._frames.receive()]
        while len(frames) < max_frames:
            try:
                frames.append(self._frames.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return frames

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames.__aiter__()

    def send_datagram(self, data: bytes) -> None:
        """Queue one datagram (never blocks; the transport's queue drops its oldest when full).
        Raises DatagramTooLarge (a ValueError) beyond what one packet carries, SessionClosed
        or trio.ClosedResourceError once the session is gone."""
        self.session.send_datagram(data)

    async def aclose(self, code: int = 0, reason: str = "") -> None:
        """Close the session (idempotent, completes when cancelled)."""
        await self.session.close(code, reason)


async def _read_stream(
    client: MediaClient,
    stream: WebTransportReceiveStream,
    out: trio.MemorySendChannel[Frame],
) -> None:
    decoder = FrameDecoder()
    async with out:
        try:
            while True:
                data = await stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    decoder.end_of_stream()
                    return
                decoder.receive_data(data)
                for frame in decoder:
                    # The chunk's frames are queued together (no task switch per frame while
                    # there is room), so a reader may take them together (receive_frames).
                    try:
                        out.send_nowait(frame)
                    except trio.WouldBlock:
                        await out.send(frame)
        except FrameError:
            client.stream_errors += 1
            stream.stop_sending(int(FrameError.code))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


async def _read_datagrams(client: MediaClient) -> None:
    try:
        while True:
            data = await client.session.receive_datagram()
            if client.on_datagram is not None:
                client.on_datagram(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def _accept_streams(
    client: MediaClient, nursery: trio.Nursery, out: trio.MemorySendChannel[Frame]
) -> None:
    async with out:
        try:
            while True:
                stream = await client.session.accept_stream()
                if isinstance(stream, WebTransportReceiveStream):
                    nursery.start_soon(_read_stream, client, stream, out.clone())
                else:
                    stream.reset(0)  # the MH opens no bidirectional streams
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


@asynccontextmanager
async def open_media_client(
    url: str,
    *,
    server_certificate_hashes: Sequence[bytes] | None = None,
    connection: Connection | None = None,
    max_buffered_frames: int = MAX_BUFFERED_FRAMES,
    origin: str | None = None,
    limits: TransportLimits | None = None,
) -> AsyncIterator[MediaClient]:
    """Connect to ``url`` (the MH's media URL with ``?token=``) and yield the client.

    ``origin`` is sent as the CONNECT's ``origin`` header (see ``open_signaling``); ``limits``
    are the QUIC connection's (not used with ``connection``), with a media receiver's ACK
    policy unless they set one (``TransportLimits.for_media``).

    Owns the session (and its own QUIC connection unless ``connection`` is given, to share one
    among several sessions) and the reader tasks; on exit the session is closed and the readers
    end. Raises SessionRefused (``.status`` 401 for a bad token), ConnectFailed.
    """
    send, receive = trio.open_memory_channel[Frame](max_buffered_frames)
    if connection is None:
        async with connect_webtransport(
            url,
            server_certificate_hashes=server_certificate_hashes,
            origin=origin,
            limits=(limits or TransportLimits()).for_media(),
        ) as session:
            async with _run(session, send, receive) as client:
                yield client
        return
    split = urllib.parse.urlsplit(url)
    target = split.path + (f"?{split.query}" if split.query else "")
    session = await open_session(connection, split.netloc, target, origin=origin)
    try:
        async with _run(session, send, receive) as client:
            yield client
    finally:
        session.close_nowait(0, "")


@asynccontextmanager
async def _run(
    session: WebTransportSession,
    send: trio.MemorySendChannel[Frame],
    receive: trio.MemoryReceiveChannel[Frame],
) -> AsyncIterator[MediaClient]:
    client = MediaClient(session, receive)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_accept_streams, client, nursery, send)
        nursery.start_soon(_read_datagrams, client)
        try:
            yield client
        finally:
            session.close_nowait(0, "")
            nursery.cancel_scope.cancel()
