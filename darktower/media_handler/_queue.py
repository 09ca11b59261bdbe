"""Subscriber queues with the media drop policy. Sans-IO: no trio, time is a parameter.

The policy in brief: docs/architecture.md §5.4.

One :class:`SubscriptionQueue` holds the outgoing frames of one (subscriber, routed stream). The
publisher's task pushes, the subscription's task pops; ``push`` never blocks and never lets the
queue grow past its bounds, so a slow subscriber costs only its own frames. What ``push`` had to
drop comes back as :class:`Dropped` records, each with a :class:`DropReason`, so that every drop
is counted exactly once.

Video stays decodable: a delta frame depends on every non-discardable frame since the last key
frame, so once one of those is lost no delta is delivered until the next key frame
(:class:`KeyFrameGate`). Frames are never reordered.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Final, Generic, TypeVar

import attrs

from darktower.frames import Frame, FrameFlags, FrameType
from darktower.model import StreamId, StreamType

# Limit: frames queued per (subscriber, routed stream). Policy when full: drop, never block and
# never grow (discardable first, then video deltas up to the next key frame, audio oldest
# first); every drop is reported. 256 frames is ~8 s of 30 fps video, ~5 s of 50 fps audio.
DEFAULT_MAX_FRAMES: Final = 256
# Limit: bytes (whole frames, header included) queued per (subscriber, routed stream). Same
# policy as DEFAULT_MAX_FRAMES. A frame larger than this can never be queued and is dropped as
# OVERSIZE; keep it above the largest key frame a publisher may send.
DEFAULT_MAX_BYTES: Final = 2 * 1024 * 1024
# Throttle: at most one key frame request per published stream per this many seconds, however
# many subscribers wait; a request takes a round trip through the MC to the publisher anyway.
KEY_FRAME_REQUEST_INTERVAL_S: Final = 0.5

_DISCARDABLE: Final = int(FrameFlags.DISCARDABLE)
_AUDIO: Final = FrameType.AUDIO
_KEY: Final = FrameType.VIDEO_KEY
_DELTA: Final = FrameType.VIDEO_DELTA

P = TypeVar("P")


class DropReason(enum.StrEnum):
    """Why a frame was not delivered; the value is the ``reason`` label in /metrics."""

    DISCARDABLE = "discardable"  # flagged discardable, dropped first to make room
    WAITING_FOR_KEYFRAME = "waiting_for_keyframe"  # a delta with no decodable reference
    QUEUE_FULL_DELTA = "queue_full_delta"  # video delta dropped to make room
    QUEUE_FULL_KEYFRAME = "queue_full_keyframe"  # older key frame evicted by a newer one
    QUEUE_FULL_AUDIO_OLDEST = "queue_full_audio_oldest"  # oldest audio dropped to make room
    OVERSIZE = "oversize"  # larger than the queue's whole byte bound
    BUDGET = "budget"  # over the participant's byte-rate budget
    STALE = "stale"  # older than its age bound when it would be sent (_limits.py)


class MediaKind(enum.Enum):
    """What a queue carries; decides the drop policy."""

    AUDIO = "audio"
    VIDEO = "video"

    @classmethod
    def of_stream_type(cls, stream_type: StreamType) -> MediaKind:
        return cls.AUDIO if stream_type == StreamType.AUDIO else cls.VIDEO

    @classmethod
    def of_frame_type(cls, frame_type: FrameType) -> MediaKind:
        return cls.AUDIO if frame_type == _AUDIO else cls.VIDEO


@attrs.frozen(slots=True)
class QueuedFrame(Generic[P]):
    """One outgoing frame: what the drop policy reads, and ``payload``, forwarded unchanged.

    Immutable, so the router builds one per published frame and pushes the same object to every
    subscriber's queue. ``size`` is the frame's size on the wire (header included);
    ``received_at`` is when the MH received it (the router's clock, the age bound's origin;
    infinity: never stale).
    """

    frame_type: FrameType
    flags: int
    size: int
    payload: P
    received_at: float = math.inf

    @classmethod
    def of(cls, frame: Frame, received_at: float = math.inf) -> QueuedFrame[memoryview]:
        """The queue item for a decoded frame; its payload is the frame's raw wire bytes."""
        raw = frame.raw
        return QueuedFrame(frame.frame_type, int(frame.flags), raw.nbytes, raw, received_at)

    @property
    def discardable(self) -> bool:
        return bool(self.flags & _DISCARDABLE)


@attrs.frozen(slots=True)
class Dropped(Generic[P]):
    """A frame that will not be delivered, and why."""

    frame: QueuedFrame[P]
    reason: DropReason


class KeyFrameGate:
    """Keeps one video stream decodable for its receiver.

    ``lost(frame_type, flags)`` records that a frame did not reach the receiver; if later deltas depend on it
    the gate closes and ``passes`` refuses deltas until the next key frame. Each closing raises
    one key frame request, taken once with :meth:`take_key_frame_request`.
    Audio frames and discardable frames never close it (nothing depends on them).
    """

    __slots__ = ("_request", "waiting")

    def __init__(self, *, waiting: bool = True) -> None:
        # A new receiver joins mid-stream: nothing is decodable before a key frame.
        self.waiting = waiting
        self._request = waiting

    def passes(self, frame_type: FrameType) -> bool:
        """Whether a frame of this type may reach the receiver; a key frame reopens the gate."""
        if frame_type == _KEY:
            self.waiting = False
            self._request = False
            return True
        return not (self.waiting and frame_type == _DELTA)

    def lost(self, frame_type: FrameType, flags: int) -> None:
        """Record that a frame passed earlier, or offered now, will not be delivered."""
        if frame_type != _AUDIO and not flags & _DISCARDABLE and not self.waiting:
            self.waiting = True
            self._request = True

    def take_key_frame_request(self) -> bool:
        """True once after the gate closed, while it is still closed; then False."""
        request, self._request = self._request, False
        return request

    def ask_again(self) -> None:
        """A request taken could not be sent yet (throttled): raise it again while closed."""
        self._request = self.waiting


class SubscriptionQueue(Generic[P]):
    """The bounded outgoing queue of one (subscriber, routed stream).

    Bounded in frames and bytes; when a frame does not fit, ``push`` makes room or drops, in this
    order: queued discardable frames (oldest first), or the incoming frame if it is discardable;
    then, for video, every queued delta, and incoming deltas until the next key frame (a key frame
    always gets in, evicting older key frames if it must); for audio, the oldest audio frames.
    ``kind`` is fixed at creation, or by the first frame pushed if None. A new video queue waits
    for a key frame and raises one key frame request (:meth:`take_key_frame_request`).
    """

    __slots__ = ("_bytes", "_frames", "_gate", "kind", "max_bytes", "max_frames")

    def __init__(
        self,
        kind: MediaKind | None = None,
        *,
        max_frames: int = DEFAULT_MAX_FRAMES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        wait_for_key_frame: bool = True,
    ) -> None:
        if max_frames < 1 or max_bytes < 1:
            raise ValueError("a subscription queue needs room for at least one frame")
        self.kind = kind
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._frames: deque[QueuedFrame[P]] = deque()
        self._bytes = 0
        self._gate = KeyFrameGate(waiting=wait_for_key_frame)

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[QueuedFrame[P]]:
        """The queued frames, oldest first (do not push or pop while iterating)."""
        return iter(self._frames)

    @property
    def empty(self) -> bool:
        return not self._frames

    @property
    def nbytes(self) -> int:
        """Bytes queued now."""
        return self._bytes

    @property
    def waiting_for_key_frame(self) -> bool:
        return self.kind is MediaKind.VIDEO and self._gate.waiting

    def take_key_frame_request(self) -> bool:
        """True once each time this video queue starts waiting for a key frame (join, loss).

        The caller asks the publisher for one, through a shared :class:`KeyFrameRequester`.
        """
        return self.kind is MediaKind.VIDEO and self._gate.take_key_frame_request()

    def ask_again(self) -> None:
        """The request taken was throttled: :meth:`take_key_frame_request` gives it again
        while the queue still waits for a key frame."""
        self._gate.ask_again()

    def peek(self) -> QueuedFrame[P] | None:
        """The oldest queued frame, left queued, or None if the queue is empty."""
        return self._frames[0] if self._frames else None

    def pop(self) -> QueuedFrame[P] | None:
        """The oldest queued frame, or None if the queue is empty."""
        if not self._frames:
            return None
        frame = self._frames.popleft()
        self._bytes -= frame.size
        return frame

    def push(self, frame: QueuedFrame[P]) -> Sequence[Dropped[P]]:
        """Queue ``frame``; return what was dropped instead (possibly ``frame`` itself).

        Never blocks. Raises ``ValueError`` if ``frame`` is audio on a video queue or the
        reverse (the publisher's reader checks frame types against the stream type first).
        """
        kind = self.kind
        if kind is None:
            kind = self.kind = MediaKind.of_frame_type(frame.frame_type)
        is_audio = frame.frame_type == _AUDIO
        if is_audio != (kind is MediaKind.AUDIO):
            raise ValueError(f"{frame.frame_type.name} frame pushed to a {kind.value} queue")
        if not is_audio and not self._gate.passes(frame.frame_type):
            return [Dropped(frame, DropReason.WAITING_FOR_KEYFRAME)]
        size = frame.size
        frames = self._frames
        if len(frames) < self.max_frames and self._bytes + size <= self.max_bytes:
            frames.append(frame)
            self._bytes += size
            return ()  # the common case; the empty tuple is a shared constant, no allocation
        return self._push_full(frame)

    def drop(
        self, frame: QueuedFrame[P], reason: DropReason = DropReason.BUDGET
    ) -> Sequence[Dropped[P]]:
        """Record that the caller dropped ``frame`` before it reached this queue (over budget).

        Keeps the stream decodable: deltas that depended on it are dropped until a key frame.
        """
        if frame.frame_type != _AUDIO:
            self._gate.lost(frame.frame_type, frame.flags)
        return [Dropped(frame, reason)]

    def drop_stale(self, cutoff: float) -> Sequence[Dropped[P]]:
        """Drop the frames received before ``cutoff`` (now minus the age bound), oldest first,
        as STALE; return them.

        Frames are queued in the order received, so the stale ones are a prefix: with none, one
        comparison. A video stream that lost a frame others depend on resumes at the next
        queued key frame (the deltas before it go as WAITING_FOR_KEYFRAME); with none queued,
        it waits for one and raises a key frame request.
        """
        frames = self._frames
        if not frames or frames[0].received_at >= cutoff:
            return ()
        drops: list[Dropped[P]] = []
        lost = False
        while frames and frames[0].received_at < cutoff:
            queued = frames.popleft()
            self._bytes -= queued.size
            drops.append(Dropped(queued, DropReason.STALE))
            if queued.frame_type != _AUDIO and not queued.flags & _DISCARDABLE:
                lost = True
        if lost:
            self._resume_at_key_frame(drops)
        return drops

    def lose_sent(self) -> Sequence[Dropped[P]]:
        """Frames popped for a send never reached the receiver (the send was abandoned): video
        resumes at the next queued key frame, as in :meth:`drop_stale`. Returns the queued
        deltas dropped for it."""
        drops: list[Dropped[P]] = []
        if self.kind is MediaKind.VIDEO:
            self._resume_at_key_frame(drops)
        return drops

    def lose_incoming(self) -> None:
        """Frames that would follow the queued ones were lost before reaching the queue (the
        publisher's connection went): video waits for the next key frame and asks for one."""
        if self.kind is MediaKind.VIDEO:
            self._gate.lost(_DELTA, 0)

    def _resume_at_key_frame(self, drops: list[Dropped[P]]) -> None:
        frames = self._frames
        while frames and frames[0].frame_type != _KEY:
            queued = frames.popleft()
            self._bytes -= queued.size
            drops.append(Dropped(queued, DropReason.WAITING_FOR_KEYFRAME))
        if not frames:
            self._gate.lost(_DELTA, 0)

    def _push_full(self, frame: QueuedFrame[P]) -> list[Dropped[P]]:
        drops: list[Dropped[P]] = []
        if frame.size > self.max_bytes:
            self._gate.lost(frame.frame_type, frame.flags)
            drops.append(Dropped(frame, DropReason.OVERSIZE))
            return drops
        self._evict(drops, DropReason.DISCARDABLE, frame, discardable_only=True)
        if self._fits(frame):
            return self._append(frame, drops)
        if frame.flags & _DISCARDABLE:
            drops.append(Dropped(frame, DropReason.DISCARDABLE))
            return drops
        if frame.frame_type == _AUDIO:
            self._evict(drops, DropReason.QUEUE_FULL_AUDIO_OLDEST, frame)
            return self._append(frame, drops)
        # Video: stale deltas go, all of them. Keeping only key frames keeps what is left
        # decodable, and whatever follows waits for the next key frame.
        self._evict_all_deltas(drops)
        if frame.frame_type == _DELTA:
            self._gate.lost(frame.frame_type, frame.flags)
            drops.append(Dropped(frame, DropReason.QUEUE_FULL_DELTA))
            return drops
        # Only key frames are left; each stands alone, so the oldest may go.
        self._evict(drops, DropReason.QUEUE_FULL_KEYFRAME, frame)
        return self._append(frame, drops)

    def _fits(self, frame: QueuedFrame[P]) -> bool:
        return len(self._frames) < self.max_frames and self._bytes + frame.size <= self.max_bytes

    def _append(self, frame: QueuedFrame[P], drops: list[Dropped[P]]) -> list[Dropped[P]]:
        self._frames.append(frame)
        self._bytes += frame.size
        return drops

    def _evict(
        self,
        drops: list[Dropped[P]],
        reason: DropReason,
        for_frame: QueuedFrame[P],
        *,
        discardable_only: bool = False,
    ) -> None:
        """Drop queued frames (only discardable ones if asked), oldest first, until ``for_frame``
        fits."""
        frames = self._frames
        i = 0
        while i < len(frames) and not self._fits(for_frame):
            queued = frames[i]
            if not discardable_only or queued.flags & _DISCARDABLE:
                del frames[i]
                self._bytes -= queued.size
                drops.append(Dropped(queued, reason))
            else:
                i += 1

    def _evict_all_deltas(self, drops: list[Dropped[P]]) -> None:
        kept: deque[QueuedFrame[P]] = deque()
        for queued in self._frames:
            if queued.frame_type == _DELTA:
                self._bytes -= queued.size
                drops.append(Dropped(queued, DropReason.QUEUE_FULL_DELTA))
            else:
                kept.append(queued)
        self._frames = kept


class KeyFrameRequester:
    """Throttles key frame requests: at most one per published stream per ``interval_s``.

    Shared by every subscriber of a room. Holds one timestamp per stream that asked; the owner
    calls :meth:`forget` when a stream is unpublished, so it is bounded by the published streams.
    """

    __slots__ = ("_last", "interval_s")

    def __init__(self, interval_s: float = KEY_FRAME_REQUEST_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[StreamId, float] = {}

    def should_request(self, stream_id: StreamId, now: float) -> bool:
        """Whether to send a key frame request for ``stream_id`` at ``now``; a True counts as
        sent."""
        last = self._last.get(stream_id)
        if last is not None and now - last < self.interval_s:
            return False
        self._last[stream_id] = now
        return True

    def forget(self, stream_id: StreamId) -> None:
        self._last.pop(stream_id, None)
