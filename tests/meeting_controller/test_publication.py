"""Publication state (docs/protocol.md §18.1) over real QUIC: the participant's own switches,
``sharing`` kept by the MC, the host's blocks from the join token, and the join catch-up
(``Participant.publication``, ``.host``, ``.connection``)."""

from __future__ import annotations

import pathlib

import pytest

from darktower.client import SignalingClient
from darktower.errors import Forbidden
from darktower.loadtest import open_udp_proxy
from darktower.model import Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._harness import join_via, next_event, open_stack, resumed


def _state(**kw: bool) -> common_pb2.PublicationState:
    return common_pb2.PublicationState(**kw)


async def _set(client: SignalingClient, *, audio_muted: bool, video_off: bool) -> None:
    reply = await client.request(
        sig.ClientMessage(
            set_publication=sig.SetPublicationState(audio_muted=audio_muted, video_off=video_off)
        )
    )
    assert reply.WhichOneof("message") == "ack"


async def _updated(client: SignalingClient, pid: str) -> sig.ParticipantUpdated:
    event = (await next_event(client, "participant_updated")).participant_updated
    assert event.participant_id == pid
    return event


async def test_own_switches_reach_every_member_and_a_no_op_sends_nothing(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m", Role.HOST) as host, stack.join("m") as guest:
            await next_event(host, "participant_joined")
            pid = guest.participant_id
            await _set(guest, audio_muted=True, video_off=False)
            for client in (host, guest):  # the participant itself too
                event = await _updated(client, pid)
                assert event.connection == sig.CONNECTED
                assert event.publication == _state(audio_muted=True)
            # the same again: acknowledged, nobody told (the next update is the next change)
            await _set(guest, audio_muted=True, video_off=False)
            await _set(guest, audio_muted=True, video_off=True)
            for client in (host, guest):
                event = await _updated(client, pid)
                assert event.publication == _state(audio_muted=True, video_off=True)
            await _set(guest, audio_muted=False, video_off=False)
            assert (await _updated(host, pid)).publication == _state()
            # a late joiner sees the state, the host's role and the connection in the catch-up
            await _set(guest, audio_muted=True, video_off=False)
            async with stack.join("m") as late:
                by_id = {p.participant_id: p for p in late.join_response.existing_participants}
                assert by_id[pid].publication == _state(audio_muted=True)
                assert by_id[pid].connection == sig.CONNECTED and not by_id[pid].host
                assert by_id[host.participant_id].host
                assert by_id[host.participant_id].publication == _state()


async def test_sharing_follows_the_screen_stream(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m") as sharer, stack.join("m") as viewer:
            pid = sharer.participant_id
            for stream_id, kind in (
                ("cam", common_pb2.VIDEO_CAMERA),
                ("scr", common_pb2.VIDEO_SCREEN),
            ):
                await sharer.request(
                    sig.ClientMessage(
                        publish=sig.PublishStream(stream_id=stream_id, stream_type=kind)
                    )
                )
            # the camera changed nothing; the screen share is announced after its stream
            published = await next_event(viewer, "stream_published")
            assert published.stream_published.stream.stream_id == "cam"
            published = await next_event(viewer, "stream_published")
            assert published.stream_published.stream.stream_id == "scr"
            for client in (viewer, sharer):
                assert (await _updated(client, pid)).publication == _state(sharing=True)
            await sharer.request(sig.ClientMessage(unpublish=sig.UnpublishStream(stream_id="scr")))
            await next_event(viewer, "stream_unpublished")
            for client in (viewer, sharer):
                assert (await _updated(client, pid)).publication == _state()


async def test_kinds_the_join_token_does_not_allow_start_blocked(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        token = stack.token("m", may_publish=frozenset({"audio"}))
        async with stack.join("m") as other, stack.join("m", token=token) as limited:
            pid = limited.participant_id
            blocked = _state(video_off=True, video_blocked=True, screen_blocked=True)
            # it learns its own state at once; the others in its ParticipantJoined
            assert (await _updated(limited, pid)).publication == blocked
            joined = await next_event(other, "participant_joined")
            assert joined.participant_joined.participant.publication == blocked
            for kind in (common_pb2.VIDEO_CAMERA, common_pb2.VIDEO_SCREEN):
                with pytest.raises(Forbidden) as refused:
                    await limited.request(
                        sig.ClientMessage(
                            publish=sig.PublishStream(stream_id="v", stream_type=kind)
                        )
                    )
                assert refused.value.details["reason"] == "blocked_by_host"
            with pytest.raises(Forbidden) as refused:
                await _set(limited, audio_muted=False, video_off=False)
            assert refused.value.details["reason"] == "blocked_by_host"
            # what it may do still works, and the refused switch changed nothing
            await limited.request(sig.ClientMessage(publish=sig.PublishStream(stream_id="mic")))
            await _set(limited, audio_muted=True, video_off=True)
            assert (await _updated(other, pid)).publication == _state(
                audio_muted=True, video_off=True, video_blocked=True, screen_blocked=True
            )
            assert not any(s.stream_id == "v" for r in stack.mh.registered for s in r.streams)


async def test_a_reconnecting_participant_shows_so_with_its_state(tmp_path: pathlib.Path) -> None:
    idle_s = 1.0
    async with open_stack(tmp_path, idle_timeout_s=idle_s, resume_grace_s=5.0) as stack:
        await stack.assign("m")
        async with (
            stack.join("m") as witness,
            open_udp_proxy(stack.running.signal_address) as proxy,
            join_via(stack, proxy, "m", idle_s) as subject,
        ):
            pid = subject.participant_id
            await _set(subject, audio_muted=True, video_off=False)
            assert (await _updated(witness, pid)).publication == _state(audio_muted=True)
            proxy.pause()
            event = await _updated(witness, pid)
            assert event.connection == sig.RECONNECTING
            assert event.publication == _state(audio_muted=True)
            async with stack.join("m") as late:
                [entry] = [
                    p for p in late.join_response.existing_participants if p.participant_id == pid
                ]
                assert entry.connection == sig.RECONNECTING
                assert entry.publication == _state(audio_muted=True)
            async with resumed(stack, subject, proxy, "m") as back:
                # the resumed participant is told its own state; the others see it connected
                event = await _updated(back, pid)
                assert (event.connection, event.publication) == (
                    sig.CONNECTED,
                    _state(audio_muted=True),
                )
                event = await _updated(witness, pid)
                assert event.connection == sig.CONNECTED
                assert event.publication == _state(audio_muted=True)
