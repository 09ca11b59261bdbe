"""examples/echo_bot.py and examples/recorder.py, run in-process (their ``main`` with the
command-line arguments their headers document) against the real stack."""

from __future__ import annotations

import importlib.util
import pathlib
import struct
import sys
from types import ModuleType

import trio

from darktower.client import ParticipantLeft, StreamPublished
from darktower.frames import FrameDecoder, FrameType
from darktower.model import LeaveReason, StreamType

from ._stack import WAIT_S, Meeting, meeting, next_event

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
FRAMES = 6
Echoed = tuple[FrameType, int, bytes]  # what an echo keeps: type, timestamp, payload


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def argv(m: Meeting, *more: str) -> list[str]:
    return [
        "--page",
        m.stack.page_url,
        "--api",
        m.stack.api_url,
        "--meeting",
        m.created.meeting_id,
        *more,
    ]


async def test_echo_bot_echoes_every_stream_until_the_meeting_ends(
    tmp_path: pathlib.Path,
) -> None:
    echo_bot = load("echo_bot")
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        camera = await host.publish(StreamType.VIDEO_CAMERA, codec="VP8")
        async with trio.open_nursery() as nursery:
            bot = await nursery.start(echo_bot.main, argv(m))
            mic = await host.publish(StreamType.AUDIO, codec="Opus")  # published after it joined
            echoes = {}
            for _ in range(2):
                published = await next_event(
                    host, StreamPublished, lambda e: e.stream.participant_id == bot.participant_id
                )
                echoes[published.stream.stream_type] = await host.subscribe(
                    published.stream.stream_id
                )
            assert set(echoes) == {StreamType.VIDEO_CAMERA, StreamType.AUDIO}
            sent: dict[StreamType, list[Echoed]] = {
                StreamType.VIDEO_CAMERA: [],
                StreamType.AUDIO: [],
            }
            for i in range(FRAMES):
                kind = FrameType.VIDEO_KEY if i == 0 else FrameType.VIDEO_DELTA
                await camera.send_frame(kind, b"v%d" % i, timestamp_us=1000 + i)
                await mic.send_frame(FrameType.AUDIO, b"a%d" % i, timestamp_us=2000 + i)
                sent[StreamType.VIDEO_CAMERA].append((kind, 1000 + i, b"v%d" % i))
                sent[StreamType.AUDIO].append((FrameType.AUDIO, 2000 + i, b"a%d" % i))
            for stream_type, subscription in echoes.items():
                got: list[Echoed] = []
                with trio.fail_after(WAIT_S):
                    while len(got) < FRAMES:
                        frame = await subscription.receive()
                        got.append((frame.frame_type, frame.timestamp_us, bytes(frame.payload)))
                assert got == sent[stream_type]
            await m.gc.end_meeting(m.created.meeting_id)  # main() returns cleanly on its own
        assert bot.end_reason is LeaveReason.MEETING_ENDED


async def test_recorder_writes_ivf_and_frame_files(tmp_path: pathlib.Path) -> None:
    recorder_example = load("recorder")
    out = tmp_path / "recordings"
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        camera = await host.publish(StreamType.VIDEO_CAMERA, codec="VP8", width=320, height=240)
        mic = await host.publish(StreamType.AUDIO, codec="Opus")
        video_sent, audio_sent = [], []
        with trio.fail_after(WAIT_S):
            async with trio.open_nursery() as nursery:
                recorder = await nursery.start(
                    recorder_example.main, argv(m, "--out", str(out), "--frames", str(2 * FRAMES))
                )
                for i in range(FRAMES):
                    kind = FrameType.VIDEO_KEY if i == 0 else FrameType.VIDEO_DELTA
                    payload = bytes([i]) * (50 + i)
                    await camera.send_frame(kind, payload, timestamp_us=10_000 + 33_000 * i)
                    video_sent.append(payload)
                    audio_sent.append(await mic.send_frame(FrameType.AUDIO, b"opus%d" % i))
            # It stopped after 2 * FRAMES frames and left.
            left = await next_event(host, ParticipantLeft)
        assert left.reason is LeaveReason.VOLUNTARY
        assert recorder.session.end_reason is LeaveReason.VOLUNTARY

    files = {p.suffix: p for p in out.iterdir()}
    assert set(files) == {".ivf", ".dtf"}
    assert files[".ivf"].name == f"host-{camera.stream_id}.ivf"
    assert files[".dtf"].name == f"host-{mic.stream_id}.dtf"

    decoder = FrameDecoder()
    decoder.receive_data(files[".dtf"].read_bytes())
    assert [bytes(f.raw) for f in decoder] == audio_sent

    ivf = files[".ivf"].read_bytes()
    magic, version, size, fourcc, width, height, rate, scale, count = struct.unpack_from(
        "<4sHH4sHHIII", ivf
    )
    assert (magic, version, size, fourcc) == (b"DKIF", 0, 32, b"VP80")
    assert (width, height, rate, scale, count) == (320, 240, 1_000_000, 1, FRAMES)
    offset, payloads, stamps = 32, [], []
    while offset < len(ivf):
        length, pts = struct.unpack_from("<IQ", ivf, offset)
        payloads.append(ivf[offset + 12 : offset + 12 + length])
        stamps.append(pts)
        offset += 12 + length
    assert payloads == video_sent
    assert stamps == [33_000 * i for i in range(FRAMES)]
