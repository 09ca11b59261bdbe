"""Publication state over the real stack (docs/protocol.md §18.1): a participant's microphone
switch seen by the others, in the join catch-up of a later one, and on the wire (a muted
microphone sends nothing); the owner's grant at join."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
import trio

from darktower.client import PublicationChanged, PublicationState
from darktower.errors import Forbidden
from darktower.frames import FrameType
from darktower.model import StreamType

from ._product_fakes import pending
from ._stack import WAIT_S, meeting, next_event


def about(pid: str) -> Callable[[PublicationChanged], bool]:
    return lambda e: e.participant_id == pid


async def test_a_mute_is_seen_by_the_others_and_sends_no_frames(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        ann = await m.join("ann")
        assert ann.participants[host.participant_id].host
        mic = await ann.publish(StreamType.AUDIO, codec="Opus")
        frames = await host.subscribe(mic.stream_id)

        state = await ann.set_publication(audio_muted=True)
        assert state == ann.publication == PublicationState(audio_muted=True)
        changed = await next_event(host, PublicationChanged, about(ann.participant_id))
        assert changed.publication.audio_muted and not changed.own
        assert host.participants[ann.participant_id].publication.audio_muted
        # Muted: the publication stays, nothing goes out.
        assert await mic.send_frame(FrameType.AUDIO, b"muted") == b""
        assert mic.muted_dropped == 1 and mic.stream_id in ann.publications

        # A later participant sees the state (and who is host) in its catch-up.
        bob = await m.join("bob")
        seen = bob.participants[ann.participant_id]
        assert seen.publication.audio_muted and not seen.host
        assert bob.participants[host.participant_id].host

        await ann.set_publication(audio_muted=False)
        changed = await next_event(host, PublicationChanged, about(ann.participant_id))
        assert not changed.publication.audio_muted
        await mic.send_frame(FrameType.AUDIO, b"speaking")
        with trio.fail_after(WAIT_S):
            frame = await frames.receive()
        assert bytes(frame.payload) == b"speaking"  # the muted frame never went
        # Ann heard of her own change once: from the Ack (the MC's echo changed nothing).
        own = [e for e in pending(ann) if isinstance(e, PublicationChanged)]
        assert [e.own for e in own] == [True, True]


async def test_the_owners_grant_at_join_blocks_the_other_kinds(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        ticket = await m.gc.join_meeting(
            m.created.meeting_id, "guest", may_publish={"audio"}, role="guest"
        )
        guest = await m.exits.enter_async_context(m.session(ticket.join_token, "guest"))
        expected = PublicationState(video_off=True, video_blocked=True, screen_blocked=True)
        assert guest.publication == expected
        with pytest.raises(Forbidden) as refused:
            await guest.publish(StreamType.VIDEO_CAMERA, codec="VP8")
        assert refused.value.details.get("reason") == "blocked_by_host"
        with pytest.raises(Forbidden):
            await guest.set_publication(video_off=False)
        await guest.publish(StreamType.AUDIO, codec="Opus")
        assert host.participants[guest.participant_id].publication == expected
