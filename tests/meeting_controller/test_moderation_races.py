"""A host's moderation racing what else removes a stream (docs/protocol.md §18.2), over real
QUIC with the Media Handler stand-in of ``test_moderation``: a second moderation and the
participant's own unpublish wait for a removal under way; a participant moderated while it
was reconnecting is told at its resume."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import trio

from darktower.client import SignalingClient
from darktower.errors import DarkTowerError, InternalError
from darktower.loadtest import open_udp_proxy
from darktower.model import Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._harness import join_via, next_event, resumed
from .test_moderation import MUTE, STOP_SCREEN, HoldingMediaControl, _moderate, _publish, _stack


class Entries:
    """How many requests of a kind the MC's sessions have started to serve (:func:`_entered`)."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = trio.Event()

    async def wait(self, n: int) -> None:
        with trio.fail_after(10):
            while self.count < n:
                await self.changed.wait()


def _entered(monkeypatch: pytest.MonkeyPatch, kind: str) -> Entries:
    """Counts the requests of ``kind`` the MC's sessions serve from now on; a waiter runs once
    the handler has gone as far as its first wait."""
    from darktower.meeting_controller import _signaling

    entries = Entries()
    handler = _signaling.HANDLERS[kind]

    async def entered(session: Any, m: sig.ClientMessage) -> Any:
        entries.count += 1
        entries.changed.set()
        entries.changed = trio.Event()
        return await handler(session, m)

    monkeypatch.setitem(_signaling.HANDLERS, kind, entered)
    return entries


@pytest.mark.parametrize("removed", [True, False])
async def test_a_second_moderation_and_an_unpublish_wait_for_the_removal_under_way(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, removed: bool
) -> None:
    """While a host's mute removes a stream at the MH, a co-host's mute of it and the
    participant's own unpublish of it are answered only once it is removed; if the removal
    fails (the stream is published again), they fail too, as the first does."""
    async with _stack(tmp_path) as stack:
        fake = stack.mh
        assert isinstance(fake, HoldingMediaControl)
        await stack.assign("m")
        async with (
            stack.join("m", Role.HOST) as host,
            stack.join("m", Role.HOST) as cohost,
            stack.join("m") as guest,
        ):
            pid = guest.participant_id
            await guest.request(_publish("mic", common_pb2.AUDIO))
            fake.hold_remove = trio.Event()
            outcomes: dict[str, str] = {}

            async def ask(name: str, client: SignalingClient, message: sig.ClientMessage) -> None:
                try:
                    reply = await client.request(message)
                    outcomes[name] = reply.WhichOneof("message") or ""
                except DarkTowerError as exc:
                    outcomes[name] = exc.code.name

            moderations = _entered(monkeypatch, "moderate")
            unpublishes = _entered(monkeypatch, "unpublish")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, "host", host, _moderate(pid, MUTE))
                await fake.wait_for(lambda: len(fake.streams_removed) == 1)
                nursery.start_soon(ask, "cohost", cohost, _moderate(pid, MUTE))
                await moderations.wait(2)
                nursery.start_soon(
                    ask,
                    "guest",
                    guest,
                    sig.ClientMessage(unpublish=sig.UnpublishStream(stream_id="mic")),
                )
                await unpublishes.wait(1)
                assert outcomes == {}  # nobody is answered while the MH routes the stream
                if not removed:
                    fake.refuse_remove = InternalError("the media handler is broken")
                fake.hold_remove.set()
            expected = "ack" if removed else "INTERNAL_ERROR"
            assert outcomes == {"host": expected, "cohost": expected, "guest": expected}
            assert len(fake.streams_removed) == 1  # removed once, by the first
            member = stack.running.controller.rooms["m"].members[pid]
            assert set(member.streams) == (set() if removed else {"mic"})
            assert not member.removing and member.publication.audio_blocked


async def test_a_stop_lifted_while_the_participant_was_reconnecting_is_told_at_its_resume(
    tmp_path: pathlib.Path,
) -> None:
    """STOP_SCREEN then ALLOW_SCREEN while it is away leave its state as it was, but its
    screen stream is gone: its resume gets the missed moderations as one Moderated (each
    action once, its state now), then its own ParticipantUpdated."""
    idle_s = 1.0
    async with _stack(tmp_path, idle_timeout_s=idle_s, resume_grace_s=5.0) as stack:
        await stack.assign("m")
        async with (
            stack.join("m", Role.HOST) as host,
            open_udp_proxy(stack.running.signal_address) as proxy,
            join_via(stack, proxy, "m", idle_s) as subject,
        ):
            pid = subject.participant_id
            await subject.request(_publish("scr", common_pb2.VIDEO_SCREEN))
            proxy.pause()
            while True:
                updated = (await next_event(host, "participant_updated")).participant_updated
                if updated.connection == sig.RECONNECTING:
                    break
            await host.request(_moderate(pid, STOP_SCREEN, message="no"))
            await host.request(_moderate(pid, common_pb2.MODERATION_ALLOW_SCREEN, message="ok"))
            assert [r.stream_id for r in stack.mh.streams_removed] == ["scr"]
            async with resumed(stack, subject, proxy, "m") as back:
                told = (await next_event(back, "moderated")).moderated
                assert list(told.actions) == [STOP_SCREEN, common_pb2.MODERATION_ALLOW_SCREEN]
                assert told.by_participant_id == host.participant_id and told.message == "ok"
                assert told.publication == common_pb2.PublicationState()
                state = (await next_event(back, "participant_updated")).participant_updated
                assert state.participant_id == pid and state.connection == sig.CONNECTED
                assert state.publication == common_pb2.PublicationState()
                # told once: the next resume has nothing to say
                assert stack.running.controller.rooms["m"].members[pid].missed_moderation is None
