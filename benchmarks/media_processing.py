"""Media processing (docs/architecture.md §10): what recording, transcoding and mixing cost, and
whether a busy processor slows the SFU.

1. **Transcodes per core.** A busy 640x480 test pattern at 30 fps in VP8 (1.5 Mbit/s) through a
   ``Transcoder`` to H.264 and to VP9 at 800 kbit/s, round after round, interleaved; the
   transcoder's own CPU counter per second of media gives how many such streams one core
   sustains in real time (benchmarks/_processing_codecs.py). Goals: H.264 ≥ 4, VP9 ≥ 2.
2. **A 10-person mix.** Every participant speaks (a tone of its own) and hears a mix-minus of
   the others; the mixer's CPU per second of media, in percent of a core per participant
   (benchmarks/_processing_codecs.py). Goal: ≤ 2 %.
3. **Recordings.** PARTICIPANTS publishers, each sending VP8 640x480@30 (1.5 Mbit/s) and Opus,
   paced in real time from two client processes, through a real MH (a process) to the
   recording jobs of a real processor (``python -m darktower.processor``, a process, its
   certificate of role ``mp`` from the run's cluster CA); the driver plays the MC (register,
   route) and the MH (StartJob with the hidden participant's URL and token). The processor's
   CPU time from /proc over each window, in percent of a core per recorded participant (its
   video and audio in one file). Goal: ≤ 1 %. The share of the frames sent that were written
   and the MH's CPU are printed beside it.
4. **The SFU beside a busy processor.** A MEETING_SIZE-person meeting on an MH (the shape of
   benchmarks/_fanout_runs.py's meeting: 500 kbit/s video and audio each, every frame stamped
   by its sender, latency read at the subscribers, two client processes), the MH and the
   clients held to the first CPU, measured A/B, interleaved A B / B A, ≥ 3 rounds each: A with
   a processor idle, B with it running TRANSCODES VP8 640x480 → VP9 transcodes, more than one
   core's worth, on the last CPU (the processor, the MH feeding it and that MH's publisher,
   which run in A too, all at ``--processor-nice``, 10 by default as ``python -m darktower``
   runs its processor). The figure: the median of the per-round ratios of the subscribers' p99
   latency, B / A. Goal: ≤ 1.1. How busy each CPU was is printed beside it.

    python benchmarks/media_processing.py [--quick] [--rounds N] [--processor-nice N]
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import emit, parser

GOALS = {
    "transcode_vp8_h264_streams_per_core": (">=", 4.0),
    "transcode_vp8_vp9_streams_per_core": (">=", 2.0),
    "mix_cpu_per_participant_pct": ("<=", 2.0),
    "record_cpu_per_stream_pct": ("<=", 1.0),
    "sfu_p99_change_with_busy_processor": ("<=", 1.1),
}
PARTICIPANTS = 4  # recorded participants
PUBLISHER_PROCESSES = 2
MEETING_SIZE = 3  # the meeting's MH and clients fit on one core with room to spare
TRANSCODES = 8  # VP9 transcodes of the busy processor: more than a core's worth
# The busy side's CPU beside an idle processor is ~10 % busy; more is another process's load.
FOREIGN_LOAD = 0.3


def codecs_part(video_s: float, audio_s: float, rounds: int, figures: dict[str, Any]) -> None:
    from benchmarks._processing_codecs import (
        PARTICIPANTS as MIXED,
    )
    from benchmarks._processing_codecs import (
        mix_cpu,
        mix_sources,
        transcode_streams_per_core,
        vp8_source,
    )

    transcodes = transcode_streams_per_core(vp8_source(video_s), rounds)
    mix = mix_cpu(mix_sources(audio_s), rounds)
    for target, stats in transcodes.items():
        print(
            f"VP8 -> {target} 640x480@30 at 800 kbit/s: {stats['median']:.1f} streams per core "
            f"(min {stats['min']:.1f}, max {stats['max']:.1f}; {rounds} rounds of {video_s:g} s)",
            flush=True,
        )
    print(
        f"mix of {MIXED}: {mix['median']:.2f} % of a core per participant "
        f"(min {mix['min']:.2f}, max {mix['max']:.2f}; {rounds} rounds of {audio_s:g} s)",
        flush=True,
    )
    for name, target in (("h264", "H264"), ("vp9", "VP9")):
        stats = transcodes[target]
        figures[f"transcode_vp8_{name}_streams_per_core"] = stats["median"]
        figures[f"transcode_vp8_{name}_streams_per_core_min"] = stats["min"]
        figures[f"transcode_vp8_{name}_streams_per_core_max"] = stats["max"]
    figures["mix_cpu_per_participant_pct"] = mix["median"]
    figures["mix_cpu_per_participant_pct_min"] = mix["min"]
    figures["mix_cpu_per_participant_pct_max"] = mix["max"]


def main() -> None:
    from benchmarks._cluster import write_cluster
    from benchmarks._mp_load import make_media
    from benchmarks._mp_parts import record_part, sfu_part
    from darktower.stack_processor import NICE
    from darktower.transport import generate_dev_certificate

    p = parser((__doc__ or "").splitlines()[0])
    p.add_argument("--processor-nice", type=int, default=NICE, help="the busy processor's nice")
    args = p.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="dt-bench-mp-")
    figures: dict[str, Any] = {}
    try:
        cert = generate_dev_certificate()
        certfile, keyfile = cert.write(tmp)
        write_cluster(tmp)  # the MHs, the processors and the driver share its CA
        files = (str(certfile), str(keyfile), cert.sha256.hex())
        media_path = str(pathlib.Path(tmp) / "media.pickle")
        rates = make_media(media_path)
        print(
            f"media: VP8 640x480@30 at {rates['video_bits_per_s'] / 1e6:.2f} Mbit/s, "
            f"Opus at {rates['audio_bits_per_s'] / 1e3:.0f} kbit/s",
            flush=True,
        )

        codecs_part(*((2.0, 3.0) if args.quick else (6.0, 10.0)), max(3, rounds), figures)
        print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)

        warm, window, windows = (1.5, 2.0, 1) if args.quick else (3.0, 5.0, 3)
        record = record_part(
            files,
            media_path,
            str(pathlib.Path(tmp) / "recordings"),
            participants=PARTICIPANTS,
            processes=PUBLISHER_PROCESSES,
            warm=warm,
            window=window,
            windows=windows,
        )
        pct = record["pct"]
        print(
            f"recording {PARTICIPANTS} participants (VP8 640x480@30 + Opus each): processor "
            f"{pct['median']:.2f} % of a core per recording (min {pct['min']:.2f}, max "
            f"{pct['max']:.2f}; {windows} windows of {window:g} s); frames written "
            f"{record['frames_share']['median']:.0%} of those sent, dropped "
            f"{record['dropped']['median']:.0f}; MH {record['mh_share']['median']:.0%} of a core",
            flush=True,
        )
        figures.update(
            {
                "record_cpu_per_stream_pct": pct["median"],
                "record_cpu_per_stream_pct_min": pct["min"],
                "record_cpu_per_stream_pct_max": pct["max"],
                "record_frames_written_ratio": record["frames_share"]["median"],
                "record_mh_cpu_share_ratio": record["mh_share"]["median"],
            }
        )
        print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)

        sfu = sfu_part(
            files,
            media_path,
            str(pathlib.Path(tmp) / "recordings-busy"),
            size=MEETING_SIZE,
            rounds=rounds,
            window=2.0 if args.quick else 4.0,
            nice=args.processor_nice,
            transcodes=TRANSCODES,
        )
        _print_sfu(sfu, args.processor_nice)
        figures.update(_sfu_figures(sfu))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"total {time.monotonic() - t0:.0f} s", flush=True)
    for name, (sense, goal) in GOALS.items():
        value = figures[name]
        met = value >= goal if sense == ">=" else value <= goal
        print(f"{name}: {value:.2f} (goal {sense} {goal:g}: {'met' if met else 'MISSED'})")
    emit("media_processing", figures)


def _print_sfu(sfu: dict[str, Any], nice: int) -> None:
    ratio = sfu["ratio"]
    for name in ("idle", "busy"):
        side = sfu[name]
        print(
            f"{MEETING_SIZE}-person meeting on CPU {sfu['sfu_cpus']} beside a {name} processor "
            f"(on CPU {sfu['busy_cpus']}, nice {nice}): p99 "
            f"{side['p99']['median']:.2f} ms (min {side['p99']['min']:.2f}, max "
            f"{side['p99']['max']:.2f}), p50 {side['p50']['median']:.2f} ms, "
            f"{side['samples']} samples, delivered {side['delivered_share']:.0%}, MH "
            f"{side['mh_share']:.0%} of a core, processor {side['processor_share']:.0%} of a "
            f"core, drops {side['dropped']:.0f}; CPU {sfu['sfu_cpus']} busy "
            f"{side['sfu_cpu_busy']:.0%}, CPU {sfu['busy_cpus']} busy {side['busy_cpu_busy']:.0%}",
            flush=True,
        )
    print(
        f"  p99 busy/idle per round: {ratio['median']:.2f} (min {ratio['min']:.2f}, max "
        f"{ratio['max']:.2f}); pooled {sfu['pooled_ratio']:.2f}",
        flush=True,
    )
    idle = sfu["idle"]
    if idle["busy_cpu_busy"] > FOREIGN_LOAD or idle["delivered_share"] < 0.99:
        print(
            f"  WARNING: the machine was not quiet (CPU {sfu['busy_cpus']} "
            f"{idle['busy_cpu_busy']:.0%} busy beside the idle processor, "
            f"{idle['delivered_share']:.0%} delivered): the latency figures are not worth much",
            flush=True,
        )


def _sfu_figures(sfu: dict[str, Any]) -> dict[str, Any]:
    busy, idle = sfu["busy"], sfu["idle"]
    return {
        "sfu_p99_change_with_busy_processor": sfu["ratio"]["median"],
        "sfu_p99_change_with_busy_processor_min": sfu["ratio"]["min"],
        "sfu_p99_change_with_busy_processor_max": sfu["ratio"]["max"],
        "sfu_p99_change_pooled_ratio": sfu["pooled_ratio"],
        "sfu_busy_p99_ms": busy["p99"]["median"],
        "sfu_idle_p99_ms": idle["p99"]["median"],
        "sfu_busy_p50_ms": busy["p50"]["median"],
        "sfu_idle_p50_ms": idle["p50"]["median"],
        "sfu_busy_processor_cpu_share_ratio": busy["processor_share"],
        "sfu_idle_processor_cpu_share_ratio": idle["processor_share"],
        "sfu_busy_other_cpu_busy_ratio": busy["busy_cpu_busy"],
        "sfu_idle_other_cpu_busy_ratio": idle["busy_cpu_busy"],
        "sfu_busy_sfu_cpu_busy_ratio": busy["sfu_cpu_busy"],
        "sfu_idle_sfu_cpu_busy_ratio": idle["sfu_cpu_busy"],
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--publish":
        from benchmarks._mp_load import publishers

        publishers(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
