"""Real encoded media made by the tests: a moving test pattern encoded to VP8 (or another
video codec) and a sine tone encoded to Opus, with PyAV. Timestamps are microseconds from
``start_us``, as a publisher writes them in the frame header (docs/protocol.md §7)."""

from __future__ import annotations

import fractions
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
) -> list[Encoded]:
    """``seconds`` of the test pattern encoded with ``codec`` (VP8 by default), one encoded
    frame per entry, a key frame first and every ``key_every`` frames."""
    encoder = av.CodecContext.create(codec, "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = fractions.Fraction(1, fps)
    encoder.framerate = fractions.Fraction(fps, 1)
    encoder.bit_rate = bitrate
    encoder.gop_size = key_every
    if codec.startswith("libvpx"):
        encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out: list[Encoded] = []

    def take(packets: list[av.Packet]) -> None:
        for p in packets:
            assert p.pts is not None
            out.append(Encoded(p.is_keyframe, start_us + p.pts * 1_000_000 // fps, bytes(p)))

    for i in range(round(seconds * fps)):
        frame = pattern(i, width, height)
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
