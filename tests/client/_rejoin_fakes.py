"""A fake GC rejoiner beside tests/client/_reconnect_fakes.py's network, on virtual time: the
test says where the GC places the meeting, what it refuses and what the new MC's room is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import attrs
import trio

from darktower.client import JoinTicket, MediaLink, MeetingSession, SignalingLink
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._reconnect_fakes import GRACE_S, FakeMedia, FakeNetwork, FakeSignaling

NEW_MC = "https://mc-2/v1/signal"


@attrs.define(eq=False)
class FakeMc:
    """The connector of the MC a ticket names: joins as a new participant, in the room of the
    rejoiner's ``new_net`` (whose connections it opens)."""

    rejoiner: FakeRejoiner
    url: str

    @asynccontextmanager
    async def join(self, join_token: str) -> AsyncIterator[FakeSignaling]:
        net, rejoiner = self.rejoiner.new_net or self.rejoiner.net, self.rejoiner
        rejoiner.joins.append((self.url, join_token))
        await trio.sleep(0.01)
        if rejoiner.join_failures:
            raise rejoiner.join_failures.pop(0)
        n = len(rejoiner.signalings) + 1
        join = sig.JoinResponse(
            participant_id=f"new{n}",
            resume_token=f"rejoined-resume{n}",
            media_server=sig.MediaServerInfo(
                media_handler_url="https://mh-2", connection_token=f"rejoined{n}"
            ),
            existing_participants=net.existing,
        )
        signaling = FakeSignaling(join, net)
        rejoiner.signalings.append(signaling)
        yield signaling

    def signaling(self, resume_token: str) -> AbstractAsyncContextManager[SignalingLink]:
        net = self.rejoiner.new_net or self.rejoiner.net
        return net.signaling(resume_token)  # type: ignore[return-value]

    def media(self, server: sig.MediaServerInfo) -> AbstractAsyncContextManager[MediaLink]:
        net = self.rejoiner.new_net or self.rejoiner.net
        return net.media(server)  # type: ignore[return-value]


@attrs.define(eq=False)
class FakeRejoiner:
    """The GC: ``moved`` answers where the meeting is (or raises it); ``ticket_failures`` and
    ``join_failures`` are raised by the next tickets and joins, in order. The new MC and its MH
    are ``new_net`` (None: the old ones' ``net``)."""

    net: FakeNetwork
    new_net: FakeNetwork | None = None
    moved_answer: bool | BaseException = False
    ticket_failures: list[BaseException] = attrs.Factory(list)
    join_failures: list[BaseException] = attrs.Factory(list)
    asked_moved: int = 0
    tickets_at: list[float] = attrs.Factory(list)
    joins: list[tuple[str, str]] = attrs.Factory(list)
    signalings: list[FakeSignaling] = attrs.Factory(list)
    at: str = "https://mc-1/v1/signal"

    async def moved(self) -> bool:
        self.asked_moved += 1
        await trio.sleep(0.01)
        if isinstance(self.moved_answer, BaseException):
            raise self.moved_answer
        return self.moved_answer

    async def ticket(self) -> JoinTicket:
        self.tickets_at.append(trio.current_time())
        await trio.sleep(0.01)
        if self.ticket_failures:
            raise self.ticket_failures.pop(0)
        token = f"token{len(self.tickets_at)}"
        return JoinTicket(meeting_id="m", join_token=token, meeting_controller_url=NEW_MC, role="")

    def connector(self, ticket: JoinTicket) -> FakeMc:
        return FakeMc(self, ticket.meeting_controller_url)

    def joined(self, ticket: JoinTicket) -> None:
        self.at = ticket.meeting_controller_url


@asynccontextmanager
async def rejoining(
    net: FakeNetwork,
    rejoiner: FakeRejoiner | None,
    *existing: sig.Participant,
    rejoin_window_s: float = 60.0,
) -> AsyncIterator[tuple[MeetingSession, FakeSignaling, FakeMedia]]:
    """A running session over fakes, with ``rejoiner`` (None: joined without a GC)."""
    join = sig.JoinResponse(
        participant_id="me",
        resume_token="resume1",
        existing_participants=existing,
        media_server=sig.MediaServerInfo(media_handler_url="https://mh", connection_token="first"),
    )
    signaling, media = FakeSignaling(join, net), FakeMedia("first")
    session = MeetingSession(
        signaling,  # type: ignore[arg-type]
        media,  # type: ignore[arg-type]
        meeting_id="m",
        connector=net,  # type: ignore[arg-type]
        resume_grace_s=GRACE_S,
        rejoiner=rejoiner,  # type: ignore[arg-type]
        rejoin_window_s=rejoin_window_s,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(session.run)
        yield session, signaling, media
        nursery.cancel_scope.cancel()
