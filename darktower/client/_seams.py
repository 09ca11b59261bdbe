"""The seams of a meeting session's link (docs/protocol.md §13): what it uses of its
connections, what opens new ones (a resume's, a media reconnection's, a rejoin's), and what it
tells its session. ``_join.Dialer`` and ``_rejoin.GcRejoiner`` are the network's; the tests have
fakes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import trio

from darktower.e2ee import KeyPair
from darktower.frames import Frame
from darktower.model import LeaveReason
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import SessionEvent
from ._media import MediaPublisher
from ._rest import JoinTicket


class SignalingLink(Protocol):
    """What the session uses of a joined signaling connection (a :class:`SignalingClient`)."""

    @property
    def join_response(self) -> sig.JoinResponse: ...

    @property
    def events(self) -> trio.MemoryReceiveChannel[sig.ServerMessage]: ...

    @property
    def end_reason(self) -> LeaveReason | None: ...

    @property
    def lost(self) -> bool: ...

    @property
    def key_pair(self) -> KeyPair | None:
        """The key pair whose public key the JoinRequest offered (docs/protocol.md §16)."""
        ...

    async def request(self, message: sig.ClientMessage) -> sig.ServerMessage: ...

    async def leave(self) -> sig.SessionEnded | None: ...


class MediaLink(Protocol):
    """What the session uses of a media connection (a :class:`MediaClient`)."""

    @property
    def removed_reason(self) -> LeaveReason | None: ...

    @property
    def lost(self) -> bool: ...

    # Takes every datagram received (docs/protocol.md §18.4); set by the session.
    on_datagram: Callable[[bytes], None] | None

    def __aiter__(self) -> AsyncIterator[Frame]: ...

    def send_datagram(self, data: bytes) -> None: ...

    async def publish(self, stream_id: str | uuid.UUID) -> MediaPublisher: ...

    async def aclose(self, code: int = 0, reason: str = "") -> None: ...


class Connector(Protocol):
    """Opens the connections of a reconnection (``_join.Dialer`` over the network)."""

    def signaling(self, resume_token: str) -> AbstractAsyncContextManager[SignalingLink]:
        """A signaling session whose JoinRequest resumes with ``resume_token``."""
        ...

    def media(self, server: sig.MediaServerInfo) -> AbstractAsyncContextManager[MediaLink]:
        """A media session at ``server`` with its connection token."""
        ...


class RejoinConnector(Connector, Protocol):
    """A :class:`Connector` at one MC that also joins it with a join token (a ``Dialer``)."""

    def join(self, join_token: str) -> AbstractAsyncContextManager[SignalingLink]: ...


class Rejoiner(Protocol):
    """What a link needs to rejoin through the GC (a ``_rejoin.GcRejoiner``)."""

    async def moved(self) -> bool:
        """True when the GC places the meeting elsewhere than the MC joined last (or has lost
        that MC); False when it does not or cannot say. Raises RejoinRefused."""
        ...

    async def ticket(self) -> JoinTicket:
        """A new join. Raises RejoinRefused, or what a retry may change."""
        ...

    def connector(self, ticket: JoinTicket) -> RejoinConnector:
        """The connector of the ticket's MC."""
        ...

    def joined(self, ticket: JoinTicket) -> None:
        """The session is at the ticket's MC now."""
        ...


class LinkOwner(Protocol):
    """What the link tells its session (a :class:`MeetingSession`)."""

    @property
    def participant_id(self) -> str: ...

    @property
    def end_reason(self) -> LeaveReason | None: ...

    def on_message(self, message: sig.ServerMessage) -> None: ...

    def on_frame(self, frame: Frame) -> None: ...

    def on_resumed(self, join: sig.JoinResponse) -> None: ...

    def on_rejoined(self, join: sig.JoinResponse, join_token: str, reason: LeaveReason) -> None:
        """Joined again as a new participant: take its id and the room (events)."""
        ...

    async def restore(self, signaling: SignalingLink) -> None:
        """Publish and subscribe again on ``signaling`` (a rejoin's). Raises the transport's
        Broken errors when it breaks meanwhile (the rest follows after a resume)."""
        ...

    def on_media_down(self) -> None: ...

    async def on_media(self, media: MediaLink) -> None: ...

    def put_event(self, event: SessionEvent) -> None: ...

    def finish(self, reason: LeaveReason, message: str = "") -> None: ...

    async def settle(self) -> None: ...


__all__ = [
    "Connector",
    "LinkOwner",
    "MediaLink",
    "RejoinConnector",
    "Rejoiner",
    "SignalingLink",
]
