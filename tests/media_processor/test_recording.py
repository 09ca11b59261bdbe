"""A recording job over real QUIC (docs/architecture.md §10): a participant publishes VP8
video and Opus audio made by the tests to a real MH; the processor's job, a hidden participant
of the room, records them; the meeting's end at the MH ends the job with MEETING_ENDED and the
file is finalized. The file decodes with PyAV: every frame sent, its duration and the
audio/video offset as sent."""

from __future__ import annotations

import json
import pathlib
import uuid
from typing import Any

import av
import pytest
import trio

from darktower.client import open_media_client
from darktower.errors import InvalidRequest
from darktower.frames import FrameType
from darktower.media_processor._limits import RECORDING_SEND_DELAY_MS
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.protocol.pb.v1 import processing_pb2 as pb
from darktower.transport.rpc import call
from tests._stack import WAIT_S
from tests.processing._media import opus_frames, video_frames

from ._room import MEETING, open_room

SECONDS = 3.0


async def test_a_recording_job_records_a_participant_until_the_meeting_ends(
    tmp_path: pathlib.Path,
) -> None:
    video_id, audio_id = str(uuid.uuid4()), str(uuid.uuid4())
    video = video_frames(SECONDS, width=320, height=240, bitrate=300_000)
    audio = opus_frames(SECONDS)
    async with open_room(tmp_path) as room:
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
            pb.JobSource(
                stream_id=video_id,
                participant_id="ann",
                stream_type=common_pb2.VIDEO_CAMERA,
                codec="VP8",
            ),
            pb.JobSource(
                stream_id=audio_id, participant_id="ann", stream_type=common_pb2.AUDIO, codec="opus"
            ),
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
        async with open_media_client(ann, server_certificate_hashes=[room.tls.sha256]) as media:
            camera, microphone = await media.publish(video_id), await media.publish(audio_id)
            sends = sorted(
                [(f.timestamp_us, 0, f) for f in video] + [(f.timestamp_us, 1, f) for f in audio],
                key=lambda t: (t[0], t[1]),
            )

            async def send(timestamp_us: int, is_audio: int, frame: Any) -> None:
                if is_audio:
                    await microphone.send_frame(
                        FrameType.AUDIO, frame.payload, timestamp_us=timestamp_us
                    )
                else:
                    kind = FrameType.VIDEO_KEY if frame.key else FrameType.VIDEO_DELTA
                    await camera.send_frame(kind, frame.payload, timestamp_us=timestamp_us)

            # Each stream's first frame reaches the recorder before the rest are sent, so the
            # file's header has both tracks whatever order the MH's two streams deliver in (a
            # stream first seen 2 s of media after the header's wait began starts a new file,
            # docs/architecture.md §10; a loaded run saw the video run that far ahead).
            firsts = [next(i for i, s in enumerate(sends) if s[1] == kind) for kind in (0, 1)]
            for i in firsts:
                await send(*sends[i])
            with trio.move_on_after(WAIT_S):
                await room.mp.jobs.progress.until(lambda: job.frames_out >= 2)
            assert job.frames_out == 2, (job.frames_in, job.frames_out, job.drops)
            for i, item in enumerate(sends):
                if i not in firsts:
                    await send(*item)
            with trio.move_on_after(WAIT_S):
                await room.mp.jobs.progress.until(lambda: job.frames_out >= len(sends))
            assert job.frames_out == len(sends), (
                job.frames_in,
                job.frames_out,
                job.drops,
                len(sends),
            )
        # The meeting ends at the MH: the job's session is closed with that reason.
        await call(
            room.media.RemoveParticipant,
            mc_pb.RemoveParticipantRequest(
                meeting_id=MEETING, participant_id="rec-ann", reason=common_pb2.MEETING_ENDED
            ),
        )
        await room.wait_job("rec-ann")

    manifest = json.loads((room.recordings / MEETING / "ann-1.json").read_text())
    assert manifest["status"] == "complete", manifest
    assert manifest["reason"] == "MEETING_ENDED"
    assert manifest["participant_name"] == "Ann"
    [entry] = manifest["files"]
    assert entry["finished"] and set(entry["streams"]) == {video_id, audio_id}
    path = room.recordings / MEETING / entry["name"]
    assert entry["bytes"] == path.stat().st_size
    with av.open(str(path)) as container:
        [v] = container.streams.video
        [a] = container.streams.audio
        v_index, a_index = v.index, a.index
        pictures = sum(1 for _ in container.decode(v))
    assert pictures == len(video)
    sent_ms = (video[-1].timestamp_us - video[0].timestamp_us) / 1000 + 1000 / 30
    assert abs(entry["duration_ms"] - sent_ms) <= 100, (entry["duration_ms"], sent_ms)
    with av.open(str(path)) as container:
        starts = {}
        for packet in container.demux():
            if packet.pts is not None and packet.stream.index not in starts:
                starts[packet.stream.index] = float(packet.pts * packet.stream.time_base)
    offset_ms = abs(starts[v_index] - starts[a_index]) * 1000
    sent_offset_ms = abs(video[0].timestamp_us - audio[0].timestamp_us) / 1000
    assert abs(offset_ms - sent_offset_ms) <= 40


@pytest.mark.parametrize("codec", ["", "MP3"])
async def test_a_recording_of_an_unknown_codec_is_refused(
    tmp_path: pathlib.Path, codec: str
) -> None:
    async with open_room(tmp_path) as room:
        source = pb.JobSource(
            stream_id=str(uuid.uuid4()), stream_type=common_pb2.AUDIO, codec=codec
        )
        with pytest.raises(InvalidRequest):
            await room.start_job(
                "bad",
                "https://127.0.0.1:1/v1/media?token=x",
                recording=pb.RecordingJob(sources=[source]),
            )


async def test_recordings_on_one_mh_share_a_quic_connection(tmp_path: pathlib.Path) -> None:
    """Two recordings of a room are two sessions on one connection to the MH (its sends held
    for send_delay_ms, docs/architecture.md §10); it closes when both have ended."""
    async with open_room(tmp_path) as room:
        jobs = room.mp.jobs
        assert jobs.shared is not None
        for name in ("ann", "bob"):
            url = await room.register(f"rec-{name}")
            await room.start_job(
                f"rec-{name}",
                url,
                recording=pb.RecordingJob(participant_id=name, recording_id=f"{name}-1"),
            )
            await room.wait_job(f"rec-{name}", "running")
        assert jobs.shared.count() == 1
        # At the MH: both sessions on one connection, which holds its sends.
        members = room.mh.handler.rooms[MEETING].members  # type: ignore[index]
        ann, bob = (members[f"rec-{n}"].session for n in ("ann", "bob"))  # type: ignore[index]
        assert ann is not None and bob is not None
        assert ann._conn is bob._conn
        assert ann._conn.send_delay_s == RECORDING_SEND_DELAY_MS / 1000
        for name in ("ann", "bob"):
            await call(
                room.media.RemoveParticipant,
                mc_pb.RemoveParticipantRequest(
                    meeting_id=MEETING, participant_id=f"rec-{name}", reason=common_pb2.KICKED
                ),
            )
            await room.wait_job(f"rec-{name}")
        assert jobs.shared.count() == 0
