"""A host's mute is cancellation, on the real MC and MH over real QUIC (docs/protocol.md §18.2):
once the host's ``ModerateParticipant(MUTE_AUDIO)`` is acknowledged, no frame of the muted
stream reaches its subscriber, although the publisher keeps writing; the participant is told
(``Moderated``), and its audio is refused (``blocked_by_host``) until the host allows it
again, after which it flows again."""

from __future__ import annotations

import pathlib
import uuid
from contextlib import AsyncExitStack

import attrs
import pytest
import trio

from darktower.client import (
    MediaClient,
    SignalingClient,
    media_url,
    open_media_client,
    open_signaling,
)
from darktower.errors import Forbidden
from darktower.frames import Frame, FrameType
from darktower.model import Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import StreamReset
from tests._stack import Services, next_message, open_services

WAIT_S = 20.0  # real-time bound on each wait: real QUIC on a shared machine
PACE_S = 0.005  # the publisher's frame interval (200 audio frames a second)
MEETING = "moderated"
# Frames of the control stream the subscriber must get after the mute's answer, written after
# it: by then whatever the MH sent before the answer has arrived too.
CONTROL_FRAMES = 20


@attrs.define(eq=False)
class Tally:
    """What the subscriber received, per stream id (bytes), with each frame's sequence."""

    frames: dict[bytes, list[Frame]] = attrs.Factory(dict)
    changed: trio.Event = attrs.Factory(trio.Event)

    def add(self, frame: Frame) -> None:
        self.frames.setdefault(frame.stream_id_bytes, []).append(frame)
        self.changed.set()
        self.changed = trio.Event()

    def count(self, stream_id: uuid.UUID) -> int:
        return len(self.frames.get(stream_id.bytes, []))

    def sequences(self, stream_id: uuid.UUID) -> list[int]:
        return [f.sequence for f in self.frames.get(stream_id.bytes, [])]

    async def wait_count(self, stream_id: uuid.UUID, n: int) -> None:
        with trio.fail_after(WAIT_S):
            while self.count(stream_id) < n:
                await self.changed.wait()


@attrs.define(eq=False)
class Writer:
    """Keeps writing frames of ``stream_id`` as its publisher, 1 each PACE_S, numbered from 0;
    a stream the MH resets is opened again and written on (a publisher that ignores the
    mute), until ``stop``."""

    media: MediaClient
    stream_id: uuid.UUID
    kind: FrameType
    written: int = 0
    resets: int = 0
    stop: bool = False

    async def run(self) -> None:
        publisher = await self.media.publish(self.stream_id)
        while not self.stop:
            try:
                await publisher.send_frame(self.kind, b"x" * 40, sequence=self.written)
            except (StreamReset, trio.BrokenResourceError, trio.ClosedResourceError):
                self.resets += 1
                publisher.abort()
                publisher = await self.media.publish(self.stream_id)
            self.written += 1
            await trio.sleep(PACE_S)  # the pace of a live source, not a wait for something


async def _member(
    services: Services, exits: AsyncExitStack, role: Role = Role.GUEST
) -> tuple[SignalingClient, MediaClient]:
    """A participant joined, with its media connection (both closed by ``exits``)."""
    signaling = await exits.enter_async_context(
        open_signaling(
            services.signal_url,
            meeting_id=MEETING,
            join_token=services.token(MEETING, role),
            server_certificate_hashes=services.pins,
        )
    )
    media = await exits.enter_async_context(
        open_media_client(
            media_url(signaling.join_response), server_certificate_hashes=services.pins
        )
    )
    return signaling, media


async def _publish(client: SignalingClient, stream_id: uuid.UUID, kind: int) -> None:
    await client.request(
        sig.ClientMessage(publish=sig.PublishStream(stream_id=str(stream_id), stream_type=kind))
    )


async def _subscribe(client: SignalingClient, stream_id: uuid.UUID) -> None:
    with trio.fail_after(WAIT_S):
        while True:  # the publish is announced first
            event = await next_message(client, "stream_published", wait_s=WAIT_S)
            if event.stream_published.stream.stream_id == str(stream_id):
                break
    await client.request(sig.ClientMessage(subscribe=sig.SubscribeStream(stream_id=str(stream_id))))


async def _receive(media: MediaClient, tally: Tally) -> None:
    async for frame in media:
        tally.add(frame)


def _moderate(pid: str, action: int) -> sig.ClientMessage:
    return sig.ClientMessage(
        moderate=sig.ModerateParticipant(participant_id=pid, actions=[action], message="muted")
    )


async def test_no_frame_of_a_muted_stream_reaches_anyone_after_the_answer(
    tmp_path: pathlib.Path,
) -> None:
    async with open_services(tmp_path, mc={}, mh={}) as services, AsyncExitStack() as exits:
        await services.assign(MEETING)
        host, _ = await _member(services, exits, Role.HOST)
        guest, guest_media = await _member(services, exits)
        viewer, viewer_media = await _member(services, exits)
        async with trio.open_nursery() as nursery:
            await _mute_allow(host, guest, guest_media, viewer, viewer_media, nursery)
            nursery.cancel_scope.cancel()


async def _mute_allow(
    host: SignalingClient,
    guest: SignalingClient,
    guest_media: MediaClient,
    viewer: SignalingClient,
    viewer_media: MediaClient,
    nursery: trio.Nursery,
) -> None:
    pid = guest.participant_id
    mic, control = uuid.uuid4(), uuid.uuid4()
    await _publish(guest, mic, common_pb2.AUDIO)
    await _subscribe(viewer, mic)
    await _publish(guest, control, common_pb2.VIDEO_CAMERA)
    await _subscribe(viewer, control)
    tally = Tally()
    nursery.start_soon(_receive, viewer_media, tally)
    audio = Writer(guest_media, mic, FrameType.AUDIO)
    video = Writer(guest_media, control, FrameType.VIDEO_KEY)  # each one decodable
    nursery.start_soon(audio.run)
    nursery.start_soon(video.run)
    await tally.wait_count(mic, 10)  # the audio flows

    reply = await host.request(_moderate(pid, common_pb2.MODERATION_MUTE_AUDIO))
    assert reply.WhichOneof("message") == "ack"
    written_at_answer = audio.written
    # The publisher writes on; the control stream's frames written after the answer
    # arrive, so whatever the MH sent of either stream before it has arrived too.
    control_at_answer = video.written
    await tally.wait_count(control, control_at_answer + CONTROL_FRAMES)
    with trio.fail_after(WAIT_S):
        while audio.written < written_at_answer + CONTROL_FRAMES:
            await tally.changed.wait()
    # Frames written before the answer may still arrive after it (each on its own QUIC
    # stream), so the count is no measure: no frame written after the answer ever arrives.
    assert audio.written > written_at_answer and audio.resets >= 1  # it kept writing
    assert all(n < written_at_answer for n in tally.sequences(mic))

    told = (await next_message(guest, "moderated", wait_s=WAIT_S)).moderated
    assert told.by_participant_id == host.participant_id
    assert list(told.actions) == [common_pb2.MODERATION_MUTE_AUDIO]
    assert told.publication.audio_muted and told.publication.audio_blocked
    gone = await next_message(viewer, "stream_unpublished", wait_s=WAIT_S)
    assert gone.stream_unpublished.stream_id == str(mic)

    # its audio is refused until the host allows it, then flows again
    with pytest.raises(Forbidden) as refused:
        await _publish(guest, mic, common_pb2.AUDIO)
    assert refused.value.details["reason"] == "blocked_by_host"
    assert all(n < written_at_answer for n in tally.sequences(mic))
    await host.request(_moderate(pid, common_pb2.MODERATION_ALLOW_AUDIO))
    await guest.request(
        sig.ClientMessage(
            set_publication=sig.SetPublicationState(audio_muted=False, video_off=False)
        )
    )
    await _publish(guest, mic, common_pb2.AUDIO)
    await _subscribe(viewer, mic)
    with trio.fail_after(WAIT_S):  # the new stream's frames, all written after the answer
        while sum(n > written_at_answer for n in tally.sequences(mic)) < 5:
            await tally.changed.wait()
    audio.stop = video.stop = True
