"""What a run counts while it runs: joins, frames sent and delivered, gaps, latency, errors.

Everything lives in one :class:`Stats` object shared by the tasks of one trio run (no locks:
trio switches tasks only at checkpoints and nothing here awaits). Expected deliveries are
kept exact as frames are sent: a subscription counts from the moment its ``SubscribeStream``
was acknowledged, so each frame sent afterwards adds one expected delivery per subscriber.
"""

from __future__ import annotations

import collections
import random
from typing import Any

import trio

from ._limits import MAX_ERROR_KINDS, MAX_ERROR_MESSAGE, MAX_LATENCY_SAMPLES


class Reservoir:
    """At most ``size`` samples, uniformly chosen among all added (Vitter's algorithm R)."""

    def __init__(self, size: int = MAX_LATENCY_SAMPLES, *, seed: int | None = None) -> None:
        self.size = size
        self.count = 0
        self.samples: list[float] = []
        self._random = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        if len(self.samples) < self.size:
            self.samples.append(value)
            return
        slot = self._random.randrange(self.count)
        if slot < self.size:
            self.samples[slot] = value


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted samples (benchmarks/_bench.py's rule); None if empty."""
    if not ordered:
        return None
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


class PublishedStream:
    """One synthetic stream we publish: frames sent, and how many subscribers count it."""

    __slots__ = ("kind", "sent", "subscribers")

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "video" or "audio"
        self.sent = 0
        self.subscribers = 0


class SubscriptionStats:
    """One participant's subscription to one stream: what it received, by sequence."""

    __slots__ = ("base", "delivered", "gaps", "next_sequence", "reordered", "stream")

    def __init__(self, stream: PublishedStream) -> None:
        self.stream = stream
        # Frames numbered below this were sent before the subscription counted.
        self.base = stream.sent
        self.next_sequence = stream.sent
        self.delivered = 0
        self.gaps = 0
        self.reordered = 0


class Stats:
    """The live figures of one run (see the module docstring)."""

    def __init__(self, *, seed: int | None = None) -> None:
        self.participants_planned = 0
        self.joins_ok = 0
        self.joins_failed = 0
        self.ready = 0  # joined, publishing and subscribed to every expected stream
        self.left = 0
        self.join_s = Reservoir(seed=seed)
        self.join_e2e_s = Reservoir(seed=seed)
        self.latency_s = Reservoir(seed=seed)
        self.frames_sent = 0
        self.bytes_sent = 0
        self.expected = 0
        self.delivered = 0
        self.bytes_delivered = 0
        self.gaps = 0
        self.reordered = 0
        self.unexpected = 0  # frames of streams not (yet) counted, or without our stamp
        self.retries = 0  # calls repeated after RATE_LIMITED
        # Outages participants recovered from (the client library's Resumed events), and how
        # long each took (Reconnecting -> Resumed: both connections back).
        self.reconnects = 0
        self.recover_s = Reservoir(seed=seed)
        self.key_frame_requests = 0
        # Frames a publisher could not send on time (its task was late: this process is short
        # of CPU); its CPU seconds over the media phase say the same from the other side.
        self.send_skipped = 0
        self.cpu_at_start: float | None = None
        self.cpu_at_stop: float | None = None
        self.errors: collections.Counter[str] = collections.Counter()
        self.error_examples: dict[str, str] = {}
        self.meetings_created = 0
        self.started_at = trio.current_time()
        self.media_started_at: float | None = None
        self.media_started = trio.Event()  # set with media_started_at (tests, callers)
        self.media_stopped_at: float | None = None
        self.stopped_early = False
        self._caught_up = trio.Event()

    # -- errors ------------------------------------------------------------------------------
    def error(self, kind: str, detail: BaseException | str = "") -> None:
        """Count one error of ``kind`` (a short stable name, e.g. ``join:UNAUTHORIZED``)."""
        if kind not in self.errors and len(self.errors) >= MAX_ERROR_KINDS:
            kind = "other"
        self.errors[kind] += 1
        if kind not in self.error_examples:
            text = detail if isinstance(detail, str) else f"{type(detail).__name__}: {detail}"
            self.error_examples[kind] = text[:MAX_ERROR_MESSAGE]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def reconnected(self, outage_s: float) -> None:
        """A participant got its connections back after ``outage_s``."""
        self.reconnects += 1
        self.recover_s.add(outage_s)

    # -- media -------------------------------------------------------------------------------
    def subscribe(self, stream: PublishedStream) -> SubscriptionStats:
        """A subscription acknowledged now: frames sent from here on are expected."""
        stream.subscribers += 1
        return SubscriptionStats(stream)

    def unsubscribe(self, sub: SubscriptionStats) -> None:
        """``sub`` stops counting (its subscriber left): later frames are not expected of it."""
        sub.stream.subscribers -= 1

    def sent(self, stream: PublishedStream, size: int) -> None:
        stream.sent += 1
        self.frames_sent += 1
        self.bytes_sent += size
        self.expected += stream.subscribers

    def received(self, sub: SubscriptionStats, sequence: int, size: int, latency_s: float) -> None:
        self.latency_s.add(latency_s)
        if sequence < sub.base:
            self.unexpected += 1  # routed before the subscription's acknowledgement reached us
            return
        if sequence < sub.next_sequence:
            sub.reordered += 1
            self.reordered += 1
        else:
            skipped = sequence - sub.next_sequence
            sub.gaps += skipped
            self.gaps += skipped
            sub.next_sequence = sequence + 1
        sub.delivered += 1
        self.delivered += 1
        self.bytes_delivered += size
        if self.media_stopped_at is not None and self.delivered >= self.expected:
            self._caught_up.set()

    @property
    def missing(self) -> int:
        return max(0, self.expected - self.delivered)

    async def wait_caught_up(self) -> None:
        """Return once every expected frame was delivered (call after the publishers stop)."""
        if self.delivered >= self.expected:
            return
        await self._caught_up.wait()

    # -- several processes -------------------------------------------------------------------
    def to_raw(self, *, samples: bool = True) -> dict[str, Any]:
        """Everything :meth:`merge_raw` needs, as JSON-ready values (a worker's report);
        without ``samples`` only the counts (a progress report)."""
        raw: dict[str, Any] = {name: getattr(self, name) for name in _SUMMED}
        raw["errors"] = dict(self.errors)
        raw["error_examples"] = dict(self.error_examples)
        raw["stopped_early"] = self.stopped_early
        started, stopped = self.media_started_at, self.media_stopped_at
        now = trio.current_time()
        raw["media_s"] = 0.0 if started is None else (stopped or now) - started
        cpu0, cpu1 = self.cpu_at_start, self.cpu_at_stop
        raw["cpu_s"] = 0.0 if cpu0 is None or cpu1 is None else cpu1 - cpu0
        raw["phase_running"] = started is not None
        for name in _SAMPLED:
            reservoir: Reservoir = getattr(self, name)
            raw[name] = {"count": reservoir.count, "samples": reservoir.samples if samples else []}
        return raw

    def merge_raw(self, raw: dict[str, Any]) -> None:
        """Add a worker's :meth:`to_raw` report to these figures. The media window becomes the
        longest of the workers' (their rates add up), their CPU seconds add up."""
        for name in _SUMMED:
            setattr(self, name, getattr(self, name) + int(raw.get(name, 0)))
        for kind, count in dict(raw.get("errors", {})).items():
            self.errors[str(kind)] += int(count)
        for kind, text in dict(raw.get("error_examples", {})).items():
            self.error_examples.setdefault(str(kind), str(text))
        self.stopped_early = self.stopped_early or bool(raw.get("stopped_early"))
        if raw.get("phase_running"):
            now = trio.current_time()
            media_s = float(raw.get("media_s", 0.0))
            if self.media_started_at is None or now - self.media_started_at < media_s:
                self.media_started_at = now - media_s
            self.media_stopped_at = now
            self.cpu_at_start = self.cpu_at_start or 0.0
            self.cpu_at_stop = (self.cpu_at_stop or 0.0) + float(raw.get("cpu_s", 0.0))
        for name in _SAMPLED:
            part = raw.get(name) or {}
            reservoir = getattr(self, name)
            before = reservoir.count
            for value in part.get("samples", []):
                reservoir.add(float(value))
            reservoir.count = before + int(part.get("count", 0))


# Counters that add up over workers, and the sampled figures (Reservoir attributes).
_SUMMED = (
    "participants_planned",
    "joins_ok",
    "joins_failed",
    "ready",
    "left",
    "frames_sent",
    "bytes_sent",
    "expected",
    "delivered",
    "bytes_delivered",
    "gaps",
    "reordered",
    "unexpected",
    "retries",
    "reconnects",
    "key_frame_requests",
    "send_skipped",
    "meetings_created",
)
_SAMPLED = ("join_s", "join_e2e_s", "latency_s", "recover_s")
