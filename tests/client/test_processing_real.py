"""The client library on the real services with a real media processor (docs/protocol.md §2.1,
§2.2), over real QUIC: a subscriber whose capabilities list only H.264 subscribes to a VP8
camera and its subscription yields H.264 that PyAV decodes; its mix subscription yields Opus;
the meeting is recorded and everyone is told. Small pictures: the codecs cost little CPU."""

from __future__ import annotations

import json
import pathlib

import trio

from darktower import media_processor
from darktower.client import RecordingChanged, Subscription, join_meeting_session
from darktower.frames import Frame, FrameType
from darktower.model import Role, StreamType
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from tests._stack import WAIT_S, open_services, running_service
from tests.media_processor._room import mp_settings
from tests.processing._media import decode_opus, decode_video, opus_frames, video_frames

from ._stack import next_event

ROUND = 10  # frames per round, a key frame first: one round reaches a job that just started
WANTED = 5  # transcoded frames to decode


class Taken:
    """The frames of one subscription, as they come."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.changed = trio.Event()

    async def take(self, subscription: Subscription) -> None:
        async for frame in subscription:
            self.frames.append(frame)
            self.changed.set()
            self.changed = trio.Event()


async def test_a_transcode_the_mix_and_a_recording_with_a_real_processor(
    tmp_path: pathlib.Path,
) -> None:
    video = video_frames(4, width=160, height=120, bitrate=150_000, key_every=ROUND)
    tone = opus_frames(0.2)
    recordings = tmp_path / "recordings"
    async with (
        running_service(media_processor.serve, mp_settings(recordings)) as (mp, _),
        open_services(
            tmp_path / "stack", mc={}, mh={"processors": "{}:{}".format(*mp.grpc_address)}
        ) as services,
    ):
        await services.assign("m", recording_enabled=True)

        def join(name: str, **kw: object) -> object:
            return join_meeting_session(
                services.signal_url,
                meeting_id="m",
                join_token=services.token("m", Role.GUEST, participant_name=name),
                participant_name=name,
                server_certificate_hashes=services.pins,
                **kw,  # type: ignore[arg-type]
            )

        h264 = sig.ParticipantCapabilities(video_codecs=["H264"])
        async with (
            join("host") as host,  # type: ignore[attr-defined]
            join("bob", capabilities=h264) as bob,  # type: ignore[attr-defined]
            trio.open_nursery() as nursery,
        ):
            camera = await host.publish(StreamType.VIDEO_CAMERA, codec="VP8", max_bitrate=200_000)
            assert (await next_event(bob, RecordingChanged)).recording
            [recording] = [
                job.job_id
                for job in services.mh.handler.processing.jobs.values()  # type: ignore[union-attr]
                if job.kind == "recording"
            ]

            subscription = await bob.subscribe(camera.stream_id)
            assert subscription.derived is not None and subscription.derived.codec == "H264"
            assert subscription.derived.bitrate == 200_000
            taken = Taken()
            nursery.start_soon(taken.take, subscription)
            with trio.fail_after(4 * WAIT_S):
                for start in range(0, len(video), ROUND):
                    for frame in video[start : start + ROUND]:
                        kind = FrameType.VIDEO_KEY if frame.key else FrameType.VIDEO_DELTA
                        await camera.send_frame(
                            kind, frame.payload, timestamp_us=frame.timestamp_us
                        )
                    with trio.move_on_after(WAIT_S / 4):  # the job may still be starting
                        while len(taken.frames) < WANTED:
                            await taken.changed.wait()
                    if len(taken.frames) >= WANTED:
                        break
            assert len(taken.frames) >= WANTED, "no transcoded frames"
            assert {str(f.stream_id) for f in taken.frames} == {subscription.derived.stream_id}
            pictures = decode_video("h264", [bytes(f.payload) for f in taken.frames])
            assert pictures and {(p.width, p.height) for p in pictures} == {(160, 120)}

            mic = await host.publish(StreamType.AUDIO, codec="Opus")
            mix = await bob.subscribe_mix()
            assert mix.derived is not None and mix.derived.mix
            mixed = Taken()
            nursery.start_soon(mixed.take, mix)
            with trio.fail_after(2 * WAIT_S):
                for packet in tone:  # the mix ticks every 20 ms, with or without a source
                    await mic.send_frame(FrameType.AUDIO, packet.payload)
                while len(mixed.frames) < 3:
                    await mixed.changed.wait()
            assert len(decode_opus([bytes(f.payload) for f in mixed.frames])) > 0
            nursery.cancel_scope.cancel()
        # host left: its recording stopped with the reason, its file finished
        with trio.fail_after(WAIT_S):
            await mp.jobs.progress.until(lambda: mp.jobs.state(recording) == "ended")
        [path] = (recordings / "m").glob("*.json")
        manifest = json.loads(path.read_text())
        assert path.name == f"{host.participant_id}-1.json"
        assert manifest["participant_id"] == host.participant_id
        assert (manifest["status"], manifest["reason"]) == ("complete", "VOLUNTARY")
