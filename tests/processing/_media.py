"""Real encoded media made by the tests: a moving test pattern encoded to VP8 (or another
video codec) and a sine tone encoded to Opus, with PyAV. Timestamps are microseconds from
``start_us``, as a publisher writes them in the frame header (docs/protocol.md §7)."""

from __future__ import annotations

import fractions
from collections.abc import Callable
from typing import NamedTuple

import av
import numpy as np

OPUS_RATE = 48_000
OPUS_FRAME = 960  # 20 ms at 48 kHz
START_US = 1_780_000_000_000_000  # an epoch time in µs, as the frame header carries


class Encoded(NamedTuple):
    key: bool
    timestamp_us: int
    payload: bytes


def pattern(index: int, width: int, height: int) -> av.VideoFrame:
    """Frame ``index`` of a test pattern: a white bar moving over a gradient."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    image[:, :, 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    x = (index * 7) % width
    image[:, x : x + 40] = 255
    return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")


def video_frames(
    seconds: float,
    *,
    fps: int = 30,
    width: int = 640,
    height: int = 480,
    bitrate: int = 500_000,
    codec: str = "libvpx",
    key_every: int = 60,
    start_us: int = START_US,
    picture: Callable[[int, int, int], av.VideoFrame] = pattern,
    cpu_used: int = 8,
) -> list[Encoded]:
    """``seconds`` of ``picture`` (the test pattern) encoded with ``codec`` (VP8 by default),
    one encoded frame per entry, a key frame first and every ``key_every`` frames; libvpx at
    its real-time ``cpu_used`` speed."""
    encoder = av.CodecContext.create(codec, "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = fractions.Fraction(1, fps)
    encoder.framerate = fractions.Fraction(fps, 1)
    encoder.bit_rate = bitrate
    encoder.gop_size = key_every
    if codec.startswith("libvpx"):
        encoder.options = {
            "deadline": "realtime",
            "cpu-used": str(cpu_used),
            "lag-in-frames": "0",
        }
    out: list[Encoded] = []

    def take(packets: list[av.Packet]) -> None:
        for p in packets:
            assert p.pts is not None
            out.append(Encoded(p.is_keyframe, start_us + p.pts * 1_000_000 // fps, bytes(p)))

    for i in range(round(seconds * fps)):
        frame = picture(i, width, height)
        frame.pts = i
        take(encoder.encode(frame))
    take(encoder.encode(None))
    return out


def tone(seconds: float, frequency: float, *, amplitude: int = 8000) -> np.ndarray:
    """``seconds`` of a sine at ``frequency`` Hz, 48 kHz mono int16."""
    t = np.arange(round(seconds * OPUS_RATE)) / OPUS_RATE
    return (np.sin(2 * np.pi * frequency * t) * amplitude).astype(np.int16)


def opus_frames(
    seconds: float, frequency: float = 440.0, *, bitrate: int = 32_000, start_us: int = START_US
) -> list[Encoded]:
    """``seconds`` of a tone encoded to Opus, 20 ms per packet (key is always True: every
    audio frame stands alone)."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = OPUS_RATE, "mono", "s16"
    encoder.bit_rate = bitrate
    encoder.time_base = fractions.Fraction(1, OPUS_RATE)
    samples = tone(seconds, frequency)
    out: list[Encoded] = []
    # Packets come out one per 20 ms, in order: stamped by their index, as a publisher stamps
    # by capture time (the encoder's own pts carry its look-ahead).
    packets: list[bytes] = []
    for i in range(len(samples) // OPUS_FRAME):
        chunk = samples[i * OPUS_FRAME : (i + 1) * OPUS_FRAME].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
        frame.sample_rate, frame.pts = OPUS_RATE, i * OPUS_FRAME
        packets.extend(bytes(p) for p in encoder.encode(frame))
    packets.extend(bytes(p) for p in encoder.encode(None))
    for i, payload in enumerate(packets):
        out.append(Encoded(True, start_us + i * 20_000, payload))
    return out


def dominant_frequencies(
    samples: np.ndarray, rate: int = OPUS_RATE, *, count: int = 2
) -> list[float]:
    """The ``count`` strongest frequencies of ``samples`` (Hz), strongest first."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    order = np.argsort(spectrum)[::-1]
    found: list[float] = []
    for index in order:
        f = float(freqs[index])
        if all(abs(f - g) > 20 for g in found):
            found.append(f)
        if len(found) == count:
            break
    return found


def band_energy(
    samples: np.ndarray, frequency: float, rate: int = OPUS_RATE, width: float = 20.0
) -> float:
    """The share of ``samples``' spectral energy within ``width`` Hz of ``frequency``."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples)))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    band = spectrum[(freqs > frequency - width) & (freqs < frequency + width)].sum()
    return float(band / max(spectrum.sum(), 1e-12))


def textured(index: int, width: int, height: int, *, seed: int = 7) -> av.VideoFrame:
    """Frame ``index`` of a busy test pattern, made to use an encoder's bitrate: a noise
    texture scrolling 4 pixels a frame under a moving bar, with fresh grain on every frame."""
    texture = _texture(width, height, seed)
    x = (index * 4) % width
    luma = texture[:, x : x + width].astype(np.int16)
    grain = np.random.default_rng(seed + index).integers(-6, 7, (height, width), dtype=np.int16)
    luma = luma + grain
    bar = (index * 7) % width
    luma[:, bar : bar + 40] = 235
    planes = np.empty((height * 3 // 2, width), np.uint8)
    planes[:height] = np.clip(luma, 16, 235)
    planes[height:] = 128
    return av.VideoFrame.from_ndarray(planes, format="yuv420p")


_TEXTURES: dict[tuple[int, int, int], np.ndarray] = {}


def _texture(width: int, height: int, seed: int) -> np.ndarray:
    """Twice ``width`` of smooth noise (8x8 blocks, bilinear-ish by repetition and averaging)."""
    key = (width, height, seed)
    if key not in _TEXTURES:
        rng = np.random.default_rng(seed)
        coarse = rng.integers(40, 216, (height // 8 + 1, width * 2 // 8 + 1)).astype(np.float64)
        fine = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, : width * 2]
        smooth = (fine + np.roll(fine, 4, axis=0) + np.roll(fine, 4, axis=1)) / 3
        _TEXTURES[key] = np.concatenate([smooth, smooth[:, :width]], axis=1).astype(np.uint8)
    return _TEXTURES[key]


def textured_video_frames(
    seconds: float,
    *,
    fps: int = 30,
    width: int = 640,
    height: int = 480,
    bitrate: int = 2_000_000,
    codec: str = "libvpx",
    key_every: int = 60,
    start_us: int = START_US,
) -> list[Encoded]:
    """Like :func:`video_frames`, with the busy :func:`textured` pattern, at libvpx's fastest
    real-time setting (making 10 s of 640x480 takes a test about a second)."""
    return video_frames(
        seconds,
        fps=fps,
        width=width,
        height=height,
        bitrate=bitrate,
        codec=codec,
        key_every=key_every,
        start_us=start_us,
        picture=textured,
        cpu_used=16,
    )


def decode_opus(packets: list[bytes]) -> np.ndarray:
    """Opus packets decoded with PyAV to 48 kHz mono int16, one after the other."""
    decoder = av.CodecContext.create("libopus", "r")
    assert isinstance(decoder, av.AudioCodecContext)
    decoder.sample_rate, decoder.layout = OPUS_RATE, "mono"
    chunks = [
        frame.to_ndarray().reshape(-1) for p in packets for frame in decoder.decode(av.Packet(p))
    ]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def decode_video(codec: str, payloads: list[bytes]) -> list[av.VideoFrame]:
    """Encoded video frames decoded with PyAV's ``codec`` decoder (an error fails the test)."""
    decoder = av.CodecContext.create(codec, "r")
    assert isinstance(decoder, av.VideoCodecContext)
    frames: list[av.VideoFrame] = []
    for payload in payloads:
        frames.extend(decoder.decode(av.Packet(payload)))
    frames.extend(decoder.decode(None))
    return frames
