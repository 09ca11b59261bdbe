"""The recording of one participant: its streams muxed, as sent, into Matroska/WebM files.

Synchronous and free of I/O other than its files: the caller (a recording job) feeds it whole
encoded frames with their frame-header timestamps and runs it off the event loop's thread.
The rules (docs/architecture.md §10):

* **One clock.** A file's time 0 is the earliest frame held when its header is written;
  every track's times are frame-header times minus that origin, so audio and video keep the
  offsets they were sent with. A timestamp that goes back is clamped just after the track's
  previous one, and counted.
* **Tracks up front.** Matroska declares its tracks in the header, so the header waits until
  every known stream has a frame (video: a key frame), holding what comes meanwhile, at most
  ``max_buffered_bytes`` and ``header_wait_s`` of media; then it is written with the streams
  that are ready. A stream that is not in the header (it came later, or sent nothing in
  time) starts a new file with every stream when its first frame (key frame) arrives.
* **Video starts at a key frame**: the delta frames before it are dropped and counted, and
  :attr:`ParticipantRecorder.wants_key_frame` names the streams waiting for one.
"""

from __future__ import annotations

import pathlib
import re
from collections import Counter
from collections.abc import Mapping
from typing import Final, Literal

import attrs

from ._codecs import Codec, decoder_name, is_video, normalize_codec
from ._probe import audio_track, video_track
from ._segment import RecordedFile, RecordingError, Segment, TrackSpec, claim, file_extension

MediaKind = Literal["audio", "video"]

# Why a frame was not recorded (the keys of RecordingSummary.dropped).
DROP_BEFORE_KEY_FRAME: Final = "before_key_frame"  # a video delta with no key frame before it
DROP_INVALID: Final = "invalid"  # empty, a "key frame" that does not decode, refused by the muxer
DROP_UNKNOWN_STREAM: Final = "unknown_stream"  # a stream never added

# A file name stem: what the caller names the participant's recording by.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@attrs.frozen
class RecordingSummary:
    """What a recorder has written so far: its files in order, frames dropped by reason,
    timestamps clamped."""

    files: tuple[RecordedFile, ...]
    dropped: Mapping[str, int]
    clamped: int


@attrs.frozen
class _Frame:
    stream_id: str
    key: bool
    timestamp_us: int
    payload: bytes


@attrs.define
class _Pending:
    """A file whose header is not written yet: the frames held until it is."""

    specs: dict[str, TrackSpec] = attrs.Factory(dict)  # video streams with a key frame held
    first_packet: dict[str, bytes] = attrs.Factory(dict)  # audio streams with a frame held
    frames: list[_Frame] = attrs.Factory(list)
    bytes: int = 0
    first_us: int = 0  # the earliest and latest timestamps held
    last_us: int = 0

    def add(self, frame: _Frame) -> None:
        if not self.frames:
            self.first_us = self.last_us = frame.timestamp_us
        self.first_us = min(self.first_us, frame.timestamp_us)
        self.last_us = max(self.last_us, frame.timestamp_us)
        self.frames.append(frame)
        self.bytes += len(frame.payload)


class ParticipantRecorder:
    """Records one participant's streams into ``directory`` as ``{name}-{n}.webm`` (or
    ``.mkv`` when a stream is H.264), one file per segment.

    Raises :class:`RecordingError` when a file cannot be created, written or finished; the
    recorder is then closed (what was written stays playable). Calls block on the file
    system and take CPU (a decode per file and video stream): make them away from an event
    loop, one at a time (not thread-safe)."""

    def __init__(
        self,
        directory: pathlib.Path,
        name: str,
        *,
        max_buffered_bytes: int,
        header_wait_s: float,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad recording name {name!r}")
        if max_buffered_bytes <= 0 or header_wait_s <= 0:
            raise ValueError("max_buffered_bytes and header_wait_s must be positive")
        self._directory = directory
        self._name = name
        self._max_buffered_bytes = max_buffered_bytes
        self._header_wait_us = round(header_wait_s * 1_000_000)
        self._streams: dict[str, Codec] = {}
        self._pending: _Pending | None = _Pending()
        self._segment: Segment | None = None
        self._done: list[RecordedFile] = []
        self._next_index = 0
        self._dropped: Counter[str] = Counter()
        self._clamped = 0
        self._closed = False

    def add_stream(self, stream_id: str, kind: MediaKind, codec: str) -> None:
        """Record stream ``stream_id`` from now on. ``codec`` is the publisher's name for it;
        a codec other than VP8, VP9, H264, AV1 (video) or Opus (audio), or one this build
        cannot record, is a ValueError. Adding a stream again changes nothing."""
        self._check_open()
        normalized = normalize_codec(codec)
        if normalized is None or is_video(normalized) != (kind == "video"):
            raise ValueError(f"cannot record {kind} stream {stream_id} in codec {codec!r}")
        if is_video(normalized) and decoder_name(normalized) is None:
            # The first key frame of a file is decoded for the picture size (_probe.py).
            raise ValueError(f"cannot record {normalized}: this build has no decoder for it")
        self._streams.setdefault(stream_id, normalized)

    @property
    def wants_key_frame(self) -> frozenset[str]:
        """Video streams whose frames are dropped until a key frame comes (ask for one)."""
        if self._closed:
            return frozenset()
        if self._segment is not None:
            ready = set(self._segment.stream_ids)
        else:
            ready = set(self._pending.specs) if self._pending is not None else set()
        return frozenset(s for s, c in self._streams.items() if is_video(c) and s not in ready)

    def write(self, stream_id: str, key: bool, timestamp_us: int, payload: bytes) -> None:
        """Record one whole encoded frame (``key``: a video key frame; audio frames stand
        alone) stamped ``timestamp_us`` (µs since the epoch, the frame header's). A frame that
        cannot be recorded is dropped and counted (:meth:`summary`)."""
        self._check_open()
        codec = self._streams.get(stream_id)
        if codec is None:
            self._dropped[DROP_UNKNOWN_STREAM] += 1
            return
        if not payload:
            self._dropped[DROP_INVALID] += 1
            return
        frame = _Frame(stream_id, key or not is_video(codec), timestamp_us, payload)
        try:
            if self._segment is not None and stream_id not in self._segment.stream_ids:
                # Not in the header: the open file is finished and a new one starts with it.
                specs: dict[str, TrackSpec] = {}
                if is_video(codec):
                    if (spec := self._admit(codec, frame)) is None:
                        return
                    specs[stream_id] = spec
                self._finish_segment()
                self._pending = _Pending(specs=specs)
            if self._segment is not None:
                self._mux(frame)
            else:
                self._hold(codec, frame)
        except RecordingError:
            self._abort()
            raise

    def close(self) -> None:
        """Finish the recording: the header of a file still waiting is written with what it
        holds, the open file gets its index and duration (idempotent)."""
        if self._closed:
            return
        try:
            if self._pending is not None and self._pending.frames:
                self._write_header()
            self._finish_segment()
        except RecordingError:
            self._abort()
            raise
        self._closed = True
        self._pending = None

    def summary(self) -> RecordingSummary:
        files = list(self._done)
        if self._segment is not None:
            files.append(self._segment.summary())
        return RecordingSummary(tuple(files), dict(self._dropped), self._clamped)

    # -- the file waiting for its header ----------------------------------------------------

    def _hold(self, codec: Codec, frame: _Frame) -> None:
        pending = self._pending
        assert pending is not None
        sid = frame.stream_id
        if is_video(codec) and sid not in pending.specs:
            if (spec := self._admit(codec, frame)) is None:
                return
            pending.specs[sid] = spec
        elif not is_video(codec):
            pending.first_packet.setdefault(sid, frame.payload)
        pending.add(frame)
        all_ready = all(s in pending.specs or s in pending.first_packet for s in self._streams)
        if (
            all_ready
            or pending.bytes >= self._max_buffered_bytes
            or pending.last_us - pending.first_us >= self._header_wait_us
        ):
            self._write_header()

    def _admit(self, codec: Codec, frame: _Frame) -> TrackSpec | None:
        """The track of a video stream that starts with ``frame``, if it can: a key frame
        that decodes. Otherwise the frame is dropped and counted."""
        if not frame.key:
            self._dropped[DROP_BEFORE_KEY_FRAME] += 1
            return None
        spec = video_track(frame.stream_id, codec, frame.payload)
        if spec is None:
            self._dropped[DROP_INVALID] += 1
        return spec

    def _write_header(self) -> None:
        pending = self._pending
        assert pending is not None and pending.frames
        specs: list[TrackSpec] = []
        for sid, codec in self._streams.items():
            if is_video(codec):
                if sid in pending.specs:
                    specs.append(pending.specs[sid])
            else:
                specs.append(audio_track(sid, codec, pending.first_packet.get(sid)))
        origin = pending.first_us
        extension = file_extension([s.codec for s in specs])
        path, self._next_index = claim(self._directory, self._name, extension, self._next_index)
        self._next_index += 1
        try:
            self._segment = Segment(path, specs, origin)
        except RecordingError:
            path.unlink(missing_ok=True)
            raise
        self._pending = None
        for frame in pending.frames:
            self._mux(frame)

    # -- the open file ----------------------------------------------------------------------

    def _mux(self, frame: _Frame) -> None:
        assert self._segment is not None
        outcome = self._segment.write(frame.stream_id, frame.key, frame.timestamp_us, frame.payload)
        if outcome == "clamped":
            self._clamped += 1
        elif outcome == "rejected":
            self._dropped[DROP_INVALID] += 1

    def _finish_segment(self) -> None:
        segment, self._segment = self._segment, None
        if segment is None:
            return
        try:
            segment.close()
        finally:
            self._done.append(segment.summary())

    def _abort(self) -> None:
        """Close after a failure: release the open file, keep what it holds."""
        self._closed = True
        self._pending = None
        try:
            self._finish_segment()
        except RecordingError:
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise RecordingError(f"the recording {self._name} is closed")
