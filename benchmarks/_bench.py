"""Shared measuring helpers for benchmarks/ (see the project's measuring rules).

* :func:`interleave` runs A, B, A, B, ... for ``rounds`` rounds and returns each side's samples.
* :func:`summary` gives median, min and max of samples.
* :func:`ratio_summary` gives the median, min and max of the per-round ratios A/B.
* :func:`percentiles` gives p50/p99 of latency samples.
* :func:`emit` prints the final JSON line ``{"bench": NAME, "figures": {...}}``.
* :func:`add_quic_core` / :func:`quic_cores` / :func:`core_prefix`: ``--quic-core`` for the
  benchmarks that run the server under test on each QUIC core side by side.
* :func:`histogram` / :func:`histogram_delta` / :func:`histogram_quantile`: a Prometheus
  histogram read from /metrics text, and a quantile of the observations between two reads
  (its check: ``python -m doctest benchmarks/_bench.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
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


# --- QUIC cores ------------------------------------------------------------------------------
# The load generators' core whatever the server's: only the server under test changes.
CLIENT_QUIC_CORE = "aioquic"


def qh3_imports() -> bool:
    try:
        import qh3  # noqa: F401
    except ImportError:
        return False
    return True


def add_quic_core(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quic-core",
        choices=("aioquic", "qh3", "both"),
        default=None,
        help="QUIC core of the server under test (default: both when qh3 imports, else aioquic)",
    )


def quic_cores(choice: str | None) -> list[str]:
    """The cores to run, the default core (aioquic) first."""
    choice = choice or ("both" if qh3_imports() else "aioquic")
    return ["aioquic", "qh3"] if choice == "both" else [choice]


def core_prefix(core: str) -> str:
    """Figure names of the default core carry no prefix; qh3's carry ``qh3_``."""
    return "" if core == "aioquic" else f"{core}_"


def round_order(sides: Sequence[Any], i: int) -> list[Any]:
    """Round ``i``'s order: forward on even rounds, reversed on odd ones (A B / B A)."""
    return list(sides) if i % 2 == 0 else list(reversed(sides))


# --- Prometheus histograms --------------------------------------------------------------------
_LE = re.compile(r'le="([^"]*)"')


def histogram(text: str, name: str) -> dict[float, float]:
    """{upper bound: cumulative count} of histogram ``name`` in /metrics ``text`` (``+Inf`` is
    ``math.inf``); empty when the metric is absent. Labels other than ``le`` are summed over."""
    out: dict[float, float] = {}
    prefix = name + "_bucket"
    for line in text.splitlines():
        if not line.startswith(prefix) or line[len(prefix) : len(prefix) + 1] not in ("{", " "):
            continue
        le = _LE.search(line)
        if le is None:
            continue
        bound = math.inf if le.group(1) == "+Inf" else float(le.group(1))
        out[bound] = out.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def histogram_delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: n - before.get(le, 0.0) for le, n in after.items()}


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """The ``q`` quantile (0..1) of cumulative ``buckets``, interpolated linearly inside its
    bucket (the first bucket starts at 0), as Prometheus' histogram_quantile; the highest
    finite bound if it falls in +Inf's; NaN without observations.

    >>> histogram_quantile(0.99, {0.001: 50, 0.002: 90, 0.005: 100, math.inf: 100})
    0.0047
    >>> histogram_quantile(0.5, {0.001: 0, 0.002: 100, math.inf: 100})
    0.0015
    >>> histogram_quantile(0.99, {0.001: 10, math.inf: 100})
    0.001
    >>> math.isnan(histogram_quantile(0.99, {}))
    True
    """
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return round(lower + (le - lower) * (rank - below) / (count - below), 12)
        lower, below = le, count
    return lower
