"""A small Prometheus text-format registry: counters, gauges and histograms with labels.

No I/O here; services render :func:`Registry.render` on ``/metrics``. Label sets are bounded
by the callers (route names, error codes, reasons), never by user input.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

LabelValues = tuple[str, ...]
_M = TypeVar("_M", bound="_Metric")

# Default latency buckets in seconds: 0.1 ms .. 10 s.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_
        self.labelnames = tuple(labelnames)

    def _key(self, labels: Sequence[str]) -> LabelValues:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(v) for v in labels)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_, labelnames)
        self._values: dict[LabelValues, float] = {}

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        # (Unlabelled: the media path counts each frame forwarded; no key to build.)
        key = labels if not labels and not self.labelnames else self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> Iterable[str]:
        yield from super().render()
        for key, value in sorted(self._values.items()):
            yield f"{self.name}{_labels(self.labelnames, key)} {_fmt(value)}"


class Gauge(_Metric):
    """A gauge set directly, or read from a callback at render time."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_: str,
        labelnames: Sequence[str] = (),
        *,
        read: Callable[[], Iterable[tuple[LabelValues, float]]] | None = None,
    ) -> None:
        super().__init__(name, help_, labelnames)
        self._values: dict[LabelValues, float] = {}
        self._read = read

    def set(self, value: float, *labels: str) -> None:
        self._values[self._key(labels)] = value

    def value(self, *labels: str) -> float:
        return dict(self._items()).get(self._key(labels), 0.0)

    def _items(self) -> Iterable[tuple[LabelValues, float]]:
        return self._read() if self._read is not None else self._values.items()

    def render(self) -> Iterable[str]:
        yield from super().render()
        for key, value in sorted(self._items()):
            yield f"{self.name}{_labels(self.labelnames, key)} {_fmt(value)}"


class CountsView(_Metric):
    """A counter with one label whose values a lower layer keeps in a mapping (e.g. the
    transport's refusals by cause, a ``collections.Counter``), read at render time."""

    kind = "counter"

    def __init__(self, name: str, help_: str, label: str, counts: Mapping[str, float]) -> None:
        super().__init__(name, help_, (label,))
        self._counts = counts

    def value(self, key: str) -> float:
        return float(self._counts.get(key, 0))

    def render(self) -> Iterable[str]:
        yield from super().render()
        for key, value in sorted(self._counts.items()):
            yield f"{self.name}{_labels(self.labelnames, (key,))} {_fmt(value)}"


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> None:
        super().__init__(name, help_, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}

    def observe(self, value: float, *labels: str) -> None:
        # (Unlabelled: the MH observes each frame's residence; no key to build.)
        key = labels if not labels and not self.labelnames else self._key(labels)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0] * (len(self.buckets) + 1)
            self._sums[key] = 0.0
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self._sums[key] += value

    def count(self, *labels: str) -> int:
        return sum(self._counts.get(self._key(labels), ()))

    def sum(self, *labels: str) -> float:
        return self._sums.get(self._key(labels), 0.0)

    def quantile(self, q: float, *labels: str) -> float:
        """Upper bound of the bucket holding quantile ``q`` (``inf`` past the last bucket)."""
        counts = self._counts.get(self._key(labels))
        if not counts:
            return math.nan
        target = q * sum(counts)
        running = 0
        for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
            running += n
            if running >= target:
                return bound
        return math.inf

    def render(self) -> Iterable[str]:
        yield from super().render()
        for key, counts in sorted(self._counts.items()):
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = 'le="' + _fmt(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}"
            yield f"{self.name}_sum{_labels(self.labelnames, key)} {_fmt(self._sums[key])}"
            yield f"{self.name}_count{_labels(self.labelnames, key)} {running}"


class Registry:
    """The metrics of one service. Registering the same name twice is a programming error."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: _M) -> _M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> Counter:
        return self.register(Counter(name, help_, labelnames))

    def gauge(
        self,
        name: str,
        help_: str,
        labelnames: Sequence[str] = (),
        *,
        read: Callable[[], Iterable[tuple[LabelValues, float]]] | None = None,
    ) -> Gauge:
        return self.register(Gauge(name, help_, labelnames, read=read))

    def counts(self, name: str, help_: str, label: str, counts: Mapping[str, float]) -> CountsView:
        return self.register(CountsView(name, help_, label, counts))

    def histogram(
        self,
        name: str,
        help_: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> Histogram:
        return self.register(Histogram(name, help_, labelnames, buckets))

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


# The transport's count, among its counters, of datagrams its UDP sockets' kernel receive
# buffers dropped: not a refusal, a metric of its own.
UDP_RECEIVE_OVERFLOWS = "udp_receive_overflows"


class _Without(Mapping[str, float]):
    """``counts`` without one key, read live."""

    def __init__(self, counts: Mapping[str, float], key: str) -> None:
        self._counts = counts
        self._key = key

    def __getitem__(self, key: str) -> float:
        if key == self._key:
            raise KeyError(key)
        return self._counts[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._counts if k != self._key)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _CountOf(_Metric):
    """A counter without labels whose value a lower layer keeps under one key of a mapping."""

    kind = "counter"

    def __init__(self, name: str, help_: str, counts: Mapping[str, float], key: str) -> None:
        super().__init__(name, help_)
        self._counts = counts
        self._count_key = key

    def value(self) -> float:
        return float(self._counts.get(self._count_key, 0))

    def render(self) -> Iterable[str]:
        yield from super().render()
        yield f"{self.name} {_fmt(self.value())}"


def count_refusals(registry: Registry, counts: Mapping[str, float]) -> CountsView:
    """``darktower_transport_refusals_total{cause}`` of a service: what its listeners refused
    or closed, by cause (the transport's counters; docs/protocol.md lists the causes); and
    ``darktower_transport_udp_receive_overflows_total``: datagrams its listeners' UDP sockets
    dropped on receive, from the same counters (the kernel's count, mostly a full buffer; the
    service's outgoing client connections are not counted)."""
    registry.register(
        _CountOf(
            "darktower_transport_udp_receive_overflows_total",
            "datagrams the kernel dropped on receive at the listeners' UDP sockets (mostly a full buffer)",
            counts,
            UDP_RECEIVE_OVERFLOWS,
        )
    )
    return registry.counts(
        "darktower_transport_refusals_total",
        "connections, sessions and datagrams the listeners refused or closed, by cause",
        "cause",
        _Without(counts, UDP_RECEIVE_OVERFLOWS),
    )
