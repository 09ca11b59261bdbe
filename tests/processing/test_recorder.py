"""The recorder with real encoded media: what it writes decodes with PyAV, keeps audio and
video in step, survives a SIGKILL and bad input (docs/architecture.md §10)."""

from __future__ import annotations

import fractions
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import av
import pytest

from darktower.processing import (
    DROP_BEFORE_KEY_FRAME,
    DROP_INVALID,
    DROP_UNKNOWN_STREAM,
    ParticipantRecorder,
    RecordingError,
)

from ._media import START_US, Encoded, opus_frames, pattern, video_frames

ROOT = pathlib.Path(__file__).parent.parent.parent
MIB = 1 << 20


def recorder(directory: pathlib.Path, name: str = "alice", **kwargs: float) -> ParticipantRecorder:
    options: dict[str, float] = {"max_buffered_bytes": MIB, "header_wait_s": 2.0, **kwargs}
    return ParticipantRecorder(
        directory,
        name,
        max_buffered_bytes=int(options["max_buffered_bytes"]),
        header_wait_s=options["header_wait_s"],
    )


def feed(rec: ParticipantRecorder, streams: dict[str, list[Encoded]], lag_us: int = 0) -> None:
    """Every frame of ``streams`` in the order they arrive: by timestamp, audio ``lag_us``
    late (a receiver sees that; the recorder goes by the timestamps)."""
    arrivals = [
        (f.timestamp_us + (lag_us if sid == "a" else 0), i, sid, f)
        for sid, frames in streams.items()
        for i, f in enumerate(frames)
    ]
    for _, _, sid, f in sorted(arrivals, key=lambda x: (x[0], x[2], x[1])):
        rec.write(sid, f.key, f.timestamp_us, f.payload)


def decode(path: pathlib.Path) -> tuple[dict[str, list[float]], int]:
    """The times (s) of the frames each track of ``path`` decodes to, and how many packets
    failed to decode."""
    times: dict[str, list[float]] = {}
    errors = 0
    with av.open(str(path)) as container:
        for stream in container.streams:
            # One frame out per packet in: an error is then the failing packet's own.
            stream.codec_context.thread_count = 1
        for packet in container.demux():  # ends with an empty packet per track: the flush
            try:
                frames = packet.decode()
            except av.FFmpegError:
                errors += 1
                continue
            for frame in frames:
                assert frame.time is not None
                times.setdefault(packet.stream.type, []).append(frame.time)
    return times, errors


def h264_frames(
    seconds: float, *, fps: int = 30, width: int = 160, height: int = 120
) -> list[Encoded]:
    """H.264 as a live publisher sends it: no B-frames, parameter sets in each key frame."""
    encoder = av.CodecContext.create("libx264", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = fractions.Fraction(1, fps)
    encoder.gop_size = fps
    encoder.options = {"tune": "zerolatency", "preset": "ultrafast"}
    out = []
    for i in range(round(seconds * fps)):
        frame = pattern(i, width, height)
        frame.pts = i
        for p in encoder.encode(frame):
            assert p.pts is not None
            out.append(Encoded(p.is_keyframe, START_US + p.pts * 1_000_000 // fps, bytes(p)))
    return out


def test_five_seconds_of_vp8_and_opus_decode_in_step(tmp_path: pathlib.Path) -> None:
    video = video_frames(5.0)  # 640x480 at 30 fps
    audio = opus_frames(5.0, start_us=START_US + 100_000)  # the microphone starts 100 ms later
    rec = recorder(tmp_path)
    rec.add_stream("v", "video", "VP8")
    rec.add_stream("a", "audio", "opus")
    feed(rec, {"v": video, "a": audio}, lag_us=60_000)
    rec.close()

    (made,) = rec.summary().files
    assert made.path == tmp_path / "alice-0.webm"
    assert made.streams == ("v", "a")
    assert made.start_us == START_US
    assert made.finished and made.bytes == made.path.stat().st_size > 0
    assert abs(made.duration_ms - 5100) <= 100
    times, errors = decode(made.path)
    assert errors == 0
    assert len(times["video"]) == len(video) == 150
    assert len(times["audio"]) == len(audio)
    with av.open(str(made.path)) as container:
        assert container.duration is not None
        assert abs(container.duration / 1e6 - 5.1) <= 0.1
        assert (container.streams.video[0].width, container.streams.video[0].height) == (640, 480)
    offset = times["audio"][0] - times["video"][0]
    assert abs(offset - 0.1) <= 0.04  # as sent


CHILD = """
import pathlib, sys
sys.path.insert(0, {root!r})
from darktower.processing import ParticipantRecorder
from tests.processing._media import START_US, opus_frames, video_frames

# One key frame only, as a live stream sends them (on request): clusters end by time.
video = video_frames(4.0, width=160, height=120, key_every=1000)
audio = opus_frames(4.0)
rec = ParticipantRecorder(pathlib.Path({directory!r}), "bob", max_buffered_bytes=1 << 20, header_wait_s=1.0)
rec.add_stream("v", "video", "VP8")
rec.add_stream("a", "audio", "Opus")
frames = sorted([("v", f) for f in video] + [("a", f) for f in audio], key=lambda x: x[1][1])
written = 0
for sid, f in frames:
    rec.write(sid, f.key, f.timestamp_us, f.payload)
    written += sid == "v"
    if f.timestamp_us - START_US >= 3_000_000:
        break
print(written, flush=True)
sys.stdin.read()  # killed while it waits
"""


def test_a_recording_killed_midway_plays_to_its_last_cluster(tmp_path: pathlib.Path) -> None:
    code = textwrap.dedent(CHILD).format(root=str(ROOT), directory=str(tmp_path))
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        written = int(child.stdout.readline())  # 3 s of video muxed, the file still open
        assert written == 91
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    (path,) = tmp_path.iterdir()
    times, errors = decode(path)
    assert errors == 0
    # Lost at most the cluster being built (1 s) and what the muxer held to interleave.
    assert written - 45 <= len(times["video"]) < written
    assert times["video"][-1] >= 1.5 and times["audio"][-1] >= 1.5
    assert times["video"] == sorted(times["video"])


def test_video_that_comes_after_the_header_starts_a_second_file(tmp_path: pathlib.Path) -> None:
    audio = opus_frames(2.0)
    video = video_frames(1.0, width=160, height=120, start_us=START_US + 1_000_000)
    rec = recorder(tmp_path)
    rec.add_stream("a", "audio", "Opus")
    feed(rec, {"a": audio[:50]})  # 1 s of audio: the header is written at once, audio only
    rec.add_stream("v", "video", "VP8")
    assert rec.wants_key_frame == {"v"}
    feed(rec, {"a": audio[50:], "v": video})
    assert rec.wants_key_frame == frozenset()
    rec.close()

    first, second = rec.summary().files
    assert (first.path.name, second.path.name) == ("alice-0.webm", "alice-1.webm")
    assert first.streams == ("a",) and second.streams == ("a", "v")
    assert first.start_us == START_US and second.start_us == START_US + 1_000_000
    one, _ = decode(first.path)
    two, _ = decode(second.path)
    assert set(one) == {"audio"}
    assert len(one["audio"]) + len(two["audio"]) == len(audio)  # no audio lost at the cut
    assert len(two["video"]) == len(video)
    assert abs(two["audio"][0] - two["video"][0]) <= 0.04


def test_a_camera_silent_past_the_wait_gets_a_file_of_its_own(tmp_path: pathlib.Path) -> None:
    audio = opus_frames(2.0)
    video = video_frames(1.0, width=160, height=120, start_us=START_US + 1_000_000)
    rec = recorder(tmp_path, header_wait_s=0.5)
    rec.add_stream("a", "audio", "Opus")
    rec.add_stream("v", "video", "VP8")
    feed(rec, {"a": audio[:26]})  # 0.5 s of media held: the header is written with audio
    (first,) = rec.summary().files
    assert first.streams == ("a",)
    feed(rec, {"a": audio[26:], "v": video})
    rec.close()
    assert [f.streams for f in rec.summary().files] == [("a",), ("a", "v")]


def test_the_header_waits_at_most_max_buffered_bytes(tmp_path: pathlib.Path) -> None:
    video = video_frames(1.0, width=160, height=120)
    rec = recorder(tmp_path, max_buffered_bytes=2000)
    rec.add_stream("v", "video", "VP8")
    rec.add_stream("a", "audio", "Opus")  # a microphone that sends nothing
    rec.write("v", video[0].key, video[0].timestamp_us, video[0].payload)
    assert rec.summary().files == ()  # held: the audio may come
    feed(rec, {"v": video[1:]})
    (made,) = rec.summary().files  # written before the end, with the streams known
    assert made.streams == ("v", "a")
    rec.close()
    times, _ = decode(made.path)
    assert len(times["video"]) == len(video) and "audio" not in times


def test_delta_frames_before_the_first_key_frame_are_dropped(tmp_path: pathlib.Path) -> None:
    video = video_frames(2.0, width=160, height=120, key_every=30)
    rec = recorder(tmp_path)
    rec.add_stream("v", "video", "vp8")
    feed(rec, {"v": video[5:]})  # joined mid-GOP: frames 5..29 cannot be decoded
    rec.close()
    summary = rec.summary()
    assert summary.dropped == {DROP_BEFORE_KEY_FRAME: 25}
    (made,) = summary.files
    assert made.start_us == video[30].timestamp_us
    times, errors = decode(made.path)
    assert errors == 0 and len(times["video"]) == 30


def test_bad_payloads_do_not_spoil_the_rest_of_the_file(tmp_path: pathlib.Path) -> None:
    video = video_frames(3.0, width=160, height=120, key_every=30)
    audio = opus_frames(3.0)
    garbage = os.urandom(500)
    video[40] = video[40]._replace(payload=garbage)  # a delta frame
    audio[60] = audio[60]._replace(payload=garbage)
    rec = recorder(tmp_path)
    rec.add_stream("v", "video", "VP8")
    rec.add_stream("a", "audio", "Opus")
    rec.write("v", True, START_US - 40_000, garbage)  # a "key frame" that is none: dropped
    rec.write("a", True, START_US + 5_000, b"")  # empty: dropped
    rec.write("x", True, START_US, b"?")  # a stream never added
    feed(rec, {"v": video, "a": audio})
    rec.close()
    summary = rec.summary()
    assert summary.dropped == {DROP_INVALID: 2, DROP_UNKNOWN_STREAM: 1}
    (made,) = summary.files
    assert made.start_us == START_US  # the file starts at the real key frame
    times, errors = decode(made.path)
    assert errors <= 2  # the two garbage packets at most
    # Everything from the next key frame on is there.
    tail = [t for t in times["video"] if t >= 2.0 - 1e-6]
    assert len(tail) == 30
    assert len(times["audio"]) >= len(audio) - 1


def test_timestamps_that_go_back_are_clamped(tmp_path: pathlib.Path) -> None:
    audio = opus_frames(1.0)
    audio[20] = audio[20]._replace(timestamp_us=audio[10].timestamp_us)  # 200 ms back
    rec = recorder(tmp_path)
    rec.add_stream("a", "audio", "Opus")
    feed(rec, {"a": audio})
    rec.write("a", True, START_US - 5_000_000, audio[0].payload)  # before the file's origin
    rec.close()
    assert rec.summary().clamped == 2
    times, errors = decode(rec.summary().files[0].path)
    assert errors == 0 and len(times["audio"]) == len(audio) + 1
    assert times["audio"] == sorted(times["audio"])


@pytest.mark.parametrize("codec", ["VP9", "H264", "AV1"])
def test_other_video_codecs_are_recorded_as_sent(tmp_path: pathlib.Path, codec: str) -> None:
    if codec == "H264":
        video = h264_frames(1.0)
    else:
        encoder = {"VP9": "libvpx-vp9", "AV1": "libsvtav1"}[codec]
        video = video_frames(1.0, width=160, height=120, codec=encoder, key_every=30)
    rec = recorder(tmp_path)
    rec.add_stream("v", "video", codec)
    rec.add_stream("a", "audio", "Opus")
    feed(rec, {"v": video, "a": opus_frames(1.0)})
    rec.close()
    (made,) = rec.summary().files
    assert made.path.suffix == (".mkv" if codec == "H264" else ".webm")
    times, errors = decode(made.path)
    assert errors == 0 and len(times["video"]) == len(video)


def test_a_recording_never_overwrites_a_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "alice-0.webm").write_bytes(b"an earlier recording")
    rec = recorder(tmp_path)
    rec.add_stream("a", "audio", "Opus")
    feed(rec, {"a": opus_frames(0.2)})
    rec.close()
    assert rec.summary().files[0].path.name == "alice-1.webm"
    assert (tmp_path / "alice-0.webm").read_bytes() == b"an earlier recording"


def test_a_payload_the_muxer_refuses_is_dropped(tmp_path: pathlib.Path) -> None:
    video = video_frames(1.0, width=160, height=120, codec="libsvtav1", key_every=10)
    video[5] = video[5]._replace(payload=b"\xff" * 300)  # not AV1's OBUs: the muxer says so
    rec = recorder(tmp_path)
    rec.add_stream("v", "video", "AV1")
    feed(rec, {"v": video})
    rec.close()
    assert rec.summary().dropped == {DROP_INVALID: 1}
    times, _ = decode(rec.summary().files[0].path)
    # The frames that referred to it may not decode; from the next key frame on, all do.
    assert len([t for t in times["video"] if t >= 0.333]) == 20  # the key frame is at 333 ms


FULL_DISK = """
import pathlib, resource, signal, sys
sys.path.insert(0, {root!r})
from darktower.processing import ParticipantRecorder, RecordingError
from tests.processing._media import opus_frames, video_frames

video = video_frames(3.0, width=160, height=120)
audio = opus_frames(3.0)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))
rec = ParticipantRecorder(pathlib.Path({directory!r}), "bob", max_buffered_bytes=1 << 20, header_wait_s=1.0)
rec.add_stream("v", "video", "VP8")
rec.add_stream("a", "audio", "Opus")
try:
    for sid, f in sorted([("v", f) for f in video] + [("a", f) for f in audio], key=lambda x: x[1][1]):
        rec.write(sid, f.key, f.timestamp_us, f.payload)
except RecordingError as exc:
    print(exc)
    rec.write(sid, f.key, f.timestamp_us, f.payload)
"""


def test_a_full_disk_is_a_recording_error_and_the_file_plays(tmp_path: pathlib.Path) -> None:
    code = textwrap.dedent(FULL_DISK).format(root=str(ROOT), directory=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    first, *_ = out.stdout.splitlines()
    assert first.startswith("cannot write to ") and "File too large" in first
    assert "RecordingError: the recording bob is closed" in out.stderr  # it closed itself
    (path,) = tmp_path.iterdir()
    times, errors = decode(path)
    assert errors == 0 and len(times["video"]) >= 30  # what fitted plays


def test_a_file_that_cannot_be_written_is_a_recording_error(tmp_path: pathlib.Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_bytes(b"")
    rec = recorder(blocked)
    rec.add_stream("a", "audio", "Opus")
    frame = opus_frames(0.1)[0]
    with pytest.raises(RecordingError, match="not-a-directory"):
        rec.write("a", True, frame.timestamp_us, frame.payload)
    with pytest.raises(RecordingError, match="closed"):  # it closed itself
        rec.write("a", True, frame.timestamp_us, frame.payload)
    rec.close()  # idempotent


def test_what_the_recorder_refuses(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="name"):
        recorder(tmp_path, name="../escape")
    rec = recorder(tmp_path)
    with pytest.raises(ValueError, match="AAC"):
        rec.add_stream("a", "audio", "AAC")
    with pytest.raises(ValueError, match="VP8"):
        rec.add_stream("a", "audio", "VP8")
    rec.close()
    rec.close()
    assert rec.summary().files == ()  # nothing was sent, nothing was written
    with pytest.raises(RecordingError, match="closed"):
        rec.add_stream("a", "audio", "Opus")
