"""What every job's pipeline shares (docs/architecture.md §10): encoded frames reassembled from
wire frames, a bounded queue in front of the codec thread with the media drop policy, and the
codec thread itself (PyAV never runs on the trio thread).
"""

from __future__ import annotations

import collections
import functools
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import attrs
import trio

from darktower.frames import Frame, FrameFlags, FrameType

from ._limits import JOB_QUEUE_FRAMES, MAX_ASSEMBLED_BYTES, MAX_STREAM_NAMES

T = TypeVar("T")
# As a plain int: IntFlag's Python-level __and__ costs 1.7 µs a test, four per frame part.
_END_OF_FRAME = int(FrameFlags.END_OF_FRAME)


@attrs.frozen
class Encoded:
    """One whole encoded frame of a source stream."""

    stream_id: str
    key: bool
    audio: bool
    timestamp_us: int
    payload: bytes


@attrs.define
class Drops:
    """Frames a job dropped, by reason (shown in ListJobs and /metrics)."""

    counts: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def add(self, reason: str, count: int = 1) -> None:
        self.counts[reason] += count


@attrs.define
class _Partial:
    frame_type: FrameType
    timestamp_us: int
    parts: list[bytes] = attrs.field(factory=list)
    size: int = 0


class Assembler:
    """Wire frames in (any streams), whole encoded frames out: a frame is complete at its
    END_OF_FRAME flag (docs/protocol.md §7). Parts go missing when the MH drops for a slow
    subscriber (§5.4 of docs/architecture.md) or resets its stream, so a partial frame is
    dropped (``incomplete``) when the next part does not continue it (another type or
    timestamp, or a jump in sequence numbers), and a video stream then resumes at its next key
    frame (a decoder cannot use a delta after a gap). A frame over ``max_bytes`` is dropped
    (``oversize``) with the rest of its parts."""

    def __init__(self, drops: Drops, max_bytes: int = MAX_ASSEMBLED_BYTES) -> None:
        self._drops = drops
        self._max = max_bytes
        self._partial: dict[str, _Partial] = {}
        self._last_sequence: dict[str, int] = {}
        self._skipping: set[str] = set()  # video streams waiting for a key frame
        self._discarding: set[str] = set()  # streams dropping the rest of an oversize frame
        # The text form of each stream id seen (the frame's cheap fields, not its typed header:
        # this runs for every frame a job receives).
        self._names: dict[bytes, str] = {}

    def _name(self, raw: bytes) -> str:
        name = self._names.get(raw)
        if name is None:
            if len(self._names) >= MAX_STREAM_NAMES:
                self._names.clear()
            name = self._names[raw] = str(uuid.UUID(bytes=raw))
        return name

    def push(self, frame: Frame) -> Encoded | None:
        sid = self._name(frame.stream_id_bytes)
        frame_type = frame.frame_type
        flags = int(frame.flags)
        timestamp_us = frame.timestamp_us
        sequence = frame.sequence
        video = frame_type is not FrameType.AUDIO
        last = self._last_sequence.get(sid)
        self._last_sequence[sid] = sequence
        # A forward jump means parts were lost (a publisher that does not number its frames,
        # all zero, never jumps). A part after the jump that does not end its frame may be the
        # middle of one whose start was lost: its frame is dropped up to its END_OF_FRAME. One
        # that ends its frame is taken whole (frames are one part each unless over the MH's
        # payload limit).
        if last is not None and sequence > last + 1:
            self._discarding.discard(sid)
            self._lost(sid, video)
            if not flags & _END_OF_FRAME:
                self._drops.add("incomplete")
                self._discarding.add(sid)
                return None
        if sid in self._discarding:
            if flags & _END_OF_FRAME:
                self._discarding.discard(sid)
            return None
        partial = self._partial.get(sid)
        if partial is not None and (
            partial.frame_type is not frame_type or partial.timestamp_us != timestamp_us
        ):
            self._lost(sid, video)
            partial = None
        if partial is None:
            partial = self._partial[sid] = _Partial(frame_type, timestamp_us)
        partial.parts.append(bytes(frame.payload))
        partial.size += len(frame.payload)
        if partial.size > self._max:
            del self._partial[sid]
            self._drops.add("oversize")
            if video:
                self._skipping.add(sid)
            if not flags & _END_OF_FRAME:
                self._discarding.add(sid)
            return None
        if not flags & _END_OF_FRAME:
            return None
        del self._partial[sid]
        key = not video or partial.frame_type is FrameType.VIDEO_KEY
        if sid in self._skipping:
            if not key:
                self._drops.add("awaiting_key")
                return None
            self._skipping.discard(sid)
        return Encoded(sid, key, not video, partial.timestamp_us, b"".join(partial.parts))

    def _lost(self, sid: str, video: bool) -> None:
        if self._partial.pop(sid, None) is not None:
            self._drops.add("incomplete")
        if video:
            self._skipping.add(sid)

    def forget(self, stream_id: str) -> None:
        for held in (self._partial, self._last_sequence):
            held.pop(stream_id, None)
        self._skipping.discard(stream_id)
        self._discarding.discard(stream_id)


class FrameQueue:
    """The bounded queue between a job's reader and its codec thread (JOB_QUEUE_FRAMES).
    :meth:`offer` (real-time jobs: a transcode, a mix) never waits: full, the frame is dropped
    (``queue_full``) and a video stream drops up to its next key frame, so the codec never sees
    a delta after a gap, and a slow codec costs only this job's frames. :meth:`put` (a
    recording) waits instead."""

    def __init__(self, drops: Drops, max_frames: int = JOB_QUEUE_FRAMES) -> None:
        self._drops = drops
        self._send, self.receive = trio.open_memory_channel[Encoded](max_frames)
        self._skipping: set[str] = set()
        self._half = max(1, max_frames // 2)
        self._half_full = trio.Event()  # set once half the queue is taken (see filled)

    def offer(self, frame: Encoded) -> bool:
        """Queue ``frame`` unless the policy drops it; True when queued."""
        if frame.stream_id in self._skipping:
            if not frame.key:
                self._drops.add("awaiting_key")
                return False
            self._skipping.discard(frame.stream_id)
        try:
            self._send.send_nowait(frame)
        except trio.WouldBlock:
            self._drops.add("queue_full")
            if not frame.audio:
                self._skipping.add(frame.stream_id)
            return False
        return True

    async def put(self, frame: Encoded) -> None:
        """Queue ``frame``, waiting while the queue is full: for a job that must keep every
        frame (a recording), the wait reaches the MH through QUIC flow control, and only the
        MH's own queue for this subscriber drops, by its policy, if the job stays behind."""
        try:
            self._send.send_nowait(frame)  # no task switch while there is room
        except trio.WouldBlock:
            await self._send.send(frame)
        if self._send.statistics().current_buffer_used >= self._half:
            self._half_full.set()

    async def filled(self, timeout_s: float) -> None:
        """Return after ``timeout_s``, or sooner once the queue is half full (a batching
        writer then writes before the reader has to wait)."""
        with trio.move_on_after(timeout_s):
            await self._half_full.wait()

    def take_ready(self, first: Encoded) -> list[Encoded]:
        """``first`` and every frame already queued behind it (one codec call for a batch)."""
        batch = [first]
        while True:
            try:
                batch.append(self.receive.receive_nowait())
            except trio.WouldBlock:
                return batch

    def take_all(self) -> list[Encoded]:
        """Every frame queued now (none: an empty list), without waiting."""
        if self._half_full.is_set():
            self._half_full = trio.Event()
        batch: list[Encoded] = []
        while True:
            try:
                batch.append(self.receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return batch

    def close(self) -> list[Encoded]:
        """Take no more frames; return those still queued (a recording writes them)."""
        self._send.close()
        return self.take_all()


class Progress:
    """Something that changes (a job's state, its frames out), for tasks and tests to wait on
    without polling: :meth:`notify` after each change, :meth:`until` a predicate holds."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


class CodecThread:
    """One worker thread at a time for a job's codec objects (they are not thread-safe): each
    call runs off the trio thread, in order. Cancelled, the caller returns at once while the
    call finishes in its thread; the next call waits for it (the limiter is held until then).
    ``cpu_s`` adds up the thread time the calls took."""

    def __init__(self) -> None:
        self._limiter = trio.CapacityLimiter(1)
        self.cpu_s = 0.0

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(
            functools.partial(self._timed, fn, *args), limiter=self._limiter, abandon_on_cancel=True
        )

    def _timed(self, fn: Callable[..., T], *args: object) -> T:
        start = time.thread_time()
        try:
            return fn(*args)
        finally:
            self.cpu_s += time.thread_time() - start
