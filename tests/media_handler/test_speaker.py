"""SpeakerTracker (docs/protocol.md §17.4) on synthetic audio levels in virtual time: one frame
per participant every 20 ms, a tick every 50 or 100 ms, no clock and no sleeps."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from darktower.media_handler._speaker import (
    MAX_SPEAKERS,
    MIN_UPDATE_INTERVAL_S,
    SpeakerTracker,
    VideoRoute,
    last_n_holds,
)
from darktower.model import ParticipantId, StreamId

A, B, C, D, E = (ParticipantId(p) for p in ("alice", "bob", "carol", "dave", "erin"))

# A participant's level (-dBov) at a time in ms, None for no frame (silence with DTX).
Voice = Callable[[int], int | None]

SILENT: Voice = lambda ms: None  # noqa: E731


def talk(level: int, start_ms: int = 0, end_ms: int = 10**9) -> Voice:
    return lambda ms: level if start_ms <= ms < end_ms else None


def both(first: Voice, second: Voice) -> Voice:
    def voice(ms: int) -> int | None:
        level = first(ms)
        return level if level is not None else second(ms)

    return voice


def run(
    tracker: SpeakerTracker,
    voices: dict[ParticipantId, Voice],
    start_ms: int,
    end_ms: int,
    tick_ms: int = 100,
    phase_ms: int = 0,
) -> list[tuple[int, list[ParticipantId]]]:
    """Frames every 20 ms (``phase_ms`` after each tick boundary) and ticks every ``tick_ms``
    from ``start_ms`` to ``end_ms``; the lists tick() returned, with their times in ms."""
    out: list[tuple[int, list[ParticipantId]]] = []
    for ms in range(start_ms, end_ms):
        if ms % 20 == phase_ms % 20:
            for participant_id, voice in voices.items():
                level = voice(ms)
                if level is not None:
                    tracker.on_level(participant_id, level, ms / 1000)
        if ms % tick_ms == 0:
            speakers = tracker.tick(ms / 1000)
            if speakers is not None:
                out.append((ms, speakers))
    return out


def first_with(lists: list[tuple[int, list[ParticipantId]]], dominant: ParticipantId) -> int | None:
    return next((ms for ms, speakers in lists if speakers and speakers[0] == dominant), None)


@pytest.mark.parametrize("tick_ms", [50, 100])
@pytest.mark.parametrize("phase_ms", [0, 7, 19])
@pytest.mark.parametrize("louder", [15, 8, 0])
def test_a_louder_speaker_takes_over_within_500_ms(
    tick_ms: int, phase_ms: int, louder: int
) -> None:
    tracker = SpeakerTracker()
    voices = {A: talk(25), B: talk(louder, start_ms=3000)}
    lists = run(tracker, voices, 0, 6000, tick_ms, phase_ms)
    assert lists[0][1] == [A] and lists[0][0] <= 500  # the first speaker of a silent room
    switched = first_with(lists, B)
    assert switched is not None and 3000 < switched <= 3500, lists
    assert lists[-1][1] == [B, A]
    assert len(lists) == 2  # no flapping while both go on


@pytest.mark.parametrize("tick_ms", [50, 100])
@pytest.mark.parametrize("cough_level", [0, 10, 25])
@pytest.mark.parametrize("cough_ms", [100, 200])  # the goal is 100 ms; 200 for a margin
def test_a_100_ms_cough_does_not_switch(tick_ms: int, cough_level: int, cough_ms: int) -> None:
    tracker = SpeakerTracker()
    voices = {
        A: talk(30),
        B: talk(cough_level, 3000, 3000 + cough_ms),
        C: talk(cough_level, 4510, 4510 + cough_ms),
    }
    lists = run(tracker, voices, 0, 8000, tick_ms)
    assert [speakers for _, speakers in lists] == [[A]]
    assert tracker.dominant == A


@pytest.mark.parametrize("tick_ms", [50, 100])
def test_a_cough_in_a_quiet_room_does_not_switch(tick_ms: int) -> None:
    tracker = SpeakerTracker()
    voices = {A: talk(30, 0, 2000), B: talk(0, 6000, 6100)}  # A stopped long before
    lists = run(tracker, voices, 0, 9000, tick_ms)
    assert [speakers for _, speakers in lists] == [[A]]


def test_a_quieter_voice_does_not_take_over_in_the_dominant_speakers_pauses() -> None:
    tracker = SpeakerTracker()

    def phrases(ms: int) -> int | None:  # 1.2 s phrases with 300 ms breaths
        return 20 if ms % 1500 < 1200 else None

    lists = run(tracker, {A: phrases, B: talk(40, 1000)}, 0, 8000)
    assert [speakers for _, speakers in lists] == [[A]]


def test_an_equally_loud_second_voice_does_not_take_over() -> None:
    tracker = SpeakerTracker()
    lists = run(tracker, {A: talk(20), B: talk(20, 2000)}, 0, 6000)
    assert [speakers for _, speakers in lists] == [[A]]


def test_the_next_speaker_after_silence_is_returned_at_once() -> None:
    tracker = SpeakerTracker()
    lists = run(tracker, {A: talk(20, 0, 1000), B: talk(35, 5000)}, 0, 7000)
    assert lists[0][1] == [A]
    switched = first_with(lists, B)
    assert switched is not None and 5000 < switched <= 5500
    assert lists[-1][1] == [B, A]


def test_a_turn_taking_conversation_follows_each_turn() -> None:
    tracker = SpeakerTracker()
    voices = {A: talk(20, 0, 2000), B: talk(25, 2000, 4000), C: talk(22, 4000, 6000)}
    lists = run(tracker, voices, 0, 7000)
    assert [speakers for _, speakers in lists] == [[A], [B, A], [C, B, A]]
    for (ms, _), turn in zip(lists, [0, 2000, 4000], strict=True):
        assert turn < ms <= turn + 500


def test_at_most_two_lists_a_second() -> None:
    tracker = SpeakerTracker()
    # Four voices taking over from each other every 300 ms, each louder than the last.
    order = [A, B, C, D]

    def voice(index: int) -> Voice:
        def level(ms: int) -> int | None:
            if ms >= 6000:
                return None
            return 40 - (ms // 300 % 8) * 5 if ms // 300 % 4 == index else None

        return level

    lists = run(tracker, {p: voice(i) for i, p in enumerate(order)}, 0, 8000, tick_ms=50)
    times = [ms for ms, _ in lists]
    assert len(times) >= 6  # it did keep switching
    assert all(b - a >= MIN_UPDATE_INTERVAL_S * 1000 for a, b in itertools.pairwise(times))
    # The last change is not lost: it goes out once the interval allows.
    assert lists[-1][1] == tracker.speakers
    assert tracker.tick(8.05) is None


def test_a_change_held_by_the_rate_limit_goes_out_at_the_first_tick_allowed() -> None:
    tracker = SpeakerTracker()
    run(tracker, {A: talk(20, 0, 1000)}, 0, 3000)
    # Two switches in quick succession: B, then C 300 ms later.
    lists = run(tracker, {B: talk(10, 3000, 3300), C: talk(5, 3300, 4000)}, 3000, 5000, 50)
    assert [speakers for _, speakers in lists] == [[B, A], [C, B, A]]
    assert lists[1][0] - lists[0][0] == 500


def test_forget() -> None:
    tracker = SpeakerTracker()
    voices = {A: talk(20, 0, 1000), B: talk(20, 1000, 2000), C: talk(20, 2000, 3000)}
    run(tracker, voices, 0, 3000)
    assert tracker.speakers == [C, B, A] and len(tracker) == 3
    tracker.forget(C)  # the dominant speaker leaves
    tracker.forget(ParticipantId("nobody"))  # unknown: harmless
    assert tracker.tick(3.1) == [B, A]
    assert tracker.dominant == B
    assert tracker.last_n(5) == [B, A]
    tracker.forget(A)
    tracker.forget(B)
    assert tracker.tick(3.7) == []
    assert len(tracker) == 0 and tracker.heard_at(A) is None
    # Someone new speaks: a fresh room.
    lists = run(tracker, {D: talk(20, 4000)}, 4000, 5000)
    assert [speakers for _, speakers in lists] == [[D]]


def test_forget_the_challenger_while_it_is_ahead() -> None:
    tracker = SpeakerTracker()
    run(tracker, {A: talk(30)}, 0, 2000)
    run(tracker, {A: talk(30), B: talk(5)}, 2000, 2150, tick_ms=50)
    tracker.forget(B)
    lists = run(tracker, {A: talk(30)}, 2150, 4000, tick_ms=50)
    assert lists == [] and tracker.speakers == [A]


def test_last_n_order() -> None:
    tracker = SpeakerTracker()
    for participant_id in (A, B, C, D):
        tracker.join(participant_id)
    # Nobody spoke yet: join order, so n videos show anyway.
    assert tracker.last_n(2) == [A, B]
    assert tracker.last_n(0) == [] and tracker.last_n(-1) == []
    assert tracker.speakers == [] and tracker.tick(0.0) is None
    run(tracker, {C: talk(20, 0, 1000), B: talk(20, 2000, 3000)}, 0, 4000)
    assert tracker.speakers == [B, C]
    assert tracker.last_n(3) == [B, C, A]
    assert tracker.last_n(10) == [B, C, A, D]
    tracker.join(B)  # joining again changes nothing
    assert tracker.last_n(4) == [B, C, A, D]


def test_last_n_goes_beyond_the_list_cap() -> None:
    tracker = SpeakerTracker()
    people = [ParticipantId(f"p{i}") for i in range(MAX_SPEAKERS + 3)]
    quiet = ParticipantId("quiet")
    tracker.join(quiet)
    for i, participant_id in enumerate(people):
        run(tracker, {participant_id: talk(20)}, i * 1000, i * 1000 + 1000)
    assert tracker.speakers == people[::-1][:MAX_SPEAKERS]
    assert tracker.last_n(len(people) + 1) == [*people[::-1], quiet]


def test_frames_without_a_level_are_not_counted() -> None:
    tracker = SpeakerTracker()
    tracker.tick(0.0)
    for ms in range(0, 2000, 20):
        tracker.on_level(A, None, ms / 1000)
        if ms % 100 == 0:
            assert tracker.tick(ms / 1000) is None
    assert len(tracker) == 0 and tracker.heard_at(A) is None
    tracker.on_level(A, 127, 2.0)  # silence, with a level: known, not speaking
    assert tracker.heard_at(A) == 2.0 and tracker.last_n(1) == [A]


def test_time_going_backwards_or_not_a_number_is_the_last_tick() -> None:
    tracker = SpeakerTracker()
    run(tracker, {A: talk(20)}, 0, 1000)
    assert tracker.speakers == [A]
    for bad in (0.5, float("nan"), float("inf"), -float("inf")):
        tracker.on_level(B, 0, bad)
        assert tracker.tick(bad) is None
    assert tracker.speakers == [A]


def _routes(
    pinned: frozenset[tuple[ParticipantId, ParticipantId]] = frozenset(),
) -> list[VideoRoute]:
    people = [A, B, C, D, E]
    return [
        VideoRoute(sub, pub, StreamId(f"{pub}-cam"), (sub, pub) in pinned)
        for sub in people
        for pub in people
        if sub != pub
    ]


def _held(held: set[VideoRoute]) -> set[tuple[ParticipantId, ParticipantId]]:
    return {(r.subscriber, r.publisher) for r in held}


def test_last_n_holds_all_but_the_n_most_recent_speakers() -> None:
    order = [C, A, B, D, E]  # C dominant, then A
    held = last_n_holds(_routes(), order[:3], n=2, members=5, room_size=4)
    # Everyone sees C and A; C and A themselves see each other and the next one, B.
    assert _held(held) == {(sub, pub) for sub in (B, D, E) for pub in (B, D, E) if sub != pub} | {
        (C, D),
        (C, E),
        (A, D),
        (A, E),
    }


def test_last_n_pinned_videos_pass() -> None:
    pins = frozenset({(A, E), (B, D)})
    held = last_n_holds(_routes(pins), [C, A, B], n=1, members=5, room_size=2)
    assert (A, E) not in _held(held) and (B, D) not in _held(held)
    assert (A, D) in _held(held) and (B, E) in _held(held)
    assert (A, C) not in _held(held) and (C, A) not in _held(held)  # C's own n: the next, A


def test_last_n_applies_only_above_the_room_size() -> None:
    assert last_n_holds(_routes(), [A], n=1, members=5, room_size=5) == set()
    assert last_n_holds(_routes(), [A, B], n=1, members=6, room_size=5)


def test_last_n_holds_with_the_trackers_order_in_a_silent_room() -> None:
    tracker = SpeakerTracker()
    for participant_id in (A, B, C, D, E):
        tracker.join(participant_id)
    held = last_n_holds(_routes(), tracker.last_n(3), n=2, members=5, room_size=3)
    # Nobody spoke: join order, so each subscriber still receives two videos.
    for sub in (A, B, C, D, E):
        assert sum(1 for r in _routes() if r.subscriber == sub and r not in held) == 2
    assert (A, B) not in _held(held) and (A, C) not in _held(held) and (C, A) not in _held(held)
