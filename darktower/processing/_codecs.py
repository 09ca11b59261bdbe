"""The contract's codec names and what this build of FFmpeg (through PyAV) does with them.

A ``StreamMetadata.codec`` or ``target_codec`` is free text on the wire ("VP8", "vp8",
"opus"...); :func:`normalize_codec` maps it to one of :data:`CODECS` or None. Which of them
this build can encode and decode is found by opening each codec once
(:func:`capabilities`), so a build without one says so at start-up instead of failing a job
later (docs/architecture.md §10).
"""

from __future__ import annotations

import contextlib
import fractions
import functools
import os
from collections.abc import Iterator
from typing import Final, Literal

import attrs
import av

from darktower.protocol.codecs import CODECS as CODECS
from darktower.protocol.codecs import VIDEO_CODECS as PROTOCOL_VIDEO_CODECS
from darktower.protocol.codecs import Codec as Codec
from darktower.protocol.codecs import normalize_codec as normalize_codec

# SVT-AV1 prints a banner of some twenty lines to stderr at every encoder it opens (the
# capability check opens one at start-up); its own variable keeps it to errors. A value the
# operator set wins.
os.environ.setdefault("SVT_LOG", "1")

# The names, their aliases and normalize_codec are the protocol's (the MC reads them too,
# without loading PyAV).
VIDEO_CODECS: Final[frozenset[Codec]] = frozenset(PROTOCOL_VIDEO_CODECS)
AUDIO_CODECS: Final[frozenset[Codec]] = frozenset(set(CODECS) - VIDEO_CODECS)

# FFmpeg's encoders, best first. The first one that opens is used.
_ENCODERS: Final[dict[Codec, tuple[str, ...]]] = {
    "VP8": ("libvpx",),
    "VP9": ("libvpx-vp9",),
    "H264": ("libx264",),
    "AV1": ("libsvtav1", "libaom-av1"),
    "Opus": ("libopus",),
}
# FFmpeg's decoders, best first. FFmpeg's own "av1" decoder is left out: it opens, but decodes
# only through a hardware accelerator.
_DECODERS: Final[dict[Codec, tuple[str, ...]]] = {
    "VP8": ("vp8", "libvpx"),
    "VP9": ("vp9", "libvpx-vp9"),
    "H264": ("h264",),
    "AV1": ("libdav1d", "libaom-av1"),
    "Opus": ("opus", "libopus"),
}
# The size an encoder is opened at to prove it works (every encoder here accepts it).
_PROBE_SIZE = 64
_OPUS_RATE = 48_000


def is_video(codec: Codec) -> bool:
    return codec in VIDEO_CODECS


@contextlib.contextmanager
def same_scheduling() -> Iterator[None]:
    """Restore the scheduling policy and priority of the calling thread, and give them to the
    threads started in the block: SVT-AV1 makes the thread that opens it SCHED_FIFO at
    priority 99 when it may (as root), and so its own encoding threads and every thread or
    process started later, so a busy codec would starve the machine, the SFU's processes
    included (docs/architecture.md §10)."""
    if not hasattr(os, "sched_getscheduler"):  # not Linux
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    before = _threads()
    try:
        yield
    finally:
        for tid in {0} | (_threads() - before):
            try:
                if os.sched_getscheduler(tid) != policy or os.sched_getparam(tid) != param:
                    os.sched_setscheduler(tid, policy, param)
            except ProcessLookupError:
                pass  # a thread that ended meanwhile


def _threads() -> set[int]:
    """This process's threads (Linux: /proc/self/task)."""
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def _opens(name: str, mode: Literal["r", "w"]) -> bool:
    """Whether FFmpeg codec ``name`` exists in this build and opens in ``mode``."""
    try:
        context = av.CodecContext.create(name, mode)
        if mode == "w" and isinstance(context, av.VideoCodecContext):
            context.width = context.height = _PROBE_SIZE
            context.pix_fmt = "yuv420p"
            context.time_base = fractions.Fraction(1, 30)
            context.framerate = fractions.Fraction(30, 1)
        elif mode == "w" and isinstance(context, av.AudioCodecContext):
            context.sample_rate = _OPUS_RATE
            context.layout = "mono"
            context.format = "s16"
            context.time_base = fractions.Fraction(1, _OPUS_RATE)
        with same_scheduling():
            context.open()
    except (av.FFmpegError, ValueError, TypeError):
        # UnknownCodecError is a ValueError; a codec without the probe's format, a TypeError.
        return False
    return True


@functools.cache
def encoder_name(codec: Codec) -> str | None:
    """The FFmpeg encoder this build uses for ``codec``, None if it has none that opens."""
    return next((name for name in _ENCODERS[codec] if _opens(name, "w")), None)


@functools.cache
def decoder_name(codec: Codec) -> str | None:
    """The FFmpeg decoder this build uses for ``codec``, None if it has none that opens."""
    return next((name for name in _DECODERS[codec] if _opens(name, "r")), None)


@attrs.frozen
class Capabilities:
    """The contract codecs this build encodes and decodes."""

    encoders: frozenset[Codec]
    decoders: frozenset[Codec]

    def describe(self) -> str:
        """One line for the start-up log."""

        def names(found: frozenset[Codec]) -> str:
            return ", ".join(c for c in CODECS if c in found) or "none"

        missing = [c for c in CODECS if c not in self.encoders or c not in self.decoders]
        line = (
            f"PyAV {av.__version__}: encodes {names(self.encoders)}; decodes {names(self.decoders)}"
        )
        return line + (f" (missing: {', '.join(missing)})" if missing else "")


@functools.cache
def capabilities() -> Capabilities:
    """What this build can do, found once per process by opening every codec."""
    return Capabilities(
        encoders=frozenset(c for c in CODECS if encoder_name(c) is not None),
        decoders=frozenset(c for c in CODECS if decoder_name(c) is not None),
    )
