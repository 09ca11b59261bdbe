"""Recordings uploaded to an S3-compatible bucket (docs/architecture.md §10), over the real S3
protocol against a server on 127.0.0.1 (tests/_s3.py): a recording job on a real MH and a real
processor given ``--recordings-s3-*`` writes its file locally while it records, announces the
recording (its start manifest in the bucket), and once the meeting has ended leaves its file
and final manifest in the bucket and nothing in the directory; a bucket that does not answer
leaves the file in the directory, its manifest noting why; recordings left in the directory
by an earlier run are uploaded at the next start."""

from __future__ import annotations

import datetime
import json
import logging
import pathlib
import uuid
from typing import Any

import av
import httpx
import pytest
import trio

from darktower import media_processor
from darktower.client import open_media_client
from darktower.frames import FrameType
from darktower.processing import RecordingStore, S3Store
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.protocol.pb.v1 import processing_pb2 as pb
from darktower.transport.rpc import call
from tests._s3 import (
    ACCESS_KEY,
    SECRET_KEY,
    closed_endpoint,
    objects,
    s3_bucket,
    s3_endpoint,
    s3_server,
)
from tests._stack import WAIT_S, running_service
from tests.global_controller._recordings import Recording, between, media
from tests.processing._media import opus_frames, video_frames

from ._room import MEETING, Room, mp_settings, open_room

__all__ = ["s3_bucket", "s3_endpoint", "s3_server"]  # the fixtures this module uses

PREFIX = "mp/"
T0 = datetime.datetime(2026, 3, 1, 9, 0, tzinfo=datetime.UTC)


async def _record(room: Room, seconds: float) -> int:
    """Ann publishes ``seconds`` of VP8 and Opus, recorded by the job ``rec-ann`` (recording
    ``ann-1``) until the meeting ends at the MH; the pictures sent."""
    video_id, audio_id = str(uuid.uuid4()), str(uuid.uuid4())
    video = video_frames(seconds, width=160, height=120, bitrate=150_000, key_every=15)
    audio = opus_frames(seconds)
    ann = await room.register(
        "ann",
        [
            common_pb2.MediaStream(stream_id=video_id, stream_type=common_pb2.VIDEO_CAMERA),
            common_pb2.MediaStream(stream_id=audio_id, stream_type=common_pb2.AUDIO),
        ],
    )
    job_url = await room.register("rec-ann")
    await room.route(video_id, "rec-ann")
    await room.route(audio_id, "rec-ann")
    sources = [
        pb.JobSource(stream_id=video_id, stream_type=common_pb2.VIDEO_CAMERA, codec="VP8"),
        pb.JobSource(stream_id=audio_id, stream_type=common_pb2.AUDIO, codec="opus"),
    ]
    await room.start_job(
        "rec-ann",
        job_url,
        recording=pb.RecordingJob(
            participant_id="ann", participant_name="Ann", sources=sources, recording_id="ann-1"
        ),
    )
    job = room.mp.jobs.job("rec-ann")
    assert job is not None
    sends = sorted(
        [(f.timestamp_us, 0, f) for f in video] + [(f.timestamp_us, 1, f) for f in audio],
        key=lambda t: (t[0], t[1]),
    )
    async with open_media_client(ann, server_certificate_hashes=[room.tls.sha256]) as media:
        camera, microphone = await media.publish(video_id), await media.publish(audio_id)
        for timestamp_us, is_audio, frame in sends:
            if is_audio:
                await microphone.send_frame(
                    FrameType.AUDIO, frame.payload, timestamp_us=timestamp_us
                )
            else:
                kind = FrameType.VIDEO_KEY if frame.key else FrameType.VIDEO_DELTA
                await camera.send_frame(kind, frame.payload, timestamp_us=timestamp_us)
        with trio.fail_after(WAIT_S):
            await room.mp.jobs.progress.until(lambda: job.frames_out >= len(sends))
    # While it records, the file is written locally (a crash leaves it there).
    assert (room.recordings / MEETING / "ann-1-0.webm").stat().st_size > 0
    await call(
        room.media.RemoveParticipant,
        mc_pb.RemoveParticipantRequest(
            meeting_id=MEETING, participant_id="rec-ann", reason=common_pb2.MEETING_ENDED
        ),
    )
    await room.wait_job("rec-ann")
    return len(video)


def _options(endpoint: str, bucket: str, **more: Any) -> dict[str, Any]:
    return {
        "recordings_s3_endpoint": endpoint,
        "recordings_s3_bucket": bucket,
        "recordings_s3_prefix": PREFIX,
        **more,
    }


async def test_a_recording_ends_in_the_bucket(
    tmp_path: pathlib.Path, s3_endpoint: str, s3_bucket: str
) -> None:
    bucket = S3Store.connect(s3_endpoint, s3_bucket, PREFIX)
    async with open_room(tmp_path, **_options(s3_endpoint, s3_bucket)) as room:
        uploads = room.mp.uploads
        assert uploads is not None
        started = trio.Event()

        async def watch_the_start() -> None:
            # The recording is listed while it runs: its start manifest, no file yet.
            await uploads.progress.until(lambda: uploads.announced == 1)
            scanned = bucket.scan(MEETING, max_entries=100)
            assert scanned.recording_ids == ("ann-1",) and scanned.files == {}
            manifest = bucket.read_manifest(MEETING, "ann-1")
            assert manifest is not None and manifest["status"] == "recording"
            started.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_the_start)
            pictures = await _record(room, 1.0)
        assert started.is_set()
        with trio.fail_after(WAIT_S):
            await uploads.progress.until(lambda: uploads.uploaded == 1)
        assert uploads.failed == 0
        assert not (room.recordings / MEETING).exists()  # the local copies are removed

    stored = objects(s3_endpoint, s3_bucket)
    assert sorted(stored) == [f"{PREFIX}{MEETING}/ann-1-0.webm", f"{PREFIX}{MEETING}/ann-1.json"]
    manifest = json.loads(stored[f"{PREFIX}{MEETING}/ann-1.json"])
    assert (manifest["status"], manifest["reason"]) == ("complete", "MEETING_ENDED")
    [entry] = manifest["files"]
    data = stored[f"{PREFIX}{MEETING}/ann-1-0.webm"]
    assert entry["finished"] and entry["bytes"] == len(data)
    assert "upload_error" not in manifest and "uploaded" not in manifest
    path = tmp_path / "downloaded.webm"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == pictures


async def test_a_bucket_that_does_not_answer_leaves_the_recording_local(
    tmp_path: pathlib.Path,
    s3_endpoint: str,  # the credentials, as deployed
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_room(tmp_path, **_options(closed_endpoint(), "recordings")) as room:
        uploads = room.mp.uploads
        assert uploads is not None
        await _record(room, 0.5)
        with trio.fail_after(WAIT_S):
            await uploads.progress.until(lambda: uploads.failed == 1)
        assert (uploads.announced, uploads.uploaded) == (0, 0)
        local = RecordingStore(room.recordings)
        manifest = local.read_manifest(MEETING, "ann-1")
        assert manifest is not None
        assert manifest["status"] == "complete"  # true of the local files
        assert "bucket 'recordings'" in manifest["upload_error"]
        [entry] = manifest["files"]
        path = room.recordings / MEETING / entry["name"]
        assert entry["finished"] and path.stat().st_size == entry["bytes"]
        metrics = await _metrics(room.mp.ops_url)
        assert 'dt_mp_recording_uploads{result="failed"} 1' in metrics
    assert "recording upload failed" in caplog.text
    assert SECRET_KEY not in caplog.text and ACCESS_KEY not in caplog.text  # even at debug


async def _metrics(ops_url: str) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{ops_url}/metrics")).text


async def test_recordings_left_in_the_directory_are_uploaded_at_the_next_start(
    tmp_path: pathlib.Path, s3_endpoint: str, s3_bucket: str
) -> None:
    recordings = tmp_path / "recordings"
    local = RecordingStore(recordings)
    streams = media(1.0)
    # A processor that crashed mid-recording: its manifest says "recording".
    crashed = Recording(local, "m-1", "bob-1", "bob", T0)
    crashed.start("a", "v")
    crashed.feed(between(streams, 0.0, 1.0))
    crashed.recorder.close()
    # One whose upload failed: its manifest notes it.
    failed = Recording(local, "m-2", "cat-1", "cat", T0)
    failed.start("a")
    failed.feed(between(streams, 0.0, 1.0, "a"))
    failed.finish()
    noted = local.read_manifest("m-2", "cat-1")
    assert noted is not None
    local.write_manifest("m-2", "cat-1", {**noted, "upload_error": "the bucket was away"})
    sizes = {p.name: p.stat().st_size for p in recordings.rglob("*.webm")}

    settings = mp_settings(
        recordings, **_options(s3_endpoint, s3_bucket, recordings_s3_keep_local=True)
    )
    async with running_service(media_processor.serve, settings) as (mp, _):
        uploads = mp.uploads
        assert uploads is not None
        with trio.fail_after(WAIT_S):
            await uploads.progress.until(lambda: uploads.uploaded == 2)

    stored = objects(s3_endpoint, s3_bucket)
    assert {k: len(v) for k, v in stored.items() if k.endswith(".webm")} == {
        f"{PREFIX}m-1/bob-1-0.webm": sizes["bob-1-0.webm"],
        f"{PREFIX}m-2/cat-1-0.webm": sizes["cat-1-0.webm"],
    }
    bob = json.loads(stored[f"{PREFIX}m-1/bob-1.json"])
    cat = json.loads(stored[f"{PREFIX}m-2/cat-1.json"])
    assert bob["status"] == "recording"  # as the crash left it: plays to its last cluster
    assert cat["status"] == "complete" and "upload_error" not in cat
    # Kept, as asked, and marked: a later start does not upload them again.
    for meeting, recording in (("m-1", "bob-1"), ("m-2", "cat-1")):
        kept = local.read_manifest(meeting, recording)
        assert kept is not None and kept["uploaded"] is True
    assert {p.name: p.stat().st_size for p in recordings.rglob("*.webm")} == sizes
