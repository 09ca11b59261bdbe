"""Adaptive media at the client, over the real stack (docs/protocol.md §17): the MH's
feedback to a publisher reaches it as ``QualityUpdate.layers`` and pauses and resumes its
simulcast layers (dynacast), active speakers become events, ``pinned`` reaches the MH's route
and the audio level is in the header on the wire.

The MH's own estimates and speaker detection are not needed here: the tests put the MH's
telemetry events (``publisher_feedback``, ``active_speakers``) into the real MH's telemetry
stream, which the real MC forwards as it does the MH's own. Where a test drives a
publication's layers by itself, the publisher's session takes only the feedback the test made
(:func:`only_test_feedback`): the MH's own (who receives what, by its estimates) would move the
layers too.
"""

from __future__ import annotations

import pathlib
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from darktower.client import (
    ActiveSpeakers,
    KeyFrameRequest,
    LayerFeedback,
    MeetingSession,
    QualityUpdate,
    SimulcastLayer,
    StreamPublished,
)
from darktower.frames import FrameType
from darktower.model import StreamType
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb

from ._stack import WAIT_S, Meeting, meeting, next_event

LAYERS = [
    SimulcastLayer(160, 120, 50_000),
    SimulcastLayer(320, 240, 150_000),
    SimulcastLayer(640, 480, 500_000),
]


def telemetry(m: Meeting, **event: Any) -> None:
    """One telemetry event of the meeting, as the MH's own would go to the MC."""
    hub = m.stack.mh.handler.telemetry_hub
    hub.publish(mh_pb.TelemetryEvent(meeting_id=m.created.meeting_id, **event))


def feedback(m: Meeting, stream_id: str, marker: int, **active: bool) -> None:
    """The MH's feedback to a publisher: each layer named active or not; ``marker`` (the
    available bitrate) tells this update's QualityUpdate from any other."""
    layers = [
        common_pb2.LayerFeedback(layer_id=layer, active=on, subscribers=int(on))
        for layer, on in active.items()
    ]
    telemetry(
        m,
        publisher_feedback=mh_pb.PublisherFeedback(
            stream_id=stream_id, available_bitrate=marker, layers=layers
        ),
    )


MARKERS = range(777_000, 778_000)  # the available_bitrate of the tests' feedback


def only_test_feedback(session: MeetingSession) -> None:
    """``session`` takes no quality update about its publications but the tests' own."""
    handle = session._handlers["quality"]

    def filtered(m: Any) -> None:
        if m.quality.stream_id not in session.publications or (
            m.quality.available_bitrate in MARKERS
        ):
            handle(m)

    session._handlers["quality"] = filtered


def record_routes(m: Meeting) -> list[mh_pb.RouteMediaCommand]:
    """Every RouteMedia the real MH is asked for from now on."""
    handler = m.stack.mh.handler
    seen: list[mh_pb.RouteMediaCommand] = []
    route: Callable[[mh_pb.RouteMediaCommand], Awaitable[Any]] = handler.route_media

    async def recording(request: mh_pb.RouteMediaCommand) -> Any:
        seen.append(request)
        return await route(request)

    handler.route_media = recording
    return seen


async def publish_simulcast(host: MeetingSession) -> Any:
    return await host.publish(StreamType.VIDEO_CAMERA, codec="VP8", simulcast_layers=LAYERS)


async def test_feedback_pauses_a_layer_and_resumes_it_with_a_key_frame(
    tmp_path: pathlib.Path,
) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        only_test_feedback(host)
        video = await publish_simulcast(host)
        low, mid, high = video.layer_ids
        assert video.paused_layers == frozenset() and video.layer_active(low)
        with trio.fail_after(WAIT_S):
            await m.stack.mh.handler.telemetry_hub.wait_listeners(1)

        changed: list[frozenset[str]] = []
        async with trio.open_nursery() as nursery:

            async def wait_change() -> None:
                changed.append(await video.wait_layers_changed())

            nursery.start_soon(wait_change)
            await trio.testing.wait_all_tasks_blocked()
            feedback(m, video.stream_id, 777_001, **{low: False, mid: True, high: True})
            update = await next_event(host, QualityUpdate, lambda q: q.available_bitrate == 777_001)
        assert update.stream_id == video.stream_id
        assert update.layers == (
            LayerFeedback(low, False, 0, 0),
            LayerFeedback(mid, True, 1, 0),
            LayerFeedback(high, True, 1, 0),
        )
        assert changed == [frozenset({low})] and video.quality == update
        assert video.paused_layers == frozenset({low}) and not video.layer_active(low)
        assert video.layer_active(high)

        # A paused layer's frames stay at the client (counted); the others go.
        before = video.publishers[low].sequence
        assert await video.send_frame(FrameType.VIDEO_KEY, b"k" * 500, layer_id=low) == b""
        assert await video.send_frame(FrameType.VIDEO_DELTA, b"d" * 500, layer_id=low) == b""
        assert video.paused_dropped == 2 and video.publishers[low].sequence == before
        assert await video.send_frame(FrameType.VIDEO_KEY, b"K" * 500, layer_id=high)

        # Resumed: the application is asked for a key frame of that layer, as the MH asks,
        # and the layer sends nothing before it.
        feedback(m, video.stream_id, 777_002, **{low: True})
        await next_event(host, QualityUpdate, lambda q: q.available_bitrate == 777_002)
        asked = await next_event(host, KeyFrameRequest)
        assert asked == KeyFrameRequest(low)
        assert video.paused_layers == frozenset() and video.layer_changes == 2
        assert await video.send_frame(FrameType.VIDEO_DELTA, b"d" * 500, layer_id=low) == b""
        assert video.publishers[low].sequence == before
        assert await video.send_frame(FrameType.VIDEO_KEY, b"k" * 500, layer_id=low)
        assert await video.send_frame(FrameType.VIDEO_DELTA, b"d" * 500, layer_id=low)
        assert video.publishers[low].sequence == before + 2


async def test_a_subscriber_gets_the_resumed_layer_from_its_key_frame(
    tmp_path: pathlib.Path,
) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        only_test_feedback(host)
        viewer = await m.join("viewer")
        video = await publish_simulcast(host)
        low = video.layer_ids[0]
        await next_event(viewer, StreamPublished, lambda e: e.stream.stream_id == video.stream_id)
        sub = await viewer.subscribe(video.stream_id, preferred_layer=low)
        with trio.fail_after(WAIT_S):
            await m.stack.mh.handler.telemetry_hub.wait_listeners(1)
        feedback(m, video.stream_id, 777_003, **{low: False})
        await next_event(host, QualityUpdate, lambda q: q.available_bitrate == 777_003)
        for i in range(5):  # an application that keeps encoding the paused layer
            await video.send_frame(FrameType.VIDEO_DELTA, f"paused-{i}".encode(), layer_id=low)
        feedback(m, video.stream_id, 777_004, **{low: True})
        await next_event(host, QualityUpdate, lambda q: q.available_bitrate == 777_004)
        assert video.layer_active(low)
        await video.send_frame(FrameType.VIDEO_DELTA, b"too early", layer_id=low)
        await video.send_frame(FrameType.VIDEO_KEY, b"key", layer_id=low)
        await video.send_frame(FrameType.VIDEO_DELTA, b"delta", layer_id=low)
        with trio.fail_after(WAIT_S):
            got = [bytes((await sub.receive()).payload) for _ in range(2)]
        assert got == [b"key", b"delta"]
        # (a key frame request of the MH's own for the layer may have resumed it earlier:
        # its deltas then wait for the key frame all the same)
        assert video.paused_dropped + video.dropped == 6


async def test_the_mh_estimate_reaches_the_subscriber(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        viewer = await m.join("viewer")
        video = await publish_simulcast(host)
        low = video.layer_ids[0]
        await next_event(viewer, StreamPublished, lambda e: e.stream.stream_id == video.stream_id)
        sub = await viewer.subscribe(video.stream_id)
        with trio.fail_after(WAIT_S):
            await m.stack.mh.handler.telemetry_hub.wait_listeners(1)
        telemetry(
            m,
            subscriber_quality=mh_pb.SubscriberQuality(
                participant_id=viewer.participant_id,
                stream_id=video.stream_id,
                available_bitrate=777_005,
                rtt_ms=33,
                packet_loss=0.5,
                layer_id=low,
                paused=True,
            ),
        )
        update = await next_event(viewer, QualityUpdate, lambda q: q.available_bitrate == 777_005)
        assert update == QualityUpdate(video.stream_id, 777_005, 0.5, 33, low, True, ())
        assert sub.quality == update


async def test_active_speakers_reach_every_member(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        guest = await m.join("guest")
        with trio.fail_after(WAIT_S):
            await m.stack.mh.handler.telemetry_hub.wait_listeners(1)
        ids = [guest.participant_id, host.participant_id]
        telemetry(m, active_speakers=mh_pb.SpeakerList(participant_ids=ids))
        for session in (host, guest):
            event = await next_event(session, ActiveSpeakers, lambda e: e.participant_ids != ())
            assert event == ActiveSpeakers((guest.participant_id, host.participant_id))
            assert session.adaptation.speakers == event.participant_ids


async def test_pinned_reaches_the_mh_route(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        viewer = await m.join("viewer")
        routes = record_routes(m)
        video = await publish_simulcast(host)
        other = await host.publish(StreamType.VIDEO_SCREEN, codec="VP8")
        for stream in (video, other):
            await next_event(
                viewer, StreamPublished, lambda e, s=stream: e.stream.stream_id == s.stream_id
            )
        await viewer.subscribe(video.stream_id, pinned=True)
        await viewer.subscribe(other.stream_id)
        by_stream = {r.source_stream_id: r for r in routes if not r.unroute}
        assert by_stream[video.stream_id].options.pinned
        assert not by_stream[other.stream_id].options.pinned
        assert list(by_stream[video.stream_id].destination_participant_ids) == [
            viewer.participant_id
        ]


async def _audio_level_on_the_wire(m: Meeting) -> None:
    host = await m.join("host", host=True)
    listener = await m.join("listener")
    mic = await host.publish(StreamType.AUDIO, codec="opus")
    await next_event(listener, StreamPublished, lambda e: e.stream.stream_id == mic.stream_id)
    sub = await listener.subscribe(mic.stream_id)
    sent = await mic.send_frame(FrameType.AUDIO, b"a" * 80, audio_level=30)
    assert sent[40] == 0x80 | 30 and sent[41:46] == bytes(5)
    await mic.send_frame(FrameType.AUDIO, b"b" * 80, audio_level=0)
    await mic.send_frame(FrameType.AUDIO, b"c" * 80, audio_level=127)
    await mic.send_frame(FrameType.AUDIO, b"d" * 80)
    with trio.fail_after(WAIT_S):
        frames = [await sub.receive() for _ in range(4)]
    assert [bytes(f.payload[:1]) for f in frames] == [b"a", b"b", b"c", b"d"]
    assert [f.audio_level for f in frames] == [30, 0, 127, None]
    assert [f.raw[40] for f in frames] == [0x80 | 30, 0x80, 0xFF, 0]
    for bad in (-1, 128):
        try:
            await mic.send_frame(FrameType.AUDIO, b"x", audio_level=bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"level {bad} was taken")


async def test_audio_level_is_in_the_header_on_the_wire(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        await _audio_level_on_the_wire(m)


async def test_audio_level_on_end_to_end_encrypted_media(tmp_path: pathlib.Path) -> None:
    """The level is in the header the encryption authenticates (docs/protocol.md §16.1): it
    is set before the frame is sealed, and the receiver opens the frame."""
    async with meeting(tmp_path) as m:
        created = await m.gc.create_meeting("e2ee", enable_e2e_encryption=True)
        encrypted = Meeting(m.stack, m.gc, created, m.exits)
        await _audio_level_on_the_wire(encrypted)


async def test_a_level_only_on_audio(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        video = await host.publish(StreamType.VIDEO_CAMERA, codec="VP8")
        try:
            await video.send_frame(FrameType.VIDEO_KEY, b"k", audio_level=10)
        except ValueError:
            return
        raise AssertionError("a video frame took an audio level")
