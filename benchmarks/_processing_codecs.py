"""What the media processor's codec work costs, on one core (docs/architecture.md §10).

* Transcoding: ``seconds`` of a busy 640x480 test pattern at 30 fps, encoded to VP8 at
  1.5 Mbit/s by the tests' media helpers, goes through a ``Transcoder`` to H.264 and to VP9 at
  800 kbit/s. The figure is the CPU time the transcoder's thread spent (its own counter: decode,
  scale, encode) per second of media; one core sustains ``1 / that`` such streams in real time.
  H.264 and VP9 are measured interleaved, round after round; the median is reported.
* Mixing: a 10-person mix, every participant a source (a tone of its own) and a mix-minus
  listener, driven for ``seconds`` of 20 ms ticks (all packets pushed, one tick). The figure is
  the mixer's CPU time (its counter: decode, mix, encode) per second of media, in percent of a
  core, divided by the number of participants.

The encoded input is made before the clock starts. Functions here print nothing; run the
module for the figures: ``python benchmarks/_processing_codecs.py [--quick] [--rounds N]``.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import emit, parser, summary
from darktower.processing._mixer import Mixer
from darktower.processing._transcode import Transcoder
from tests.processing._media import Encoded, opus_frames, textured_video_frames

WIDTH, HEIGHT, FPS = 640, 480, 30
SOURCE_BITRATE = 1_500_000
TARGET_BITRATE = 800_000
PARTICIPANTS = 10
GOALS = {
    "transcode_vp8_h264_streams_per_core": 4.0,
    "transcode_vp8_vp9_streams_per_core": 2.0,
    "mix_cpu_per_participant_pct": 2.0,
}


def vp8_source(seconds: float) -> list[Encoded]:
    """``seconds`` of the busy 640x480 pattern at 30 fps in VP8."""
    return textured_video_frames(
        seconds, width=WIDTH, height=HEIGHT, fps=FPS, bitrate=SOURCE_BITRATE
    )


def transcode_cpu_per_media_s(source: list[Encoded], target: str) -> float:
    """CPU seconds one VP8 → ``target`` transcode spends per second of ``source``."""
    transcoder = Transcoder("VP8", target, TARGET_BITRATE, fps_hint=FPS)
    for frame in source:
        transcoder.push(frame.key, frame.timestamp_us, frame.payload)
    transcoder.flush()
    assert transcoder.counters.frames_out == len(source), transcoder.counters
    return transcoder.counters.cpu_s / (len(source) / FPS)


def transcode_streams_per_core(
    source: list[Encoded], rounds: int = 3
) -> dict[str, dict[str, float]]:
    """Streams per core of VP8 → H.264 and VP8 → VP9, measured interleaved ``rounds`` times."""
    samples: dict[str, list[float]] = {"H264": [], "VP9": []}
    for _ in range(max(3, rounds)):
        for target, found in samples.items():
            found.append(1.0 / transcode_cpu_per_media_s(source, target))
    return {target: summary(found) for target, found in samples.items()}


def mix_sources(seconds: float, participants: int = PARTICIPANTS) -> list[list[Encoded]]:
    """A tone per participant (200 Hz, 300 Hz, ...), ``seconds`` of 20 ms Opus packets."""
    return [opus_frames(seconds, 200.0 + 100.0 * i) for i in range(participants)]


def mix_cpu_per_participant_pct(sources: list[list[Encoded]]) -> float:
    """Percent of a core one participant of the mix costs: every participant speaks and
    hears everyone else."""
    mixer: Mixer[int, int] = Mixer()
    for i in range(len(sources)):
        mixer.add_source(i)
        mixer.add_listener(i, own=[i])
    ticks = min(len(packets) for packets in sources)
    for t in range(ticks):
        for i, packets in enumerate(sources):
            mixer.push(i, packets[t].timestamp_us, packets[t].payload)
        out = mixer.tick()
        assert len(out) == len(sources)
    media_s = ticks * 0.020
    return 100.0 * mixer.counters.cpu_s / media_s / len(sources)


def mix_cpu(sources: list[list[Encoded]], rounds: int = 3) -> dict[str, float]:
    return summary([mix_cpu_per_participant_pct(sources) for _ in range(max(3, rounds))])


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    video_s, audio_s = (3.0, 4.0) if args.quick else (10.0, 20.0)
    transcodes = transcode_streams_per_core(vp8_source(video_s), rounds)
    mix = mix_cpu(mix_sources(audio_s), rounds)
    for target, stats in transcodes.items():
        print(
            f"VP8 -> {target} 640x480@30 at {TARGET_BITRATE // 1000} kbit/s: "
            f"{stats['median']:.1f} streams per core "
            f"(min {stats['min']:.1f}, max {stats['max']:.1f}, {rounds} rounds of {video_s:g} s)"
        )
    print(
        f"mix of {PARTICIPANTS}: {mix['median']:.2f} % of a core per participant "
        f"(min {mix['min']:.2f}, max {mix['max']:.2f}, {rounds} rounds of {audio_s:g} s)"
    )
    figures = {
        "transcode_vp8_h264_streams_per_core": transcodes["H264"]["median"],
        "transcode_vp8_vp9_streams_per_core": transcodes["VP9"]["median"],
        "mix_cpu_per_participant_pct": mix["median"],
    }
    for name, goal in GOALS.items():
        met = figures[name] <= goal if name.endswith("_pct") else figures[name] >= goal
        print(
            f"{name}: {figures[name]:.2f} (goal {'≤' if name.endswith('_pct') else '≥'} "
            f"{goal:g}: {'met' if met else 'MISSED'})"
        )
    emit("processing_codecs", figures)


if __name__ == "__main__":
    main()
