"""The session's own quality reports (darktower/client/_adaptive.py, docs/protocol.md §17.2):
what a subscription received (bitrate, loss from sequence gaps) caps what the MH sends, only
on a real change, sparsely; over the real stack the cap reaches the MH's route."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
import trio

from darktower.client import (
    DerivedStream,
    LayerFeedback,
    Publication,
    Reception,
    ReceptionSample,
    Report,
    SessionEnded,
    SessionEvent,
    StreamInfo,
    StreamPublished,
    Subscription,
    _adaptive,
)
from darktower.client._adaptive import (
    LOSS_HIGH,
    MIN_CAP,
    REPORT_MIN_GAP_S,
    REPORTS_PER_ROUND,
    Adaptation,
    decide,
)
from darktower.frames import Frame, FrameHeader, FrameType
from darktower.model import LeaveReason, StreamType
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._stack import WAIT_S, meeting, next_event
from .test_adaptive import LAYERS, record_routes

KEY = uuid.uuid4().bytes
OTHER = uuid.uuid4().bytes


# -- measuring ---------------------------------------------------------------------------------
def test_loss_is_counted_from_gaps_within_one_wire_stream() -> None:
    r = Reception()
    for seq in (0, 1, 3, 4, 8):  # 2, 5, 6, 7 missing
        r.on_frame(KEY, seq, 100)
    assert (r.frames, r.bytes, r.expected, r.lost) == (5, 500, 9, 4)
    r.on_frame(OTHER, 500, 100)  # a layer switched to: its first frame starts afresh
    r.on_frame(OTHER, 501, 100)
    r.on_frame(OTHER, 0, 100)  # numbering restarted (a publisher back): not loss
    r.on_frame(OTHER, 5000, 100)  # a jump past MAX_GAP: not loss either
    r.on_frame(OTHER, 5000, 100)  # a repeat
    assert (r.expected, r.lost) == (14, 4)


def test_frames_held_back_by_lastn_are_not_loss() -> None:
    """A subscription paused by LastN (docs/protocol.md §17.4) misses the publisher's frames
    meanwhile; after restart() the numbering starts a count of its own."""
    r = Reception()
    for seq in range(10):
        r.on_frame(b"cam", seq, 100)
    r.restart()
    for seq in range(150, 160):
        r.on_frame(b"cam", seq, 100)
    assert (r.expected, r.lost) == (20, 0)


def test_a_sample_is_what_came_since_the_previous_one() -> None:
    r = Reception()
    assert r.sample(10.0) is None
    for seq in range(0, 40, 2):  # every other frame lost
        r.on_frame(KEY, seq, 1000)
    sample = r.sample(11.0)
    assert sample == ReceptionSample(bitrate=160_000, loss=19 / 39, expected=39, interval_s=1.0)
    assert r.sample(12.0) == ReceptionSample(bitrate=0, loss=0.0, expected=0, interval_s=1.0)


def _sample(bitrate: int, loss: float, expected: int = 100) -> ReceptionSample:
    return ReceptionSample(bitrate, loss, expected, 1.0)


def test_the_cap_follows_loss_and_never_ratchets_down_by_itself() -> None:
    assert decide(None, 0, 0) == 0
    assert decide(_sample(400_000, 0.3, expected=5), 0, 0) == 0  # too few frames to tell
    assert decide(_sample(400_000, 0.3), 0, 0) == 340_000  # 400 kbit/s x (1 - 0.15)
    assert decide(_sample(400_000, 0.3), 0, 200_000) == 200_000  # the subscription's own max
    assert decide(_sample(40_000, 0.5), 0, 0) == MIN_CAP
    assert decide(_sample(340_000, 0.05), 340_000, 0) == 340_000  # between: hold
    assert decide(_sample(340_000, 0.0), 340_000, 0) == 0  # clean: lifted
    assert decide(_sample(340_000, 0.0), 340_000, 500_000) == 500_000


# -- deciding and sending, sans network --------------------------------------------------------
class Owner:
    """The session as the adaptation sees it; records the reports."""

    def __init__(self) -> None:
        self.publications: dict[str, Publication] = {}
        self.events: list[SessionEvent] = []
        self.sent: list[tuple[str, int, float]] = []
        self.end_reason: LeaveReason | None = None
        self.ended = trio.Event()
        self.refuse: Exception | None = None

    def put_event(self, event: SessionEvent) -> None:
        self.events.append(event)

    def ended_error(self) -> SessionEnded:
        return SessionEnded(LeaveReason.KICKED, "", session=self)

    async def send_quality(
        self, stream_id: str, *, available_bitrate: int, packet_loss: float = 0.0, rtt_ms: int = 0
    ) -> None:
        await trio.lowlevel.checkpoint()
        if self.refuse is not None:
            raise self.refuse
        self.sent.append((stream_id, available_bitrate, packet_loss))


def _subscription(owner: Owner, stream_id: str, max_bitrate: int = 0) -> Subscription:
    async def close(_: Subscription) -> None:
        pass

    options = sig.SubscriptionOptions(max_bitrate=max_bitrate)
    key = uuid.UUID(stream_id).bytes
    return Subscription(owner, stream_id, [key], 1024, close=close, options=options)


def _frames(sub: Subscription, start: int, count: int, step: int = 1, size: int = 1000) -> int:
    """``count`` frames numbered from ``start`` by ``step``; returns the number after the
    last (a batch from it has no gap at its start)."""
    seq = start
    for _ in range(count):
        header = FrameHeader(
            frame_type=FrameType.VIDEO_KEY,
            stream_id=uuid.UUID(bytes=sub.keys[0]),
            timestamp_us=0,
            sequence=seq,
        )
        sub._deliver(Frame.build(header, b"x" * (size - 46)))
        sub._receive.receive_nowait()  # the application took it
        seq += step
    return seq - step + 1


def _adaptation(
    owner: Owner, subs: Mapping[str, Subscription], kinds: dict[str, StreamType]
) -> Adaptation:
    def stream_of(stream_id: str) -> StreamInfo | None:
        kind = kinds.get(stream_id)
        return None if kind is None else StreamInfo(stream_id, kind, "publisher")

    return Adaptation(owner, subs, stream_of)


async def test_reports_go_on_change_only_and_sparsely(autojump_clock: Any) -> None:
    owner = Owner()
    video = str(uuid.uuid4())
    sub = _subscription(owner, video)
    adaptation = _adaptation(owner, {video: sub}, {video: StreamType.VIDEO_CAMERA})
    assert await adaptation.report() == []  # the first round starts the count
    seq = _frames(sub, 0, 50, step=2)  # half lost
    await trio.sleep(1.0)
    (report,) = await adaptation.report()
    assert report.stream_id == video and report.packet_loss > LOSS_HIGH
    assert report.available_bitrate == int(report.bitrate * (1 - report.packet_loss / 2))
    assert owner.sent == [(video, report.available_bitrate, pytest.approx(report.packet_loss))]

    # Loss in between the thresholds: the cap holds, nothing is sent.
    for _ in range(3):
        seq = _frames(sub, seq + 1, 19)  # 1 in 20 lost
        await trio.sleep(1.0)
        assert await adaptation.report() == []
    # Clean: the cap is lifted.
    seq = _frames(sub, seq, 30)
    await trio.sleep(1.0)
    (lifted,) = await adaptation.report()
    assert lifted.available_bitrate == 0 and lifted.packet_loss == 0.0
    # Lossy again within REPORT_MIN_GAP_S of that report: held back, sent once it passed
    # (the loss in between does not undo it).
    seq = _frames(sub, seq, 50, step=2)
    await trio.sleep(REPORT_MIN_GAP_S / 2)
    assert await adaptation.report() == []
    seq = _frames(sub, seq + 1, 19)
    await trio.sleep(REPORT_MIN_GAP_S / 2)
    (late,) = await adaptation.report()
    assert late.available_bitrate >= MIN_CAP
    assert [s[1] for s in owner.sent] == [report.available_bitrate, 0, late.available_bitrate]
    assert adaptation.reports == 3


async def test_no_reports_for_audio_derived_or_unknown_streams(autojump_clock: Any) -> None:
    owner = Owner()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    subs = {i: _subscription(owner, i) for i in ids}
    subs[ids[2]].derived = DerivedStream(str(uuid.uuid4()), "VP8", 100_000)
    kinds = {ids[0]: StreamType.AUDIO, ids[2]: StreamType.VIDEO_CAMERA}  # ids[1] unknown
    adaptation = _adaptation(owner, subs, kinds)
    await adaptation.report()
    for sub in subs.values():
        _frames(sub, 0, 50, step=2)
    await trio.sleep(1.0)
    assert await adaptation.report() == [] and owner.sent == []


async def test_a_round_sends_at_most_its_share(autojump_clock: Any) -> None:
    owner = Owner()
    ids = [str(uuid.uuid4()) for _ in range(REPORTS_PER_ROUND + 2)]
    subs = {i: _subscription(owner, i) for i in ids}
    adaptation = _adaptation(owner, subs, dict.fromkeys(ids, StreamType.VIDEO_CAMERA))
    await adaptation.report()
    for sub in subs.values():
        _frames(sub, 0, 50, step=2)
    await trio.sleep(1.0)
    assert len(await adaptation.report()) == REPORTS_PER_ROUND
    await trio.sleep(REPORT_MIN_GAP_S)
    for sub in subs.values():  # still lossy: the two left over go first
        _frames(sub, 200, 50, step=2)
    second = await adaptation.report()
    assert len(second) == REPORTS_PER_ROUND
    assert set(ids[REPORTS_PER_ROUND:]) <= {r.stream_id for r in second}


async def test_a_refused_report_is_counted_and_the_end_stops_them(autojump_clock: Any) -> None:
    from darktower.errors import NotFound

    owner = Owner()
    video = str(uuid.uuid4())
    sub = _subscription(owner, video)
    adaptation = _adaptation(owner, {video: sub}, {video: StreamType.VIDEO_CAMERA})
    await adaptation.report()
    _frames(sub, 0, 50, step=2)
    await trio.sleep(1.0)
    owner.refuse = NotFound("gone")
    assert await adaptation.report() == [] and adaptation.report_errors == 1
    # periodic: started, it ends quietly with the session
    owner.refuse = owner.ended_error()
    adaptation.start_reports(0.5)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(adaptation.run)
            for start in range(1000, 100_000, 1000):
                _frames(sub, start, 50, step=2)
                await trio.sleep(0.5)
                if nursery.child_tasks == set():
                    break
    assert adaptation.report_errors == 1
    _frames(sub, 200_000, 50, step=2)
    await trio.sleep(REPORT_MIN_GAP_S)
    with pytest.raises(SessionEnded):
        await adaptation.report()


def test_layer_feedback_is_exported() -> None:
    assert LayerFeedback("a", True) == LayerFeedback("a", True, 0, 0)
    assert Report("s", 1, 0.0, 2).available_bitrate == 1


# -- over the real stack ------------------------------------------------------------------------
# A frame not received this long after it was sent is taken as dropped (not a wait for an
# event: the test sends another frame then, and waits for that one).
RESEND_S = 1.0


async def test_reports_cap_and_lift_the_route_at_the_mh(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_adaptive, "REPORT_MIN_GAP_S", 0.0)
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        viewer = await m.join("viewer")
        routes = record_routes(m)
        video = await host.publish(StreamType.VIDEO_CAMERA, codec="VP8", simulcast_layers=LAYERS)
        low = video.layer_ids[0]
        await next_event(viewer, StreamPublished, lambda e: e.stream.stream_id == video.stream_id)
        sub = await viewer.subscribe(video.stream_id, preferred_layer=low)
        with trio.fail_after(WAIT_S):  # dynacast: the host drops the frames of a layer that is
            while not video.layer_active(low):  # paused until the MH's resume reaches it
                await video.wait_layers_changed()
        assert await viewer.adaptation.report() == []

        async def send(count: int, start: int, step: int) -> int:
            """Frames numbered from ``start`` by ``step``, until the last one came; returns
            the number after it. A loaded MH may drop some (more loss), the last one too: then
            one more follows in the same pattern each RESEND_S until one comes."""
            seq = start
            for _ in range(count):
                await video.send_frame(FrameType.VIDEO_KEY, b"v" * 1200, layer_id=low, sequence=seq)
                seq += step
            with trio.fail_after(WAIT_S):
                while True:
                    with trio.move_on_after(RESEND_S):
                        while (await sub.receive()).sequence < seq - step:
                            pass
                        return seq - step + 1
                    await video.send_frame(
                        FrameType.VIDEO_KEY, b"v" * 1200, layer_id=low, sequence=seq
                    )
                    seq += step

        seq = await send(30, 0, 2)  # every other frame missing
        (capped,) = await viewer.adaptation.report()
        assert capped.packet_loss >= 29 / 59
        assert capped.available_bitrate >= _adaptive.MIN_CAP
        route = routes[-1]
        assert route.source_stream_id == video.stream_id and not route.unroute
        assert route.options.target_bitrate == capped.available_bitrate
        assert route.options.preferred_layer == low

        for _ in range(5):  # clean frames lift it (a loaded MH may drop some: then again)
            seq = await send(60, seq, 1)
            if reports := await viewer.adaptation.report():
                break
        (lifted,) = reports
        assert lifted.available_bitrate == 0 and lifted.packet_loss < _adaptive.LOSS_LOW
        assert routes[-1].options.target_bitrate == 0


async def test_periodic_reports_run_in_the_session(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        viewer = await m.join("viewer")
        routes = record_routes(m)
        video = await host.publish(StreamType.VIDEO_CAMERA, codec="VP8", simulcast_layers=LAYERS)
        low = video.layer_ids[0]
        await next_event(viewer, StreamPublished, lambda e: e.stream.stream_id == video.stream_id)
        await viewer.subscribe(video.stream_id, preferred_layer=low)
        viewer.adaptation.start_reports(0.5)
        seq = 0
        with trio.fail_after(WAIT_S):
            while viewer.adaptation.reports == 0:  # lossy frames until a report went
                await video.send_frame(FrameType.VIDEO_KEY, b"v" * 1200, layer_id=low, sequence=seq)
                seq += 3
                await trio.sleep(0.02)  # paced as a camera
        assert any(r.options.target_bitrate > 0 for r in routes if not r.unroute)
        viewer.adaptation.stop_reports()
        assert viewer.adaptation.report_interval_s is None
