"""Recordings through the MH (docs/protocol.md §15), over real QUIC: the test, as the MC, asks
the MH to record a participant (StartRecording); the MH starts a recording job on its
processor, a hidden participant of the room that receives the participant's streams. The
participant's removal (a kick) ends the recording with that reason in its manifest; a
processor killed mid-recording leaves a file that decodes, and the MH goes on."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import av
import trio

from darktower.client import MediaClient
from darktower.frames import FrameType
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.protocol.pb.v1 import processing_pb2 as pb
from darktower.protocol.pb.v1.processing_grpc import MediaProcessingStub
from darktower.transport.rpc import call
from tests._cluster import open_cluster_channel, stack_cluster
from tests._stack import WAIT_S
from tests.e2e._processes import open_service
from tests.media_processor._room import MEETING, audio_stream, open_processed_room, video_stream
from tests.processing._media import Encoded, opus_frames, video_frames

SECONDS = 3.0
# The processor in another process: its job's progress is read over ListJobs this often (no
# event crosses the process boundary; tests/e2e polls /readyz the same way).
POLL_S = 0.05


async def _send(
    media: MediaClient,
    video_id: str,
    audio_id: str,
    started: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """SECONDS of VP8 video and Opus audio, interleaved by timestamp; the frames sent. The
    frames go out at once, not in real time: ``started``, awaited after each stream's first
    frame, lets the recording see both streams begin before seconds of one arrive (as they
    would in real time; otherwise the later stream starts a file of its own)."""
    video = video_frames(SECONDS, width=320, height=240, bitrate=300_000, key_every=30)
    audio = opus_frames(SECONDS)
    camera, microphone = await media.publish(video_id), await media.publish(audio_id)
    sends: list[tuple[int, int, Encoded]] = sorted(
        [(f.timestamp_us, 0, f) for f in video] + [(f.timestamp_us, 1, f) for f in audio],
        key=lambda t: (t[0], t[1]),
    )
    for n, (timestamp_us, is_audio, frame) in enumerate(sends):
        if n == 2 and started is not None:
            await started()
        if is_audio:
            await microphone.send_frame(FrameType.AUDIO, frame.payload, timestamp_us=timestamp_us)
        else:
            kind = FrameType.VIDEO_KEY if frame.key else FrameType.VIDEO_DELTA
            await camera.send_frame(kind, frame.payload, timestamp_us=timestamp_us)
    return len(sends)


def _begun(room: Any, job: Any) -> Callable[[], Awaitable[None]]:
    async def begun() -> None:  # the job wrote both streams' first frames
        with trio.fail_after(WAIT_S):
            await room.mp.jobs.progress.until(lambda: job.frames_out >= 2)

    return begun


def _pictures(path: pathlib.Path) -> int:
    with av.open(str(path)) as container:
        [video] = container.streams.video
        return sum(1 for _ in container.decode(video))


async def test_a_kick_ends_the_recording_with_its_reason(tmp_path: pathlib.Path) -> None:
    video_id, audio_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with open_processed_room(tmp_path) as room:
        ann = await room.register("ann", video_stream(video_id), audio_stream(audio_id))
        reply = await call(
            room.media.StartRecording,
            mc_pb.StartRecordingRequest(
                meeting_id=MEETING, participant_id="ann", participant_name="Ann", recording_id="r1"
            ),
        )
        assert reply.recording_id == "r1"
        [job_id] = room.job_ids("recording")
        await room.wait_ready(job_id, video_id, audio_id)
        assert room.mp is not None
        job = room.mp.jobs.job(job_id)
        assert job is not None
        async with room.client(ann) as media:
            sent = await _send(media, video_id, audio_id, _begun(room, job))
            with trio.fail_after(WAIT_S):
                await room.mp.jobs.progress.until(lambda: job.frames_out >= sent)
            await room.remove("ann", common_pb2.KICKED)
        await room.wait_job(job_id, "ended")
        assert not room.mh.handler.processing.jobs
        assert set(room.mh.handler.rooms) == set()  # ann and the job gone: the room ended
    manifest = json.loads((room.recordings / MEETING / "r1.json").read_text())
    assert manifest["status"] == "complete", manifest
    assert manifest["reason"] == "KICKED"
    assert manifest["participant_id"] == "ann" and manifest["participant_name"] == "Ann"
    [entry] = manifest["files"]
    assert entry["finished"] and set(entry["streams"]) == {video_id, audio_id}
    assert _pictures(room.recordings / MEETING / entry["name"]) == SECONDS * 30


async def test_the_mh_draining_ends_its_recordings_with_server_shutdown(
    tmp_path: pathlib.Path,
) -> None:
    video_id, audio_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with open_processed_room(tmp_path) as room:
        ann = await room.register("ann", video_stream(video_id), audio_stream(audio_id))
        await call(
            room.media.StartRecording,
            mc_pb.StartRecordingRequest(
                meeting_id=MEETING, participant_id="ann", recording_id="r4"
            ),
        )
        [job_id] = room.job_ids("recording")
        await room.wait_ready(job_id, video_id, audio_id)
        assert room.mp is not None
        job = room.mp.jobs.job(job_id)
        assert job is not None
        async with room.client(ann) as media:
            sent = await _send(media, video_id, audio_id, _begun(room, job))
            with trio.fail_after(WAIT_S):
                await room.mp.jobs.progress.until(lambda: job.frames_out >= sent)
            # The MH shuts down first (the processor after it): its drain ends the job.
            ours = room.mh.handler.processing.jobs[job_id]  # type: ignore[index]
            room.mh_shutdown.set()
            with trio.fail_after(WAIT_S):
                await ours.ended.wait()
            await room.wait_job(job_id, "ended")
    manifest = json.loads((room.recordings / MEETING / "r4.json").read_text())
    assert manifest["status"] == "complete", manifest
    assert manifest["reason"] == "SERVER_SHUTDOWN"


async def _frames_out(stub: MediaProcessingStub, job_id: str) -> int:
    reply = await call(stub.ListJobs, pb.ListJobsRequest())
    return sum(j.frames_out for j in reply.jobs if j.job_id == job_id)


async def _until_written(stub: MediaProcessingStub, job_id: str, frames: int) -> None:
    """Until the processor in another process has written ``frames`` of the job's frames."""
    with trio.fail_after(WAIT_S):
        while await _frames_out(stub, job_id) < frames:  # noqa: ASYNC110 (see POLL_S)
            await trio.sleep(POLL_S)


def _written(stub: MediaProcessingStub, job_id: str) -> Callable[[], Awaitable[None]]:
    async def begun() -> None:  # the job wrote both streams' first frames (see _begun)
        await _until_written(stub, job_id, 2)

    return begun


async def test_a_processor_killed_mid_recording_leaves_a_file_that_plays(
    tmp_path: pathlib.Path,
) -> None:
    video_id, audio_id = str(uuid.uuid4()), str(uuid.uuid4())
    recordings = tmp_path / "recordings"
    ident = f"mp-{uuid.uuid4().hex[:8]}"
    args = [
        "--grpc-host=127.0.0.1",
        "--grpc-port=0",
        "--ops-port=0",
        f"--recordings-dir={recordings}",
        *stack_cluster().argv("mp", ident),
    ]
    async with open_service(
        "processor",
        "darktower.processor",
        args,
        ready_message="media processor running",
        cwd=str(tmp_path),
    ) as processor:
        endpoint = str(processor.ready["grpc"])
        host, _, port = endpoint.rpartition(":")
        async with (
            open_processed_room(tmp_path, processors=endpoint) as room,
            open_cluster_channel((host, int(port)), "mh", "mh-test", server="mp") as channel,
        ):
            stub = MediaProcessingStub(channel)
            ann = await room.register("ann", video_stream(video_id), audio_stream(audio_id))
            await call(
                room.media.StartRecording,
                mc_pb.StartRecordingRequest(
                    meeting_id=MEETING, participant_id="ann", recording_id="r2"
                ),
            )
            [job_id] = room.job_ids("recording")
            await room.wait_ready(job_id, video_id, audio_id)
            async with room.client(ann) as media:
                sent = await _send(media, video_id, audio_id, _written(stub, job_id))
                await _until_written(stub, job_id, sent)
                os.kill(processor.pid, signal.SIGKILL)
                with trio.fail_after(WAIT_S):
                    await processor.finished.wait()
                # The MH goes on: the recording stops although its processor is gone (the
                # failed call is counted), and the room still works.
                await call(
                    room.media.StopRecording,
                    mc_pb.StopRecordingRequest(
                        meeting_id=MEETING, participant_id="ann", reason=common_pb2.VOLUNTARY
                    ),
                )
                assert not room.mh.handler.processing.jobs
                assert set(room.mh.handler.rooms[MEETING].members) == {"ann"}  # type: ignore[index]
                failures = room.mh.handler.metrics.processing_failures
                assert failures.value(endpoint, "call") >= 1
                await room.register("bob")
    # Its manifest was never finished; its file plays up to its last complete cluster (1 s).
    manifest = json.loads((recordings / MEETING / "r2.json").read_text())
    assert manifest["status"] == "recording"
    [path] = (recordings / MEETING).glob("r2*.webm")
    assert SECONDS * 30 - 45 <= _pictures(path) <= SECONDS * 30


async def test_a_simulcast_video_is_recorded_from_its_highest_layer(tmp_path: pathlib.Path) -> None:
    video_id, low, high = (str(uuid.uuid4()) for _ in range(3))
    layers = [
        common_pb2.SimulcastLayer(layer_id=low, width=160, height=120, max_bitrate=100_000),
        common_pb2.SimulcastLayer(layer_id=high, width=320, height=240, max_bitrate=300_000),
    ]
    camera = common_pb2.MediaStream(
        stream_id=video_id,
        stream_type=common_pb2.VIDEO_CAMERA,
        metadata=common_pb2.StreamMetadata(
            codec="VP8", video=common_pb2.VideoMetadata(simulcast_layers=layers)
        ),
    )
    small = video_frames(2, width=160, height=120, bitrate=100_000, key_every=30)
    large = video_frames(2, width=320, height=240, bitrate=300_000, key_every=30)
    async with open_processed_room(tmp_path) as room:
        ann = await room.register("ann", camera)
        await call(
            room.media.StartRecording,
            mc_pb.StartRecordingRequest(
                meeting_id=MEETING, participant_id="ann", recording_id="r3"
            ),
        )
        [job_id] = room.job_ids("recording")
        await room.wait_ready(job_id, video_id)
        assert room.mp is not None
        job = room.mp.jobs.job(job_id)
        assert job is not None
        async with room.client(ann) as media:
            to_low, to_high = await media.publish(low), await media.publish(high)
            for a, b in zip(small, large, strict=True):
                for publisher, frame in ((to_low, a), (to_high, b)):
                    kind = FrameType.VIDEO_KEY if frame.key else FrameType.VIDEO_DELTA
                    await publisher.send_frame(kind, frame.payload, timestamp_us=frame.timestamp_us)
            with trio.fail_after(WAIT_S):
                await room.mp.jobs.progress.until(lambda: job.frames_out >= len(large))
            await call(
                room.media.StopRecording,
                mc_pb.StopRecordingRequest(
                    meeting_id=MEETING, participant_id="ann", reason=common_pb2.VOLUNTARY
                ),
            )
        await room.wait_job(job_id, "ended")
    manifest = json.loads((room.recordings / MEETING / "r3.json").read_text())
    assert manifest["status"] == "complete" and manifest["reason"] == "VOLUNTARY", manifest
    [entry] = manifest["files"]
    assert entry["streams"] == [high]  # the highest layer's frames, by the id they carry
    path = room.recordings / MEETING / entry["name"]
    with av.open(str(path)) as container:
        [video] = container.streams.video
        sizes = {(p.width, p.height) for p in container.decode(video)}
    assert sizes == {(320, 240)}
    assert _pictures(path) == len(large)
