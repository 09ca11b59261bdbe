"""The layer choice by estimate with plain numbers: hysteresis (down at once, up after the
hold with a margin or at once after a probe), the next step up, and a switch down on
congestion that stops the old layer at once."""

from __future__ import annotations

from darktower.frames import FrameType
from darktower.media_handler._simulcast import (
    UP_HOLD_S,
    UP_MARGIN,
    Layer,
    LayerChooser,
    LayerSwitcher,
    step_up,
)
from darktower.model import StreamId

LOW, MID, HIGH = StreamId("low"), StreamId("mid"), StreamId("high")
LAYERS = (
    Layer(LOW, 160, 120, 60_000),
    Layer(MID, 320, 240, 160_000),
    Layer(HIGH, 640, 480, 500_000),
)
K, D = FrameType.VIDEO_KEY, FrameType.VIDEO_DELTA


def test_down_at_once() -> None:
    chooser = LayerChooser()
    assert chooser.choose(LAYERS, HIGH, "", 0, 200_000, now=0.0) == MID
    assert chooser.choose(LAYERS, MID, "", 0, 100_000, now=0.1) == LOW
    # Below the lowest layer: the lowest all the same.
    assert chooser.choose(LAYERS, LOW, "", 0, 10_000, now=0.2) == LOW


def test_up_only_after_the_hold_with_a_margin() -> None:
    chooser = LayerChooser()
    enough = int(160_000 * UP_MARGIN) + 1
    assert chooser.choose(LAYERS, LOW, "", 0, enough, now=10.0) == LOW
    assert chooser.choose(LAYERS, LOW, "", 0, enough, now=10.0 + UP_HOLD_S / 2) == LOW
    assert chooser.choose(LAYERS, LOW, "", 0, enough, now=10.0 + UP_HOLD_S) == MID
    # A share that fits the layer but not the margin never holds it up.
    chooser = LayerChooser()
    for i in range(50):
        assert chooser.choose(LAYERS, LOW, "", 0, 165_000, now=i * 0.1) == LOW


def test_a_break_in_the_hold_starts_it_again() -> None:
    chooser = LayerChooser()
    enough = int(160_000 * UP_MARGIN) + 1
    assert chooser.choose(LAYERS, LOW, "", 0, enough, now=0.0) == LOW
    assert chooser.choose(LAYERS, LOW, "", 0, 100_000, now=UP_HOLD_S / 2) == LOW
    assert chooser.choose(LAYERS, LOW, "", 0, enough, now=UP_HOLD_S) == LOW
    assert chooser.choose(LAYERS, LOW, "", 0, enough, now=UP_HOLD_S * 1.9) == LOW
    assert chooser.choose(LAYERS, LOW, "", 0, enough, now=UP_HOLD_S * 2) == MID


def test_a_probe_proves_the_rate_at_once() -> None:
    chooser = LayerChooser()
    assert chooser.choose(LAYERS, LOW, "", 0, 170_000, now=0.0, proven=True) == MID


def test_the_route_options_bound_the_choice() -> None:
    chooser = LayerChooser()
    assert chooser.choose(LAYERS, HIGH, MID, 0, 10_000_000, now=0.0) == MID
    assert chooser.choose(LAYERS, HIGH, "", 200_000, 10_000_000, now=0.0) == MID


def test_step_up_is_the_next_layer_up_to_the_best() -> None:
    assert step_up(LAYERS, LOW, HIGH) == MID
    assert step_up(LAYERS, MID, HIGH) == HIGH
    assert step_up(LAYERS, HIGH, HIGH) == HIGH
    assert step_up(LAYERS, LOW, MID) == MID
    assert step_up(LAYERS, StreamId("gone"), HIGH) == HIGH


def test_a_switch_down_at_once_stops_the_old_layer() -> None:
    sw = LayerSwitcher(HIGH)
    assert sw.on_frame(HIGH, K)
    assert sw.on_frame(HIGH, D)
    sw.set_target(LOW, at_once=True)
    assert sw.take_key_frame_request() == LOW
    assert not sw.on_frame(HIGH, D)  # nothing of the old layer any more
    assert not sw.on_frame(LOW, D)  # nor a delta of the new one
    assert sw.on_frame(LOW, K)
    assert sw.on_frame(LOW, D)


def test_a_switch_without_congestion_keeps_the_old_layer_until_the_key_frame() -> None:
    sw = LayerSwitcher(HIGH)
    assert sw.on_frame(HIGH, K)
    sw.set_target(LOW)
    assert sw.on_frame(HIGH, D)
    assert sw.on_frame(LOW, K)
    assert not sw.on_frame(HIGH, D)


def test_a_restart_waits_for_a_key_frame_and_asks_for_one() -> None:
    sw = LayerSwitcher(MID)
    assert sw.on_frame(MID, K)
    assert sw.take_key_frame_request() is None
    sw.restart()
    assert sw.take_key_frame_request() == MID
    assert not sw.on_frame(MID, D)
    assert sw.on_frame(MID, K)
