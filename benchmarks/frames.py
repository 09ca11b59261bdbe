"""Media frame header and incremental decoder throughput, against bare ``struct`` loops.

The stream is one participant's realistic mix per second of media: 50 audio frames of 1,000
bytes (20 ms), 29 video deltas of 1,200 bytes and one 30,000-byte key frame (30 fps, a key frame
a second), in timestamp order, arriving in 1,200-byte chunks (about one QUIC packet each).

Measured in the same run, interleaved round by round (the order rotates every round), each
sample in CPU time of this process (``time.process_time``: steadier than wall time on a shared
machine; on an idle core the two agree):

* ``decoder``: ``FrameDecoder`` fed the 1.2 KB chunks, every frame pulled and its payload touched.
* ``bare``: the issue's baseline, a bare struct loop over the same layout, on the whole stream
  as one contiguous ``bytes``: ``unpack_from`` the header, slice the payload. Nothing else.
* ``bare_chunked``: a bare struct loop over the same layout fed the same 1.2 KB chunks, doing
  inline exactly the reassembly the decoder does (a view when a frame lies inside a chunk; a
  spanning frame's middle chunks kept, its edge pieces sliced, one join when it completes),
  without classes, checks, a ``Frame`` per frame or the iterator protocol.
* ``decoder_64k``: the decoder fed 64 KiB chunks, where most frames lie inside one chunk: the
  per-frame cost of the decoder's objects, next to ``bare``.

Which ratio the goal uses: the issue asks for the decoder at >= 0.8x "a bare struct loop over the
same layout". Against ``bare`` that compares chunked input with contiguous input, and the
chunking alone costs the bare loop 3 to 4x (``bare_chunked`` / ``bare`` ~ 0.25-0.3): no code
that reassembles 1.2 KB chunks in CPython can reach 0.8x of a loop that receives none. The
like-for-like comparison is ``bare_chunked`` (same input, same work, no API), so the goal figure
is ``decoder_vs_bare_chunked_median_ratio``; ``decoder_vs_bare_median_ratio`` (the issue's
literal baseline) is printed and emitted too, with its own verdict.

Plus ``FrameHeader.encode`` and ``FrameHeader.decode`` per second (interleaved, 3 rounds).
Run: ``python benchmarks/frames.py [--quick] [--rounds N]``.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench

from darktower.frames import (
    HEADER_SIZE,
    FrameDecoder,
    FrameFlags,
    FrameHeader,
    FrameType,
    encode_frame,
)
from darktower.frames._header import HEADER_STRUCT

CHUNK = 1200
BIG_CHUNK = 64 * 1024
AUDIO_BYTES, DELTA_BYTES, KEY_BYTES = 1000, 1200, 30_000
GOAL_RATIO = 0.8
GOAL_MB_PER_S = 500
GOAL_BASELINE = "bare_chunked"

Counts = tuple[int, int]  # (frames, payload bytes)


def build_stream(seconds: int) -> tuple[bytes, int, int]:
    """The wire bytes of ``seconds`` of the mix; returns (stream, frames, payload bytes)."""
    sid = uuid.uuid4()
    rnd = random.Random(7)
    timed: list[tuple[int, FrameType, int]] = []
    for s in range(seconds):
        base = s * 1_000_000
        timed += [(base + i * 20_000, FrameType.AUDIO, AUDIO_BYTES) for i in range(50)]
        timed.append((base, FrameType.VIDEO_KEY, KEY_BYTES))
        timed += [(base + i * 33_333, FrameType.VIDEO_DELTA, DELTA_BYTES) for i in range(1, 30)]
    timed.sort(key=lambda t: t[0])
    wire = []
    for seq, (ts, frame_type, size) in enumerate(timed):
        header = FrameHeader(
            frame_type=frame_type,
            stream_id=sid,
            timestamp_us=1_700_000_000_000_000 + ts,
            sequence=seq,
            flags=FrameFlags.END_OF_FRAME,
        )
        wire.append(encode_frame(header, rnd.randbytes(size)))
    stream = b"".join(wire)
    return stream, len(timed), len(stream) - HEADER_SIZE * len(timed)


def chunked(stream: bytes, size: int) -> list[bytes]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def run_decoder(chunks: list[bytes]) -> Counts:
    decoder = FrameDecoder()
    frames = payload = 0
    for chunk in chunks:
        decoder.receive_data(chunk)
        for frame in decoder:
            frames += 1
            payload += len(frame.payload)
    decoder.end_of_stream()
    return frames, payload


def run_bare(stream: bytes) -> Counts:
    unpack_from = HEADER_STRUCT.unpack_from
    view = memoryview(stream)
    end = len(view)
    pos = frames = payload = 0
    while pos < end:
        length = unpack_from(view, pos)[5]
        start = pos + HEADER_SIZE
        pos = start + length
        body = view[start:pos]
        frames += 1
        payload += len(body)
    return frames, payload


def run_bare_chunked(chunks: list[bytes]) -> Counts:
    unpack_from = HEADER_STRUCT.unpack_from
    frames = payload = 0
    parts: list[bytes] = []  # the partial frame's pieces
    missing = 0  # bytes still needed for the partial frame's header (known False) or payload
    known = False
    frame_end = 0
    for chunk in chunks:
        end = len(chunk)
        pos = 0
        view = None
        if missing:
            if missing > end:
                parts.append(chunk)
                missing -= end
                continue
            parts.append(chunk[:missing])
            pos = missing
            if not known:
                head = b"".join(parts)
                missing = unpack_from(head)[5]
                parts = [head]
                if pos + missing > end:
                    parts.append(chunk[pos:])
                    missing -= end - pos
                    known = True
                    continue
                parts.append(chunk[pos : pos + missing])
                pos += missing
            body = memoryview(b"".join(parts))[HEADER_SIZE:]
            frames += 1
            payload += len(body)
        else:
            view = memoryview(chunk)
        while pos + HEADER_SIZE <= end:
            frame_end = pos + HEADER_SIZE + unpack_from(chunk, pos)[5]
            if frame_end > end:
                break
            if view is None:
                view = memoryview(chunk)
            body = view[pos + HEADER_SIZE : frame_end]
            frames += 1
            payload += len(body)
            pos = frame_end
        if pos < end:
            parts = [chunk[pos:]]
            known = end - pos >= HEADER_SIZE
            missing = frame_end - end if known else HEADER_SIZE - (end - pos)
        else:
            parts = []
            missing = 0
    return frames, payload


def self_check(stream: bytes, expect: Counts) -> None:
    """Every side decodes every frame, on odd chunkings too (a wrong baseline would flatter)."""
    head = stream[: _frames_end(stream[:5000])]  # a few whole frames, for 1-byte chunks
    assert run_bare_chunked(chunked(head, 1)) == run_bare(head) == run_decoder(chunked(head, 1))
    for size in (45, 46, 47, 1200, 1246, 30_000):
        chunks = chunked(stream, size)
        assert run_bare_chunked(chunks) == expect == run_decoder(chunks), size
    cuts = sorted(random.Random(3).sample(range(1, len(stream)), 2000))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert run_bare_chunked(chunks) == expect == run_decoder(chunks)
    assert run_bare(stream) == expect


def _frames_end(data: bytes) -> int:
    """Where the last whole frame in ``data`` ends."""
    pos = 0
    while pos + HEADER_SIZE <= len(data):
        nxt = pos + HEADER_SIZE + HEADER_STRUCT.unpack_from(data, pos)[5]
        if nxt > len(data):
            break
        pos = nxt
    return pos


def sample(fn: Callable[[], Counts], passes: int, expect: Counts) -> tuple[float, float]:
    """Frames per CPU second and per wall second over ``passes`` runs of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(passes):
        got = fn()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if got != expect:
        raise SystemExit(f"{fn} decoded {got}, expected {expect}")
    return expect[0] * passes / cpu, expect[0] * passes / wall


def ops_per_s(fn: Callable[[], object], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return n / (time.process_time() - start)


def main() -> None:
    args = _bench.parser(__doc__.splitlines()[0]).parse_args()
    rounds = max(3, args.rounds or (3 if args.quick else 15))
    seconds, passes = (10, 3) if args.quick else (30, 5)
    stream, n_frames, payload_bytes = build_stream(seconds)
    chunks = chunked(stream, CHUNK)
    big_chunks = chunked(stream, BIG_CHUNK)
    expect = (n_frames, payload_bytes)
    self_check(stream, expect)
    print(
        f"stream: {seconds} s of media, {n_frames} frames, {payload_bytes / 1e6:.2f} MB payload, "
        f"{len(chunks)} chunks of {CHUNK} B; {rounds} rounds x {passes} passes per side; "
        f"rates per CPU second of this process"
    )

    sides: dict[str, Callable[[], Counts]] = {
        "decoder": lambda: run_decoder(chunks),
        "bare": lambda: run_bare(stream),
        "bare_chunked": lambda: run_bare_chunked(chunks),
        "decoder_64k": lambda: run_decoder(big_chunks),
    }
    names = list(sides)
    for name in names:  # warm-up
        sample(sides[name], passes, expect)
    cpu: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):  # A, B, C, D, B, C, D, A, ... (BENCHMARKS.md rule 1)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            c, w = sample(sides[name], passes, expect)
            cpu[name].append(c)
            wall[name].append(w)

    figures: dict[str, float | str | bool] = {}
    avg_payload = payload_bytes / n_frames
    for name in names:
        stats = _bench.summary(cpu[name])
        figures.update(_bench.flatten(f"{name}_frames", stats, "_per_s"))
        mb = {k: v * avg_payload / 1e6 for k, v in stats.items()}
        figures.update(_bench.flatten(f"{name}_payload", mb, "_mb_per_s"))
        figures[f"{name}_cpu_median_us_per_frame"] = 1e6 / stats["median"]
        figures[f"{name}_wall_frames_median_per_s"] = _bench.summary(wall[name])["median"]
        print(
            f"{name:>13}: {stats['median']:>11,.0f} frames/s  {mb['median']:>7,.0f} MB/s payload"
            f"  {1e6 / stats['median']:6.2f} us/frame  (min {stats['min']:,.0f}, "
            f"max {stats['max']:,.0f} frames/s)"
        )
    for side, base in (
        ("decoder", "bare_chunked"),
        ("decoder", "bare"),
        ("bare_chunked", "bare"),
        ("decoder_64k", "bare"),
    ):
        ratio = _bench.ratio_summary(cpu[side], cpu[base])
        figures.update(_bench.flatten(f"{side}_vs_{base}", ratio, "_ratio"))
        print(
            f"{side} / {base}: median {ratio['median']:.2f}x "
            f"(min {ratio['min']:.2f}, max {ratio['max']:.2f})"
        )

    header = FrameHeader(
        frame_type=FrameType.VIDEO_DELTA,
        stream_id=uuid.uuid4(),
        timestamp_us=1_700_000_000_000_000,
        sequence=123_456,
        payload_length=DELTA_BYTES,
        flags=FrameFlags.END_OF_FRAME,
    )
    wire = header.encode()
    n_ops = 20_000 if args.quick else 100_000
    enc, dec = _bench.interleave(
        lambda: ops_per_s(header.encode, n_ops),
        lambda: ops_per_s(lambda: FrameHeader.decode(wire), n_ops),
        rounds=3,
    )
    figures.update(_bench.flatten("header_encode", _bench.summary(enc), "_per_s"))
    figures.update(_bench.flatten("header_decode", _bench.summary(dec), "_per_s"))
    print(
        f"FrameHeader.encode: {_bench.summary(enc)['median']:,.0f}/s, "
        f"FrameHeader.decode: {_bench.summary(dec)['median']:,.0f}/s"
    )

    goal_ratio = float(figures[f"decoder_vs_{GOAL_BASELINE}_median_ratio"])
    literal_ratio = float(figures["decoder_vs_bare_median_ratio"])
    goal_mb = float(figures["decoder_payload_median_mb_per_s"])
    figures["goal_ratio_figure"] = f"decoder_vs_{GOAL_BASELINE}_median_ratio"
    figures["goal_ratio_met"] = goal_ratio >= GOAL_RATIO
    figures["goal_literal_ratio_met"] = literal_ratio >= GOAL_RATIO
    figures["goal_payload_met"] = goal_mb >= GOAL_MB_PER_S

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(
        f"goal, like-for-like (used): decoder >= {GOAL_RATIO}x {GOAL_BASELINE} "
        f"(same chunks, same reassembly): {goal_ratio:.2f}x, {verdict(goal_ratio >= GOAL_RATIO)}"
    )
    print(
        f"goal, issue's literal baseline: decoder on 1.2 KB chunks >= {GOAL_RATIO}x bare on "
        f"contiguous bytes: {literal_ratio:.2f}x, {verdict(literal_ratio >= GOAL_RATIO)} "
        f"(the chunking alone costs the bare loop "
        f"{figures['bare_chunked_vs_bare_median_ratio']:.2f}x)"
    )
    print(
        f"goal, payload: decoder >= {GOAL_MB_PER_S} MB/s: {goal_mb:,.0f} MB/s, "
        f"{verdict(goal_mb >= GOAL_MB_PER_S)}"
    )
    _bench.emit("frames", figures)


if __name__ == "__main__":
    main()
