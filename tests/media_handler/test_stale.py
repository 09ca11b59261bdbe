"""Live media after a stall (docs/protocol.md §13): a frame older than its age bound when it
would be sent is dropped as ``stale``, video resumes at a key frame (asked of the publisher),
and a subscriber that keeps up loses nothing.

The queue rule is sans-IO; the stall runs the MediaHandler with in-memory sessions on virtual
time (autojump_clock), since a 20 s stall on real QUIC would take 20 s."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from darktower.frames import FrameDecoder, FrameHeader, FrameType
from darktower.media_handler import (
    DropReason,
    MediaHandler,
    MediaKind,
    MediaMetrics,
    QueuedFrame,
    Settings,
    SubscriptionQueue,
)
from darktower.media_handler._limits import MAX_AUDIO_AGE_S, MAX_VIDEO_AGE_S
from darktower.metrics import Registry
from darktower.nurseries import TaskTree
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport import SessionEnd

from ._harness import audio, video

A, K, D = FrameType.AUDIO, FrameType.VIDEO_KEY, FrameType.VIDEO_DELTA
CAM = "7f1d1c6e-9a55-4c86-b1a4-0d7f6c1f3a10"
MIC = "0c4f4d55-64d4-4a0e-9d3b-6f0b7c1e2d33"
MEETING = "m"


# -- the queue rule (sans-IO) ------------------------------------------------------------------


def q_frame(name: str, at: float) -> QueuedFrame[str]:
    kind = {"a": A, "k": K, "d": D}[name[0]]
    return QueuedFrame(kind, 0, 10, name, at)


def test_the_age_bounds_are_named_constants() -> None:
    assert (MAX_VIDEO_AGE_S, MAX_AUDIO_AGE_S) == (0.5, 0.2)
    assert (Settings().max_video_age_s, Settings().max_audio_age_s) == (0.5, 0.2)


def test_stale_video_goes_and_the_stream_resumes_at_the_next_queued_key_frame() -> None:
    q: SubscriptionQueue[str] = SubscriptionQueue(MediaKind.VIDEO, wait_for_key_frame=False)
    for name, at in [("k1", 0.0), ("d1", 0.1), ("d2", 0.9), ("k2", 1.0), ("d3", 1.1)]:
        assert q.push(q_frame(name, at)) == ()
    q.drop_stale(1.2 - 0.5)
    assert [f.payload for f in q] == ["k2", "d3"]
    assert q.nbytes == 20


def test_drop_stale_reasons_and_key_frame_request() -> None:
    q: SubscriptionQueue[str] = SubscriptionQueue(MediaKind.VIDEO, wait_for_key_frame=False)
    for name, at in [("k1", 0.0), ("d1", 0.1), ("d2", 0.9), ("k2", 1.0), ("d3", 1.1)]:
        q.push(q_frame(name, at))
    drops = q.drop_stale(0.7)
    assert [(d.frame.payload, d.reason) for d in drops] == [
        ("k1", DropReason.STALE),
        ("d1", DropReason.STALE),
        ("d2", DropReason.WAITING_FOR_KEYFRAME),  # fresh, but it depends on d1
    ]
    assert not q.waiting_for_key_frame and not q.take_key_frame_request()
    # Nothing fresh: the queue is empty, the gate waits and asks for a key frame once.
    drops = q.drop_stale(5.0)
    assert [d.reason for d in drops] == [DropReason.STALE, DropReason.STALE]
    assert q.empty and q.nbytes == 0
    assert q.waiting_for_key_frame and q.take_key_frame_request()
    assert not q.take_key_frame_request()
    assert [d.reason for d in q.push(q_frame("d4", 5.0))] == [DropReason.WAITING_FOR_KEYFRAME]
    assert q.push(q_frame("k3", 5.1)) == ()


def test_fresh_frames_cost_one_comparison_and_are_kept() -> None:
    q: SubscriptionQueue[str] = SubscriptionQueue(MediaKind.AUDIO)
    for i in range(5):
        q.push(q_frame(f"a{i}", i * 0.02))
    assert q.drop_stale(0.0) == ()
    drops = q.drop_stale(0.05)  # audio: only the stale ones go, nothing waits
    assert [d.frame.payload for d in drops] == ["a0", "a1", "a2"]
    assert [f.payload for f in q] == ["a3", "a4"]
    assert not q.take_key_frame_request()


# -- a 20 s stall through the MediaHandler (virtual time) --------------------------------------


def _encode(stream: str, frame_type: FrameType, seq: int) -> bytes:
    payload = seq.to_bytes(8, "big") + bytes(300 if frame_type == D else 40)
    header = FrameHeader(
        frame_type=frame_type,
        stream_id=uuid.UUID(stream),
        timestamp_us=0,  # the sender's clock is never trusted for the age
        sequence=seq,
        payload_length=len(payload),
    )
    return header.encode() + payload


class PublishStream:
    """A publisher's bidirectional stream: frames fed by the test."""

    def __init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[bytes](1024)

    def feed(self, data: bytes) -> None:
        self._send.send_nowait(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return b""

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    def reset(self, code: int = 0) -> None:
        pass

    def stop_sending(self, code: int = 0) -> None:
        self._recv.close()


@attrs.define(eq=False)
class Reader:
    """The subscriber's application: reads (and so takes what the MH sends) unless stalled."""

    reading: bool = True
    resumed: trio.Event = attrs.Factory(trio.Event)
    # (time read, stream id, frame type, sequence) of every frame the subscriber got
    got: list[tuple[float, str, FrameType, int]] = attrs.Factory(list)
    # Streams whose transport holds what was sent while the reader stalled: read on resume.
    held: list[BufferingUniStream] = attrs.Factory(list)

    def stall(self) -> None:
        self.reading = False
        self.resumed = trio.Event()

    def resume(self) -> None:
        self.reading = True
        self.resumed.set()
        for stream in self.held:
            stream.deliver()

    def take(self, decoder: FrameDecoder, data: bytes) -> None:
        decoder.receive_data(data)
        now = trio.current_time()
        for frame in decoder:
            seq = int.from_bytes(bytes(frame.payload[:8]), "big")
            self.got.append((now, str(frame.stream_id), frame.frame_type, seq))


# A uni stream's flow-control window in these fakes: the peer's credit is what its reader
# took plus this (``send_credit``).
WINDOW = 256 * 1024


class UniStream:
    """A uni stream to a subscriber: a send completes only while its reader reads (a stalled
    reader grants no credit); a reset drops what it held, as QUIC's RESET_STREAM does."""

    # What a send handed over is taken at once (the transport's unacknowledged bytes).
    unacknowledged = 0

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.decoder = FrameDecoder()
        self.reset_code: int | None = None
        self.taken = 0

    @property
    def send_credit(self) -> int:
        return self.taken + WINDOW  # credit grows as the reader reads

    async def send_all(self, data: Any) -> None:
        await trio.lowlevel.checkpoint()
        while not self.reader.reading:
            await self.reader.resumed.wait()
        if self.reset_code is not None:
            raise trio.ClosedResourceError("reset")
        self.reader.take(self.decoder, bytes(data))
        self.taken += len(data)

    def reset(self, code: int = 0) -> None:
        self.reset_code = code

    def when_sent(self, callback: Any) -> bool:
        return False  # no socket: the residence is not measured

    def try_send(self, data: Any) -> bool:
        return False  # every write goes through send_all, as this fake behaves


class BufferingUniStream:
    """A uni stream as real QUIC has it below its send high-water mark: a send returns at once,
    and what a stalled reader does not take stays in the transport, unacknowledged, until it
    reads again; a reset drops it."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.decoder = FrameDecoder()
        self.reset_code: int | None = None
        self.pending = bytearray()
        self.taken = 0
        reader.held.append(self)

    @property
    def unacknowledged(self) -> int:
        return len(self.pending)

    @property
    def send_credit(self) -> int:
        return self.taken + WINDOW

    async def send_all(self, data: Any) -> None:
        await trio.lowlevel.checkpoint()
        if self.reset_code is not None:
            raise trio.ClosedResourceError("reset")
        self.pending += data
        if self.reader.reading:
            self.deliver()

    def deliver(self) -> None:
        if self.reset_code is None and self.pending:
            self.reader.take(self.decoder, bytes(self.pending))
            self.taken += len(self.pending)
        self.pending.clear()

    def reset(self, code: int = 0) -> None:
        self.reset_code = code
        self.pending.clear()

    def when_sent(self, callback: Any) -> bool:
        return False  # no socket: the residence is not measured

    def try_send(self, data: Any) -> bool:
        return False  # every write goes through send_all, as this fake behaves


class Session:
    def __init__(self, reader: Reader | None = None, *, buffering: bool = False) -> None:
        self.reader = reader or Reader()
        self.buffering = buffering
        self._send, self._recv = trio.open_memory_channel[PublishStream](16)
        self.end: SessionEnd | None = None
        self.close_code: int | None = None
        self.uni: list[UniStream | BufferingUniStream] = []
        self.credit = 1 << 30  # uni streams the subscriber lets the MH open

    @property
    def unidirectional_stream_credit(self) -> int:
        return self.credit

    def publish(self) -> PublishStream:
        stream = PublishStream()
        self._send.send_nowait(stream)
        return stream

    async def accept_stream(self) -> PublishStream:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("session closed") from None

    async def open_unidirectional_stream(self) -> UniStream | BufferingUniStream:
        await trio.lowlevel.checkpoint()
        stream = (BufferingUniStream if self.buffering else UniStream)(self.reader)
        self.uni.append(stream)
        return stream

    def close_nowait(self, code: int = 0, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
        self._recv.close()


@pytest.mark.parametrize(
    "buffering",
    [
        pytest.param(False, id="sends-block"),
        # The frames handed to the transport keep their age bound until acknowledged.
        pytest.param(True, id="transport-holds-the-bytes"),
    ],
)
async def test_a_subscriber_stalled_for_20_s_gets_live_media_and_video_restarts_at_a_key_frame(
    autojump_clock: trio.testing.MockClock, buffering: bool
) -> None:
    video_fps, audio_fps, key_every = 30, 50, 60
    stall_at, stall_s, end_at = 2.0, 20.0, 25.0
    async with trio.open_nursery() as nursery:
        tree = TaskTree()
        await nursery.start(tree.run)
        handler = MediaHandler(tree, Settings(), MediaMetrics(Registry()))
        for pid, streams in (("p", [video(CAM), audio(MIC)]), ("s", []), ("t", [])):
            await handler.register_participant(
                mc_pb.RegisterParticipant(participant_id=pid, meeting_id=MEETING, streams=streams)
            )
        key_requests: list[float] = []
        want_key = trio.Event()
        listening = trio.Event()

        async def publisher_side_of_the_mc() -> None:
            # What the MC does with a key frame request: the publisher is asked for one.
            async for event in handler.telemetry_hub.subscribe(MEETING, ready=listening):
                if event.key_frame_request.stream_id == CAM:
                    key_requests.append(trio.current_time())
                    want_key.set()

        nursery.start_soon(publisher_side_of_the_mc)
        await listening.wait()
        room = handler.rooms[MEETING]  # type: ignore[index]
        pub, stalled, steady = Session(), Session(buffering=buffering), Session(buffering=buffering)
        for pid, session in (("p", pub), ("s", stalled), ("t", steady)):
            nursery.start_soon(handler.handle_session, session, room.members[pid])
        await trio.testing.wait_all_tasks_blocked()
        for source in (CAM, MIC):
            await handler.route_media(
                mc_pb.RouteMediaCommand(
                    meeting_id=MEETING,
                    source_stream_id=source,
                    destination_participant_ids=["s", "t"],
                )
            )
        cam, mic = pub.publish(), pub.publish()
        sent: dict[tuple[str, int], float] = {}  # (stream, seq) -> when the MH got it

        async def send_video() -> None:
            nonlocal want_key
            seq = 0
            while trio.current_time() < end_at:
                key = seq % key_every == 0 or want_key.is_set()
                if want_key.is_set():
                    want_key = trio.Event()
                sent[(CAM, seq)] = trio.current_time()
                cam.feed(_encode(CAM, K if key else D, seq))
                seq += 1
                await trio.sleep(1 / video_fps)

        async def send_audio() -> None:
            seq = 0
            while trio.current_time() < end_at:
                sent[(MIC, seq)] = trio.current_time()
                mic.feed(_encode(MIC, A, seq))
                seq += 1
                await trio.sleep(1 / audio_fps)

        async def stall() -> None:
            await trio.sleep(stall_at)
            stalled.reader.stall()
            await trio.sleep(stall_s)
            stalled.reader.resume()

        start = trio.current_time()
        async with trio.open_nursery() as load:
            load.start_soon(send_video)
            load.start_soon(send_audio)
            load.start_soon(stall)
        await trio.testing.wait_all_tasks_blocked()
        resumed_at = start + stall_at + stall_s

        # The stalled subscriber: nothing it read was older than its bound when read.
        bound = {CAM: MAX_VIDEO_AGE_S, MIC: MAX_AUDIO_AGE_S}
        for read_at, stream, _, seq in stalled.reader.got:
            age = read_at - sent[(stream, seq)]
            assert age <= bound[stream] + 1e-9, (stream, seq, age)
        after = [g for g in stalled.reader.got if g[0] >= resumed_at]
        assert any(g[1] == CAM for g in after) and any(g[1] == MIC for g in after)
        # Its video restarts at a key frame, asked of the publisher during the stall.
        first_video = next(g for g in after if g[1] == CAM)
        assert first_video[2] == K
        assert any(start + stall_at < t <= resumed_at + 1 for t in key_requests)
        # Frames are never reordered on a stream.
        for stream in (CAM, MIC):
            seqs = [g[3] for g in stalled.reader.got if g[1] == stream]
            assert seqs == sorted(seqs)
        assert handler.metrics.frames_dropped.value(DropReason.STALE.value) > 0

        # The subscriber that kept up lost nothing.
        for stream in (CAM, MIC):
            seqs = [g[3] for g in steady.reader.got if g[1] == stream]
            assert seqs == sorted(s for (x, s) in sent if x == stream)
        nursery.cancel_scope.cancel()
