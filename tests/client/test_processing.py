"""The client library with derived streams and recordings (docs/protocol.md §2.1, §2.2), over
real QUIC with the real MC and MH. The MH's media processors are stood in for at the MC's link
to the MH: a transcode or a mix is answered with a stream that a participant of the test
("proc") publishes, routed to the subscriber as the MH routes a processor's output, and a
recording is accepted. The subscriber sees only what the MC tells it: the frames of that stream
reach the subscription of the source (or of the mix)."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from darktower.client import (
    MeetingSession,
    RecordingChanged,
    StreamPublished,
    Subscription,
    join_meeting_session,
)
from darktower.frames import FrameType
from darktower.meeting_controller import GrpcMediaLink
from darktower.model import Role, StreamType
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from tests._stack import Services, open_services

from ._stack import WAIT_S, next_event

TRANSCODED = str(uuid.uuid4())  # what "proc" publishes as the transcode (H.264)
MIXED = str(uuid.uuid4())  # and as the mix


@attrs.define
class Processors:
    """What the stand-in was asked."""

    routes: list[mh_pb.RouteMediaCommand] = attrs.Factory(list)
    recordings: list[str] = attrs.Factory(list)
    stopped: list[mh_pb.StopRecordingRequest] = attrs.Factory(list)
    any_stopped: trio.Event = attrs.Factory(trio.Event)


@pytest.fixture
def processors(monkeypatch: pytest.MonkeyPatch) -> Processors:
    seen = Processors()
    route_media = GrpcMediaLink.route_media

    async def route(self: GrpcMediaLink, request: mh_pb.RouteMediaCommand) -> Any:
        options = request.options
        if not (options.transcode or options.mix_audio):
            return await route_media(self, request)
        seen.routes.append(request)
        derived = MIXED if options.mix_audio else TRANSCODED
        output = mh_pb.RouteMediaCommand(
            meeting_id=request.meeting_id,
            source_stream_id=derived,
            destination_participant_ids=request.destination_participant_ids,
            unroute=request.unroute,
        )
        await route_media(self, output)
        return mh_pb.RouteMediaResponse(derived_stream_id=derived)

    async def start(self: GrpcMediaLink, request: mh_pb.StartRecordingRequest) -> None:
        await trio.lowlevel.checkpoint()
        seen.recordings.append(request.participant_id)

    async def stop(self: GrpcMediaLink, request: mh_pb.StopRecordingRequest) -> None:
        await trio.lowlevel.checkpoint()
        seen.stopped.append(request)
        seen.any_stopped.set()

    monkeypatch.setattr(GrpcMediaLink, "route_media", route)
    monkeypatch.setattr(GrpcMediaLink, "start_recording", start)
    monkeypatch.setattr(GrpcMediaLink, "stop_recording", stop)
    return seen


def joiner(services: Services) -> Any:
    def join(name: str, **kw: Any) -> AbstractAsyncContextManager[MeetingSession]:
        return join_meeting_session(
            services.signal_url,
            meeting_id="m",
            join_token=services.token("m", Role.GUEST, participant_name=name),
            participant_name=name,
            server_certificate_hashes=services.pins,
            **kw,
        )

    return join


@asynccontextmanager
async def stack(tmp_path: pathlib.Path, **meeting: Any) -> AsyncIterator[Services]:
    async with open_services(tmp_path, mc={}, mh={}) as services:
        await services.assign("m", **meeting)
        yield services


async def take(subscription: Subscription, n: int) -> list[bytes]:
    with trio.fail_after(WAIT_S):
        return [bytes((await subscription.receive()).raw) for _ in range(n)]


async def test_a_subscription_yields_its_transcode_and_the_mix_its_own_stream(
    tmp_path: pathlib.Path, processors: Processors
) -> None:
    async with stack(tmp_path) as services:
        join = joiner(services)
        capabilities = sig.ParticipantCapabilities(video_codecs=["H264"])
        async with (
            join("host") as host,
            join("proc") as proc,
            join("bob", capabilities=capabilities) as bob,
        ):
            camera = await host.publish(StreamType.VIDEO_CAMERA, codec="VP8", max_bitrate=400_000)
            transcode = await proc.publish(
                StreamType.VIDEO_CAMERA, stream_id=TRANSCODED, codec="H264"
            )
            mix = await proc.publish(StreamType.AUDIO, stream_id=MIXED, codec="Opus")
            await next_event(bob, StreamPublished, lambda e: e.stream.stream_id == camera.stream_id)

            video = await bob.subscribe(camera.stream_id)
            assert video.derived is not None
            assert (video.derived.stream_id, video.derived.codec) == (TRANSCODED, "H264")
            assert video.derived.bitrate == 400_000 and not video.derived.mix
            [asked] = processors.routes
            assert asked.options.transcode and asked.options.target_codec == "H264"
            # what the transcode publishes reaches the subscription of the source
            sent = [
                await transcode.send_frame(
                    FrameType.VIDEO_KEY if i == 0 else FrameType.VIDEO_DELTA, bytes([i]) * 50
                )
                for i in range(3)
            ]
            assert await take(video, 3) == sent

            audio = await bob.subscribe_mix()
            assert audio.mix and audio.stream_id == ""
            assert audio.derived is not None and audio.derived.stream_id == MIXED
            assert audio.derived.mix and audio.derived.codec == "Opus"
            sent = [await mix.send_frame(FrameType.AUDIO, bytes([9, i])) for i in range(3)]
            assert await take(audio, 3) == sent
            # closing it withdraws the mix by its stream id
            await audio.aclose()
            assert processors.routes[-1].unroute and processors.routes[-1].options.mix_audio
            assert [f async for f in audio] == []


async def test_a_session_knows_whether_the_meeting_is_being_recorded(
    tmp_path: pathlib.Path, processors: Processors
) -> None:
    async with stack(tmp_path, recording_enabled=True) as services:
        join = joiner(services)
        async with join("ann") as ann:
            async with join("host") as host:
                assert not host.recording and not ann.recording
                mic = await host.publish(StreamType.AUDIO, codec="Opus")
                for session in (host, ann):
                    assert (await next_event(session, RecordingChanged)).recording
                    assert session.recording
                assert processors.recordings == [host.participant_id]
                async with join("late") as late:
                    assert late.recording  # from its JoinResponse
                await mic.aclose()
            # the host left: its recording stopped, nobody else is recorded
            assert not (await next_event(ann, RecordingChanged)).recording
            assert not ann.recording
            with trio.fail_after(WAIT_S):
                await processors.any_stopped.wait()
            [stopped] = processors.stopped
            assert stopped.participant_id == host.participant_id
