"""The processor's jobs as scopes (docs/architecture.md §10), over real QUIC with a real MH:
a transcode job publishes what it derives to a subscriber; jobs end with the reason of what
ended them (StopJob, the processor's drain) and their cleanup writes it; the bounds refuse
what they do not take."""

from __future__ import annotations

import json
import pathlib
import uuid

import pytest
import trio

from darktower.client import open_media_client
from darktower.errors import CapacityExceeded, InvalidRequest
from darktower.frames import FrameType
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import processing_pb2 as pb
from darktower.transport.rpc import call
from tests._stack import WAIT_S
from tests.processing._media import decode_video, opus_frames, video_frames

from ._room import MEETING, open_room


def _video(stream_id: str, participant: str = "ann") -> pb.JobSource:
    return pb.JobSource(
        stream_id=stream_id,
        participant_id=participant,
        stream_type=common_pb2.VIDEO_CAMERA,
        codec="VP8",
    )


async def test_a_transcode_job_publishes_the_source_re_encoded_to_a_subscriber(
    tmp_path: pathlib.Path,
) -> None:
    source, output = str(uuid.uuid4()), str(uuid.uuid4())
    frames = video_frames(1.0, width=320, height=240, bitrate=300_000)
    async with open_room(tmp_path) as room:
        ann = await room.register(
            "ann", [common_pb2.MediaStream(stream_id=source, stream_type=common_pb2.VIDEO_CAMERA)]
        )
        job_url = await room.register(
            "proc-1",
            [common_pb2.MediaStream(stream_id=output, stream_type=common_pb2.VIDEO_CAMERA)],
        )
        bob = await room.register("bob")
        await room.route(source, "proc-1")
        await room.route(output, "bob")
        await room.start_job(
            "proc-1",
            job_url,
            transcode=pb.TranscodeJob(
                source=_video(source),
                target_codec="VP9",
                target_bitrate=200_000,
                output_stream_id=output,
            ),
        )
        pins = [room.tls.sha256]
        async with (
            open_media_client(ann, server_certificate_hashes=pins) as publisher,
            open_media_client(bob, server_certificate_hashes=pins) as subscriber,
        ):
            camera = await publisher.publish(source)
            for frame in frames:
                kind = FrameType.VIDEO_KEY if frame.key else FrameType.VIDEO_DELTA
                await camera.send_frame(kind, frame.payload, timestamp_us=frame.timestamp_us)
            received = []
            with trio.fail_after(WAIT_S):
                while len(received) < len(frames) - 2:  # the encoder may hold the last ones
                    got = await subscriber.receive_frame()
                    assert str(got.header.stream_id) == output
                    received.append(got)
        assert received[0].header.frame_type is FrameType.VIDEO_KEY
        pictures = decode_video("vp9", [bytes(f.payload) for f in received])
        assert len(pictures) == len(received)
        assert (pictures[0].width, pictures[0].height) == (320, 240)
        timestamps = [f.header.timestamp_us for f in received]
        assert timestamps == [f.timestamp_us for f in frames[: len(received)]]  # kept


async def test_stop_job_and_the_processors_drain_end_jobs_with_their_reasons(
    tmp_path: pathlib.Path,
) -> None:
    audio_ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    async with open_room(tmp_path) as room:
        for n, audio_id in enumerate(audio_ids):
            url = await room.register(f"rec-{n}")
            await room.start_job(
                f"rec-{n}",
                url,
                recording=pb.RecordingJob(
                    participant_id="ann",
                    recording_id=f"ann-{n}",
                    sources=[
                        pb.JobSource(stream_id=audio_id, stream_type=common_pb2.AUDIO, codec="Opus")
                    ],
                ),
            )
        await call(
            room.processing.StopJob, pb.StopJobRequest(job_id="rec-0", reason=common_pb2.KICKED)
        )
        await room.wait_job("rec-0")
        listed = await call(room.processing.ListJobs, pb.ListJobsRequest())
        states = {j.job_id: (j.state, j.reason) for j in listed.jobs}
        assert states == {"rec-0": ("ended", common_pb2.KICKED), "rec-1": ("running", 0)}
    # Leaving open_room drained the processor: the other job ended SERVER_SHUTDOWN.
    reasons = {
        n: json.loads((room.recordings / MEETING / f"ann-{n}.json").read_text())["reason"]
        for n in (0, 1)
    }
    assert reasons == {0: "KICKED", 1: "SERVER_SHUTDOWN"}


async def test_jobs_over_the_bound_or_that_cannot_be_done_are_refused(
    tmp_path: pathlib.Path,
) -> None:
    async with open_room(tmp_path, max_transcodes=1) as room:
        url = await room.register("proc-1")
        job = pb.TranscodeJob(
            source=_video(str(uuid.uuid4())),
            target_codec="VP8",
            target_bitrate=100_000,
            output_stream_id=str(uuid.uuid4()),
        )
        await room.start_job("proc-1", url, transcode=job)
        with pytest.raises(CapacityExceeded, match="at most 1 transcode"):
            await room.start_job("proc-2", url, transcode=job)
        unknown = pb.TranscodeJob(
            source=_video(str(uuid.uuid4())),
            target_codec="THEORA",
            target_bitrate=100_000,
            output_stream_id=str(uuid.uuid4()),
        )
        with pytest.raises(InvalidRequest, match="VP8, VP9, H264"):
            await room.start_job("proc-3", url, transcode=unknown)
        with pytest.raises(InvalidRequest):
            await room.start_job("proc-4", url, mix=pb.MixJob(sources=[_video(str(uuid.uuid4()))]))


def test_opus_helper_makes_twenty_ms_packets() -> None:
    frames = opus_frames(0.2)
    assert [f.timestamp_us - frames[0].timestamp_us for f in frames[:3]] == [0, 20_000, 40_000]
