from __future__ import annotations

import math

import pytest

from darktower.metrics import Registry


def test_render_prometheus_text() -> None:
    reg = Registry()
    c = reg.counter("dt_requests_total", "Requests.", ["route", "status"])
    c.inc(1, "/a", "200")
    c.inc(2, "/a", "200")
    g = reg.gauge("dt_meetings", "Meetings.", read=lambda: [((), 7.0)])
    h = reg.histogram("dt_latency_seconds", "Latency.", buckets=(0.1, 1.0))
    h.observe(0.05)
    h.observe(0.5)
    h.observe(5)
    text = reg.render()
    assert 'dt_requests_total{route="/a",status="200"} 3' in text
    assert "dt_meetings 7" in text
    assert 'dt_latency_seconds_bucket{le="0.1"} 1' in text
    assert 'dt_latency_seconds_bucket{le="1"} 2' in text
    assert 'dt_latency_seconds_bucket{le="+Inf"} 3' in text
    assert "dt_latency_seconds_count 3" in text
    assert g.value() == 7.0
    assert h.quantile(0.5) == 1.0
    assert math.isinf(h.quantile(1.0))


def test_label_arity_and_duplicates_are_errors() -> None:
    reg = Registry()
    c = reg.counter("x_total", "x", ["a"])
    with pytest.raises(ValueError):
        c.inc(1)
    with pytest.raises(ValueError):
        reg.counter("x_total", "again")
    labelled = reg.histogram("h_seconds", "h", buckets=(1.0,), labelnames=["a"])
    bare = reg.histogram("b_seconds", "b", buckets=(1.0,))
    for observe in (lambda: labelled.observe(0.5), lambda: bare.observe(0.5, "extra")):
        with pytest.raises(ValueError):
            observe()


def test_label_values_escaped() -> None:
    reg = Registry()
    reg.counter("y_total", "y", ["p"]).inc(1, 'a"b\n')
    assert 'y_total{p="a\\"b\\n"} 1' in reg.render()
