"""What a track header needs, read from the media itself: a video track's size and codec
configuration from its first key frame, an Opus track's channel count from a packet.

A recording never decodes its media, except the first key frame of each video track of a
file: decoding it proves it is one (a frame flagged key that does not decode would start the
file with garbage) and gives the picture size the header declares.
"""

from __future__ import annotations

import av
from av.error import FFmpegError

from ._codecs import Codec, decoder_name
from ._segment import TrackSpec

_H264_SPS, _H264_PPS = 7, 8


def video_track(stream_id: str, codec: Codec, key_frame: bytes) -> TrackSpec | None:
    """The track of a video stream whose first key frame is ``key_frame``; None when it does
    not decode (or this build has no decoder for ``codec``)."""
    name = decoder_name(codec)
    if name is None:
        return None
    try:
        decoder = av.CodecContext.create(name, "r")
        if not isinstance(decoder, av.VideoCodecContext):
            return None
        frames = decoder.decode(av.Packet(key_frame))
        frames += decoder.decode(None)
    except (FFmpegError, ValueError):
        return None
    if not frames or frames[0].width <= 0 or frames[0].height <= 0:
        return None
    extradata: bytes | None = None
    if codec == "H264":
        extradata = h264_parameter_sets(key_frame)
        if not extradata:
            return None
    elif codec == "AV1":
        # The muxer keeps the sequence header of the temporal unit (its av1C) and nothing else.
        extradata = key_frame
    return TrackSpec(stream_id, codec, frames[0].width, frames[0].height, extradata)


def audio_track(stream_id: str, codec: Codec, packet: bytes | None) -> TrackSpec:
    """The track of an audio stream whose first packet is ``packet`` (None: none yet, then
    stereo, which plays a mono stream as well)."""
    channels = 2 if packet is None else opus_channels(packet)
    return TrackSpec(stream_id, codec, channels=channels)


def opus_channels(packet: bytes) -> int:
    """1 or 2: the stereo flag of an Opus packet's TOC byte (RFC 6716 §3.1)."""
    return 2 if packet and packet[0] & 0x04 else 1


def h264_parameter_sets(frame: bytes) -> bytes:
    """The SPS and PPS NAL units of an H.264 access unit in Annex B form, with their start
    codes (the muxer turns them into the track's avcC); empty when there are none."""
    found: list[bytes] = []
    for unit in _annex_b_units(frame):
        if unit and unit[0] & 0x1F in (_H264_SPS, _H264_PPS):
            found.append(b"\x00\x00\x00\x01" + unit)
    return b"".join(found)


def _annex_b_units(data: bytes) -> list[bytes]:
    starts: list[int] = []
    i = data.find(b"\x00\x00\x01")
    while i != -1:
        starts.append(i + 3)
        i = data.find(b"\x00\x00\x01", i + 3)
    units = []
    for n, start in enumerate(starts):
        end = starts[n + 1] - 3 if n + 1 < len(starts) else len(data)
        units.append(data[start:end].rstrip(b"\x00") if n + 1 < len(starts) else data[start:end])
    return units
