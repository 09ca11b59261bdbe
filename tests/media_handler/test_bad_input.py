"""Every bad input hits only its source: bad or expired token, foreign stream id, malformed
header, oversize frame, garbage, a second connection; unsupported routing options."""

from __future__ import annotations

import time

import pytest
import trio

from darktower.errors import ErrorCode, InvalidRequest, NotFound
from darktower.frames import HEADER_SIZE, FrameType
from darktower.model import MeetingId, ParticipantId
from darktower.transport import SessionRefused, StreamReset

from ._harness import WAIT_S, audio, new_id, open_harness, receive_n, video


async def test_bad_and_expired_tokens_get_401() -> None:
    meeting = new_id()
    async with open_harness() as h:
        url = await h.register(meeting, "p")
        base = url.split("?")[0]
        expired = h.handler.authority.issue(
            ParticipantId("p"), MeetingId(meeting), time.time() - 3600
        )
        for bad in (base, f"{base}?token=nonsense", f"{base}?token={expired}"):
            with pytest.raises(SessionRefused) as info:
                async with h.client(bad):
                    pass
            assert info.value.status == 401
        # The registration is untouched: the right token still connects.
        async with h.client(url):
            await h.connected(meeting, "p")
        refused = h.handler.metrics.sessions_refused.value("401")
        assert refused == 3


async def test_second_connection_is_refused_with_409() -> None:
    meeting = new_id()
    async with open_harness() as h:
        url = await h.register(meeting, "p")
        async with h.client(url):
            await h.connected(meeting, "p")
            # A token opens one connection (a fresh one would replace this connection:
            # tests/media_handler/test_media_reconnect.py).
            with pytest.raises(SessionRefused) as info:
                async with h.client(url):
                    pass
            assert info.value.status == 409


def _header(stream_id: bytes, *, version: int = 1, frame_type: int = 1, length: int = 0) -> bytes:
    return (
        bytes([version, frame_type])
        + stream_id
        + (0).to_bytes(8, "big") * 2
        + length.to_bytes(4, "big")
        + bytes(8)
    )


@pytest.mark.parametrize(
    "case",
    ["foreign_stream", "bad_version", "unknown_type", "oversize", "garbage", "audio_on_video"],
)
async def test_bad_publish_stream_is_reset_and_nothing_else(case: str) -> None:
    meeting, mine, theirs = new_id(), new_id(), new_id()
    async with open_harness(max_frame_payload=64 * 1024) as h:
        url_a = await h.register(meeting, "a", [video(mine)])
        url_b = await h.register(meeting, "b", [video(theirs)])
        url_s = await h.register(meeting, "s")
        async with h.client(url_a) as a, h.client(url_b) as b, h.client(url_s) as s:
            for p in ("a", "b", "s"):
                await h.connected(meeting, p)
            await h.route(meeting, mine, ["s"])
            await h.route(meeting, theirs, ["s"])
            good_a = await a.publish(mine)
            good_b = await b.publish(theirs)
            first = [
                await good_a.send_frame(FrameType.VIDEO_KEY, b"a0"),
                await good_b.send_frame(FrameType.VIDEO_KEY, b"b0"),
            ]
            bad = await a.publish(theirs if case == "foreign_stream" else mine)
            import uuid

            sid = uuid.UUID(mine).bytes
            if case == "foreign_stream":
                await bad.send_frame(FrameType.VIDEO_KEY, b"stolen")
            elif case == "bad_version":
                await bad.send_raw(_header(sid, version=2))
            elif case == "unknown_type":
                await bad.send_raw(_header(sid, frame_type=9))
            elif case == "oversize":
                await bad.send_raw(_header(sid, length=64 * 1024 + 1) + bytes(1000))
            elif case == "garbage":
                await bad.send_raw(bytes(range(256)) * 4)
            elif case == "audio_on_video":
                # "mine" is bound to the good stream: a second stream of it is refused too,
                # and an audio frame on a video stream would be as well.
                await bad.send_frame(FrameType.AUDIO, b"x" * 10)
            with trio.fail_after(WAIT_S), pytest.raises(StreamReset) as info:
                while True:
                    await bad.stream.receive_some()
            assert info.value.code == ErrorCode.STREAM_ERROR
            # Only that stream: both publishers carry on and the subscriber gets everything.
            more = [
                await good_a.send_frame(FrameType.VIDEO_DELTA, b"a1"),
                await good_b.send_frame(FrameType.VIDEO_DELTA, b"b1"),
            ]
            got = await receive_n(s, 4)
            assert sorted(bytes(f.raw) for f in got) == sorted(first + more)
            assert not a.session.is_closed and not b.session.is_closed
            errors = h.handler.metrics.stream_errors
            assert sum(v for _, v in errors._values.items()) == 1  # type: ignore[attr-defined]


async def test_audio_frame_on_a_video_stream_is_reset() -> None:
    meeting, cam = new_id(), new_id()
    async with open_harness() as h:
        url = await h.register(meeting, "a", [video(cam)])
        async with h.client(url) as a:
            pub = await a.publish(cam)
            await pub.send_frame(FrameType.AUDIO, b"x")
            with trio.fail_after(WAIT_S), pytest.raises(StreamReset):
                await pub.finish()


async def test_bad_routing_options_name_the_option() -> None:
    meeting, mic = new_id(), new_id()
    async with open_harness() as h:
        await h.register(meeting, "a", [audio(mic)])
        await h.register(meeting, "b")
        # A transcode needs its target (tests/media_handler/test_processing*.py for the rest).
        with pytest.raises(InvalidRequest, match="target_codec"):
            await h.route(meeting, mic, ["b"], transcode=True)
        with pytest.raises(InvalidRequest, match="target_bitrate"):
            await h.route(meeting, mic, ["b"], transcode=True, target_codec="VP9")
        with pytest.raises(NotFound, match="meeting_id"):
            await h.route("", new_id(), ["b"])
        with pytest.raises(InvalidRequest):
            await h.route(meeting, "not-a-uuid", ["b"])
        with pytest.raises(NotFound):
            await h.route(meeting, mic, ["nobody"])


async def test_registration_validates_streams() -> None:
    meeting, mic = new_id(), new_id()
    async with open_harness(max_streams_per_participant=2) as h:
        with pytest.raises(InvalidRequest):
            await h.register(meeting, "a", [audio("not-a-uuid")])
        await h.register(meeting, "a", [audio(mic)])
        from darktower.errors import CapacityExceeded, Conflict

        with pytest.raises(Conflict):
            await h.register(meeting, "b", [audio(mic)])
        with pytest.raises(CapacityExceeded):
            await h.register(meeting, "a", [audio(new_id()), audio(new_id())])
        # Registering again adds streams (the MC's way of announcing a new publication).
        await h.register(meeting, "a", [audio(new_id())])
        assert len(h.handler.rooms[meeting].members["a"].publications) == 2  # type: ignore[index]
        assert HEADER_SIZE == 46
