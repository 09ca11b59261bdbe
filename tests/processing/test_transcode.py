"""Transcoding real encoded video (docs/architecture.md §10): a moving test pattern encoded to
VP8 by the tests goes through a Transcoder, and what comes out is decoded with PyAV."""

from __future__ import annotations

import av
import pytest

from darktower.processing._transcode import (
    EncodedFrame,
    TranscodeError,
    Transcoder,
    UnknownCodec,
    encodable_codecs,
)

from ._media import Encoded, decode_video, textured_video_frames, video_frames

DECODERS = {"VP8": "vp8", "VP9": "vp9", "H264": "h264", "AV1": "libdav1d"}
FPS = 30


@pytest.fixture(scope="module")
def ten_seconds() -> list[Encoded]:
    """10 s of a busy 640x480 pattern at 30 fps in VP8 (2 Mbit/s), a key frame every 2 s."""
    return textured_video_frames(10, width=640, height=480)


@pytest.fixture(scope="module")
def two_seconds() -> list[Encoded]:
    """2 s of the simple 320x240 pattern in VP8, a key frame every second."""
    return video_frames(2, width=320, height=240, bitrate=300_000, key_every=30)


def run(transcoder: Transcoder, frames: list[Encoded]) -> list[EncodedFrame]:
    out: list[EncodedFrame] = []
    for frame in frames:
        out.extend(transcoder.push(frame.key, frame.timestamp_us, frame.payload))
    return out + transcoder.flush()


@pytest.mark.parametrize("target", ["VP9", "H264"])
def test_vp8_transcode_decodes_and_holds_the_bitrate(
    ten_seconds: list[Encoded], target: str
) -> None:
    bitrate = 600_000
    transcoder = Transcoder("VP8", target, bitrate)
    out = run(transcoder, ten_seconds)

    frames = decode_video(DECODERS[target], [f.payload for f in out])
    assert len(out) == len(ten_seconds) == 300
    assert len(frames) == len(out)
    assert {(f.width, f.height) for f in frames} == {(640, 480)}
    # The source's timestamps, frame for frame.
    assert [f.timestamp_us for f in out] == [f.timestamp_us for f in ten_seconds]
    # Over the 10 s, the bitrate is within ±20 % of the target.
    span_s = (out[-1].timestamp_us - out[0].timestamp_us) / 1e6 + 1 / FPS
    measured = sum(len(f.payload) for f in out) * 8 / span_s
    assert 0.8 * bitrate <= measured <= 1.2 * bitrate, measured
    # Only the first frame is a key frame: the source's key frames are not copied.
    assert [i for i, f in enumerate(out) if f.key] == [0]
    counters = transcoder.counters
    assert counters.frames_in == counters.frames_out == 300
    assert counters.key_frames_out == 1
    assert counters.bytes_out == sum(len(f.payload) for f in out)
    assert counters.dropped == {}
    assert counters.encoders_opened == 1
    assert counters.cpu_s > 0


@pytest.mark.parametrize("target", ["VP9", "H264"])
def test_the_bitrate_follows_the_frame_rate_not_the_hint(target: str) -> None:
    # 15 fps where the encoder is told 30: VP9 paces by the timestamps, the H.264 encoder is
    # opened again at the rate measured over the first second.
    source = textured_video_frames(6, fps=15, width=320, height=240, bitrate=1_000_000)
    transcoder = Transcoder("VP8", target, 300_000, fps_hint=30)
    out = run(transcoder, source)
    assert transcoder.counters.encoders_opened == (2 if target == "H264" else 1)
    assert len(out) == len(source)
    span_s = (out[-1].timestamp_us - out[0].timestamp_us) / 1e6 + 1 / 15
    measured = sum(len(f.payload) for f in out) * 8 / span_s
    assert 0.8 * 300_000 <= measured <= 1.2 * 300_000, measured


def test_an_odd_size_is_encoded_one_pixel_smaller() -> None:
    source = video_frames(0.5, width=161, height=121, bitrate=200_000)
    out = run(Transcoder("VP8", "H264", 200_000), source)
    frames = decode_video("h264", [f.payload for f in out])
    assert len(frames) == len(source)
    assert {(f.width, f.height) for f in frames} == {(160, 120)}


@pytest.mark.parametrize("target", encodable_codecs())
def test_a_key_frame_on_request(two_seconds: list[Encoded], target: str) -> None:
    transcoder = Transcoder("vp8", target, 300_000)
    out: list[EncodedFrame] = []
    for i, frame in enumerate(two_seconds):
        if i in (20, 45):
            transcoder.request_key_frame()
        out.extend(transcoder.push(frame.key, frame.timestamp_us, frame.payload))
    out.extend(transcoder.flush())

    assert [i for i, f in enumerate(out) if f.key] == [0, 20, 45]
    frames = decode_video(DECODERS[target], [f.payload for f in out])
    assert len(frames) == len(out) == len(two_seconds)
    assert {(f.width, f.height) for f in frames} == {(320, 240)}


def test_a_corrupt_frame_is_counted_and_the_stream_resumes_at_the_next_key_frame(
    two_seconds: list[Encoded],
) -> None:
    # Key frames at 0 and 30; frame 10 is garbage.
    assert [i for i, f in enumerate(two_seconds) if f.key] == [0, 30]
    transcoder = Transcoder("VP8", "H264", 300_000)
    produced: list[int] = []
    out: list[EncodedFrame] = []
    for i, frame in enumerate(two_seconds):
        payload = bytes(b ^ 0x5A for b in frame.payload) if i == 10 else frame.payload
        got = transcoder.push(frame.key, frame.timestamp_us, payload)
        produced.extend([i] * len(got))
        out.extend(got)

    assert produced == [*range(10), *range(30, 60)]
    assert transcoder.counters.dropped == {"decode_error": 1, "awaiting_key": 19}
    assert [f.timestamp_us for f in out] == [two_seconds[i].timestamp_us for i in produced]
    # The encoder went on: what came out is one decodable H.264 stream.
    assert len(decode_video("h264", [f.payload for f in out])) == len(out)


def test_delta_frames_before_the_first_key_frame_are_dropped(
    two_seconds: list[Encoded],
) -> None:
    transcoder = Transcoder("VP8", "VP8", 300_000)
    out = run(transcoder, two_seconds[5:])
    assert transcoder.counters.dropped == {"awaiting_key": 25}
    assert len(out) == 30 and out[0].key
    assert out[0].timestamp_us == two_seconds[30].timestamp_us


def test_an_empty_payload_is_dropped_without_ending_the_stream(
    two_seconds: list[Encoded],
) -> None:
    transcoder = Transcoder("VP8", "H264", 300_000)
    frames = list(two_seconds[:10])
    frames[5] = Encoded(False, frames[5].timestamp_us, b"")
    out = run(transcoder, frames)
    assert transcoder.counters.dropped == {"empty": 1}
    assert len(out) == 9


def test_the_output_follows_a_change_of_size(two_seconds: list[Encoded]) -> None:
    small = video_frames(1, width=160, height=120, start_us=two_seconds[-1].timestamp_us + 33_333)
    transcoder = Transcoder("VP8", "VP9", 300_000)
    out = run(transcoder, two_seconds + small)

    assert transcoder.counters.encoders_opened == 2
    assert [i for i, f in enumerate(out) if f.key] == [0, len(two_seconds)]
    sizes = [(f.width, f.height) for f in decode_video("vp9", [f.payload for f in out])]
    assert sizes == [(320, 240)] * len(two_seconds) + [(160, 120)] * len(small)


def test_a_frame_over_the_pixel_bound_does_not_decode(two_seconds: list[Encoded]) -> None:
    transcoder = Transcoder("VP8", "H264", 300_000, max_pixels=160 * 120)
    assert run(transcoder, two_seconds) == []
    assert transcoder.counters.dropped == {"decode_error": 2, "awaiting_key": 58}


def test_timestamps_that_do_not_increase_are_kept(two_seconds: list[Encoded]) -> None:
    frames = list(two_seconds[:6])
    # A repeated timestamp and one going back: the encoder needs increasing ones, the
    # output carries the source's.
    frames[3] = frames[3]._replace(timestamp_us=frames[2].timestamp_us)
    frames[4] = frames[4]._replace(timestamp_us=frames[1].timestamp_us)
    out = run(Transcoder("VP8", "H264", 300_000), frames)
    assert [f.timestamp_us for f in out] == [f.timestamp_us for f in frames]


def test_an_unknown_codec_names_what_this_build_can_encode() -> None:
    with pytest.raises(UnknownCodec) as raised:
        Transcoder("VP8", "theora", 300_000)
    message = str(raised.value)
    assert "'theora'" in message
    for codec in ("VP8", "VP9", "H264"):
        assert codec in raised.value.available
        assert codec in message
    assert isinstance(raised.value, TranscodeError)

    with pytest.raises(UnknownCodec, match=r"cannot decode .*'mpeg2'.* VP8, VP9, H264"):
        Transcoder("mpeg2", "VP8", 300_000)


def test_codec_names_are_read_as_the_contract_spells_them() -> None:
    transcoder = Transcoder("vp8", "h.264", 300_000)
    assert (transcoder.source_codec, transcoder.target_codec) == ("VP8", "H264")
    # Opus is a codec of the contract, not a video codec.
    with pytest.raises(UnknownCodec, match="cannot encode video codec 'opus'"):
        Transcoder("VP8", "opus", 300_000)
    with pytest.raises(ValueError):
        Transcoder("VP8", "VP9", 0)


def test_push_after_flush_is_an_error(two_seconds: list[Encoded]) -> None:
    transcoder = Transcoder("VP8", "VP8", 300_000)
    run(transcoder, two_seconds[:3])
    assert transcoder.flush() == []
    with pytest.raises(TranscodeError):
        transcoder.push(True, two_seconds[0].timestamp_us, two_seconds[0].payload)


def test_the_output_says_which_colours_its_pixels_are_in() -> None:
    """A decoder that is not told guesses (Chromium takes an H.264 stream without colour
    information for BT.709): the VP8 source's BT.601 is written into the H.264 output."""
    transcoder = Transcoder("VP8", "H264", 300_000)
    out = []
    for frame in video_frames(0.3, width=160, height=120):
        out += transcoder.push(frame.key, frame.timestamp_us, frame.payload)
    out += transcoder.flush()
    decoder = av.CodecContext.create("h264", "r")
    pictures = [p for o in out for p in decoder.decode(av.Packet(o.payload))]
    unspecified = 2
    assert pictures and all(p.colorspace != unspecified for p in pictures)
    assert all(p.color_primaries != unspecified for p in pictures)
