"""Fakes for the meeting product at the client (docs/protocol.md §18), on virtual time: a
signaling connection whose requests the test may refuse or hold, and a media connection whose
publication streams record what was sent and may be reset by "the MH"."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import trio

from darktower.client import MediaPublisher, MeetingSession, SessionEvent
from darktower.errors import DarkTowerError
from darktower.frames import Frame, FrameDecoder
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._reconnect_fakes import PID, FakeMedia, FakeNetwork, FakeSignaling


class PeerStream:
    """A publication's media stream as the MH sees it: the bytes sent; ``reset_by_mh`` makes
    the next send fail as a reset stream does; ``reset_code`` is set once this side reset it."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.reset_by_mh = False
        self.reset_code: int | None = None
        self.finished = False

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self.reset_by_mh or self.reset_code is not None:
            raise trio.BrokenResourceError("stream reset")
        self.sent += data

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self.finished = True

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""

    def reset(self, code: int = 0) -> None:
        self.reset_code = code

    def frames(self) -> list[Frame]:
        decoder = FrameDecoder()
        decoder.receive_data(bytes(self.sent))
        return list(decoder)


class ProductMedia(FakeMedia):
    """A media connection whose publications are :class:`PeerStream` objects (``streams``, by
    wire stream id); ``datagrams`` are those sent, ``receive`` hands one to the session."""

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.streams: dict[str, PeerStream] = {}
        self.datagrams: list[bytes] = []
        self.on_datagram: Callable[[bytes], None] | None = None

    def send_datagram(self, data: bytes) -> None:
        if self.lost or self.closed:
            raise trio.BrokenResourceError("gone")
        self.datagrams.append(data)

    def receive(self, data: bytes) -> None:
        assert self.on_datagram is not None
        self.on_datagram(data)

    async def publish(self, stream_id: str | uuid.UUID) -> MediaPublisher:
        if self.lost:
            raise trio.BrokenResourceError("gone")
        stream = self.streams[str(stream_id)] = PeerStream()
        return MediaPublisher(stream, uuid.UUID(str(stream_id)))  # type: ignore[arg-type]


class ProductSignaling(FakeSignaling):
    """Requests are acknowledged unless ``refuse`` names an error for their kind; a kind in
    ``held`` waits for its event first."""

    def __init__(self, join: sig.JoinResponse, net: FakeNetwork) -> None:
        super().__init__(join, net)
        self.refuse: dict[str, DarkTowerError] = {}
        self.held: dict[str, trio.Event] = {}

    async def request(self, message: sig.ClientMessage) -> sig.ServerMessage:
        kind = message.WhichOneof("message") or ""
        if kind in self.held:
            self.requests.append(message)
            await self.held[kind].wait()
            self.requests.pop()
        if kind in self.refuse:
            self.requests.append(message)
            raise self.refuse[kind]
        return await super().request(message)

    def sent(self, kind: str) -> list[sig.ClientMessage]:
        return [r for r in self.requests if r.WhichOneof("message") == kind]


@asynccontextmanager
async def product_session(
    *existing: sig.Participant,
    may_publish: Iterable[str] | None = None,
    net: FakeNetwork | None = None,
) -> AsyncIterator[tuple[MeetingSession, ProductSignaling, ProductMedia]]:
    """A running session on the fakes (its own id is ``PID``)."""
    net = net or FakeNetwork()
    join = sig.JoinResponse(
        participant_id=PID,
        resume_token="resume1",
        existing_participants=existing,
        media_server=sig.MediaServerInfo(media_handler_url="https://mh", connection_token="first"),
    )
    signaling, media = ProductSignaling(join, net), ProductMedia("first")
    session = MeetingSession(
        signaling,  # type: ignore[arg-type]
        media,  # type: ignore[arg-type]
        meeting_id="m",
        connector=net,  # type: ignore[arg-type]
        may_publish=may_publish,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(session.run)
        yield session, signaling, media
        nursery.cancel_scope.cancel()


def pending(session: MeetingSession) -> list[SessionEvent]:
    """The events the session has put and the test has not taken yet."""
    out: list[SessionEvent] = []
    while True:
        try:
            out.append(session.events._receive.receive_nowait())
        except trio.WouldBlock:
            return out


def server(**message: object) -> sig.ServerMessage:
    return sig.ServerMessage(**message)  # type: ignore[arg-type]
