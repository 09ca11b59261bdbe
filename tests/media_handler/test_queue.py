"""SubscriptionQueue drop policy, KeyFrameGate and KeyFrameRequester (sans-IO)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darktower.frames import Frame, FrameFlags, FrameHeader, FrameType
from darktower.media_handler import (
    DropReason,
    KeyFrameRequester,
    MediaKind,
    QueuedFrame,
    SubscriptionQueue,
)
from darktower.media_handler._queue import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FRAMES,
    KEY_FRAME_REQUEST_INTERVAL_S,
    Dropped,
    KeyFrameGate,
)
from darktower.model import StreamId, StreamType

A, K, D = FrameType.AUDIO, FrameType.VIDEO_KEY, FrameType.VIDEO_DELTA
DISC = int(FrameFlags.DISCARDABLE)
EOF = int(FrameFlags.END_OF_FRAME)

Item = QueuedFrame[str]


def f(name: str, size: int = 10) -> Item:
    """A frame named by its type letter(s): 'a' audio, 'k' key, 'd' delta; a trailing '*' marks
    it discardable; digits after the letter only make the name unique."""
    kind = {"a": A, "k": K, "d": D}[name[0]]
    return QueuedFrame(kind, DISC if name.endswith("*") else EOF, size, name)


def names(frames: Sequence[Item] | SubscriptionQueue[str]) -> list[str]:
    return [fr.payload for fr in frames]


def dropped(drops: Sequence[Dropped[str]]) -> list[tuple[str, DropReason]]:
    return [(d.frame.payload, d.reason) for d in drops]


def fill(q: SubscriptionQueue[str], *items: str, size: int = 10) -> None:
    for name in items:
        assert q.push(f(name, size)) == ()


def drain(q: SubscriptionQueue[str]) -> list[str]:
    out = []
    while (item := q.pop()) is not None:
        out.append(item.payload)
    return out


# --- basics -------------------------------------------------------------------------------


def test_fifo_and_accounting() -> None:
    q: SubscriptionQueue[str] = SubscriptionQueue(MediaKind.AUDIO)
    assert q.empty and len(q) == 0 and q.pop() is None
    fill(q, "a1", "a2", "a3")
    assert len(q) == 3 and q.nbytes == 30 and not q.empty
    assert drain(q) == ["a1", "a2", "a3"]
    assert q.empty and q.nbytes == 0


def test_defaults_are_named_constants() -> None:
    q: SubscriptionQueue[str] = SubscriptionQueue()
    assert (q.max_frames, q.max_bytes) == (DEFAULT_MAX_FRAMES, DEFAULT_MAX_BYTES)
    with pytest.raises(ValueError):
        SubscriptionQueue(max_frames=0)


def test_kind_from_stream_type_and_first_frame() -> None:
    assert MediaKind.of_stream_type(StreamType.AUDIO) is MediaKind.AUDIO
    assert MediaKind.of_stream_type(StreamType.VIDEO_CAMERA) is MediaKind.VIDEO
    assert MediaKind.of_stream_type(StreamType.VIDEO_SCREEN) is MediaKind.VIDEO
    q: SubscriptionQueue[str] = SubscriptionQueue()
    q.push(f("k"))
    assert q.kind is MediaKind.VIDEO
    with pytest.raises(ValueError):
        q.push(f("a"))
    audio: SubscriptionQueue[str] = SubscriptionQueue(MediaKind.AUDIO)
    with pytest.raises(ValueError):
        audio.push(f("d"))


def test_queued_frame_of_a_decoded_frame_forwards_its_raw_bytes() -> None:
    header = FrameHeader(
        frame_type=FrameType.VIDEO_DELTA,
        stream_id=uuid.uuid4(),
        timestamp_us=1,
        sequence=2,
        flags=FrameFlags.DISCARDABLE,
    )
    frame = Frame.build(header, b"x" * 100)
    item = QueuedFrame.of(frame)
    assert item.frame_type is FrameType.VIDEO_DELTA
    assert item.discardable
    assert item.size == 146
    assert item.payload.tobytes() == frame.raw.tobytes()


# --- the drop policy, table-tested ----------------------------------------------------------

# (kind, max_frames, queued before, pushed, expected drops, expected queue afterwards)
POLICY = [
    # audio drops the oldest
    ("audio", 3, ["a1", "a2", "a3"], "a4", [("a1", "queue_full_audio_oldest")], ["a2", "a3", "a4"]),
    # discardable first, whatever its age
    ("audio", 3, ["a1", "a2*", "a3"], "a4", [("a2*", "discardable")], ["a1", "a3", "a4"]),
    # discardable: oldest first
    ("audio", 3, ["a1*", "a2*", "a3"], "a4", [("a1*", "discardable")], ["a2*", "a3", "a4"]),
    # an incoming discardable frame never evicts a non-discardable one
    ("audio", 2, ["a1", "a2"], "a3*", [("a3*", "discardable")], ["a1", "a2"]),
    ("audio", 2, ["a1*", "a2"], "a3*", [("a1*", "discardable")], ["a2", "a3*"]),
    # video: discardable deltas first
    ("video", 3, ["k1", "d1*", "d2"], "d3", [("d1*", "discardable")], ["k1", "d2", "d3"]),
    ("video", 3, ["k1", "d1", "d2"], "d3*", [("d3*", "discardable")], ["k1", "d1", "d2"]),
    # video: no discardable left, so every queued delta goes and the incoming one too
    (
        "video",
        3,
        ["k1", "d1", "d2"],
        "d3",
        [("d1", "queue_full_delta"), ("d2", "queue_full_delta"), ("d3", "queue_full_delta")],
        ["k1"],
    ),
    # a key frame replaces the queued deltas
    (
        "video",
        4,
        ["k1", "d1", "k2", "d2"],
        "k3",
        [("d1", "queue_full_delta"), ("d2", "queue_full_delta")],
        ["k1", "k2", "k3"],
    ),
    # discardable before deltas, even for a key frame
    ("video", 3, ["k1", "d1*", "d2"], "k2", [("d1*", "discardable")], ["k1", "d2", "k2"]),
    # a key frame always gets in: with only key frames queued, the oldest goes
    ("video", 2, ["k1", "k2"], "k3", [("k1", "queue_full_keyframe")], ["k2", "k3"]),
]


@pytest.mark.parametrize(("kind", "max_frames", "before", "pushed", "drops", "after"), POLICY)
def test_drop_policy(
    kind: str,
    max_frames: int,
    before: list[str],
    pushed: str,
    drops: list[tuple[str, str]],
    after: list[str],
) -> None:
    q: SubscriptionQueue[str] = SubscriptionQueue(
        MediaKind(kind), max_frames=max_frames, wait_for_key_frame=False
    )
    fill(q, *before)
    assert dropped(q.push(f(pushed))) == [(n, DropReason(r)) for n, r in drops]
    assert names(q) == after
    assert q.nbytes == 10 * len(after)


def test_byte_bound_drops_like_the_frame_bound() -> None:
    q: SubscriptionQueue[str] = SubscriptionQueue(MediaKind.AUDIO, max_bytes=250)
    fill(q, "a1", "a2", size=100)
    # 300 bytes would not fit: the oldest goes, although only 2 of 256 frames are queued
    assert dropped(q.push(f("a3", 100))) == [("a1", DropReason.QUEUE_FULL_AUDIO_OLDEST)]
    # a big one evicts as many as it must
    assert dropped(q.push(f("a4", 240))) == [
        ("a2", DropReason.QUEUE_FULL_AUDIO_OLDEST),
        ("a3", DropReason.QUEUE_FULL_AUDIO_OLDEST),
    ]
    assert names(q) == ["a4"] and q.nbytes == 240


def test_a_frame_larger_than_the_queue_is_dropped_and_video_waits() -> None:
    q: SubscriptionQueue[str] = SubscriptionQueue(
        MediaKind.VIDEO, max_bytes=100, wait_for_key_frame=False
    )
    fill(q, "k1", "d1")
    assert dropped(q.push(f("k2", 101))) == [("k2", DropReason.OVERSIZE)]
    assert names(q) == ["k1", "d1"]  # nothing was evicted for a frame that cannot fit
    assert q.waiting_for_key_frame and q.take_key_frame_request()
    assert dropped(q.push(f("d2"))) == [("d2", DropReason.WAITING_FOR_KEYFRAME)]


def test_after_a_delta_is_dropped_deltas_wait_for_the_next_key_frame() -> None:
    q: SubscriptionQueue[str] = SubscriptionQueue(
        MediaKind.VIDEO, max_frames=3, wait_for_key_frame=False
    )
    fill(q, "k1", "d1", "d2")
    assert not q.take_key_frame_request()
    q.push(f("d3"))
    assert q.waiting_for_key_frame
    assert q.take_key_frame_request()
    assert not q.take_key_frame_request()  # reported once
    assert drain(q) == ["k1"]
    # the queue has room again, but d4 depends on the lost d3
    assert dropped(q.push(f("d4"))) == [("d4", DropReason.WAITING_FOR_KEYFRAME)]
    assert dropped(q.push(f("d5*"))) == [("d5*", DropReason.WAITING_FOR_KEYFRAME)]
    fill(q, "k2", "d6")
    assert not q.waiting_for_key_frame
    assert drain(q) == ["k2", "d6"]


def test_mid_stream_subscriber_waits_for_a_key_frame_and_asks_for_one_throttled() -> None:
    stream = StreamId("video-1")
    requester = KeyFrameRequester()
    late, later = SubscriptionQueue[str](MediaKind.VIDEO), SubscriptionQueue[str](MediaKind.VIDEO)
    asked = []
    for now, q in [(10.0, late), (10.2, later)]:
        assert dropped(q.push(f("d1"))) == [("d1", DropReason.WAITING_FOR_KEYFRAME)]
        if q.take_key_frame_request() and requester.should_request(stream, now):
            asked.append(now)
        assert not q.take_key_frame_request()
    assert asked == [10.0]  # the second subscriber's request fell in the throttle window
    for q in (late, later):
        assert q.empty
        fill(q, "k1", "d2")
        assert drain(q) == ["k1", "d2"]


def test_budget_drop_keeps_the_stream_decodable() -> None:
    video: SubscriptionQueue[str] = SubscriptionQueue(MediaKind.VIDEO, wait_for_key_frame=False)
    fill(video, "k1", "d1")
    # a discardable delta dropped over budget breaks nothing
    assert dropped(video.drop(f("d2*"))) == [("d2*", DropReason.BUDGET)]
    fill(video, "d3")
    assert dropped(video.drop(f("d4"))) == [("d4", DropReason.BUDGET)]
    assert video.take_key_frame_request()
    assert dropped(video.push(f("d5"))) == [("d5", DropReason.WAITING_FOR_KEYFRAME)]
    assert drain(video) == ["k1", "d1", "d3"]  # what was queued before the loss still goes
    audio: SubscriptionQueue[str] = SubscriptionQueue(MediaKind.AUDIO)
    audio.drop(f("a1"))
    fill(audio, "a2")
    assert not audio.take_key_frame_request()


def test_key_frame_gate() -> None:
    gate = KeyFrameGate()
    assert gate.waiting and not gate.passes(D) and gate.passes(A)
    assert gate.take_key_frame_request() and not gate.take_key_frame_request()
    assert gate.passes(K) and gate.passes(D)
    gate.lost(D, DISC)
    gate.lost(A, EOF)
    assert not gate.waiting
    gate.lost(K, EOF)
    assert gate.waiting and not gate.passes(D)
    assert gate.passes(K)
    assert not gate.take_key_frame_request()  # satisfied before it was taken


def test_key_frame_requester_throttles_per_stream() -> None:
    s1, s2 = StreamId("s1"), StreamId("s2")
    r = KeyFrameRequester()
    step = KEY_FRAME_REQUEST_INTERVAL_S
    assert r.should_request(s1, 100.0)
    assert not r.should_request(s1, 100.0 + step * 0.99)
    assert r.should_request(s2, 100.1)
    assert r.should_request(s1, 100.0 + step)
    assert not r.should_request(s1, 100.0 + step * 1.5)
    r.forget(s1)
    assert r.should_request(s1, 100.0 + step * 1.5)


# --- properties ---------------------------------------------------------------------------

VIDEO_FRAME = st.sampled_from(["k", "d", "d", "d", "d*"])
AUDIO_FRAME = st.sampled_from(["a", "a", "a*"])


def ops(frame: st.SearchStrategy[str]) -> st.SearchStrategy[list[tuple[str, str, int]]]:
    op = st.tuples(
        st.sampled_from(["push"] * 6 + ["pop"] * 3 + ["budget"]),
        frame,
        st.integers(1, 120),
    )
    return st.lists(op, max_size=120)


def run(
    kind: MediaKind, max_frames: int, max_bytes: int, script: list[tuple[str, str, int]]
) -> tuple[SubscriptionQueue[str], list[Item], list[str], list[Dropped[str]]]:
    """Run ``script`` against a queue, checking the bounds and the room-making order after every
    step; return the queue, what was pushed, delivered (drained at the end) and dropped."""
    q: SubscriptionQueue[str] = SubscriptionQueue(kind, max_frames=max_frames, max_bytes=max_bytes)
    pushed: list[Item] = []
    delivered: list[str] = []
    drops: list[Dropped[str]] = []
    for i, (op, letter, size) in enumerate(script):
        if op == "pop":
            if (item := q.pop()) is not None:
                delivered.append(item.payload)
            continue
        frame = f(f"{letter[0]}{i}{letter[1:]}", size)
        pushed.append(frame)
        out = list(q.drop(frame) if op == "budget" else q.push(frame))
        drops += out
        assert len(q) <= max_frames and q.nbytes <= max_bytes
        assert q.nbytes == sum(x.size for x in q)
        room = [d for d in out if d.reason.value.startswith("queue_full")]
        if room:
            # discardable frames went first: none is left, and the pushed one was not one
            assert not frame.discardable
            assert not any(x.discardable for x in q)
        oldest = [d for d in out if d.reason is DropReason.QUEUE_FULL_AUDIO_OLDEST]
        if oldest:
            cut = max(pushed.index(d.frame) for d in oldest)
            assert all(pushed.index(x) > cut for x in q)
    delivered += drain(q)
    return q, pushed, delivered, drops


def check_conservation_and_order(
    pushed: list[Item], delivered: list[str], drops: list[Dropped[str]]
) -> None:
    order = {fr.payload: i for i, fr in enumerate(pushed)}
    dropped_names = [d.frame.payload for d in drops]
    assert sorted(delivered + dropped_names, key=order.__getitem__) == list(order)
    assert [order[n] for n in delivered] == sorted(order[n] for n in delivered)


def check_decodable(pushed: list[Item], delivered: list[str]) -> None:
    """A decoder's view: a delta needs every non-discardable frame since a delivered key."""
    got = set(delivered)
    broken = True  # joined mid-stream: nothing to decode against yet
    for fr in pushed:
        if fr.payload in got:
            if fr.frame_type is K:
                broken = False
            elif fr.frame_type is D:
                assert not broken, f"{fr.payload} delivered without its reference"
        elif not fr.discardable:
            broken = True


@settings(max_examples=300, deadline=None)
@given(
    max_frames=st.integers(1, 8),
    max_bytes=st.integers(100, 600),
    script=ops(VIDEO_FRAME),
)
def test_video_queue_properties(
    max_frames: int, max_bytes: int, script: list[tuple[str, str, int]]
) -> None:
    _, pushed, delivered, drops = run(MediaKind.VIDEO, max_frames, max_bytes, script)
    check_conservation_and_order(pushed, delivered, drops)
    check_decodable(pushed, delivered)
    assert not {d.reason for d in drops} & {DropReason.QUEUE_FULL_AUDIO_OLDEST}


@settings(max_examples=200, deadline=None)
@given(
    max_frames=st.integers(1, 8),
    max_bytes=st.integers(100, 600),
    script=ops(AUDIO_FRAME),
)
def test_audio_queue_properties(
    max_frames: int, max_bytes: int, script: list[tuple[str, str, int]]
) -> None:
    _, pushed, delivered, drops = run(MediaKind.AUDIO, max_frames, max_bytes, script)
    check_conservation_and_order(pushed, delivered, drops)
    assert {d.reason for d in drops} <= {
        DropReason.DISCARDABLE,
        DropReason.QUEUE_FULL_AUDIO_OLDEST,
        DropReason.OVERSIZE,
        DropReason.BUDGET,
    }


@settings(max_examples=100, deadline=None)
@given(script=ops(VIDEO_FRAME))
def test_a_key_frame_always_gets_in(script: list[tuple[str, str, int]]) -> None:
    q: SubscriptionQueue[str] = SubscriptionQueue(MediaKind.VIDEO, max_frames=4, max_bytes=300)
    for i, (op, letter, size) in enumerate(script):
        if op == "pop":
            q.pop()
        elif op == "push":
            q.push(f(f"{letter[0]}{i}{letter[1:]}", size))
    key = f("k-last", 120)
    assert key not in [d.frame for d in q.push(key)]
    assert list(q)[-1] is key
    assert len(q) <= 4 and q.nbytes <= 300
    assert not q.waiting_for_key_frame
