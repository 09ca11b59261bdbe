"""SpeakerTracker and last_n_holds on arbitrary input: the levels come from the network (any
value of the header's level byte, docs/protocol.md §17.1), the times from the MH's loop (any
order). Nothing raises, the list stays bounded, unique and made of known participants, the
rate limit holds, and forgetting everyone leaves nothing behind."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darktower.frames import audio_level_of
from darktower.media_handler._speaker import (
    MAX_SPEAKERS,
    MIN_UPDATE_INTERVAL_S,
    SpeakerTracker,
    VideoRoute,
    last_n_holds,
)
from darktower.model import ParticipantId, StreamId
from tests._fuzz import fuzz_settings

pytestmark = pytest.mark.fuzz

PEOPLE = [ParticipantId(f"p{i}") for i in range(14)]  # more than the list's cap
people = st.sampled_from(PEOPLE)
# A time step: mostly forward by a frame or a tick, sometimes backwards, huge or not a number.
steps = st.one_of(
    st.floats(min_value=0.0, max_value=0.2),
    st.floats(min_value=-5.0, max_value=5.0),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300]),
)
# The level the MH passes: audio_level_of of any header byte on any frame type.
levels = st.builds(
    lambda byte, frame_type: audio_level_of(bytes([1, frame_type]) + bytes(38) + bytes([byte])),
    st.integers(0, 255),
    st.integers(0, 2),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("level"), people, levels, steps),
        st.tuples(st.just("burst"), people, st.integers(0, 60), st.integers(1, 40)),
        st.tuples(st.just("tick"), steps),
        st.tuples(st.just("forget"), people),
        st.tuples(st.just("join"), people),
        st.tuples(st.just("last_n"), st.integers(-2, 20)),
    ),
    max_size=120,
)


@fuzz_settings()
@given(operations)
def test_any_levels_and_times(ops: list[tuple[Any, ...]]) -> None:
    tracker = SpeakerTracker()
    known: set[ParticipantId] = set()
    now = 0.0
    sent_at: float | None = None
    for op in ops:
        kind = op[0]
        if kind == "level":
            _, who, level, step = op
            now += step
            tracker.on_level(who, level, now)
            if level is not None:
                known.add(who)
        elif kind == "burst":  # a speaker for a while: frames every 20 ms, ticks every 100
            _, who, level, frames = op
            for i in range(frames):
                now += 0.02
                tracker.on_level(who, level, now)
                if i % 5 == 4:
                    sent_at = _tick(tracker, now, sent_at)
            known.add(who)
        elif kind == "tick":
            now += op[1]
            sent_at = _tick(tracker, now, sent_at)
        elif kind == "forget":
            tracker.forget(op[1])
            known.discard(op[1])
        elif kind == "join":
            tracker.join(op[1])
            known.add(op[1])
        else:
            n = op[1]
            order = tracker.last_n(n)
            assert len(order) == min(max(n, 0), len(known))
            assert len(set(order)) == len(order) and set(order) <= known
        speakers = tracker.speakers
        assert len(speakers) <= MAX_SPEAKERS
        assert len(set(speakers)) == len(speakers) and set(speakers) <= known
        assert len(tracker) == len(known)
    for who in PEOPLE:
        tracker.forget(who)
    assert len(tracker) == 0 and tracker.speakers == [] and tracker.last_n(5) == []


def _tick(tracker: SpeakerTracker, now: float, sent_at: float | None) -> float | None:
    """Tick; check the rate limit against the tracker's own clock (it ignores bad times)."""
    speakers = tracker.tick(now)
    if speakers is None:
        return sent_at
    clock = tracker._last_tick
    assert clock is not None
    if sent_at is not None:
        assert clock - sent_at >= MIN_UPDATE_INTERVAL_S - 1e-6
    assert speakers == tracker.speakers and len(speakers) <= MAX_SPEAKERS
    return clock


routes = st.lists(
    st.builds(
        VideoRoute,
        subscriber=people,
        publisher=people,
        stream_id=st.sampled_from([StreamId("s1"), StreamId("s2")]),
        pinned=st.booleans(),
    ),
    max_size=40,
)


@fuzz_settings()
@given(
    routes,
    st.lists(people, unique=True),
    st.integers(-1, 16),
    st.integers(0, 20),
    st.integers(0, 20),
)
def test_last_n_holds_on_anything(
    routes: list[VideoRoute], order: list[ParticipantId], n: int, members: int, room_size: int
) -> None:
    held = last_n_holds(routes, order, n=n, members=members, room_size=room_size)
    assert held <= set(routes)
    if members <= room_size:
        assert not held
    for route in routes:
        # Each subscriber sees the first n of the order other than itself, and its pins.
        shown = [p for p in order if p != route.subscriber][: max(n, 0)]
        expect_held = members > room_size and not route.pinned and route.publisher not in shown
        assert (route in held) == expect_held
