"""Fake signaling and media connections and a fake connector for a session's reconnection
(docs/protocol.md §13), on virtual time: the test drives losses, refusals and the room."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from darktower.client import MediaPublisher, MeetingSession, SessionEvent
from darktower.errors import CapacityExceeded
from darktower.frames import Frame, FrameHeader, FrameType
from darktower.model import LeaveReason
from darktower.protocol import leave_reason_to_pb
from darktower.protocol.pb.v1 import common_pb2 as common
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import ConnectFailed

PID = "me"
GRACE_S = 15.0
STREAM_A = str(uuid.uuid4())
STREAM_B = str(uuid.uuid4())
STREAM_C = str(uuid.uuid4())


def participant(pid: str, *streams: str) -> sig.Participant:
    return sig.Participant(
        participant_id=pid,
        name=pid,
        streams=[common.MediaStream(stream_id=s, stream_type=common.AUDIO) for s in streams],
    )


def frame(stream_id: str, seq: int, kind: FrameType = FrameType.AUDIO) -> Frame:
    header = FrameHeader(
        frame_type=kind,
        stream_id=uuid.UUID(stream_id),
        timestamp_us=0,
        sequence=seq,
        payload_length=1,
    )
    return Frame.build(header, b"x")


class FakeSignaling:
    """A joined signaling connection: ``push`` server messages, ``lose`` it, ``end`` it."""

    def __init__(self, join: sig.JoinResponse, net: FakeNetwork) -> None:
        self.join_response = join
        self._net = net
        self._send, self.events = trio.open_memory_channel[sig.ServerMessage](100)
        self.session_ended: sig.SessionEnded | None = None
        self._lost = False
        self.gone = trio.Event()
        self.requests: list[sig.ClientMessage] = []
        self.hold = False  # requests wait until the connection goes

    @property
    def participant_id(self) -> str:
        return self.join_response.participant_id

    @property
    def end_reason(self) -> LeaveReason | None:
        return None if self.session_ended is None else LeaveReason(self.session_ended.reason)

    @property
    def lost(self) -> bool:
        return self._lost

    def push(self, message: sig.ServerMessage) -> None:
        self._send.send_nowait(message)

    def lose(self) -> None:
        self._lost = True
        self._send.close()
        self.gone.set()

    def end(self, reason: LeaveReason) -> None:
        self.session_ended = sig.SessionEnded(reason=leave_reason_to_pb(reason))
        self._send.close()
        self.gone.set()

    async def request(self, message: sig.ClientMessage) -> sig.ServerMessage:
        if self.gone.is_set():
            raise trio.BrokenResourceError("gone")
        self.requests.append(message)
        if self.hold:
            await self.gone.wait()
            raise trio.BrokenResourceError("gone")
        if message.WhichOneof("message") == "media_reconnect_request":
            if self._net.mh_failing:
                self._net.mh_failing -= 1
                raise CapacityExceeded("no media handler")
            self._net.tokens_issued += 1
            server = sig.MediaServerInfo(
                media_handler_url="https://mh", connection_token=f"asked{self._net.tokens_issued}"
            )
            return sig.ServerMessage(media_reconnect=sig.MediaReconnect(media_server=server))
        return sig.ServerMessage(ack=sig.Ack())

    async def leave(self) -> sig.SessionEnded | None:
        return None


class FakeMedia:
    """A media connection: ``deliver`` frames to the session, ``lose`` it."""

    def __init__(self, token: str) -> None:
        self.token = token
        self._send, self._frames = trio.open_memory_channel[Frame](100)
        self.removed_reason: LeaveReason | None = None
        self.lost = False
        self.closed = False
        self.published: dict[str, trio.testing.MemoryReceiveStream] = {}

    def deliver(self, f: Frame) -> None:
        self._send.send_nowait(f)

    def lose(self, removed: LeaveReason | None = None) -> None:
        self.removed_reason = removed
        self.lost = removed is None
        self._send.close()

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames.__aiter__()

    async def publish(self, stream_id: str | uuid.UUID) -> MediaPublisher:
        if self.lost:
            raise trio.BrokenResourceError("gone")
        ours, theirs = trio.testing.memory_stream_pair()
        self.published[str(stream_id)] = theirs  # type: ignore[assignment]
        return MediaPublisher(ours, uuid.UUID(str(stream_id)))  # type: ignore[arg-type]

    async def aclose(self, code: int = 0, reason: str = "") -> None:
        self.closed = True
        self._send.close()


class FakeNetwork:
    """The connector: while ``up`` it opens resumed signaling sessions (the room is
    ``existing``) and media connections; ``refusal`` is raised instead when set."""

    def __init__(self) -> None:
        self.up = True
        self.refusal: BaseException | None = None
        self.existing: list[sig.Participant] = []
        self.resume_tokens: list[str] = []
        self.media_tokens: list[str] = []
        self.signalings: list[FakeSignaling] = []
        self.medias: list[FakeMedia] = []
        self.tokens_issued = 0
        self.attempts_at: list[float] = []
        self.mh_failing = 0  # MediaReconnectRequests answered CAPACITY_EXCEEDED, then tokens
        self.resumed_media = True  # False: a resume's JoinResponse names no MH (it failed)

    @asynccontextmanager
    async def signaling(self, resume_token: str) -> AsyncIterator[FakeSignaling]:
        self.attempts_at.append(trio.current_time())
        self.resume_tokens.append(resume_token)
        await trio.sleep(0.01)  # a round trip
        if not self.up:
            raise ConnectFailed("no route")
        if self.refusal is not None:
            raise self.refusal
        n = len(self.signalings) + 2
        join = sig.JoinResponse(
            participant_id=PID,
            resume_token=f"resume{n}",
            resumed=True,
            media_server=sig.MediaServerInfo(
                media_handler_url="https://mh", connection_token=f"joined{n}"
            )
            if self.resumed_media
            else None,
            existing_participants=self.existing,
        )
        signaling = FakeSignaling(join, self)
        self.signalings.append(signaling)
        yield signaling

    @asynccontextmanager
    async def media(self, server: sig.MediaServerInfo) -> AsyncIterator[FakeMedia]:
        self.media_tokens.append(server.connection_token)
        await trio.sleep(0.01)
        if not self.up:
            raise ConnectFailed("no route")
        media = FakeMedia(server.connection_token)
        self.medias.append(media)
        yield media


@asynccontextmanager
async def running(
    net: FakeNetwork, *existing: sig.Participant, grace_s: float = GRACE_S
) -> AsyncIterator[tuple[MeetingSession, FakeSignaling, FakeMedia]]:
    join = sig.JoinResponse(
        participant_id=PID,
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
        resume_grace_s=grace_s,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(session.run)
        yield session, signaling, media
        nursery.cancel_scope.cancel()


async def until(session: MeetingSession, kind: type[SessionEvent]) -> list[SessionEvent]:
    """Every event up to and including the first ``kind``."""
    out: list[SessionEvent] = []
    with trio.fail_after(60):
        async for event in session.events:
            out.append(event)
            if isinstance(event, kind):
                return out
    raise AssertionError(f"ended before {kind.__name__}: {out}")
