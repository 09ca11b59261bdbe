"""A host's moderation (docs/protocol.md §18.2) over real QUIC and gRPC, with a Media Handler
stand-in that can hold or refuse RemoveStream: the answer comes only once the streams it ends
are removed at the MH, then the members hear of it, the participant is told, and the block
holds until the host allows the kind again."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from darktower.client import SignalingClient
from darktower.errors import DarkTowerError, Forbidden, InternalError, InvalidRequest, NotFound
from darktower.loadtest import open_udp_proxy
from darktower.model import Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport.rpc import call
from tests._stack import StandIn, open_services

from ._harness import FakeMediaControl, Stack, join_via, next_event, resumed

MUTE = common_pb2.MODERATION_MUTE_AUDIO
STOP_VIDEO = common_pb2.MODERATION_STOP_VIDEO
STOP_SCREEN = common_pb2.MODERATION_STOP_SCREEN
ALLOW_AUDIO = common_pb2.MODERATION_ALLOW_AUDIO


class HoldingMediaControl(FakeMediaControl):
    """The harness's MH stand-in whose RemoveStream can be held or refused."""

    def __init__(self) -> None:
        super().__init__()
        self.hold_remove: trio.Event | None = None
        self.refuse_remove: Exception | None = None
        self.removes_done = 0

    async def RemoveStream(self, request: Any) -> Any:
        self.streams_removed.append(request)
        self._touch()
        if self.hold_remove is not None:
            await self.hold_remove.wait()
        await trio.lowlevel.checkpoint()
        if self.refuse_remove is not None:
            raise self.refuse_remove
        self.removes_done += 1
        return mh_pb.RemoveStreamResponse()


@asynccontextmanager
async def _stack(tmp_path: pathlib.Path, **overrides: Any) -> AsyncIterator[Stack]:
    fake = HoldingMediaControl()
    async with open_services(tmp_path, mc=overrides, mh=StandIn(fake)) as services:
        assert services.mc is not None and services.mc_control is not None
        assert services.issuer is not None and services.join_key_file is not None
        yield Stack(
            services.mc,
            services.issuer,
            fake,
            services.mc_control,
            services.join_key_file,
            services,
        )


def _moderate(pid: str, *actions: int, message: str = "") -> sig.ClientMessage:
    return sig.ClientMessage(
        moderate=sig.ModerateParticipant(participant_id=pid, actions=list(actions), message=message)
    )


def _publish(stream_id: str, kind: int, layers: int = 0) -> sig.ClientMessage:
    metadata = common_pb2.StreamMetadata(
        video=common_pb2.VideoMetadata(
            simulcast_layers=[
                common_pb2.SimulcastLayer(layer_id=f"{stream_id}-{n}") for n in range(layers)
            ]
        )
    )
    return sig.ClientMessage(
        publish=sig.PublishStream(stream_id=stream_id, stream_type=kind, metadata=metadata)
    )


def _set(audio_muted: bool, video_off: bool = False) -> sig.ClientMessage:
    return sig.ClientMessage(
        set_publication=sig.SetPublicationState(audio_muted=audio_muted, video_off=video_off)
    )


def _pending(client: SignalingClient) -> list[str]:
    """The kinds of the events ``client`` has received and not read yet."""
    out: list[str] = []
    while True:
        try:
            event = client.events.receive_nowait()
        except trio.WouldBlock:
            return out
        out.append(event.WhichOneof("message") or "")


async def test_requests_are_checked(tmp_path: pathlib.Path) -> None:
    async with _stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m", Role.HOST) as host, stack.join("m") as guest:
            pid = guest.participant_id
            with pytest.raises(Forbidden):
                await guest.request(_moderate(host.participant_id, MUTE))
            with pytest.raises(NotFound):
                await host.request(_moderate("nobody", MUTE))
            bad: list[sig.ClientMessage] = [
                _moderate(pid),
                _moderate(pid, common_pb2.MODERATION_ACTION_UNSPECIFIED),
                _moderate(pid, MUTE, MUTE),
                _moderate(pid, MUTE, message="x" * 201),
                _moderate(pid, *range(1, 7), MUTE),
            ]
            for message in bad:
                with pytest.raises(InvalidRequest):
                    await host.request(message)
            for request in (
                mtg_pb.ModerateParticipantRequest(meeting_id="m", participant_id=pid),
                mtg_pb.ModerateParticipantRequest(
                    meeting_id="m", participant_id=pid, actions=[STOP_VIDEO, STOP_VIDEO]
                ),
            ):
                with pytest.raises(InvalidRequest):
                    await call(stack.mc.ModerateParticipant, request)
            for request in (
                mtg_pb.ModerateParticipantRequest(
                    meeting_id="m", participant_id="nobody", actions=[MUTE]
                ),
                mtg_pb.ModerateParticipantRequest(
                    meeting_id="nowhere", participant_id=pid, actions=[MUTE]
                ),
            ):
                with pytest.raises(NotFound):
                    await call(stack.mc.ModerateParticipant, request)
            # nobody was moderated
            assert not stack.mh.streams_removed
            assert "moderated" not in _pending(guest)


async def test_a_mute_answers_once_the_stream_is_removed_and_blocks_until_allowed(
    tmp_path: pathlib.Path,
) -> None:
    async with _stack(tmp_path) as stack:
        fake = stack.mh
        assert isinstance(fake, HoldingMediaControl)
        await stack.assign("m")
        async with (
            stack.join("m", Role.HOST) as host,
            stack.join("m") as guest,
            stack.join("m") as viewer,
        ):
            pid = guest.participant_id
            await guest.request(_publish("mic", common_pb2.AUDIO))
            await guest.request(_publish("cam", common_pb2.VIDEO_CAMERA, layers=2))
            for stream_id in ("mic", "cam"):
                await viewer.request(
                    sig.ClientMessage(subscribe=sig.SubscribeStream(stream_id=stream_id))
                )
            for client in (viewer, guest, host):
                _pending(client)  # what came so far
            fake.hold_remove = trio.Event()
            answered = trio.Event()

            async def mute() -> None:
                reply = await host.request(_moderate(pid, MUTE, message="too loud"))
                assert reply.WhichOneof("message") == "ack"
                answered.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(mute)
                await fake.wait_for(lambda: len(fake.streams_removed) == 1)
                # While the MH has not removed it: no answer, and nobody heard of anything
                # (a round trip of the viewer's own passes the MC meanwhile).
                await viewer.request(sig.ClientMessage(ping=sig.Ping(timestamp=1)))
                assert not answered.is_set()
                assert _pending(viewer) == [] and _pending(guest) == []
                # the participant cannot publish audio any more, already
                with pytest.raises(Forbidden):
                    await guest.request(_publish("mic2", common_pb2.AUDIO))
                fake.hold_remove.set()
            assert answered.is_set() and fake.removes_done == 1
            [removed] = fake.streams_removed
            assert (removed.meeting_id, removed.participant_id, removed.stream_id) == (
                "m",
                pid,
                "mic",
            )
            muted = common_pb2.PublicationState(audio_muted=True, audio_blocked=True)
            for client in (viewer, guest, host):
                gone = await next_event(client, "stream_unpublished")
                assert gone.stream_unpublished.stream_id == "mic"
                updated = await next_event(client, "participant_updated")
                assert updated.participant_updated.participant_id == pid
                assert updated.participant_updated.publication == muted
            told = (await next_event(guest, "moderated")).moderated
            assert told.by_participant_id == host.participant_id
            assert list(told.actions) == [MUTE] and told.message == "too loud"
            assert told.publication == muted
            # the camera goes on; the audio stays blocked
            assert set(stack.running.controller.rooms["m"].members[pid].streams) == {"cam"}
            for refused in (_publish("mic", common_pb2.AUDIO), _set(False)):
                with pytest.raises(Forbidden) as error:
                    await guest.request(refused)
                assert error.value.details["reason"] == "blocked_by_host"
            await host.request(_moderate(pid, ALLOW_AUDIO))
            allowed = common_pb2.PublicationState(audio_muted=True)
            assert (await next_event(guest, "moderated")).moderated.publication == allowed
            assert (
                await next_event(viewer, "participant_updated")
            ).participant_updated.publication == allowed
            await guest.request(_set(False))
            await guest.request(_publish("mic", common_pb2.AUDIO))
            assert (
                await next_event(viewer, "stream_published")
            ).stream_published.stream.stream_id == "mic"


async def test_the_owner_moderates_through_the_rpc(tmp_path: pathlib.Path) -> None:
    async with _stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m") as guest, stack.join("m") as viewer:
            pid = guest.participant_id
            await guest.request(_publish("cam", common_pb2.VIDEO_CAMERA, layers=3))
            await guest.request(_publish("scr", common_pb2.VIDEO_SCREEN))
            await guest.request(_publish("mic", common_pb2.AUDIO))
            reply = await call(
                stack.mc.ModerateParticipant,
                mtg_pb.ModerateParticipantRequest(
                    meeting_id="m",
                    participant_id=pid,
                    actions=[STOP_VIDEO, STOP_SCREEN],
                    message="camera off please",
                ),
            )
            stopped = common_pb2.PublicationState(
                video_off=True, video_blocked=True, screen_blocked=True
            )
            assert reply.publication == stopped
            assert {r.stream_id for r in stack.mh.streams_removed} == {"cam", "scr"}
            told = (await next_event(guest, "moderated")).moderated
            assert told.by_participant_id == "" and told.message == "camera off please"
            assert list(told.actions) == [STOP_VIDEO, STOP_SCREEN] and told.publication == stopped
            gone = set()
            while len(gone) < 2:
                event = await next_event(viewer, "stream_unpublished")
                gone.add(event.stream_unpublished.stream_id)
            assert gone == {"cam", "scr"}
            # sharing had been set by the screen share and is cleared with it
            while True:
                updated = (await next_event(viewer, "participant_updated")).participant_updated
                if updated.publication.screen_blocked:
                    break
                assert updated.publication.sharing
            assert updated.publication == stopped
            with pytest.raises(Forbidden):
                await guest.request(_publish("scr", common_pb2.VIDEO_SCREEN))
            with pytest.raises(Forbidden):
                await guest.request(_set(False, video_off=False))


async def test_a_publish_under_way_when_the_kind_is_blocked_is_refused(
    tmp_path: pathlib.Path,
) -> None:
    async with _stack(tmp_path) as stack:
        fake = stack.mh
        await stack.assign("m")
        async with (
            stack.join("m", Role.HOST) as host,
            stack.join("m") as guest,
            stack.join("m") as viewer,
        ):
            pid = guest.participant_id
            fake.hold_register = trio.Event()
            registered = len(fake.registered)
            refused: list[DarkTowerError] = []

            async def publish() -> None:
                with pytest.raises(Forbidden) as error:
                    await guest.request(_publish("mic", common_pb2.AUDIO))
                refused.append(error.value)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish)
                await fake.wait_for(lambda: len(fake.registered) == registered + 1)
                await host.request(_moderate(pid, MUTE))  # nothing published to end yet
                fake.hold_register.set()
            assert refused[0].details["reason"] == "blocked_by_host"
            # the MH forgot the stream it had registered; nobody heard of it
            assert [r.stream_id for r in fake.streams_removed] == ["mic"]
            assert "stream_published" not in _pending(viewer)
            assert not stack.running.controller.rooms["m"].members[pid].streams


async def test_a_stream_the_media_handler_does_not_remove_stays_published(
    tmp_path: pathlib.Path,
) -> None:
    async with _stack(tmp_path) as stack:
        fake = stack.mh
        assert isinstance(fake, HoldingMediaControl)
        await stack.assign("m")
        async with stack.join("m", Role.HOST) as host, stack.join("m") as guest:
            pid = guest.participant_id
            await guest.request(_publish("mic", common_pb2.AUDIO))
            fake.refuse_remove = InternalError("the media handler is broken")
            with pytest.raises(InternalError):
                await host.request(_moderate(pid, MUTE))
            member = stack.running.controller.rooms["m"].members[pid]
            assert set(member.streams) == {"mic"}
            # the block holds; asked again once the MH works, the mute completes
            assert member.publication.audio_blocked
            fake.refuse_remove = None
            await host.request(_moderate(pid, MUTE))
            assert not member.streams
            gone = await next_event(guest, "stream_unpublished")
            assert gone.stream_unpublished.stream_id == "mic"


async def test_a_reconnecting_participant_is_moderated_and_learns_it_at_its_resume(
    tmp_path: pathlib.Path,
) -> None:
    idle_s = 1.0
    async with _stack(tmp_path, idle_timeout_s=idle_s, resume_grace_s=5.0) as stack:
        await stack.assign("m")
        async with (
            stack.join("m", Role.HOST) as host,
            open_udp_proxy(stack.running.signal_address) as proxy,
            join_via(stack, proxy, "m", idle_s) as subject,
        ):
            pid = subject.participant_id
            await subject.request(_publish("cam", common_pb2.VIDEO_CAMERA))
            proxy.pause()
            while True:
                updated = (await next_event(host, "participant_updated")).participant_updated
                if updated.connection == sig.RECONNECTING:
                    break
            await host.request(_moderate(pid, STOP_VIDEO))
            assert [r.stream_id for r in stack.mh.streams_removed] == ["cam"]
            async with resumed(stack, subject, proxy, "m") as back:
                state = (await next_event(back, "participant_updated")).participant_updated
                assert state.participant_id == pid and state.connection == sig.CONNECTED
                assert state.publication == common_pb2.PublicationState(
                    video_off=True, video_blocked=True
                )
                with pytest.raises(Forbidden):
                    await back.request(_publish("cam", common_pb2.VIDEO_CAMERA))


async def test_a_guest_s_blocks_are_reported_to_the_gc_with_its_join_token(
    tmp_path: pathlib.Path,
) -> None:
    async with _stack(tmp_path) as stack:
        await stack.assign("m")
        outbox = stack.running.controller.events
        reported: list[Any] = []
        emit = outbox.emit

        def record(event: Any) -> None:
            if event.HasField("participant_moderated"):
                reported.append(event.participant_moderated)
            emit(event)

        outbox.emit = record  # type: ignore[method-assign]
        async with (
            stack.join("m", Role.HOST) as host,
            stack.join("m", Role.HOST) as cohost,
            stack.join("m") as guest,
        ):
            pid = guest.participant_id
            token_id = stack.running.controller.rooms["m"].members[pid].token_id
            assert token_id
            await host.request(_moderate(pid, MUTE, STOP_SCREEN))
            await host.request(_moderate(pid, MUTE))  # no block changes: nothing
            await host.request(_moderate(pid, ALLOW_AUDIO))
            await host.request(_moderate(cohost.participant_id, MUTE))  # a host: never
            assert [
                (r.participant_id, r.token_id, r.audio_blocked, r.video_blocked, r.screen_blocked)
                for r in reported
            ] == [(pid, token_id, True, False, True), (pid, token_id, False, False, True)]
