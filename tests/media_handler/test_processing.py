"""The MH's side of media processing (docs/architecture.md §10, docs/protocol.md §15): a real
MH with a real media processor in this process, over real QUIC and gRPC, the test acting as
the MC. What is refused, and how a transcode is shared by the destinations asking for the same
(codec, bitrate)."""

from __future__ import annotations

import os
import pathlib
import threading
import uuid
from collections.abc import Callable

import pytest
import trio

from darktower.client import MediaClient
from darktower.errors import CapacityExceeded, InvalidRequest, NotFound
from darktower.frames import Frame, FrameType
from darktower.model import LeaveReason
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.protocol.pb.v1 import processing_pb2 as pb
from darktower.protocol.pb.v1.processing_grpc import MediaProcessingStub
from darktower.transport.rpc import call
from tests._cluster import open_cluster_channel
from tests._stack import WAIT_S
from tests.media_processor._room import (
    MEETING,
    ProcessedRoom,
    audio_stream,
    open_processed_room,
    video_stream,
)
from tests.processing._media import Encoded, decode_video, video_frames


async def test_without_a_processor_every_job_is_capacity_exceeded(tmp_path: pathlib.Path) -> None:
    cam, mic = str(uuid.uuid4()), str(uuid.uuid4())
    async with open_processed_room(tmp_path, processors="") as room:
        await room.register("ann", video_stream(cam), audio_stream(mic))
        await room.register("bob")
        with pytest.raises(CapacityExceeded, match="no media processor"):
            await room.route(cam, "bob", transcode=True, target_codec="VP9", target_bitrate=1)
        with pytest.raises(CapacityExceeded, match="no media processor"):
            await room.route("", "bob", mix_audio=True)
        with pytest.raises(CapacityExceeded, match="no media processor"):
            await call(
                room.media.StartRecording,
                mc_pb.StartRecordingRequest(meeting_id=MEETING, participant_id="ann"),
            )
        with pytest.raises(NotFound):
            await call(
                room.media.StopRecording,
                mc_pb.StopRecordingRequest(meeting_id=MEETING, participant_id="ann"),
            )
        # Nothing is left of the attempts: no job, no hidden participant.
        assert set(room.mh.handler.rooms[MEETING].members) == {"ann", "bob"}  # type: ignore[index]
        assert not room.mh.handler.processing.jobs
        refused = room.mh.handler.metrics.processing_refused
        assert refused.value("CapacityExceeded") == 3


async def test_a_processor_that_cannot_be_reached_gives_way_to_the_next(
    tmp_path: pathlib.Path,
) -> None:
    cam = str(uuid.uuid4())
    with trio.socket.socket() as probe:  # a port nothing listens on
        await probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    async with open_processed_room(tmp_path, before=dead) as room:
        await room.register("ann", video_stream(cam))
        await room.register("bob")
        pool = room.mh.handler.processing.pool
        assert pool.candidates()[0].endpoint == dead
        reply = await room.route(cam, "bob", transcode=True, target_codec="VP9", target_bitrate=1)
        job = room.mh.handler.processing.output_job(MEETING, reply.derived_stream_id)  # type: ignore[arg-type]
        assert job is not None and job.link is not None and job.link.endpoint != dead
        assert room.mh.handler.metrics.processing_failures.value(dead, "call") == 1
        # Tried after the others for a while: the next job goes to the live one at once.
        assert pool.candidates()[-1].endpoint == dead


async def test_bad_transcodes_are_refused_and_leave_nothing(tmp_path: pathlib.Path) -> None:
    cam, mic, plain = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    async with open_processed_room(tmp_path) as room:
        await room.register("ann", video_stream(cam), audio_stream(mic))
        await room.register(
            "bob", common_pb2.MediaStream(stream_id=plain, stream_type=common_pb2.VIDEO_SCREEN)
        )
        # The processor's own answer, unchanged: the codecs this build encodes.
        with pytest.raises(InvalidRequest, match="VP9") as refused:
            await room.route(cam, "bob", transcode=True, target_codec="MPEG2", target_bitrate=1000)
        assert "MPEG2" in str(refused.value)
        with pytest.raises(InvalidRequest, match="target_bitrate"):
            await room.route(cam, "bob", transcode=True, target_codec="VP9")
        with pytest.raises(InvalidRequest, match="audio"):
            await room.route(mic, "bob", transcode=True, target_codec="VP9", target_bitrate=1000)
        with pytest.raises(InvalidRequest, match="codec"):  # registered without a codec
            await room.route(plain, "ann", transcode=True, target_codec="VP9", target_bitrate=1)
        with pytest.raises(InvalidRequest, match="itself"):
            await room.route(cam, "ann", transcode=True, target_codec="VP9", target_bitrate=1)
        with pytest.raises(NotFound):
            await room.route(cam, "nobody", transcode=True, target_codec="VP9", target_bitrate=1)
        with pytest.raises(InvalidRequest, match="one listener"):
            await room.route("", "ann", "bob", mix_audio=True)
        assert set(room.mh.handler.rooms[MEETING].members) == {"ann", "bob"}  # type: ignore[index]
        assert not room.mh.handler.processing.jobs
        assert room.mp is not None and not room.mp.jobs.live()


async def _receive(media: MediaClient, stream_id: str, into: list[bytes], count: int) -> None:
    async for frame in media:
        if str(frame.stream_id) == stream_id:
            into.append(bytes(frame.payload))
            if len(into) == count:
                return


async def _publish(media: MediaClient, stream_id: str, frames: list[Encoded]) -> None:
    publisher = await media.publish(stream_id)
    for frame in frames:
        kind = FrameType.VIDEO_KEY if frame.key else FrameType.VIDEO_DELTA
        await publisher.send_frame(kind, frame.payload, timestamp_us=frame.timestamp_us)


async def _list_jobs(room: ProcessedRoom) -> list[pb.JobStatus]:
    assert room.mp is not None
    async with open_cluster_channel(room.mp.grpc_address, "mh", "mh-test", server="mp") as ch:
        reply = await call(MediaProcessingStub(ch).ListJobs, pb.ListJobsRequest())
    return list(reply.jobs)


async def test_destinations_asking_for_the_same_transcode_share_one_job(
    tmp_path: pathlib.Path,
) -> None:
    cam = str(uuid.uuid4())
    frames = video_frames(1, width=320, height=240, bitrate=300_000, key_every=30)
    target = {"transcode": True, "target_codec": "H264", "target_bitrate": 200_000}
    async with open_processed_room(tmp_path) as room:
        processing = room.mh.handler.processing
        ann = await room.register("ann", video_stream(cam))
        bob, carl = await room.register("bob"), await room.register("carl")
        async with room.client(bob) as b, room.client(carl) as c:
            first = await room.route(cam, "bob", **target)
            # The same codec by another of its names is the same job.
            second = await room.route(cam, "carl", **{**target, "target_codec": "h.264"})
            output = first.derived_stream_id
            assert output and second.derived_stream_id == output
            # Another bitrate is another job.
            other = await room.route(cam, "carl", **{**target, "target_bitrate": 100_000})
            assert other.derived_stream_id not in ("", output)
            job = processing.output_job(MEETING, output)  # type: ignore[arg-type]
            other_job = processing.output_job(MEETING, other.derived_stream_id)  # type: ignore[arg-type]
            assert job is not None and other_job is not None
            listed = {s.job_id: s.kind for s in await _list_jobs(room)}
            assert listed == {job.job_id: "transcode", other_job.job_id: "transcode"}
            # Its last destination unroutes the output's id: that job ends.
            await room.route(other.derived_stream_id, "carl", unroute=True)
            with trio.fail_after(WAIT_S):
                await other_job.ended.wait()
            await room.wait_job(other_job.job_id, "ended")
            await room.wait_ready(job.job_id, cam)
            got_b: list[bytes] = []
            got_c: list[bytes] = []
            async with room.client(ann) as a:
                with trio.fail_after(WAIT_S):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_receive, b, output, got_b, len(frames))
                        nursery.start_soon(_receive, c, output, got_c, len(frames))
                        await _publish(a, cam, frames)
            assert len(decode_video("h264", got_b)) == len(decode_video("h264", got_c)) == 30
            # The hidden participant is the MH's own: the job's id, never the MC's.
            members = set(room.mh.handler.rooms[MEETING].members)  # type: ignore[index]
            assert members == {"ann", "bob", "carl", job.job_id}
            assert [j.kind for j in processing.jobs.values()] == ["transcode"]
            await room.route(cam, "bob", unroute=True, **target)
            assert job.stop_reason is None  # carl still gets it
            await room.route(cam, "carl", unroute=True, **target)
            with trio.fail_after(WAIT_S):
                await job.ended.wait()
            await room.wait_job(job.job_id, "ended")
            assert set(room.mh.handler.rooms[MEETING].members) == {"ann", "bob", "carl"}  # type: ignore[index]
            assert not processing.jobs
        room.mh.handler.refresh_gauges()
        gauge = room.mh.handler.metrics.processing_jobs
        assert gauge.value("transcode", "{}:{}".format(*room.mp.grpc_address)) == 0  # type: ignore[union-attr]


async def test_a_late_subscriber_of_a_transcode_gets_a_key_frame_from_its_processor(
    tmp_path: pathlib.Path,
) -> None:
    cam = str(uuid.uuid4())
    # One key frame at the start: any later one in the output was asked for.
    frames = video_frames(3, width=320, height=240, bitrate=300_000, key_every=1000)
    target = {"transcode": True, "target_codec": "VP8", "target_bitrate": 200_000}
    async with open_processed_room(tmp_path) as room:
        ann = await room.register("ann", video_stream(cam))
        bob, carl = await room.register("bob"), await room.register("carl")
        # No throttle between the first subscriber's request and the late one's.
        room.mh.handler.rooms[MEETING].key_frames.interval_s = 0.0  # type: ignore[index]
        async with room.client(bob) as b, room.client(carl) as c, room.client(ann) as a:
            output = (await room.route(cam, "bob", **target)).derived_stream_id
            [job_id] = room.job_ids("transcode")
            await room.wait_ready(job_id, cam)
            camera = await a.publish(cam)
            got_b: list[Frame] = []
            got_c: list[Frame] = []
            changed = Changed()
            with trio.fail_after(WAIT_S):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_collect, b, output, got_b, changed)
                    nursery.start_soon(_collect, c, output, got_c, changed)
                    for index, frame in enumerate(frames):
                        if index == 30:
                            await room.route(cam, "carl", **target)
                        await changed.until(lambda i=index: len(got_b) >= i - 4)
                        kind = FrameType.VIDEO_KEY if frame.key else FrameType.VIDEO_DELTA
                        await camera.send_frame(
                            kind, frame.payload, timestamp_us=frame.timestamp_us
                        )
                    await changed.until(lambda: len(got_b) == len(frames) and bool(got_c))
                    nursery.cancel_scope.cancel()
            assert got_c[0].frame_type == FrameType.VIDEO_KEY
            # (a few frames were on their way when carl came)
            assert got_c[0].timestamp_us >= frames[30 - 5].timestamp_us
            assert [f.frame_type for f in got_b].count(FrameType.VIDEO_KEY) >= 2
            assert len(decode_video("vp8", [bytes(f.payload) for f in got_c])) == len(got_c)
            kf = room.mh.handler.metrics.processing_key_frames
            assert kf.value("queued") >= 1
            # Its source unpublished, the transcode ends: its job and hidden participant go.
            job = room.mh.handler.processing.jobs[job_id]  # type: ignore[index]
            await call(
                room.media.RemoveStream,
                mc_pb.RemoveStreamRequest(meeting_id=MEETING, participant_id="ann", stream_id=cam),
            )
            with trio.fail_after(WAIT_S):
                await job.ended.wait()
            assert job.stop_reason == LeaveReason.VOLUNTARY and not job.lost
            assert set(room.mh.handler.rooms[MEETING].members) == {"ann", "bob", "carl"}  # type: ignore[index]
            assert output not in room.mh.handler.rooms[MEETING].publications  # type: ignore[index]


class Changed:
    """Something the test waits on without polling: :meth:`notify` after each change."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


async def _collect(media: MediaClient, stream_id: str, into: list[Frame], changed: Changed) -> None:
    async for frame in media:
        if str(frame.stream_id) == stream_id:
            into.append(frame)
            changed.notify()


def test_opening_the_codecs_leaves_the_thread_scheduling_alone() -> None:
    """SVT-AV1 makes the thread that opens it, and the threads it starts, SCHED_FIFO 99 when it
    may (root): the processor, which runs in this process in these tests, must not hand that
    to its codec threads or to every thread after them (a busy one would starve the machine,
    the MH's routing included)."""
    from darktower.processing import Transcoder
    from darktower.processing._codecs import _opens

    frames = video_frames(0.1, width=64, height=64, bitrate=100_000)
    policies: list[int] = []

    def probe() -> None:
        _opens("libsvtav1", "w")
        transcoder = Transcoder("VP8", "AV1", 100_000)  # its encoder's threads live on
        assert transcoder.push(frames[0].key, frames[0].timestamp_us, frames[0].payload)
        policies.extend(os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task"))
        transcoder.flush()

    before = os.sched_getscheduler(0)
    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert policies and set(policies) == {before}
