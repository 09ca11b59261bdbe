"""An end-to-end encrypted meeting on the real MC and MH over real QUIC on 127.0.0.1, with the
MH's test tap recording every frame it routes (its wire bytes), for tests/e2e/test_e2ee*.py."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

import attrs
import trio

from darktower.client import (
    MeetingSession,
    Publication,
    StreamPublished,
    Subscription,
    join_meeting_session,
)
from darktower.frames import Frame
from darktower.model import Role, StreamType
from tests._stack import Services, open_services

MEETING = "secret"
WAIT_S = 20.0  # real-time bound on each wait: real QUIC on a shared machine
E = TypeVar("E")


@attrs.define(eq=False)
class Room:
    services: Services
    tapped: list[bytes] = attrs.Factory(list)  # every frame the MH routed, as routed

    def join(
        self, name: str, role: Role = Role.GUEST
    ) -> AbstractAsyncContextManager[MeetingSession]:
        return join_meeting_session(
            self.services.signal_url,
            meeting_id=MEETING,
            join_token=self.services.token(MEETING, role, participant_name=name),
            participant_name=name,
            server_certificate_hashes=self.services.pins,
        )

    def routed(self, publication: Publication) -> list[Frame]:
        """The frames of ``publication`` the MH routed, as it saw them."""
        key = uuid.UUID(publication.stream_id).bytes
        frames = [Frame.from_wire(raw) for raw in self.tapped]
        return [f for f in frames if f.stream_id_bytes == key]


@asynccontextmanager
async def encrypted_meeting(tmp_path: pathlib.Path) -> AsyncIterator[Room]:
    """The real MC and MH, a meeting with ``enable_e2e_encryption``, the MH's tap on."""
    async with open_services(tmp_path, mc={}, mh={}) as services:
        await services.assign(MEETING, enable_e2e_encryption=True)
        assert services.mh is not None
        room = Room(services)
        router = services.mh.handler.router
        router.tap = lambda raw: room.tapped.append(bytes(raw))
        try:
            yield room
        finally:
            router.tap = None


async def next_event(
    session: MeetingSession, kind: type[E], where: Callable[[E], bool] = lambda e: True
) -> E:
    """The next event of ``kind`` that satisfies ``where`` (others are skipped)."""
    with trio.fail_after(WAIT_S):
        async for event in session.events:
            if isinstance(event, kind) and where(event):
                return event
    raise AssertionError(f"the session ended before a {kind.__name__}")


async def subscribed(
    publisher: MeetingSession, stream_type: StreamType, *subscribers: MeetingSession
) -> tuple[Publication, list[Subscription]]:
    """``publisher`` publishes a stream of ``stream_type``; each of ``subscribers`` hears of it
    and subscribes."""
    publication = await publisher.publish(
        stream_type, codec="Opus" if stream_type is StreamType.AUDIO else "VP8"
    )
    subscriptions = []
    for session in subscribers:
        await next_event(
            session, StreamPublished, lambda e: e.stream.stream_id == publication.stream_id
        )
        subscriptions.append(await session.subscribe(publication.stream_id))
    return publication, subscriptions


async def take(subscription: Subscription, n: int) -> list[Frame]:
    with trio.fail_after(WAIT_S):
        return [await subscription.receive() for _ in range(n)]


async def generation_moves(session: MeetingSession, past: int) -> None:
    """Wait (on the session's events) until its sender key is past generation ``past``."""
    if session.e2ee.generation > past:
        return
    with trio.fail_after(WAIT_S):
        async for _ in session.events:
            if session.e2ee.generation > past:
                return
    raise AssertionError("the session ended first")
