"""Media frame header and incremental decoder throughput, against bare ``struct`` loops.

The stream is one participant's realistic mix per second of media: 50 audio frames of 1,000
bytes (20 ms), 29 video deltas of 1,200 bytes and one 30,000-byte key frame (30 fps, a key frame
a second), in timestamp order, arriving in 1,200-byte chunks (about one QUIC packet each).

Measured in the same run, interleaved round by round:

* ``decoder``: ``FrameDecoder`` fed the chunks, every frame pulled and its payload touched.
* ``bare``: the minimum work over the same bytes, contiguous: ``unpack_from`` the header, slice
  the payload. This is the baseline of the goal (decoder >= 0.8x its frames/s).
* ``decoder_64k``: the decoder fed 64 KiB chunks, where most frames sit inside one chunk: the
  per-frame cost of the decoder's objects, next to ``bare`` without the chunking.
* ``bare_chunked``: the minimum inline code that does what the decoder does with the same chunks
  (a view when the frame is inside a chunk, one join when it spans chunks), without classes,
  checks or objects; it shows what of the gap is the chunking itself.

Plus ``FrameHeader.encode`` and ``FrameHeader.decode`` per second.
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


def run_decoder(chunks: list[bytes]) -> tuple[int, int]:
    decoder = FrameDecoder()
    frames = payload = 0
    for chunk in chunks:
        decoder.receive_data(chunk)
        for frame in decoder:
            frames += 1
            payload += len(frame.payload)
    decoder.end_of_stream()
    return frames, payload


def run_bare(stream: bytes) -> tuple[int, int]:
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


def run_bare_chunked(chunks: list[bytes]) -> tuple[int, int]:
    unpack_from = HEADER_STRUCT.unpack_from
    frames = payload = 0
    parts: list[memoryview | bytes] = []
    have = need = 0  # bytes of the partial frame, and its full size (0: header incomplete)
    for chunk in chunks:
        view = memoryview(chunk)
        end = len(view)
        pos = 0
        if have:
            if not need:
                pos = HEADER_SIZE - have
                if pos > end:
                    parts.append(view)
                    have += end
                    continue
                parts.append(view[:pos])
                head = b"".join(parts)
                parts = [head]
                have = HEADER_SIZE
                need = HEADER_SIZE + unpack_from(head)[5]
            missing = need - have
            if pos + missing > end:
                parts.append(view[pos:])
                have += end - pos
                continue
            parts.append(view[pos : pos + missing])
            pos += missing
            body = memoryview(b"".join(parts))[HEADER_SIZE:]
            frames += 1
            payload += len(body)
            have = 0
        while pos + HEADER_SIZE <= end:
            frame_end = pos + HEADER_SIZE + unpack_from(view, pos)[5]
            if frame_end > end:
                break
            body = view[pos + HEADER_SIZE : frame_end]
            frames += 1
            payload += len(body)
            pos = frame_end
        if pos < end:
            parts = [view[pos:]]
            have = end - pos
            need = frame_end - pos if have >= HEADER_SIZE else 0
    return frames, payload


def rate(fn: Callable[[], tuple[int, int]], passes: int, expect: tuple[int, int]) -> float:
    """Frames per second over ``passes`` runs of ``fn`` (checked to decode everything)."""
    start = time.perf_counter()
    for _ in range(passes):
        got = fn()
    elapsed = time.perf_counter() - start
    if got != expect:
        raise SystemExit(f"{fn} decoded {got}, expected {expect}")
    return expect[0] * passes / elapsed


def ops_per_s(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def main() -> None:
    args = _bench.parser(__doc__.splitlines()[0]).parse_args()
    rounds = args.rounds or (3 if args.quick else 9)
    seconds, passes = (10, 3) if args.quick else (30, 5)
    stream, n_frames, payload_bytes = build_stream(seconds)
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]
    big_chunks = [stream[i : i + BIG_CHUNK] for i in range(0, len(stream), BIG_CHUNK)]
    expect = (n_frames, payload_bytes)
    print(
        f"stream: {seconds} s of media, {n_frames} frames, {payload_bytes / 1e6:.2f} MB payload, "
        f"{len(chunks)} chunks of {CHUNK} B; {rounds} rounds x {passes} passes per side"
    )

    sides: dict[str, Callable[[], float]] = {
        "decoder": lambda: rate(lambda: run_decoder(chunks), passes, expect),
        "bare": lambda: rate(lambda: run_bare(stream), passes, expect),
        "decoder_64k": lambda: rate(lambda: run_decoder(big_chunks), passes, expect),
        "bare_chunked": lambda: rate(lambda: run_bare_chunked(chunks), passes, expect),
    }
    for side in sides.values():  # warm-up
        side()
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(max(3, rounds)):  # A, B, C, A, B, C, ... (BENCHMARKS.md rule 1)
        for name, side in sides.items():
            samples[name].append(side())

    figures: dict[str, float] = {}
    avg_payload = payload_bytes / n_frames
    for name, xs in samples.items():
        stats = _bench.summary(xs)
        figures.update(_bench.flatten(f"{name}_frames", stats, "_per_s"))
        mb = {k: v * avg_payload / 1e6 for k, v in stats.items()}
        figures.update(_bench.flatten(f"{name}_payload", mb, "_mb_per_s"))
        print(
            f"{name:>13}: {stats['median']:>11,.0f} frames/s  {mb['median']:>7,.0f} MB/s payload"
            f"  (min {stats['min']:,.0f}, max {stats['max']:,.0f})"
        )
    for side, base in (("decoder", "bare"), ("decoder", "bare_chunked"), ("decoder_64k", "bare")):
        ratio = _bench.ratio_summary(samples[side], samples[base])
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
    goal_ratio = figures["decoder_vs_bare_median_ratio"] >= 0.8
    goal_mb = figures["decoder_payload_median_mb_per_s"] >= 500
    print(
        f"goal decoder >= 0.8x bare: {'met' if goal_ratio else 'MISSED'}; "
        f">= 500 MB/s payload: {'met' if goal_mb else 'MISSED'}"
    )
    _bench.emit("frames", figures)


if __name__ == "__main__":
    main()
