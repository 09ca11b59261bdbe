"""The jobs' shared pipeline (docs/architecture.md §10), on made-up frames: reassembly of
encoded frames from wire frames when parts go missing, and the bounded queue's drop policy.
Every byte a job gets comes from the MH, which drops and resets for slow subscribers: a part
that does not continue a frame must never be glued onto it, and video resumes at a key frame.
The property test feeds random part sequences."""

from __future__ import annotations

import uuid

import hypothesis.strategies as st
from hypothesis import given, settings

from darktower.frames import Frame, FrameFlags, FrameHeader, FrameType
from darktower.media_processor._pipeline import Assembler, Drops, Encoded, FrameQueue

SID = uuid.uuid4()
END = FrameFlags.END_OF_FRAME
NONE = FrameFlags(0)


def part(kind: FrameType, ts: int, seq: int, payload: bytes, flags: FrameFlags = END) -> Frame:
    header = FrameHeader(
        frame_type=kind,
        stream_id=SID,
        timestamp_us=ts,
        sequence=seq,
        payload_length=len(payload),
        flags=flags,
    )
    return Frame.build(header, payload)


def feed(assembler: Assembler, frames: list[Frame]) -> list[Encoded]:
    return [e for f in frames if (e := assembler.push(f)) is not None]


KEY, DELTA, AUDIO = FrameType.VIDEO_KEY, FrameType.VIDEO_DELTA, FrameType.AUDIO


def test_parts_make_one_frame_and_single_part_frames_pass() -> None:
    drops = Drops()
    out = feed(
        Assembler(drops),
        [part(KEY, 1, 0, b"ab", NONE), part(KEY, 1, 1, b"cd"), part(DELTA, 2, 2, b"e")],
    )
    assert [(e.key, e.timestamp_us, e.payload) for e in out] == [
        (True, 1, b"abcd"),
        (False, 2, b"e"),
    ]
    assert not drops.counts


def test_a_lost_end_part_drops_the_frame_and_video_waits_for_a_key_frame() -> None:
    drops = Drops()
    # D1a arrives, D1b (seq 1) is lost, K2 (seq 2) comes whole, then a delta.
    out = feed(
        Assembler(drops),
        [part(DELTA, 1, 0, b"D1a", NONE), part(KEY, 2, 2, b"K"), part(DELTA, 3, 3, b"D")],
    )
    assert [e.payload for e in out] == [b"K", b"D"]  # never b"D1aK"
    assert drops.counts["incomplete"] == 1


def test_a_part_of_another_frame_ends_the_partial_one() -> None:
    drops = Drops()
    # No sequence gap (a publisher that numbers nothing), but another timestamp.
    out = feed(
        Assembler(drops),
        [part(DELTA, 1, 0, b"x", NONE), part(DELTA, 2, 0, b"y"), part(KEY, 3, 0, b"k")],
    )
    assert [e.payload for e in out] == [b"k"]  # the delta after the loss waits for the key
    assert drops.counts == {"incomplete": 1, "awaiting_key": 1}


def test_after_a_gap_the_tail_of_a_frame_whose_start_was_lost_is_dropped() -> None:
    drops = Drops()
    out = feed(
        Assembler(drops),
        [
            part(KEY, 1, 0, b"k"),
            part(KEY, 2, 5, b"middle", NONE),  # its start (seq 1-4) is lost
            part(KEY, 2, 6, b"tail"),
            part(KEY, 3, 7, b"k3"),
        ],
    )
    assert [e.payload for e in out] == [b"k", b"k3"]


def test_an_oversize_frame_is_dropped_with_the_rest_of_its_parts() -> None:
    drops = Drops()
    out = feed(
        Assembler(drops, max_bytes=4),
        [
            part(KEY, 1, 0, b"abc", NONE),
            part(KEY, 1, 1, b"def", NONE),  # over 4 bytes
            part(KEY, 1, 2, b"CCCCCC"),  # the rest of it: not a frame of its own
            part(DELTA, 2, 3, b"d"),  # a delta after the loss
            part(KEY, 3, 4, b"k"),
        ],
    )
    assert [e.payload for e in out] == [b"k"]
    assert drops.counts["oversize"] == 1


def test_audio_after_a_gap_goes_on_at_once() -> None:
    drops = Drops()
    out = feed(Assembler(drops), [part(AUDIO, 1, 0, b"a"), part(AUDIO, 3, 2, b"b")])
    assert [e.payload for e in out] == [b"a", b"b"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from([KEY, DELTA]),
            st.integers(0, 3),  # timestamp
            st.integers(0, 6),  # sequence step
            st.binary(max_size=6),
            st.booleans(),  # end of frame
        ),
        max_size=40,
    )
)
@settings(max_examples=100, deadline=None)
def test_whatever_arrives_every_frame_out_is_made_of_consecutive_parts_of_one_frame(
    parts: list[tuple[FrameType, int, int, bytes, bool]],
) -> None:
    assembler = Assembler(Drops(), max_bytes=16)
    seq = 0
    for kind, ts, step, payload, end in parts:
        seq += step
        out = assembler.push(part(kind, ts, seq, payload, END if end else NONE))
        if out is not None:
            assert out.timestamp_us == ts and out.key == (kind is KEY)
            assert len(out.payload) <= 16


def test_a_full_queue_drops_video_to_its_next_key_frame_and_keeps_audio_going() -> None:
    drops = Drops()
    queue = FrameQueue(drops, max_frames=1)
    assert queue.offer(_video(True, 1))
    assert not queue.offer(_video(False, 2))  # full
    assert queue.close() == [_video(True, 1)]
    queue = FrameQueue(drops, max_frames=1)
    assert queue.offer(_video(True, 1))
    assert not queue.offer(_video(False, 2))
    queue.receive.receive_nowait()
    assert not queue.offer(_video(False, 3))  # room again, but a delta after a gap
    assert queue.offer(_video(True, 4))
    assert drops.counts == {"queue_full": 2, "awaiting_key": 1}


def test_audio_is_dropped_alone_when_the_queue_is_full() -> None:
    queue = FrameQueue(Drops(), max_frames=1)
    assert queue.offer(_audio(1)) and not queue.offer(_audio(2))
    queue.receive.receive_nowait()
    assert queue.offer(_audio(3))  # audio frames stand alone: no wait for anything


def _video(key: bool, ts: int) -> Encoded:
    return Encoded("v", key, False, ts, b"")


def _audio(ts: int) -> Encoded:
    return Encoded("a", True, True, ts, b"")
