"""The end-to-end encryption benchmark's per-frame costs (benchmarks/e2ee.py, part 1): what
``SenderKey.encrypt`` and ``Keyring.decrypt`` cost a Python client per frame, each beside the
same run's baseline for the same payload, the plain frame's ``encode_frame`` and
``Frame.from_wire`` (what a client pays for a frame without encryption).

A round times, for one payload size, four loops over FRAMES ready-made headers or wires, in
turn: encode, encrypt, decode, decrypt (the decrypt loop takes the frames the encrypt loop
made, already decoded, as a subscriber's session hands them to its keyring). The figure of
each is the median over the rounds of the per-frame time; the ratios are the medians of the
per-round ratios to the baseline. The garbage collector is off inside each timed loop."""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks._bench import ratio_summary, summary
from darktower.e2ee import OVERHEAD, Keyring, SenderKey
from darktower.frames import Frame, FrameFlags, FrameHeader, FrameType, encode_frame

SIZES = (1200, 30_000)
# Frames per timed loop, by payload size: ~0.05-0.2 s per loop on an idle core.
FRAMES = {1200: 20_000, 30_000: 4_000}
SENDER = "publisher"


def _headers(n: int, size: int) -> list[FrameHeader]:
    stream = uuid.uuid4()
    return [
        FrameHeader(
            frame_type=FrameType.VIDEO_DELTA,
            stream_id=stream,
            timestamp_us=1_000_000 + i * 33_333,
            sequence=i,
            payload_length=size,
            flags=FrameFlags.END_OF_FRAME,
        )
        for i in range(n)
    ]


def _timed(loop: Callable[[], object], n: int) -> float:
    """µs per frame of ``loop`` (which handles ``n`` frames)."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        loop()
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed / 1000 / n


def one_round(size: int, n: int) -> dict[str, float]:
    """One round of the four loops for ``size``-byte payloads; µs per frame of each."""
    headers = _headers(n, size)
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    key = SenderKey.new()
    keyring = Keyring()
    now = time.monotonic()
    keyring.add(SENDER, key.generation, key.secret, now)
    encrypt, decrypt = key.encrypt, keyring.decrypt
    plain: list[bytes] = []
    sealed: list[bytes] = []
    out: dict[str, float] = {}
    out["encode"] = _timed(lambda: plain.extend([encode_frame(h, payload) for h in headers]), n)
    out["encrypt"] = _timed(lambda: sealed.extend([encrypt(h, payload) for h in headers]), n)
    out["decode"] = _timed(lambda: [Frame.from_wire(w) for w in plain], n)
    frames = [Frame.from_wire(w) for w in sealed]
    opened: list[Frame | None] = []
    out["decrypt"] = _timed(lambda: opened.extend([decrypt(SENDER, f, now) for f in frames]), n)
    # Every frame made it through, unchanged: the loops measured real work.
    assert len(sealed[0]) == len(plain[0]) + OVERHEAD
    assert all(f is not None and f.payload == payload for f in (opened[0], opened[-1]))
    assert sum(f is None for f in opened) == 0 and keyring.drops.total() == 0
    return out


def per_frame_costs(rounds: int, scale: float = 1.0) -> dict[int, dict[str, Any]]:
    """For each payload size: {name: summary of µs per frame} and {ratio name: summary of the
    per-round ratios}, over ``rounds`` rounds (sizes interleaved round by round); ``scale``
    shortens the loops (--quick)."""
    samples: dict[int, list[dict[str, float]]] = {size: [] for size in SIZES}
    for _ in range(rounds):
        for size in SIZES:
            samples[size].append(one_round(size, max(200, int(FRAMES[size] * scale))))
    out: dict[int, dict[str, Any]] = {}
    for size, runs in samples.items():
        column = {name: [r[name] for r in runs] for name in ("encode", "encrypt", "decode")}
        column["decrypt"] = [r["decrypt"] for r in runs]
        out[size] = {name: summary(xs) for name, xs in column.items()}
        out[size]["encrypt_ratio"] = ratio_summary(column["encrypt"], column["encode"])
        out[size]["decrypt_ratio"] = ratio_summary(column["decrypt"], column["decode"])
        out[size]["frames"] = max(200, int(FRAMES[size] * scale))
    return out


def micro_figures(costs: dict[int, dict[str, Any]]) -> dict[str, float]:
    figures: dict[str, float] = {}
    for size, c in costs.items():
        for name in ("encrypt", "decrypt"):
            figures[f"{name}_us_per_frame_{size}"] = c[name]["median"]
            figures[f"{name}_us_per_frame_{size}_min"] = c[name]["min"]
            figures[f"{name}_us_per_frame_{size}_max"] = c[name]["max"]
            figures[f"{name}_vs_plain_{size}_ratio"] = c[f"{name}_ratio"]["median"]
        figures[f"plain_encode_us_per_frame_{size}"] = c["encode"]["median"]
        figures[f"plain_decode_us_per_frame_{size}"] = c["decode"]["median"]
    small = min(costs)
    figures["encrypt_us_per_frame"] = costs[small]["encrypt"]["median"]
    figures["decrypt_us_per_frame"] = costs[small]["decrypt"]["median"]
    return figures


def print_costs(costs: dict[int, dict[str, Any]], rounds: int) -> None:
    for size, c in costs.items():
        for name, base, label in (
            ("encrypt", "encode", "encode_frame"),
            ("decrypt", "decode", "Frame.from_wire"),
        ):
            stats, ratio = c[name], c[f"{name}_ratio"]
            print(
                f"{size:>6}-byte payload: {name} {stats['median']:6.2f} us/frame (min "
                f"{stats['min']:.2f}, max {stats['max']:.2f}) | plain {label} "
                f"{c[base]['median']:6.2f} us/frame | ratio {ratio['median']:.2f} (min "
                f"{ratio['min']:.2f}, max {ratio['max']:.2f}); {rounds} rounds of "
                f"{c['frames']} frames",
                flush=True,
            )
