"""Mix-minus audio: one Opus stream per listener with every other source's audio and not its
own (docs/architecture.md §10).

A :class:`Mixer` decodes each source's Opus packets as they arrive into a small bounded jitter
buffer of 20 ms frames. Every 20 ms the caller calls :meth:`Mixer.tick`: it takes one frame
per source (silence where a source has none: a late or stopped source never stalls the mix),
sums them once, and for each listener subtracts the listener's own sources from the sum and
encodes the result. Listeners that exclude the same sources (all those that publish no audio,
say) share one encoder and one packet. It is synchronous and not thread-safe: a worker thread
calls it, one thread at a time per object; nothing here knows about trio or the network.
"""

from __future__ import annotations

import collections
import fractions
import time
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

import attrs
import av
import numpy as np
import numpy.typing as npt

RATE = 48_000
# Samples in one 20 ms frame at 48 kHz: the mix's frame, in and out.
FRAME_SAMPLES = 960
# Decoded frames a source may hold ahead of the mix. Full: the oldest frame is dropped and
# counted ("jitter_full"), so a source that bursts or runs fast cannot add more than
# 100 ms of delay.
JITTER_FRAMES = 5
# A source whose buffer held at least LATENCY_FRAMES frames at every tick for LATENCY_WINDOW
# ticks (one second) loses its oldest frame (counted "latency"): delay a burst left behind
# drains away instead of staying for the rest of the call.
LATENCY_FRAMES = 2
LATENCY_WINDOW = 50
# Opus encoder settings of the mixed streams: a voice bitrate, and the application and
# complexity that measured cheapest for one encoder per listener (half the CPU of "voip" at the
# same complexity in benchmarks/_processing_codecs.py; docs/architecture.md §10).
BITRATE = 32_000
APPLICATION = "audio"
COMPLEXITY = 5

_SAMPLE_TIME = fractions.Fraction(1, RATE)

S = TypeVar("S", bound=Hashable)
L = TypeVar("L", bound=Hashable)

Pcm = npt.NDArray[np.int16]


@attrs.define
class MixCounters:
    """What one mixer has done. ``dropped`` counts source packets or frames by reason:
    ``unknown_source``, ``late`` (a timestamp not after the previous one), ``decode_error``,
    ``jitter_full``, ``latency`` (see :data:`LATENCY_FRAMES`) and ``removed`` (buffered when
    the source was removed)."""

    ticks: int = 0
    packets_in: int = 0
    # Source ticks without a frame (mixed as silence).
    underruns: int = 0
    # Opus packets encoded (one per listener group and tick) and handed out (one per listener).
    encoded: int = 0
    packets_out: int = 0
    encode_errors: int = 0
    dropped: dict[str, int] = attrs.field(factory=dict)
    # CPU time of the calling thread inside push() and tick(): decoding, mixing, encoding.
    cpu_s: float = 0.0

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count


def _open_decoder() -> av.AudioCodecContext:
    # libopus decodes straight to int16 and downmixes a stereo source to mono; FFmpeg's own
    # decoder (float) stands in where a build lacks it.
    name = "libopus"
    try:
        av.codec.Codec(name, "r")
    except av.codec.codec.UnknownCodecError:
        name = "opus"
    decoder = av.CodecContext.create(name, "r")
    assert isinstance(decoder, av.AudioCodecContext)
    decoder.sample_rate, decoder.layout = RATE, "mono"
    return decoder


def _to_int16(frame: av.AudioFrame) -> Pcm:
    """A decoded frame as mono int16 (already so from libopus with a mono layout)."""
    samples = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if samples.dtype == np.int16 and channels == 1:
        return samples.reshape(-1).view(np.int16)
    # Planar: one row per channel; packed: channels interleaved in one row.
    rows = samples if frame.format.is_planar else samples.reshape(-1, channels).T
    mono = rows.astype(np.float32).mean(axis=0)
    if samples.dtype.kind == "f":
        mono *= 32767.0
    pcm: Pcm = np.clip(mono, -32768, 32767).astype(np.int16)
    return pcm


class _Source:
    """One source's decoder and jitter buffer of 20 ms frames."""

    def __init__(self) -> None:
        self.decoder = _open_decoder()
        self.frames: collections.deque[Pcm] = collections.deque()
        # Samples decoded beyond the last whole frame (a packet longer or shorter than 20 ms).
        self.partial: Pcm = np.zeros(0, np.int16)
        self.last_timestamp_us: int | None = None
        # Ticks in a row the buffer held at least LATENCY_FRAMES frames.
        self.backlog_ticks = 0

    def add(self, samples: Pcm, counters: MixCounters) -> None:
        if len(self.partial):
            samples = np.concatenate([self.partial, samples])
        whole = len(samples) // FRAME_SAMPLES * FRAME_SAMPLES
        for start in range(0, whole, FRAME_SAMPLES):
            if len(self.frames) >= JITTER_FRAMES:
                self.frames.popleft()
                counters.drop("jitter_full")
            self.frames.append(samples[start : start + FRAME_SAMPLES])
        self.partial = samples[whole:]

    def take(self, counters: MixCounters) -> Pcm | None:
        if len(self.frames) >= LATENCY_FRAMES:
            self.backlog_ticks += 1
            if self.backlog_ticks >= LATENCY_WINDOW:
                self.frames.popleft()
                counters.drop("latency")
                self.backlog_ticks = 0
        else:
            self.backlog_ticks = 0
        return self.frames.popleft() if self.frames else None


class _Encoder:
    """The Opus encoder of the listeners that exclude the same sources."""

    def __init__(self, bitrate: int, complexity: int) -> None:
        encoder = av.CodecContext.create("libopus", "w")
        assert isinstance(encoder, av.AudioCodecContext)
        encoder.sample_rate, encoder.layout, encoder.format = RATE, "mono", "s16"
        encoder.bit_rate = bitrate
        encoder.time_base = _SAMPLE_TIME
        encoder.options = {
            "application": APPLICATION,
            "frame_duration": "20",
            "compression_level": str(complexity),
        }
        self.context = encoder
        self.listeners = 0
        self.pts = 0

    def encode(self, pcm: Pcm) -> bytes | None:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self.pts, _SAMPLE_TIME
        self.pts += FRAME_SAMPLES
        packets = self.context.encode(frame)
        # One 20 ms frame in, one packet out (the encoder has no look-ahead to hold back).
        return bytes(packets[-1]) if packets else None


class Mixer(Generic[S, L]):
    """Mix-minus of the sources (ids ``S``) for the listeners (ids ``L``).

    A listener names the sources it must not hear (its own: a participant's microphone) when
    it is added; a listener that names none hears the full mix.
    """

    def __init__(self, *, bitrate: int = BITRATE, complexity: int = COMPLEXITY) -> None:
        self._bitrate = bitrate
        self._complexity = complexity
        self._sources: dict[S, _Source] = {}
        self._listeners: dict[L, frozenset[S]] = {}
        self._encoders: dict[frozenset[S], _Encoder] = {}
        self.counters = MixCounters()

    @property
    def sources(self) -> frozenset[S]:
        return frozenset(self._sources)

    @property
    def listeners(self) -> frozenset[L]:
        return frozenset(self._listeners)

    def add_source(self, source_id: S) -> None:
        """Start mixing ``source_id`` (no change if it is mixed already)."""
        if source_id not in self._sources:
            self._sources[source_id] = _Source()

    def remove_source(self, source_id: S) -> None:
        """Stop mixing ``source_id``; what it had buffered is dropped and counted."""
        source = self._sources.pop(source_id, None)
        if source is not None and source.frames:
            self.counters.drop("removed", len(source.frames))

    def add_listener(self, listener_id: L, *, own: Iterable[S] = ()) -> None:
        """Give ``listener_id`` a mix without the sources ``own`` (replacing what it had)."""
        self.remove_listener(listener_id)
        excluded = frozenset(own)
        self._listeners[listener_id] = excluded
        encoder = self._encoders.get(excluded)
        if encoder is None:
            encoder = self._encoders[excluded] = _Encoder(self._bitrate, self._complexity)
        encoder.listeners += 1

    def remove_listener(self, listener_id: L) -> None:
        excluded = self._listeners.pop(listener_id, None)
        if excluded is None:
            return
        encoder = self._encoders[excluded]
        encoder.listeners -= 1
        if encoder.listeners == 0:
            del self._encoders[excluded]

    def push(self, source_id: S, timestamp_us: int, payload: bytes) -> None:
        """Decode one Opus packet of ``source_id`` into its jitter buffer. A packet of an
        unknown source, a late one or one that does not decode is dropped and counted."""
        started = time.thread_time()
        try:
            self._push(source_id, timestamp_us, payload)
        finally:
            self.counters.cpu_s += time.thread_time() - started

    def tick(self) -> dict[L, bytes]:
        """Mix the next 20 ms: one Opus packet per listener (48 kHz, mono)."""
        started = time.thread_time()
        try:
            return self._tick()
        finally:
            self.counters.cpu_s += time.thread_time() - started

    def _push(self, source_id: S, timestamp_us: int, payload: bytes) -> None:
        self.counters.packets_in += 1
        source = self._sources.get(source_id)
        if source is None:
            self.counters.drop("unknown_source")
            return
        if source.last_timestamp_us is not None and timestamp_us <= source.last_timestamp_us:
            self.counters.drop("late")
            return
        if not payload:
            # An empty packet would put the decoder into draining mode for good.
            self.counters.drop("decode_error")
            return
        try:
            frames = source.decoder.decode(av.Packet(payload))
        except av.FFmpegError:
            # The decoder goes on with the next packet.
            self.counters.drop("decode_error")
            return
        source.last_timestamp_us = timestamp_us
        for frame in frames:
            source.add(_to_int16(frame), self.counters)

    def _tick(self) -> dict[L, bytes]:
        self.counters.ticks += 1
        total = np.zeros(FRAME_SAMPLES, np.int32)
        heard: dict[S, Pcm] = {}
        for source_id, source in self._sources.items():
            frame = source.take(self.counters)
            if frame is None:
                self.counters.underruns += 1
                continue
            heard[source_id] = frame
            total += frame
        packets: dict[frozenset[S], bytes] = {}
        for excluded, encoder in self._encoders.items():
            mix = total
            own = [heard[s] for s in excluded if s in heard]
            if own:
                mix = total - own[0]
                for frame in own[1:]:
                    mix -= frame
            pcm = np.clip(mix, -32768, 32767).astype(np.int16)
            try:
                packet = encoder.encode(pcm)
            except av.FFmpegError:
                self.counters.encode_errors += 1
                continue
            if packet is not None:
                self.counters.encoded += 1
                packets[excluded] = packet
        out = {
            listener: packets[excluded]
            for listener, excluded in self._listeners.items()
            if excluded in packets
        }
        self.counters.packets_out += len(out)
        return out
