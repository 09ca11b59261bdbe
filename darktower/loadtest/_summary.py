"""The run's summary (text and JSON) and the live progress line."""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio

from ._stats import Reservoir, Stats, percentile

JOIN_QUANTILES = (50, 95, 99)
LATENCY_QUANTILES = (50, 99)
# Frames not sent on time, as a share of those sent, above which the summary warns that the
# load tester itself was the bottleneck.
SKIPPED_WARNING_RATIO = 0.02


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _quantiles(reservoir: Reservoir, qs: tuple[int, ...]) -> dict[str, float | None]:
    ordered = sorted(reservoir.samples)
    out = {f"p{q}_ms": _ms(percentile(ordered, q)) for q in qs}
    out["max_ms"] = _ms(ordered[-1]) if ordered else None
    return out


@attrs.frozen
class Summary:
    """Every figure of a finished (or interrupted) run. ``ok`` is the exit-code verdict: no
    error and at least one frame delivered."""

    target: str
    meetings: int
    participants_per_meeting: int
    publishers_per_meeting: int
    duration_s: float
    media_s: float
    stopped_early: bool
    participants: int
    joined: int
    join_failed: int
    join: dict[str, float | None]
    join_e2e: dict[str, float | None]
    frames_sent: int
    frames_expected: int
    frames_delivered: int
    drops: int
    gaps: int
    reordered: int
    unexpected: int
    delivered_per_s: float
    delivered_mbit_per_s: float
    latency: dict[str, float | None]
    latency_samples: int
    rate_limited_retries: int
    reconnects: int
    recover_p50_ms: float | None
    recover_p99_ms: float | None
    key_frame_requests: int
    send_skipped: int
    loadtester_cpu_share: float | None
    errors: dict[str, int]
    error_examples: dict[str, str]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def ok(self) -> bool:
        return self.error_count == 0 and self.frames_delivered > 0

    @classmethod
    def from_stats(
        cls,
        stats: Stats,
        *,
        target: str,
        meetings: int,
        participants: int,
        publishers: int,
        duration_s: float,
    ) -> Summary:
        started, stopped = stats.media_started_at, stats.media_stopped_at
        if started is None:
            media_s = 0.0
        else:
            media_s = (stopped if stopped is not None else trio.current_time()) - started
        per_s = stats.delivered / media_s if media_s > 0 else 0.0
        recover = sorted(stats.recover_s.samples)
        cpu_share = None
        if stats.cpu_at_start is not None and stats.cpu_at_stop is not None and media_s > 0:
            cpu_share = round((stats.cpu_at_stop - stats.cpu_at_start) / media_s, 3)
        return cls(
            target=target,
            meetings=meetings,
            participants_per_meeting=participants,
            publishers_per_meeting=publishers,
            duration_s=duration_s,
            media_s=round(media_s, 3),
            stopped_early=stats.stopped_early,
            participants=stats.participants_planned,
            joined=stats.joins_ok,
            join_failed=stats.joins_failed,
            join=_quantiles(stats.join_s, JOIN_QUANTILES),
            join_e2e=_quantiles(stats.join_e2e_s, JOIN_QUANTILES),
            frames_sent=stats.frames_sent,
            frames_expected=stats.expected,
            frames_delivered=stats.delivered,
            drops=stats.missing,
            gaps=stats.gaps,
            reordered=stats.reordered,
            unexpected=stats.unexpected,
            delivered_per_s=round(per_s, 1),
            delivered_mbit_per_s=round(
                stats.bytes_delivered * 8 / media_s / 1e6 if media_s > 0 else 0.0, 3
            ),
            latency=_quantiles(stats.latency_s, LATENCY_QUANTILES),
            latency_samples=stats.latency_s.count,
            rate_limited_retries=stats.retries,
            reconnects=stats.reconnects,
            recover_p50_ms=_ms(percentile(recover, 50)),
            recover_p99_ms=_ms(percentile(recover, 99)),
            key_frame_requests=stats.key_frame_requests,
            send_skipped=stats.send_skipped,
            loadtester_cpu_share=cpu_share,
            errors=dict(sorted(stats.errors.items())),
            error_examples=dict(sorted(stats.error_examples.items())),
        )

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["error_count"] = self.error_count
        out["ok"] = self.ok
        return out

    def json_line(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    def text(self) -> str:
        def q(figures: dict[str, float | None], *names: str) -> str:
            return "  ".join(f"{n.removesuffix('_ms')} {_fmt_ms(figures.get(n))}" for n in names)

        join_names = [f"p{x}_ms" for x in JOIN_QUANTILES] + ["max_ms"]
        lat_names = [f"p{x}_ms" for x in LATENCY_QUANTILES] + ["max_ms"]
        lines = [
            f"Load test against {self.target}: {self.meetings} meeting(s) x "
            f"{self.participants_per_meeting} participants ({self.publishers_per_meeting} "
            f"publishing), media {self.media_s:.1f} s of {self.duration_s:g} s"
            + (" (stopped early)" if self.stopped_early else ""),
            f"  joins           {self.joined}/{self.participants} ok, {self.join_failed} failed",
            f"  join latency    {q(self.join, *join_names)}   (connect -> JoinResponse)",
            f"  join end-to-end {q(self.join_e2e, *join_names)}   (connect -> media connected)",
            f"  frames          sent {self.frames_sent}  expected {self.frames_expected}  "
            f"delivered {self.frames_delivered}  ({self.delivered_per_s:.0f}/s, "
            f"{self.delivered_mbit_per_s:.2f} Mbit/s)",
            f"  drops           {self.drops} not delivered (expected - delivered, including"
            f" frames still queued when the drain ended), {self.gaps} sequence gaps,"
            f" {self.reordered} reordered",
            f"  delivery        {q(self.latency, *lat_names)}   ({self.latency_samples} frames)",
            f"  retries         {self.rate_limited_retries} after RATE_LIMITED; "
            f"{self.key_frame_requests} key frame requests answered",
            f"  reconnects      {self.reconnects}   recovered in p50 "
            f"{_fmt_ms(self.recover_p50_ms)}  p99 {_fmt_ms(self.recover_p99_ms)}",
        ]
        if self.loadtester_cpu_share is not None:
            lines.append(
                f"  load tester     {self.loadtester_cpu_share:.0%} of a core during media;"
                f" {self.send_skipped} frames not sent on time"
            )
        if self.send_skipped > SKIPPED_WARNING_RATIO * max(1, self.frames_sent):
            lines.append(
                "  WARNING         the load tester fell behind its own schedule: it is short of"
                " CPU, so the latencies above include its own delays. Spread the load: more"
                " --processes on a machine with idle cores, or load testers on other machines."
            )
        if self.errors:
            lines.append(f"  errors          {self.error_count}")
            for kind, count in self.errors.items():
                lines.append(f"    {count:6d}  {kind}: {self.error_examples.get(kind, '')}")
        else:
            lines.append("  errors          0")
        verdict = (
            "OK"
            if self.ok
            else ("FAILED: nothing delivered" if not self.error_count else "FAILED: errors")
        )
        lines.append(f"  result          {verdict}")
        return "\n".join(lines)


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def progress_line(stats: Stats, phase: str, duration_s: float) -> str:
    """One line of live figures, e.g. for stderr once a second."""
    now = trio.current_time()
    if stats.media_started_at is not None:
        end = stats.media_stopped_at if stats.media_stopped_at is not None else now
        clock = f"{end - stats.media_started_at:5.1f}/{duration_s:g}s"
    else:
        clock = f"{now - stats.started_at:5.1f}s"
    # The last samples kept: the recent ones until the reservoir is full, a random 1,000 after.
    recent = sorted(stats.latency_s.samples[-1000:])
    p50 = percentile(recent, 50)
    return (
        f"[{phase:<8} {clock}] joined {stats.joins_ok}/{stats.participants_planned}"
        f" ready {stats.ready}  sent {stats.frames_sent}  delivered {stats.delivered}"
        f"/{stats.expected}  gaps {stats.gaps}  errors {stats.error_count}"
        f"  latency p50 {_fmt_ms(_ms(p50))}"
    )
