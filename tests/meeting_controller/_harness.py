"""A Meeting Controller (tests/_stack.py) with a Media Handler stand-in speaking the real
MediaControl gRPC, join tokens minted by the stack, and helpers to connect clients."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from darktower.client import SignalingClient, open_signaling
from darktower.loadtest import UdpProxy
from darktower.meeting_controller import Running
from darktower.model import Role
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlStub
from darktower.protocol.tokens import JoinTokenIssuer
from darktower.transport import TransportLimits
from tests._stack import Services, StandIn, next_message, open_services

WAIT_S = 10.0  # real-time bound on every wait below: a hang fails instead of blocking the run


class FakeMediaControl:
    """The MH stand-in: records every call; telemetry events are pushed by the test."""

    def __init__(self) -> None:
        self.registered: list[mh_pb.RegisterParticipant] = []
        self.routes: list[mh_pb.RouteMediaCommand] = []
        self.removed: list[mh_pb.RemoveParticipantRequest] = []
        self.streams_removed: list[Any] = []
        self.recordings_started: list[Any] = []
        self.recordings_stopped: list[Any] = []
        self._changed = trio.Event()
        self.telemetry_send, self._telemetry_recv = trio.open_memory_channel[mh_pb.TelemetryEvent](
            100
        )
        self.telemetry_subscribed = trio.Event()
        # When set, RegisterParticipant raises it (an MH that refuses, or is gone).
        self.refuse_register: Exception | None = None
        # When set, RegisterParticipant waits for it (an MH that is slow to answer).
        self.hold_register: trio.Event | None = None
        # When set, RouteMedia raises it.
        self.refuse_route: Exception | None = None
        # When set, RouteMedia with a transcode or a mix raises it (an MH without a free media
        # processor: CapacityExceeded); StartRecording likewise with refuse_recording.
        self.refuse_processing: Exception | None = None
        self.refuse_recording: Exception | None = None
        # The derived streams it made, as the real MH does: one per (source, codec, bitrate)
        # for a transcode, one per listener for a mix.
        self.transcodes: dict[tuple[str, str, int], str] = {}
        self.mixes: dict[str, str] = {}
        # Participants the MH forgot (after their media grace): the next RegisterParticipant
        # of each answers created = true (docs/protocol.md §13).
        self.forgotten: set[str] = set()

    def _touch(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT_S):
            while not predicate():
                await self._changed.wait()

    async def RegisterParticipant(
        self, request: mh_pb.RegisterParticipant
    ) -> mh_pb.RegisterParticipantResponse:
        refusal, hold = self.refuse_register, self.hold_register
        self.registered.append(request)
        self._touch()
        await trio.lowlevel.checkpoint()
        if hold is not None:
            await hold.wait()
        if refusal is not None:
            raise refusal
        # A fresh token at each later call for one participant, as the real MH issues.
        pid = request.participant_id
        calls = sum(1 for r in self.registered if r.participant_id == pid)
        created = pid in self.forgotten
        self.forgotten.discard(pid)
        return mh_pb.RegisterParticipantResponse(
            connection_token=f"token-{pid}" + (f"-{calls}" if calls > 1 else ""),
            media_handler_url="https://127.0.0.1:4434/v1/media",
            created=created,
        )

    async def RouteMedia(self, request: mh_pb.RouteMediaCommand) -> mh_pb.RouteMediaResponse:
        refusal = self.refuse_route
        self.routes.append(request)
        self._touch()
        await trio.lowlevel.checkpoint()
        if refusal is not None:
            raise refusal
        options = request.options
        if not (options.transcode or options.mix_audio):
            return mh_pb.RouteMediaResponse()
        if self.refuse_processing is not None and not request.unroute:
            raise self.refuse_processing
        made: dict[Any, str] = self.mixes if options.mix_audio else self.transcodes
        key: Any = request.destination_participant_ids[0]
        if options.transcode:
            key = (request.source_stream_id, options.target_codec, options.target_bitrate)
        derived = made.pop(key, "") if request.unroute else made.setdefault(key, str(uuid.uuid4()))
        return mh_pb.RouteMediaResponse(derived_stream_id=derived)

    async def RemoveParticipant(
        self, request: mh_pb.RemoveParticipantRequest
    ) -> mh_pb.RemoveParticipantResponse:
        self.removed.append(request)
        self._touch()
        await trio.lowlevel.checkpoint()
        return mh_pb.RemoveParticipantResponse()

    async def RemoveStream(self, request: Any) -> Any:
        self.streams_removed.append(request)
        self._touch()
        await trio.lowlevel.checkpoint()
        return mh_pb.RemoveStreamResponse()  # type: ignore[attr-defined,unused-ignore]

    async def StartRecording(self, request: Any) -> Any:
        self.recordings_started.append(request)
        self._touch()
        await trio.lowlevel.checkpoint()
        if self.refuse_recording is not None:
            raise self.refuse_recording
        return mh_pb.StartRecordingResponse(recording_id=request.recording_id)

    async def StopRecording(self, request: Any) -> Any:
        self.recordings_stopped.append(request)
        self._touch()
        await trio.lowlevel.checkpoint()
        return mh_pb.StopRecordingResponse()

    async def Telemetry(
        self, request: mh_pb.TelemetryRequest
    ) -> AsyncIterator[mh_pb.TelemetryEvent]:
        self.telemetry_subscribed.set()
        async for event in self._telemetry_recv:
            yield event


@attrs.define
class Stack:
    running: Running
    issuer: JoinTokenIssuer
    mh: FakeMediaControl
    mc: MeetingControlStub
    keyfile: pathlib.Path
    services: Services

    def token(self, meeting_id: str, role: Role = Role.GUEST, **kw: Any) -> str:
        return self.services.token(meeting_id, role, **kw)

    async def assign(self, meeting_id: str, **config: Any) -> None:
        await self.services.assign(meeting_id, **config)

    def join(self, meeting_id: str, role: Role = Role.GUEST, name: str = "", **kw: Any) -> Any:
        return open_signaling(
            self.running.signal_url,
            meeting_id=meeting_id,
            # The name others see is the token's (the JoinRequest's is ignored).
            join_token=kw.pop("token", None)
            or self.token(meeting_id, role, **({"participant_name": name} if name else {})),
            participant_name=name,
            server_certificate_hashes=[self.running.certificate_sha256],
            **kw,
        )


def join_via(stack: Stack, proxy: UdpProxy, meeting_id: str, idle_s: float = 1.0) -> Any:
    """A guest whose signaling goes through ``proxy``, a network the test can pause: with an
    idle timeout of ``idle_s``, a pause makes it RECONNECTING to the others (docs/protocol.md
    §13)."""
    return open_signaling(
        proxy.via(stack.running.signal_url),
        meeting_id=meeting_id,
        join_token=stack.token(meeting_id),
        server_certificate_hashes=[stack.running.certificate_sha256],
        limits=TransportLimits(idle_timeout_s=idle_s, keepalive_interval_s=idle_s / 3),
    )


@asynccontextmanager
async def resumed(
    stack: Stack, subject: SignalingClient, proxy: UdpProxy, meeting_id: str
) -> AsyncIterator[SignalingClient]:
    """``subject``'s paused network back: its old connection closes (the MC ended it), and it
    resumes its session on a new one (docs/protocol.md §13)."""
    resume_token = subject.join_response.resume_token
    proxy.resume()
    with trio.fail_after(10):
        await subject.closed.wait()
    async with open_signaling(
        stack.running.signal_url,
        meeting_id=meeting_id,
        join_token="",
        resume_token=resume_token,
        server_certificate_hashes=[stack.running.certificate_sha256],
    ) as back:
        assert back.join_response.resumed
        yield back


async def next_event(client: SignalingClient, kind: str) -> sig.ServerMessage:
    """The next event of ``kind`` (others of other kinds are skipped)."""
    return await next_message(client, kind, wait_s=WAIT_S)


async def wait_ended(client: SignalingClient) -> sig.SessionEnded:
    with trio.fail_after(WAIT_S):
        await client.closed.wait()
    assert client.session_ended is not None
    return client.session_ended


@asynccontextmanager
async def open_stack(tmp_path: pathlib.Path, **overrides: Any) -> AsyncIterator[Stack]:
    """The MC with these ``Settings`` overrides and a :class:`FakeMediaControl` as its static
    Media Handler; drains on exit."""
    fake = FakeMediaControl()
    async with open_services(tmp_path, mc=overrides, mh=StandIn(fake)) as services:
        assert services.mc is not None and services.mc_control is not None
        assert services.issuer is not None and services.join_key_file is not None
        yield Stack(
            services.mc,
            services.issuer,
            fake,
            services.mc_control,
            services.join_key_file,
            services,
        )


async def read_until_end(stream: Any) -> list[sig.ServerMessage]:
    """Every server message until the stream ends or the session goes away."""
    from darktower.protocol import MessageDecoder

    decoder: MessageDecoder[sig.ServerMessage] = MessageDecoder(sig.ServerMessage)
    with trio.fail_after(WAIT_S):
        try:
            while data := await stream.receive_some():
                decoder.receive_data(data)
        except trio.BrokenResourceError:
            pass
    return list(decoder)


def join_message(
    stack: Stack, meeting_id: str, request_id: int = 1, **kw: Any
) -> sig.ClientMessage:
    token = kw.pop("token", None) or stack.token(meeting_id)
    return sig.ClientMessage(
        request_id=request_id, join=sig.JoinRequest(meeting_id=meeting_id, join_token=token, **kw)
    )
