"""A running Media Handler (tests/_stack.py, the MH alone) with a real gRPC client: the tests
play the Meeting Controller's role through MediaControl, and the clients' through
``darktower.client``'s media client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from darktower.client import MediaClient, open_media_client
from darktower.frames import Frame, FrameType
from darktower.media_handler import MediaHandler, Running
from darktower.model import LeaveReason
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.protocol.pb.v1.media_control_grpc import MediaControlStub
from darktower.transport.rpc import call
from tests._stack import open_services

# Real sockets, real time: a bound on every wait so that a regression fails instead of hanging.
WAIT_S = 15.0
# Settings for tests whose subscribers read only after the publisher is done (or read slowly
# on purpose) and check other policies: no frame becomes stale (tests/media_handler/test_stale.py
# covers the age bounds).
NO_AGE_BOUND: dict[str, Any] = {"max_video_age_s": 3600.0, "max_audio_age_s": 3600.0}


def new_id() -> str:
    return str(uuid.uuid4())


def audio(stream_id: str) -> common_pb2.MediaStream:
    return common_pb2.MediaStream(stream_id=stream_id, stream_type=common_pb2.AUDIO)


def video(
    stream_id: str, layers: Sequence[tuple[str, int, int, int]] = ()
) -> common_pb2.MediaStream:
    return common_pb2.MediaStream(
        stream_id=stream_id,
        stream_type=common_pb2.VIDEO_CAMERA,
        metadata=common_pb2.StreamMetadata(
            video=common_pb2.VideoMetadata(
                simulcast_layers=[
                    common_pb2.SimulcastLayer(layer_id=i, width=w, height=h, max_bitrate=b)
                    for i, w, h, b in layers
                ]
            )
        ),
    )


@attrs.define
class Harness:
    running: Running
    stub: MediaControlStub
    shutdown: trio.Event

    @property
    def handler(self) -> MediaHandler:
        return self.running.handler

    async def register(
        self, meeting: str, participant: str, streams: Sequence[common_pb2.MediaStream] = ()
    ) -> str:
        """RegisterParticipant; return the URL with the token."""
        reply = await call(
            self.stub.RegisterParticipant,
            mc_pb.RegisterParticipant(
                participant_id=participant, meeting_id=meeting, streams=list(streams)
            ),
        )
        assert reply.media_handler_url == self.running.media_url
        return f"{reply.media_handler_url}?token={reply.connection_token}"

    async def route(
        self,
        meeting: str,
        source: str,
        destinations: Sequence[str],
        *,
        unroute: bool = False,
        **options: Any,
    ) -> None:
        await call(
            self.stub.RouteMedia,
            mc_pb.RouteMediaCommand(
                source_stream_id=source,
                destination_participant_ids=list(destinations),
                options=mc_pb.RoutingOptions(**options),
                meeting_id=meeting,
                unroute=unroute,
            ),
        )

    async def remove(
        self, meeting: str, participant: str, reason: LeaveReason = LeaveReason.KICKED
    ) -> None:
        await call(
            self.stub.RemoveParticipant,
            mc_pb.RemoveParticipantRequest(
                meeting_id=meeting, participant_id=participant, reason=int(reason)
            ),
        )

    async def remove_stream(self, meeting: str, participant: str, stream: str) -> None:
        await call(
            self.stub.RemoveStream,
            mc_pb.RemoveStreamRequest(
                meeting_id=meeting, participant_id=participant, stream_id=stream
            ),
        )

    @asynccontextmanager
    async def client(self, url: str, **kwargs: Any) -> AsyncIterator[MediaClient]:
        async with open_media_client(
            url, server_certificate_hashes=[self.running.certificate_sha256], **kwargs
        ) as media:
            yield media

    async def connected(self, meeting: str, participant: str) -> None:
        """Wait until the MH runs the participant's scope (its media connection is served)."""
        room = self.handler.rooms[meeting]  # type: ignore[index]
        member = room.members[participant]  # type: ignore[index]
        with trio.fail_after(WAIT_S):
            await member.settled.wait()
        if member.scope is None:
            raise AssertionError(f"{participant} did not connect")


@asynccontextmanager
async def open_harness(**overrides: Any) -> AsyncIterator[Harness]:
    """The MH with these ``Settings`` overrides; drains on exit (or at ``h.shutdown``)."""
    async with open_services(mh=overrides) as stack:
        assert stack.mh is not None and stack.mh_control is not None
        yield Harness(stack.mh, stack.mh_control, stack.shutdown)


async def receive_n(media: MediaClient, n: int) -> list[Frame]:
    frames = []
    with trio.fail_after(WAIT_S):
        for _ in range(n):
            frames.append(await media.receive_frame())
    return frames


def frame_type_for(i: int, key_every: int) -> FrameType:
    return FrameType.VIDEO_KEY if i % key_every == 0 else FrameType.VIDEO_DELTA
