"""Simulcast layer choice and key-frame-aligned switching (sans-IO)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darktower.frames import FrameType
from darktower.media_handler import Layer, LayerSwitcher, choose_layer
from darktower.model import StreamId

K, D = FrameType.VIDEO_KEY, FrameType.VIDEO_DELTA
LOW, MID, HIGH = StreamId("low"), StreamId("mid"), StreamId("high")
LAYERS = [
    # deliberately not in order: the choice ranks by resolution, not by list position
    Layer(MID, 640, 360, 800_000),
    Layer(HIGH, 1280, 720, 2_500_000),
    Layer(LOW, 320, 180, 250_000),
]

# (preferred, subscriber max_bitrate (0: none), available bitrate (None: unknown), chosen)
CHOICES = [
    ("", 0, None, HIGH),  # no preference, no limit: the best
    ("mid", 0, None, MID),  # preferred and nothing against it
    ("low", 0, 5_000_000, LOW),  # preferred is a ceiling too, not only a floor
    ("high", 0, 1_000_000, MID),  # preferred does not fit: the highest that does
    ("high", 900_000, None, MID),  # the subscriber's own cap counts like the estimate
    ("high", 3_000_000, 900_000, MID),  # the smaller of the two limits wins
    ("high", 900_000, 3_000_000, MID),
    ("high", 0, 2_500_000, HIGH),  # exactly at the layer's max bitrate fits
    ("mid", 0, 100_000, LOW),  # nothing fits: the lowest
    ("", 0, 0, LOW),  # an estimate of zero is a real estimate
    ("nope", 0, 300_000, LOW),  # an unknown preferred layer is no preference
    ("nope", 0, None, HIGH),
]


@pytest.mark.parametrize(("preferred", "max_bitrate", "available", "chosen"), CHOICES)
def test_choose_layer(preferred: str, max_bitrate: int, available: int | None, chosen: str) -> None:
    assert choose_layer(LAYERS, preferred, max_bitrate, available) == chosen


def test_choose_layer_edge_cases() -> None:
    with pytest.raises(ValueError):
        choose_layer([])
    only = [Layer(LOW, 320, 180, 250_000)]
    assert choose_layer(only, "", 0, 1) == LOW
    # a layer that announces no max bitrate is assumed to fit
    unknown = [Layer(LOW, 320, 180, 250_000), Layer(HIGH, 1280, 720, 0)]
    assert choose_layer(unknown, "", 0, 300_000) == HIGH


def test_starts_at_a_key_frame_of_the_target() -> None:
    sw = LayerSwitcher(MID)
    assert sw.current is None and sw.switching
    assert sw.take_key_frame_request() == MID
    assert sw.take_key_frame_request() is None
    assert [sw.on_frame(MID, D), sw.on_frame(LOW, K), sw.on_frame(MID, K), sw.on_frame(MID, D)] == [
        False,
        False,
        True,
        True,
    ]
    assert sw.current == MID and not sw.switching


def test_switches_only_at_a_key_frame_of_the_target_layer() -> None:
    sw = LayerSwitcher(LOW)
    assert sw.on_frame(LOW, K)
    sw.take_key_frame_request()
    sw.set_target(HIGH)
    assert sw.take_key_frame_request() == HIGH
    # until HIGH sends a key frame, LOW keeps flowing and HIGH deltas are useless
    assert sw.on_frame(LOW, D)
    assert not sw.on_frame(HIGH, D)
    assert not sw.on_frame(MID, K)  # a key frame of another layer is not the switch point
    assert sw.on_frame(LOW, K)
    assert sw.on_frame(HIGH, K)
    assert sw.current == HIGH
    assert not sw.on_frame(LOW, D) and not sw.on_frame(LOW, K)
    assert sw.on_frame(HIGH, D)
    assert sw.take_key_frame_request() is None


def test_going_back_to_the_current_layer_cancels_the_switch() -> None:
    sw = LayerSwitcher(LOW)
    sw.on_frame(LOW, K)
    sw.take_key_frame_request()
    sw.set_target(HIGH)
    sw.set_target(LOW)
    assert not sw.switching
    assert sw.take_key_frame_request() is None
    assert not sw.on_frame(HIGH, K)
    assert sw.on_frame(LOW, D)
    sw.set_target(LOW)  # unchanged target: no new request
    assert sw.take_key_frame_request() is None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("frame"), st.sampled_from([LOW, MID, HIGH]), st.sampled_from([K, D])),
            st.tuples(st.just("target"), st.sampled_from([LOW, MID, HIGH]), st.just(K)),
        ),
        max_size=80,
    )
)
def test_one_layer_at_a_time_and_each_starts_with_a_key_frame(
    script: list[tuple[str, StreamId, FrameType]],
) -> None:
    sw = LayerSwitcher(LOW)
    previous: StreamId | None = None
    for op, layer, frame_type in script:
        if op == "target":
            sw.set_target(layer)
            continue
        target_before = sw.target
        if not sw.on_frame(layer, frame_type):
            continue
        # Forwarded frames are runs of one layer; a new run is the target's key frame, so the
        # decoder never sees two layers interleaved nor a delta without its reference.
        if layer != previous:
            assert frame_type is K
            assert layer == target_before
        assert layer == sw.current
        previous = layer
