"""A transcode's output ends with its source (docs/protocol.md §8, §15): once RemoveStream of
the source (or RemoveParticipant of its publisher) returns, the transcode's subscribers no
longer get a frame of it, even from a processor that is slow to stop the job.

Over real QUIC with a real MH and processor in this process. The processor's codec is held
while the source is removed, with frames of the source queued in it, and the MH's StopJob
held too: what the codec makes of them once released comes out after the return, and must
reach nobody (the MH reset the output's stream: the job ends on the processor by itself)."""

from __future__ import annotations

import pathlib
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import trio

from darktower.client import MediaClient
from darktower.frames import FrameType
from darktower.media_processor._transcoding import TranscodeJob
from darktower.model import LeaveReason
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport.rpc import call
from tests._stack import WAIT_S
from tests.media_processor._room import MEETING, ProcessedRoom, open_processed_room, video_stream
from tests.processing._media import video_frames

BEFORE = 10  # frames transcoded and received before the removal
HELD = 5  # frames queued in the held codec when the source is removed
TARGET = {"transcode": True, "target_codec": "H264", "target_bitrate": 200_000}


class Changed:
    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


class CodecGate:
    """Holds the processor's transcode codec calls while closed (in the codec's thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._open = threading.Event()
        self._open.set()
        self.holding = trio.Event()  # a codec call waits at the gate
        token = trio.lowlevel.current_trio_token()
        push = TranscodeJob._push

        def gated(job: TranscodeJob, batch: list[Any]) -> Any:
            if not self._open.is_set():
                trio.from_thread.run_sync(self.holding.set, trio_token=token)
                self._open.wait(WAIT_S)
            return push(job, batch)

        monkeypatch.setattr(TranscodeJob, "_push", gated)

    def close(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()


def hold_stop_job(room: ProcessedRoom, monkeypatch: pytest.MonkeyPatch) -> trio.Event:
    """The MH's StopJob calls wait until the returned event is set (a slow processor)."""
    pool = room.mh.handler.processing.pool
    original = pool.call
    release = trio.Event()

    async def held(link: Any, method: str, request: object) -> None:
        if method == "StopJob":
            await release.wait()
        await original(link, method, request)

    monkeypatch.setattr(pool, "call", held)
    return release


async def _collect(media: MediaClient, stream_id: str, into: list[int], changed: Changed) -> None:
    async for frame in media:
        if str(frame.stream_id) == stream_id:
            into.append(frame.timestamp_us)
            changed.notify()


@pytest.mark.parametrize("removal", ["unpublish", "kick"])
async def test_no_frame_of_a_transcode_reaches_its_subscriber_after_its_source_is_removed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, removal: str
) -> None:
    cam = str(uuid.uuid4())
    frames = video_frames(0.5, width=320, height=240, bitrate=300_000, key_every=1000)
    assert len(frames) >= BEFORE + HELD
    gate = CodecGate(monkeypatch)
    async with open_processed_room(tmp_path) as room:
        ann = await room.register("ann", video_stream(cam))
        bob = await room.register("bob")
        handler = room.mh.handler
        async with room.client(bob) as b, room.client(ann) as a, trio.open_nursery() as nursery:
            output = (await room.route(cam, "bob", **TARGET)).derived_stream_id
            [job_id] = room.job_ids("transcode")
            job = handler.processing.jobs[job_id]  # type: ignore[index]
            await room.wait_ready(job_id, cam)
            got: list[int] = []
            changed = Changed()
            nursery.start_soon(_collect, b, output, got, changed)
            camera = await a.publish(cam)

            async def send(index: int) -> None:
                frame = frames[index]
                kind = FrameType.VIDEO_KEY if frame.key else FrameType.VIDEO_DELTA
                await camera.send_frame(kind, frame.payload, timestamp_us=frame.timestamp_us)

            with trio.fail_after(WAIT_S):
                for index in range(BEFORE):
                    await send(index)
                await changed.until(lambda: len(got) == BEFORE)
            last_before = frames[BEFORE - 1].timestamp_us
            assert got[-1] == last_before
            # The codec is held with frames of the source in it; StopJob will be slow.
            gate.close()
            for index in range(BEFORE, BEFORE + HELD):
                await send(index)
            release_stop = hold_stop_job(room, monkeypatch)
            try:
                with trio.fail_after(WAIT_S):
                    await gate.holding.wait()
                if removal == "unpublish":
                    await call(
                        room.media.RemoveStream,
                        mc_pb.RemoveStreamRequest(
                            meeting_id=MEETING, participant_id="ann", stream_id=cam
                        ),
                    )
                else:
                    await room.remove("ann", int(LeaveReason.KICKED))
                # Returned: the output is gone at the MH and so is bob's stream of it, though
                # the job is not stopped on its processor yet.
                mh_room = handler.rooms[MEETING]  # type: ignore[index]
                assert output not in mh_room.publications
                bob_scope = mh_room.members["bob"].scope  # type: ignore[index]
                assert bob_scope is not None and bob_scope.stream(f"sub:{output}") is None
                assert job.stop_reason == LeaveReason.VOLUNTARY and not job.ended.is_set()
                assert handler.processing.output_job(MEETING, output) is None  # type: ignore[arg-type]
            finally:
                gate.release()
            # What the codec makes of the held frames now is refused by the MH (its output
            # stream was reset): the job ends on the processor by itself, and bob gets none.
            with trio.fail_after(WAIT_S):
                async with trio.open_nursery() as race:

                    async def job_ended() -> None:
                        await room.wait_job(job_id, "ended")
                        race.cancel_scope.cancel()

                    async def late_frame() -> None:
                        await changed.until(lambda: got[-1] > last_before)
                        race.cancel_scope.cancel()

                    race.start_soon(job_ended)
                    race.start_soon(late_frame)
            assert got[-1] == last_before, "a frame transcoded after the removal reached bob"
            release_stop.set()
            with trio.fail_after(WAIT_S):
                await job.ended.wait()
            assert not job.lost
            assert "bob" in handler.rooms[MEETING].members  # type: ignore[index]
            assert job_id not in handler.rooms[MEETING].members  # type: ignore[index]
            nursery.cancel_scope.cancel()
