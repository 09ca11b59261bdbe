"""Dynacast at the client without the network (darktower/client/_adaptive.py,
docs/protocol.md §17.3): the publisher's feedback and the MH's key frame requests move a
simulcast publication's layers, and the application is asked once for each key frame it owes."""

from __future__ import annotations

import uuid
from typing import Any

import trio
import trio.testing

from darktower.client import KeyFrameRequest, Publication, QualityUpdate
from darktower.client._adaptive import KEY_FRAME_REPEAT_S, Adaptation
from darktower.model import StreamType
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from .test_adaptive_reports import Owner


def _publication(owner: Owner) -> Publication:
    async def close(_: Publication) -> None:
        pass

    sid = str(uuid.uuid4())
    wires = [str(uuid.uuid4()) for _ in range(3)]
    publication = Publication(owner, sid, StreamType.VIDEO_CAMERA, {}, close=close, wires=wires)
    owner.publications[sid] = publication
    return publication


def _feedback(publication: Publication, **active: bool) -> sig.ServerMessage:
    layers = [common_pb2.LayerFeedback(layer_id=k, active=v) for k, v in active.items()]
    return sig.ServerMessage(
        quality=sig.StreamQualityUpdate(stream_id=publication.stream_id, layers=layers)
    )


def _key_request(stream_id: str) -> sig.ServerMessage:
    return sig.ServerMessage(key_frame_request=common_pb2.KeyFrameRequest(stream_id=stream_id))


def _asked(owner: Owner) -> list[str]:
    return [e.stream_id for e in owner.events if isinstance(e, KeyFrameRequest)]


async def test_feedback_pauses_and_resumes_and_asks_once(autojump_clock: Any) -> None:
    owner = Owner()
    pub = _publication(owner)
    low, mid, high = pub.layer_ids
    adaptation = Adaptation(owner, {}, lambda _: None)
    handle = adaptation.handlers()
    handle["quality"](_feedback(pub, **{low: False, mid: False, high: True}))
    assert pub.paused_layers == {low, mid} and pub.layer_changes == 1
    assert isinstance(owner.events[0], QualityUpdate) and _asked(owner) == []
    handle["quality"](_feedback(pub, **{low: True}))  # mid and high not named: unchanged
    assert pub.paused_layers == {mid} and _asked(owner) == [low]
    # The MH's own request for the layer it just resumed: the application was asked already.
    handle["key_frame_request"](_key_request(low))
    assert _asked(owner) == [low] and adaptation.key_frames_merged == 1
    # ... unless the application seems to have missed it: asked again after a while.
    await trio.sleep(KEY_FRAME_REPEAT_S)
    handle["key_frame_request"](_key_request(low))
    assert _asked(owner) == [low, low]
    # A layer that does not wait for a key frame is asked for each time.
    handle["key_frame_request"](_key_request(high))
    handle["key_frame_request"](_key_request(high))
    assert _asked(owner) == [low, low, high, high]


async def test_a_key_frame_request_resumes_a_paused_layer(autojump_clock: Any) -> None:
    """The MH asks for a key frame of a layer someone needs: that layer is wanted, whether or
    not its feedback came (it may follow, or have been lost)."""
    owner = Owner()
    pub = _publication(owner)
    low, mid, high = pub.layer_ids
    adaptation = Adaptation(owner, {}, lambda _: None)
    handle = adaptation.handlers()
    handle["quality"](_feedback(pub, **{low: False, mid: False, high: False}))
    handle["key_frame_request"](_key_request(mid))
    assert pub.paused_layers == {low, high} and _asked(owner) == [mid]
    handle["quality"](_feedback(pub, **{low: False, mid: True, high: False}))  # agrees
    assert _asked(owner) == [mid] and pub.layer_changes == 2
    # not a layer of this session's: told as it is (the application decides)
    other = str(uuid.uuid4())
    handle["key_frame_request"](_key_request(other))
    assert _asked(owner) == [mid, other]


async def test_a_paused_layer_sends_nothing_and_starts_at_a_key_frame(autojump_clock: Any) -> None:
    from darktower.frames import FrameType

    owner = Owner()
    pub = _publication(owner)
    low = pub.layer_ids[0]
    adaptation = Adaptation(owner, {}, lambda _: None)
    adaptation.on_quality(_feedback(pub, **{low: False}))
    assert not pub.layer_active(low)
    assert await pub.send_frame(FrameType.VIDEO_KEY, b"k", layer_id=low) == b""
    assert pub.paused_dropped == 1
    changed: list[frozenset[str]] = []
    async with trio.open_nursery() as nursery:

        async def wait() -> None:
            changed.append(await pub.wait_layers_changed())

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        adaptation.on_quality(_feedback(pub, **{low: True}))
    assert changed == [frozenset()] and pub.layer_active(low)


async def test_a_wait_for_a_change_ends_with_the_publication_or_the_session() -> None:
    import pytest

    from darktower.client import SessionEnded
    from darktower.model import LeaveReason

    owner = Owner()
    pub = _publication(owner)
    async with trio.open_nursery() as nursery:

        async def closed() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await pub.wait_layers_changed()

        nursery.start_soon(closed)
        await trio.testing.wait_all_tasks_blocked()
        await pub.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await pub.wait_layers_changed()

    other = _publication(owner)
    async with trio.open_nursery() as nursery:

        async def ended() -> None:
            with pytest.raises(SessionEnded):
                await other.wait_layers_changed()

        nursery.start_soon(ended)
        await trio.testing.wait_all_tasks_blocked()
        owner.end_reason = LeaveReason.KICKED
        owner.ended.set()


def test_what_one_message_is_taken_for_is_bounded() -> None:
    from darktower.client import ActiveSpeakers
    from darktower.client._events import MAX_LAYER_FEEDBACK, MAX_SPEAKERS

    many = [common_pb2.LayerFeedback(layer_id=str(i), active=True) for i in range(100)]
    update = QualityUpdate.from_pb(sig.StreamQualityUpdate(stream_id="s", layers=many))
    assert len(update.layers) == MAX_LAYER_FEEDBACK and update.layers[0].layer_id == "0"
    speakers = ActiveSpeakers.from_pb(sig.ActiveSpeakers(participant_ids=map(str, range(500))))
    assert len(speakers.participant_ids) == MAX_SPEAKERS and speakers.participant_ids[0] == "0"
