"""Moderation over the real stack (docs/protocol.md §18.2): a host mutes a guest, who is told
(Moderated), whose audio publication ends (its frames stop reaching the host once the request
returned) and who cannot unmute until the host allows it; the owner's REST call does the same."""

from __future__ import annotations

import pathlib

import pytest
import trio

from darktower.client import (
    Moderated,
    ModerationAction,
    PublicationChanged,
    PublicationState,
    StreamUnpublished,
)
from darktower.errors import Forbidden
from darktower.frames import FrameType
from darktower.model import StreamType

from ._stack import WAIT_S, meeting, next_event

MUTED = PublicationState(audio_muted=True, audio_blocked=True)


async def test_a_host_mutes_a_guest_until_it_allows_audio_again(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        ann = await m.join("ann")
        mic = await ann.publish(StreamType.AUDIO, codec="Opus")
        camera = await ann.publish(StreamType.VIDEO_CAMERA, codec="VP8")
        heard = await host.subscribe(mic.stream_id)
        speaking = trio.Event()

        async def speak() -> None:
            # The guest's application keeps sending until the library says the stream ended.
            try:
                while True:
                    await mic.send_frame(FrameType.AUDIO, b"voice")
                    speaking.set()
                    await trio.sleep(0.02)
            except trio.ClosedResourceError:
                return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(speak)
            with trio.fail_after(WAIT_S):
                await speaking.wait()
                await heard.receive()
            await host.moderate(ann.participant_id, [ModerationAction.MUTE_AUDIO], "too loud")
            received = heard.received  # every frame delivered before the answer
            moderated = await next_event(ann, Moderated)
        assert moderated == Moderated(
            by=host.participant_id,
            actions=(ModerationAction.MUTE_AUDIO,),
            message="too loud",
            publication=MUTED,
        )
        assert ann.publication == MUTED
        assert mic.ended_by_host and mic.stream_id not in ann.publications
        assert not camera.closed and await camera.send_frame(FrameType.VIDEO_KEY, b"k")
        # The host's subscription ends with the stream, with no frame after the answer.
        gone = await next_event(host, StreamUnpublished)
        assert gone.stream.stream_id == mic.stream_id
        with trio.fail_after(WAIT_S):
            async for _ in heard:
                pass
        assert heard.received == received
        changed = await next_event(
            host, PublicationChanged, lambda e: e.participant_id == ann.participant_id
        )
        assert changed.publication == MUTED

        # Blocked until the host allows it.
        with pytest.raises(Forbidden):
            await ann.set_publication(audio_muted=False)
        with pytest.raises(Forbidden):
            await ann.publish(StreamType.AUDIO, codec="Opus")
        await host.moderate(ann.participant_id, ["allow_audio"])
        allowed = await next_event(ann, PublicationChanged, lambda e: e.own)
        assert allowed.publication == PublicationState(audio_muted=True)
        await ann.set_publication(audio_muted=False)
        again = await ann.publish(StreamType.AUDIO, codec="Opus")
        assert not again.silenced and await again.send_frame(FrameType.AUDIO, b"back")

        # A guest may not moderate.
        with pytest.raises(Forbidden):
            await ann.moderate(host.participant_id, [ModerationAction.MUTE_AUDIO])


async def test_the_owner_stops_a_camera_over_rest(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        await m.join("host", host=True)
        ann = await m.join("ann")
        camera = await ann.publish(StreamType.VIDEO_CAMERA, codec="VP8")
        state = await m.gc.moderate_participant(
            m.created.meeting_id, ann.participant_id, [ModerationAction.STOP_VIDEO], "camera off"
        )
        assert state == PublicationState(video_off=True, video_blocked=True)
        moderated = await next_event(ann, Moderated)
        assert (moderated.by, moderated.message) == ("", "camera off")
        assert moderated.actions == (ModerationAction.STOP_VIDEO,)
        assert camera.ended_by_host and ann.publication == state
        with pytest.raises(trio.ClosedResourceError):
            await camera.send_frame(FrameType.VIDEO_KEY, b"k")
