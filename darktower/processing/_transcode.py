"""Re-encoding one video stream to another codec and bitrate (docs/architecture.md §10).

A :class:`Transcoder` takes the encoded frames of one stream as they arrive (the frame header's
key flag and epoch-µs timestamp, docs/protocol.md §7, and the payload), decodes each one and
encodes it again with real-time settings. It is synchronous and not thread-safe: a worker
thread calls it, one thread at a time per object; nothing here knows about trio or the network.

What the stream brings is hostile: a frame that does not decode is dropped and counted, and the
stream resumes at its next key frame; the decoder refuses frames larger than
:data:`MAX_PIXELS` the same way, before it allocates them. The only exceptions out of it are
:class:`UnknownCodec` when the codec is not one this build can decode or encode (the codec
names and the FFmpeg codecs behind them: ``_codecs.py``), and :class:`TranscodeError` when an
encoder cannot be opened.
"""

from __future__ import annotations

import fractions
import time
from typing import Any, NamedTuple

import attrs
import av
from av.video.frame import PictureType

from ._codecs import (
    CODECS,
    VIDEO_CODECS,
    Codec,
    capabilities,
    decoder_name,
    encoder_name,
    normalize_codec,
    same_scheduling,
)

# The decoder refuses a frame over this many pixels (a decode error, counted): a publisher
# cannot make the processor allocate, or encode, more than 4K.
MAX_PIXELS = 3840 * 2160
# An encoder makes a key frame by itself this often (besides key frames on request), so a
# subscriber that missed one recovers without asking.
KEY_INTERVAL_S = 10.0
# The frame rate the encoders plan their bitrate for; the real rate follows the timestamps.
FPS_HINT = 30
# x264 (without look-ahead) and SVT-AV1 spend their bitrate per frame at the frame rate they
# were opened with (x264's timestamp-paced mode would hold every frame back by one). Their
# encoder is opened again, at the measured rate (one key frame), when the timestamps of a
# RATE_WINDOW_S window say the rate is off by more than RATE_TOLERANCE; VP8 and VP9 pace by
# the timestamps themselves.
RATE_WINDOW_S = 1.0
RATE_TOLERANCE = 0.25
_PACED_BY_RATE: frozenset[Codec] = frozenset({"H264", "AV1"})
MIN_FPS, MAX_FPS = 1.0, 120.0
# Timestamps of frames inside an encoder, waiting for their packet. Encoders here run without
# look-ahead, so this holds one or two; a frame the encoder skipped is forgotten beyond it.
MAX_PENDING_TIMESTAMPS = 64

_MICROSECONDS = fractions.Fraction(1, 1_000_000)


def _realtime_options(encoder: str, bitrate: int) -> dict[str, str]:
    """Options of FFmpeg ``encoder`` for live video: no look-ahead, no B-frames, fast presets,
    and a bitrate held close to ``bitrate`` (a one-second buffer)."""
    rate = str(bitrate)
    if encoder in ("libvpx", "libvpx-vp9"):
        # minrate = maxrate = bitrate selects libvpx's CBR mode.
        options = {"deadline": "realtime", "lag-in-frames": "0"}
        options |= {"minrate": rate, "maxrate": rate, "bufsize": rate}
        options["cpu-used"] = "10" if encoder == "libvpx" else "8"
        if encoder == "libvpx-vp9":
            options["row-mt"] = "0"
        return options
    if encoder == "libx264":
        # Annex B with the parameter sets before every key frame (no global header), no
        # B-frames (zerolatency), a key frame on request is an IDR.
        return {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "forced-idr": "1",
            "maxrate": rate,
            "bufsize": rate,
        }
    if encoder == "libsvtav1":
        # SVT-AV1's real-time mode with constant bitrate. It runs threads of its own, which
        # the CPU counter (the calling thread's time) does not see.
        return {"preset": "10", "svtav1-params": "rtc=1:pred-struct=1:rc=2:lp=1"}
    # libaom-av1, where a build lacks SVT-AV1.
    return {"usage": "realtime", "cpu-used": "10", "lag-in-frames": "0", "end-usage": "cbr"}


# FFmpeg's numbers for SMPTE 170M (BT.601 525) colour space, primaries and transfer, and for
# limited ("MPEG") range.
_BT601 = 6
_LIMITED_RANGE = 1


class TranscodeError(Exception):
    """A codec cannot be opened; the message names it."""


class UnknownCodec(TranscodeError):
    """A video codec this build cannot decode or encode; the message names those it can."""

    def __init__(self, codec: str, *, encode: bool) -> None:
        self.codec = codec
        self.available = encodable_codecs() if encode else decodable_codecs()
        verb = "encode" if encode else "decode"
        listed = ", ".join(self.available) or "none"
        super().__init__(f"cannot {verb} video codec {codec!r}; this build can {verb}: {listed}")


def encodable_codecs() -> tuple[Codec, ...]:
    """The video codecs this build can encode to, as the contract names them."""
    found = capabilities().encoders
    return tuple(c for c in CODECS if c in VIDEO_CODECS and c in found)


def decodable_codecs() -> tuple[Codec, ...]:
    """The video codecs this build can decode."""
    found = capabilities().decoders
    return tuple(c for c in CODECS if c in VIDEO_CODECS and c in found)


class EncodedFrame(NamedTuple):
    """One output frame: the key flag and timestamp for the frame header, and the payload."""

    key: bool
    timestamp_us: int
    payload: bytes


@attrs.define
class TranscodeCounters:
    """What one transcoder has done. ``dropped`` counts input frames by reason:
    ``awaiting_key`` (a delta frame before the first key frame or after a broken one),
    ``decode_error`` (also a frame over ``max_pixels``), ``empty`` and ``encode_error``."""

    frames_in: int = 0
    frames_out: int = 0
    key_frames_out: int = 0
    bytes_out: int = 0
    encoders_opened: int = 0
    dropped: dict[str, int] = attrs.field(factory=dict)
    # CPU time of the calling thread inside push() and flush(): decoding, scaling, encoding.
    cpu_s: float = 0.0

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


class Transcoder:
    """Decodes ``source_codec`` frames and encodes them to ``target_codec`` at
    ``target_bitrate`` bits per second, keeping the source's size and timestamps.

    Raises :class:`UnknownCodec` at once when either codec is not available in this build.
    """

    def __init__(
        self,
        source_codec: str,
        target_codec: str,
        target_bitrate: int,
        *,
        fps_hint: float = FPS_HINT,
        key_interval_s: float = KEY_INTERVAL_S,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        if target_bitrate <= 0:
            raise ValueError(f"target_bitrate must be positive, not {target_bitrate}")
        source = normalize_codec(source_codec)
        decoder = decoder_name(source) if source in VIDEO_CODECS else None
        if source is None or decoder is None:
            raise UnknownCodec(source_codec, encode=False)
        target = normalize_codec(target_codec)
        encoder = encoder_name(target) if target in VIDEO_CODECS else None
        if target is None or encoder is None:
            raise UnknownCodec(target_codec, encode=True)
        self.source_codec: Codec = source
        self.target_codec: Codec = target
        self.target_bitrate = target_bitrate
        self._decoder_name, self._encoder_name = decoder, encoder
        self._fps = fractions.Fraction(fps_hint)
        self._key_interval_s = key_interval_s
        self._max_pixels = max_pixels
        self.counters = TranscodeCounters()
        self._decoder: av.VideoCodecContext | None = None
        self._encoder: av.VideoCodecContext | None = None
        self._size = (0, 0)
        # The frame-rate window: its first timestamp and the frames since.
        self._window_start_us = 0
        self._window_frames = 0
        self._awaiting_key = True
        self._force_key = False
        self._closed = False
        # pts of the current encoder are µs since its first frame, kept strictly increasing;
        # the source timestamp each was made from is looked up when its packet comes out.
        self._base_us = 0
        self._last_pts = -1
        self._pending: dict[int, int] = {}

    def request_key_frame(self) -> None:
        """Make the next output frame a key frame."""
        self._force_key = True

    def push(self, key: bool, timestamp_us: int, payload: bytes) -> list[EncodedFrame]:
        """Feed one encoded source frame; returns the output frames it produced (usually one,
        none while waiting for a key frame or when the frame is dropped)."""
        if self._closed:
            raise TranscodeError("the transcoder is closed")
        started = time.thread_time()
        try:
            return self._push(key, timestamp_us, payload)
        finally:
            self.counters.cpu_s += time.thread_time() - started

    def flush(self) -> list[EncodedFrame]:
        """Drain the encoder (the end of the stream) and close; later pushes raise."""
        if self._closed:
            return []
        started = time.thread_time()
        try:
            return self._close_encoder()
        finally:
            self._closed = True
            self._decoder = None
            self.counters.cpu_s += time.thread_time() - started

    def _push(self, key: bool, timestamp_us: int, payload: bytes) -> list[EncodedFrame]:
        self.counters.frames_in += 1
        if not payload:
            # An empty packet would put the decoder into draining mode for good.
            self.counters.drop("empty")
            return []
        if self._awaiting_key and not key:
            self.counters.drop("awaiting_key")
            return []
        if self._decoder is None or (key and self._awaiting_key):
            self._decoder = self._open_decoder()
        try:
            frames = self._decoder.decode(av.Packet(payload))
        except av.FFmpegError:
            self.counters.drop("decode_error")
            self._awaiting_key = True
            self._decoder = None
            return []
        self._awaiting_key = False
        out: list[EncodedFrame] = []
        for frame in frames:
            out.extend(self._encode(frame, timestamp_us))
        return out

    def _open_decoder(self) -> av.VideoCodecContext:
        decoder = av.CodecContext.create(self._decoder_name, "r")
        assert isinstance(decoder, av.VideoCodecContext)
        # One thread: frame threading would hold frames back, and the CPU counter sees only
        # the calling thread.
        decoder.thread_count = 1
        decoder.options = {"max_pixels": str(self._max_pixels)}
        return decoder

    def _encode(self, frame: av.VideoFrame, timestamp_us: int) -> list[EncodedFrame]:
        # 4:2:0 encoders need even sizes: an odd one loses its last column or row.
        width, height = max(2, frame.width & ~1), max(2, frame.height & ~1)
        out: list[EncodedFrame] = []
        if (
            (width, height) != self._size
            or self._encoder is None
            or self._rate_changed(timestamp_us)
        ):
            out.extend(self._close_encoder())
            self._encoder = self._open_encoder(width, height, frame)
            self._size = (width, height)
            self._base_us, self._last_pts = timestamp_us, -1
            self._window_start_us, self._window_frames = timestamp_us, 0
        if frame.format.name != "yuv420p" or (frame.width, frame.height) != (width, height):
            frame = frame.reformat(width=width, height=height, format="yuv420p")
        pts = max(timestamp_us - self._base_us, self._last_pts + 1)
        self._last_pts = pts
        self._remember(pts, timestamp_us)
        frame.pts, frame.time_base = pts, _MICROSECONDS
        # A decoded key frame carries type I, which would make the encoder copy the source's
        # key frames; only a request (or the encoder's own interval) makes one.
        frame.pict_type = PictureType.I if self._force_key else PictureType.NONE
        self._force_key = False
        try:
            packets = self._encoder.encode(frame)
        except av.FFmpegError:
            self.counters.drop("encode_error")
            self._force_key = True
            return out
        out.extend(self._take(packets))
        return out

    def _open_encoder(self, width: int, height: int, frame: av.VideoFrame) -> av.VideoCodecContext:
        encoder = av.CodecContext.create(self._encoder_name, "w")
        assert isinstance(encoder, av.VideoCodecContext)
        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
        # Say which colours the pixels are in: a decoder that is not told guesses (Chromium
        # takes an H.264 stream without them for BT.709, and a VP8 source's BT.601 picture
        # comes out darker). The source's own, else BT.601 limited range (VP8's, and what
        # the decoders give when a stream says nothing).
        unspecified = 2
        encoder.colorspace = frame.colorspace if frame.colorspace != unspecified else _BT601
        encoder.color_primaries = (
            frame.color_primaries if frame.color_primaries != unspecified else _BT601
        )
        encoder.color_trc = frame.color_trc if frame.color_trc != unspecified else _BT601
        encoder.color_range = frame.color_range or _LIMITED_RANGE
        encoder.time_base = _MICROSECONDS
        encoder.framerate = self._fps
        encoder.bit_rate = self.target_bitrate
        encoder.gop_size = max(1, round(self._key_interval_s * self._fps))
        encoder.thread_count = 1
        encoder.options = _realtime_options(self._encoder_name, self.target_bitrate)
        try:
            with same_scheduling():
                encoder.open()
        except av.FFmpegError as exc:
            raise TranscodeError(
                f"cannot open the {self.target_codec} encoder ({self._encoder_name}) "
                f"at {width}x{height}, {self.target_bitrate} bit/s: {exc}"
            ) from exc
        self.counters.encoders_opened += 1
        return encoder

    def _rate_changed(self, timestamp_us: int) -> bool:
        """Whether the frame rate moved away from the one the encoder plans for (and then
        takes the measured one)."""
        if self.target_codec not in _PACED_BY_RATE:
            return False
        self._window_frames += 1
        elapsed_s = (timestamp_us - self._window_start_us) / 1e6
        if elapsed_s < 0:
            # A timestamp that went back: measure afresh from here.
            self._window_start_us, self._window_frames = timestamp_us, 0
        if elapsed_s < RATE_WINDOW_S:
            return False
        measured = min(MAX_FPS, max(MIN_FPS, self._window_frames / elapsed_s))
        self._window_start_us, self._window_frames = timestamp_us, 0
        if abs(measured / self._fps - 1) <= RATE_TOLERANCE:
            return False
        self._fps = fractions.Fraction(measured).limit_denominator(1001)
        return True

    def _close_encoder(self) -> list[EncodedFrame]:
        encoder, self._encoder = self._encoder, None
        if encoder is None:
            return []
        try:
            packets = encoder.encode(None)
        except av.FFmpegError:
            return []
        return self._take(packets)

    def _remember(self, pts: int, timestamp_us: int) -> None:
        while len(self._pending) >= MAX_PENDING_TIMESTAMPS:
            del self._pending[next(iter(self._pending))]
        self._pending[pts] = timestamp_us

    def _take(self, packets: list[av.Packet[Any]]) -> list[EncodedFrame]:
        out: list[EncodedFrame] = []
        for packet in packets:
            pts = packet.pts if packet.pts is not None else self._last_pts
            timestamp_us = self._pending.pop(pts, self._base_us + pts)
            # Frames before this one that never came out were skipped by the encoder.
            for older in [p for p in self._pending if p < pts]:
                del self._pending[older]
            payload = bytes(packet)
            self.counters.frames_out += 1
            self.counters.bytes_out += len(payload)
            self.counters.key_frames_out += packet.is_keyframe
            out.append(EncodedFrame(packet.is_keyframe, timestamp_us, payload))
        return out
