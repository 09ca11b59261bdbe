"""One file of a recording: a Matroska or WebM file whose tracks are declared up front, its
blocks written as they come (no re-encoding), its index written at the end.

Crash safety (docs/architecture.md §10): FFmpeg's Matroska muxer builds each cluster in
memory and writes it whole when the next one starts. With a short cluster (:data:`CLUSTER_MS`)
and the output flushed after every packet, the file on disk is always a header followed by
whole clusters (plus, at worst, a cluster cut short), which FFmpeg plays to its last complete
cluster even though the segment size, cues and duration of a finished file are missing.
"""

from __future__ import annotations

import fractions
import io
import os
import pathlib
from collections.abc import Sequence
from typing import Final, Literal

import attrs
import av
from av.audio.stream import AudioStream
from av.container import OutputContainer
from av.error import FFmpegError
from av.stream import Stream
from av.video.stream import VideoStream

from ._codecs import Codec

# A cluster is closed (written whole) after this much media: what a crash can lose at most,
# beyond the packets FFmpeg still holds to interleave the tracks (INTERLEAVE_US).
CLUSTER_MS: Final = 1000
# FFmpeg holds packets to write the tracks in time order; when one track is silent (a muted
# camera) the others wait at most this long (µs of media) before they are written anyway.
# Bounds the memory held by the muxer and what a crash loses on top of a cluster.
INTERLEAVE_US: Final = 1_000_000
# Matroska's timestamps: milliseconds (FFmpeg's muxer always uses this time base).
MS: Final = fractions.Fraction(1, 1000)
OPUS_RATE: Final = 48_000
_MUXER_OPTIONS: Final = {
    "cluster_time_limit": str(CLUSTER_MS),
    "flush_packets": "1",
    "max_interleave_delta": str(INTERLEAVE_US),
}
_WEBM_CODECS: Final[frozenset[Codec]] = frozenset({"VP8", "VP9", "AV1", "Opus"})
# Names of the codecs in FFmpeg (codec ids; the muxer needs no encoder for them).
_FFMPEG_ID: Final[dict[Codec, str]] = {
    "VP8": "vp8",
    "VP9": "vp9",
    "H264": "h264",
    "AV1": "av1",
    "Opus": "opus",
}
# What the muxer refuses in one packet (bad data, a bad argument): that packet is dropped and
# the file goes on. Any other error (a full disk, a closed file) ends the file.
_PACKET_ERRORS: Final = (av.error.InvalidDataError, av.error.ArgumentError)

Outcome = Literal["written", "clamped", "rejected"]


class RecordingError(Exception):
    """A recording file could not be created, written or finished. The message names the file
    and what FFmpeg said; the recorder that raised it is closed."""


@attrs.frozen
class TrackSpec:
    """What a track's header declares: for video the size and, for H.264 and AV1, the codec's
    configuration (taken from a key frame); for Opus the channel count."""

    stream_id: str
    codec: Codec
    width: int = 0
    height: int = 0
    extradata: bytes | None = None
    channels: int = 2


@attrs.frozen
class RecordedFile:
    """One file of a recording, as it stands."""

    path: pathlib.Path
    streams: tuple[str, ...]
    start_us: int  # epoch µs of the file's time 0 (the frame header's clock)
    duration_ms: int
    bytes: int
    finished: bool  # False while it is written, or when finishing it failed


def file_extension(codecs: Sequence[Codec]) -> str:
    """WebM when every codec is one WebM carries, Matroska otherwise (H.264)."""
    return "webm" if set(codecs) <= _WEBM_CODECS else "mkv"


def opus_head(channels: int) -> bytes:
    """Opus's identification header (RFC 7845 §5.1), Matroska's CodecPrivate for Opus.

    Pre-skip is 0: the packets are a live stream's, stamped by capture time, so the first
    sample of a packet plays at that packet's time and audio stays in step with video."""
    return (
        b"OpusHead"
        + bytes([1, channels])
        + (0).to_bytes(2, "little")
        + OPUS_RATE.to_bytes(4, "little")
        + (0).to_bytes(2, "little")
        + bytes([0])
    )


@attrs.define
class _Track:
    stream: Stream
    last_pts: int | None = None
    interval: int = 0


class Segment:
    """An open recording file with the tracks of ``specs``; times are ms from ``origin_us``.

    Creating it writes the header (and claims ``path``, which must not exist). ``write``
    muxes one encoded frame; ``close`` writes the index and releases the file. Every failure
    of FFmpeg is a :class:`RecordingError`, except a packet the muxer refuses, which is
    dropped (``write`` says so)."""

    def __init__(self, path: pathlib.Path, specs: Sequence[TrackSpec], origin_us: int) -> None:
        self.path = path
        self.origin_us = origin_us
        self._finished = False
        self._closed = False
        try:
            self._container: OutputContainer = av.open(
                str(path), "w", format=_format(path), container_options=dict(_MUXER_OPTIONS)
            )
        except (FFmpegError, OSError, ValueError) as exc:
            raise RecordingError(f"cannot create {path}: {exc}") from exc
        try:
            self._tracks = {
                spec.stream_id: _Track(_add_stream(self._container, spec)) for spec in specs
            }
            self._container.start_encoding()
        except (FFmpegError, OSError, ValueError, TypeError) as exc:
            self._release()
            raise RecordingError(f"cannot write the header of {path}: {exc}") from exc

    @property
    def stream_ids(self) -> tuple[str, ...]:
        return tuple(self._tracks)

    def write(self, stream_id: str, key: bool, timestamp_us: int, payload: bytes) -> Outcome:
        """Mux one frame of a track of this file. A timestamp at or before the track's last
        one (or before the file's origin) is moved just after it: "clamped"."""
        track = self._tracks[stream_id]
        pts = (timestamp_us - self.origin_us) // 1000
        floor = 0 if track.last_pts is None else track.last_pts + 1
        outcome: Outcome = "written"
        if pts < floor:
            pts, outcome = floor, "clamped"
        packet = av.Packet(payload)
        packet.stream = track.stream
        packet.time_base = MS
        packet.pts = packet.dts = pts
        packet.is_keyframe = key
        try:
            self._container.mux_one(packet)
        except _PACKET_ERRORS:
            return "rejected"
        except (FFmpegError, OSError) as exc:
            raise RecordingError(f"cannot write to {self.path}: {exc}") from exc
        if track.last_pts is not None:
            track.interval = pts - track.last_pts
        track.last_pts = pts
        return outcome

    def close(self) -> None:
        """Write the index and the duration, and close the file (idempotent). The file is
        released even when finishing it fails (then :class:`RecordingError`)."""
        if self._closed:
            return
        try:
            self._container.close()
        except (FFmpegError, OSError) as exc:
            raise RecordingError(f"cannot finish {self.path}: {exc}") from exc
        else:
            self._finished = True
        finally:
            self._closed = True

    def _release(self) -> None:
        """Close the file after a failure, ignoring what closing it says."""
        self._closed = True
        try:
            self._container.close()
        except (FFmpegError, OSError):
            pass

    def summary(self) -> RecordedFile:
        ends = [t.last_pts + t.interval for t in self._tracks.values() if t.last_pts is not None]
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        return RecordedFile(
            path=self.path,
            streams=self.stream_ids,
            start_us=self.origin_us,
            duration_ms=max(ends, default=0),
            bytes=size,
            finished=self._finished,
        )


def claim(
    directory: pathlib.Path, stem: str, extension: str, first: int
) -> tuple[pathlib.Path, int]:
    """A new file ``{stem}-{n}.{extension}`` with the smallest free ``n >= first``, created
    empty so nobody else takes it (a recording of the same name is never overwritten)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecordingError(f"cannot create {directory}: {exc}") from exc
    for n in range(first, first + 10_000):
        path = directory / f"{stem}-{n}.{extension}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            continue
        except OSError as exc:
            raise RecordingError(f"cannot create {path}: {exc}") from exc
        return path, n
    raise RecordingError(f"no free file name for {stem} in {directory}")


def _format(path: pathlib.Path) -> str:
    return "webm" if path.suffix == ".webm" else "matroska"


def _add_stream(container: OutputContainer, spec: TrackSpec) -> Stream:
    if spec.codec == "Opus":
        audio = container.add_stream_from_template(_audio_template(), opaque=True)
        audio.codec_context.sample_rate = OPUS_RATE
        audio.codec_context.layout = "stereo" if spec.channels == 2 else "mono"
        audio.codec_context.extradata = opus_head(spec.channels)
        stream: Stream = audio
    elif spec.extradata is not None:
        video = container.add_stream_from_template(_video_template(spec.codec), opaque=True)
        video.codec_context.width, video.codec_context.height = spec.width, spec.height
        video.codec_context.extradata = spec.extradata
        stream = video
    else:
        stream = container.add_mux_stream(
            _FFMPEG_ID[spec.codec], width=spec.width, height=spec.height
        )
    stream.time_base = MS
    return stream


def _audio_template() -> AudioStream:
    """An Opus track to copy: FFmpeg describes a track through a codec context, which only an
    encoder's stream has; the encoder is never opened (the track is muxed, not encoded)."""
    scratch = av.open(io.BytesIO(), "w", format="matroska")
    try:
        return scratch.add_stream("opus")
    finally:
        scratch.close()


def _video_template(codec: Codec) -> VideoStream:
    scratch = av.open(io.BytesIO(), "w", format="matroska")
    try:
        return scratch.add_stream("h264" if codec == "H264" else "av1")
    finally:
        scratch.close()
