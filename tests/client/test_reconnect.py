"""The client reconnecting over real QUIC on 127.0.0.1, through the netfault proxy, against the
real MC and MH with small grace windows (docs/protocol.md §13): a blackout shorter than the
grace resumes the same participant and media flows again; past the MC's grace the resume is
refused and the session is lost; a media-only loss brings media back without a rejoin; a kick
during the window ends the session KICKED."""

from __future__ import annotations

import pathlib
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

import attrs
import trio

from darktower.client import (
    LEAVE_GRACE_S,
    ConnectionState,
    Dialer,
    Lost,
    MediaLink,
    MeetingSession,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    Publication,
    Reconnecting,
    Resumed,
    SessionEvent,
    SignalingLink,
    StreamPublished,
    Subscription,
    join_meeting_session,
    media_url,
)
from darktower.client._join import server_url
from darktower.frames import FrameType
from darktower.loadtest import UdpProxy, open_udp_proxy
from darktower.model import LeaveReason, Role, StreamType
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import TransportLimits
from tests._stack import Services, open_services

MEETING = "reconnect"
IDLE_S = 1.0  # liveness on both sides: a dead path is noticed about this long after it died
LIMITS = TransportLimits(idle_timeout_s=IDLE_S, keepalive_interval_s=IDLE_S / 3)
GRACE_S = 8.0  # the client's, and by default the MC's and the MH's
WAIT_S = 30.0  # real-time bound on each wait: these run on a shared machine

E = TypeVar("E")


@attrs.frozen
class Through:
    """The connector of a client behind two proxies: the MC's and the MH's."""

    dialer: Dialer
    media_proxy: UdpProxy

    def signaling(self, resume_token: str) -> AbstractAsyncContextManager[SignalingLink]:
        return self.dialer.signaling(resume_token)

    def media(self, server: sig.MediaServerInfo) -> AbstractAsyncContextManager[MediaLink]:
        return self.dialer.media_at(self.media_proxy.via(server_url(server)))


@asynccontextmanager
async def stack(tmp_path: pathlib.Path, *, mc_grace_s: float = GRACE_S) -> AsyncIterator[Services]:
    async with open_services(
        tmp_path,
        mc={"resume_grace_s": mc_grace_s, "idle_timeout_s": IDLE_S},
        mh={"media_grace_s": GRACE_S},
    ) as services:
        await services.assign(MEETING)
        yield services


def host(services: Services) -> AbstractAsyncContextManager[MeetingSession]:
    """The host, on a direct path."""
    return join_meeting_session(
        services.signal_url,
        meeting_id=MEETING,
        join_token=services.token(MEETING, Role.HOST),
        participant_name="host",
        server_certificate_hashes=services.pins,
    )


@attrs.frozen
class Behind:
    session: MeetingSession
    signal_proxy: UdpProxy
    media_proxy: UdpProxy

    def blackout(self) -> None:
        self.signal_proxy.pause()
        self.media_proxy.pause()

    def back(self) -> None:
        self.signal_proxy.resume()
        self.media_proxy.resume()


def _port(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None
    return port


@asynccontextmanager
async def behind_proxies(services: Services, name: str) -> AsyncIterator[Behind]:
    """A guest whose signaling and media go through a proxy each, as join_meeting_session
    composes it (the dialer's URLs point at the proxies)."""
    assert services.mh is not None
    async with (
        open_udp_proxy(("127.0.0.1", _port(services.signal_url))) as signal_proxy,
        open_udp_proxy(("127.0.0.1", _port(services.media_url))) as media_proxy,
    ):
        dialer = Dialer(
            signal_proxy.via(services.signal_url), MEETING, name, services.pins, None, LIMITS
        )
        async with dialer.join(services.token(MEETING)) as signaling:
            url = media_proxy.via(media_url(signaling.join_response))
            async with dialer.media_at(url) as media:
                session = MeetingSession(
                    signaling,
                    media,
                    meeting_id=MEETING,
                    connector=Through(dialer, media_proxy),
                    resume_grace_s=GRACE_S,
                )
                async with trio.open_nursery() as nursery:
                    await nursery.start(session.run)
                    try:
                        yield Behind(session, signal_proxy, media_proxy)
                    finally:
                        with trio.move_on_after(LEAVE_GRACE_S, shield=True):
                            await session.leave()


async def expect(
    session: MeetingSession,
    kind: type[E],
    where: Callable[[E], bool] = lambda e: True,
    seen: list[SessionEvent] | None = None,
) -> E:
    """The next event of ``kind`` that satisfies ``where``; the others go to ``seen``."""
    with trio.fail_after(WAIT_S):
        async for event in session.events:
            if isinstance(event, kind) and where(event):
                return event
            if seen is not None:
                seen.append(event)
    raise AssertionError(f"the session ended before a {kind.__name__}")


async def flows(publication: Publication, subscription: Subscription) -> None:
    """Frames sent from now on reach ``subscription`` (sent every 20 ms, as a real sender
    would, until one arrives: those in flight when the path died are gone)."""
    marker = uuid.uuid4().bytes

    async def send() -> None:
        while True:
            await publication.send_frame(FrameType.AUDIO, marker)
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        with trio.fail_after(WAIT_S):
            while bytes((await subscription.receive()).payload) != marker:
                pass
        nursery.cancel_scope.cancel()


async def talking(a: MeetingSession, b: MeetingSession) -> tuple[Publication, Subscription]:
    """``a`` publishes audio and ``b`` subscribes to it."""
    publication = await a.publish(StreamType.AUDIO)
    await expect(b, StreamPublished, lambda e: e.stream.stream_id == publication.stream_id)
    return publication, await b.subscribe(publication.stream_id)


def reconnecting(pid: str) -> Callable[[ParticipantUpdated], bool]:
    return lambda e: (
        (e.participant.participant_id, e.participant.connection)
        == (
            pid,
            ConnectionState.RECONNECTING,
        )
    )


async def test_a_blackout_shorter_than_the_grace_resumes_the_same_participant(
    tmp_path: pathlib.Path,
) -> None:
    async with stack(tmp_path) as services, host(services) as h:
        async with behind_proxies(services, "bob") as bob:
            b = bob.session
            await expect(h, ParticipantJoined)
            to_bob = await talking(h, b)
            from_bob = await talking(b, h)
            await flows(*to_bob)
            pid = b.participant_id
            bob.blackout()
            assert await expect(b, Reconnecting) == Reconnecting(media_only=False)
            seen: list[SessionEvent] = []
            await expect(h, ParticipantUpdated, reconnecting(pid), seen)  # the MC noticed
            bob.back()
            resumed = await expect(b, Resumed)
            assert not resumed.media_only and resumed.outage_s > 0
            assert b.participant_id == pid and b.reconnects == 1
            assert b.connection is ConnectionState.CONNECTED
            await expect(h, ParticipantUpdated, lambda e: e.participant.participant_id == pid, seen)
            assert h.participants[pid].connection is ConnectionState.CONNECTED
            # Media flows again both ways, on the same publication and subscription objects.
            await flows(*to_bob)
            await flows(*from_bob)
            # The host saw a state change, never a leave or a join.
            assert not [e for e in seen if isinstance(e, (ParticipantLeft, ParticipantJoined))]


async def test_past_the_mcs_grace_the_resume_is_refused_and_the_session_lost(
    tmp_path: pathlib.Path,
) -> None:
    async with stack(tmp_path, mc_grace_s=2.0) as services, host(services) as h:
        async with behind_proxies(services, "bob") as bob:
            b = bob.session
            await expect(h, ParticipantJoined)
            bob.blackout()
            await expect(b, Reconnecting)
            left = await expect(h, ParticipantLeft)
            assert (left.participant.participant_id, left.reason) == (
                b.participant_id,
                LeaveReason.CONNECTION_LOST,
            )
            bob.back()  # within the client's grace: its resume is refused (NOT_FOUND)
            lost = await expect(b, Lost)
            assert lost.reason is LeaveReason.CONNECTION_LOST
            assert b.end_reason is LeaveReason.CONNECTION_LOST


async def test_media_only_loss_brings_media_back_without_a_rejoin(
    tmp_path: pathlib.Path,
) -> None:
    async with stack(tmp_path) as services, host(services) as h:
        async with behind_proxies(services, "bob") as bob:
            b = bob.session
            await expect(h, ParticipantJoined)
            to_bob = await talking(h, b)
            from_bob = await talking(b, h)
            pid = b.participant_id
            bob.media_proxy.pause()
            assert await expect(b, Reconnecting) == Reconnecting(media_only=True)
            bob.media_proxy.resume()
            resumed = await expect(b, Resumed)
            assert resumed.media_only and b.participant_id == pid
            await flows(*to_bob)
            await flows(*from_bob)
            assert pid in h.participants
            # The MC's own MediaReconnect about that loss did not cause a second one.
            assert b.reconnects == 1


async def test_a_kick_during_the_window_ends_the_session_kicked(tmp_path: pathlib.Path) -> None:
    async with stack(tmp_path) as services, host(services) as h:
        async with behind_proxies(services, "bob") as bob:
            b = bob.session
            await expect(h, ParticipantJoined)
            bob.blackout()
            await expect(b, Reconnecting)
            await expect(h, ParticipantUpdated, reconnecting(b.participant_id))
            await h.kick(b.participant_id)
            left = await expect(h, ParticipantLeft)
            assert left.reason is LeaveReason.KICKED
            bob.back()
            lost = await expect(b, Lost)
            assert lost.reason is LeaveReason.KICKED
            assert b.end_reason is LeaveReason.KICKED
