"""Shared measuring helpers for benchmarks/ (see the project's measuring rules).

* :func:`interleave` runs A, B, A, B, ... for ``rounds`` rounds and returns each side's samples.
* :func:`summary` gives median, min and max of samples.
* :func:`ratio_summary` gives the median, min and max of the per-round ratios A/B.
* :func:`percentiles` gives p50/p99 of latency samples.
* :func:`emit` prints the final JSON line ``{"bench": NAME, "figures": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from typing import Any


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="shorter run for CI smoke tests")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per side (≥ 3)")
    return p


def interleave(
    a: Callable[[], float], b: Callable[[], float], rounds: int = 3
) -> tuple[list[float], list[float]]:
    """Run ``a`` and ``b`` alternately ``rounds`` times; each returns one figure."""
    xs: list[float] = []
    ys: list[float] = []
    for _ in range(max(3, rounds)):
        xs.append(a())
        ys.append(b())
    return xs, ys


def summary(samples: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
    }


def ratio_summary(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    ratios = [x / y for x, y in zip(xs, ys, strict=True) if y]
    return (
        summary(ratios)
        if ratios
        else {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    )


def percentiles(samples: Sequence[float], qs: Sequence[float] = (50, 99)) -> dict[str, float]:
    ordered = sorted(samples)
    out: dict[str, float] = {}
    for q in qs:
        if not ordered:
            out[f"p{q:g}"] = float("nan")
            continue
        idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        out[f"p{q:g}"] = ordered[idx]
    return out


def flatten(prefix: str, stats: dict[str, float], unit: str) -> dict[str, float]:
    """``flatten("decode", {"median": 1}, "_per_s")`` -> ``{"decode_median_per_s": 1}``."""
    return {f"{prefix}_{k}{unit}": v for k, v in stats.items()}


def emit(name: str, figures: dict[str, Any]) -> None:
    rounded = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()}
    print(json.dumps({"bench": name, "figures": rounded}, sort_keys=True), flush=True)
