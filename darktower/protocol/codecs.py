"""The contract's codec names as the signaling carries them (docs/architecture.md §10).

``StreamMetadata.codec`` and ``ParticipantCapabilities.video_codecs`` are free text ("VP8",
"vp8", "h.264" ...); :func:`normalize_codec` reads one case-insensitively, with the usual
aliases, as one of :data:`CODECS` or None. What the Meeting Controller decides from codecs (a
transcode for a subscriber that cannot decode the publisher's codec) needs only the names,
never the codecs themselves: this module loads no media library.
"""

from __future__ import annotations

from typing import Final, Literal

Codec = Literal["VP8", "VP9", "H264", "AV1", "Opus"]
CODECS: Final[tuple[Codec, ...]] = ("VP8", "VP9", "H264", "AV1", "Opus")
# The video codecs a transcode may produce, in the contract's order.
VIDEO_CODECS: Final[tuple[Codec, ...]] = ("VP8", "VP9", "H264", "AV1")

# Spellings a peer may use, lower-cased.
_ALIASES: Final[dict[str, Codec]] = {
    "vp8": "VP8",
    "vp9": "VP9",
    "h264": "H264",
    "h.264": "H264",
    "avc": "H264",
    "avc1": "H264",
    "av1": "AV1",
    "av01": "AV1",
    "opus": "Opus",
}


def normalize_codec(name: str) -> Codec | None:
    """The contract codec ``name`` stands for (case-insensitive), None if unknown."""
    return _ALIASES.get(name.strip().lower())


def is_video(codec: Codec | None) -> bool:
    return codec in VIDEO_CODECS


__all__ = ["CODECS", "VIDEO_CODECS", "Codec", "is_video", "normalize_codec"]
