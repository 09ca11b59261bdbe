"""Derived streams and recordings when the MH is given a participant's media state again
(it forgot the participant, or the room moved: docs/protocol.md §13), and after a resume: the
subscriber learns each new derived stream id from SubscriptionUpdated (docs/protocol.md §2.2),
and a recorded participant's recording starts again."""

from __future__ import annotations

import pathlib
from typing import Any

import trio

from darktower.client import open_signaling
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._harness import WAIT_S, next_event, open_stack


async def _updates(client: Any, count: int) -> dict[str, sig.DerivedStream]:
    """The next ``count`` SubscriptionUpdated messages, by subscription."""
    out: dict[str, sig.DerivedStream] = {}
    while len(out) < count:
        update = (await next_event(client, "subscription_updated")).subscription_updated
        out[update.stream_id] = update.derived
    return out


def _reconnect_request() -> sig.ClientMessage:
    return sig.ClientMessage(media_reconnect_request=sig.MediaReconnectRequest())


async def test_transcodes_mixes_and_recordings_are_made_again_and_told(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        mh = stack.mh
        await stack.assign("m", recording_enabled=True)
        capabilities = sig.ParticipantCapabilities(video_codecs=["H264"])
        async with stack.join("m") as a, stack.join("m", capabilities=capabilities) as b:
            await a.request(
                sig.ClientMessage(
                    publish=sig.PublishStream(
                        stream_id="cam",
                        stream_type=common_pb2.VIDEO_CAMERA,
                        metadata=common_pb2.StreamMetadata(codec="VP8", max_bitrate=500_000),
                    )
                )
            )
            await mh.wait_for(lambda: len(mh.recordings_started) == 1)
            cam = (
                await b.request(sig.ClientMessage(subscribe=sig.SubscribeStream(stream_id="cam")))
            ).ack.derived
            mix = (
                await b.request(sig.ClientMessage(subscribe=sig.SubscribeStream(mix_audio=True)))
            ).ack.derived
            assert cam.codec == "H264" and mix.mix

            # b forgotten by the MH, which makes new streams: b's transcode and mix again
            mh.transcodes.clear()
            mh.mixes.clear()
            mh.forgotten.add(b.participant_id)
            await b.request(_reconnect_request())
            updates = await _updates(b, 2)
            assert updates["cam"].stream_id == mh.transcodes[("cam", "H264", 500_000)]
            assert updates["cam"].stream_id != cam.stream_id and updates["cam"].codec == "H264"
            assert updates[""].stream_id == mh.mixes[b.participant_id] != mix.stream_id
            assert updates[""].mix

            # a forgotten: the others' transcodes of its streams again, and a new recording
            mh.transcodes.clear()
            mh.forgotten.add(a.participant_id)
            await a.request(_reconnect_request())
            update = await _updates(b, 1)
            assert update["cam"].stream_id == mh.transcodes[("cam", "H264", 500_000)]
            await mh.wait_for(lambda: len(mh.recordings_started) == 2)
            assert mh.recordings_started[1].recording_id == f"{a.participant_id}-2"

            # a resume repeats every derived stream of the participant's subscriptions
            async with open_signaling(
                stack.running.signal_url,
                meeting_id="m",
                join_token="",
                resume_token=b.join_response.resume_token,
                server_certificate_hashes=[stack.running.certificate_sha256],
            ) as resumed:
                assert resumed.join_response.resumed and resumed.join_response.recording
                updates = await _updates(resumed, 2)
                assert updates["cam"] == update["cam"]
                assert updates[""].stream_id == mh.mixes[b.participant_id]
                with trio.fail_after(WAIT_S):
                    await resumed.leave()
