"""The events the MC reports for the GC's webhooks (docs/protocol.md §18.5), as its outbox takes
them, from a meeting driven over real QUIC: started and ended (by the host, empty; not at a
drain), joins and leaves with their reasons (not a resume; a window that passes), streams
published and unpublished (by the publisher, by moderation, with its leave), a recording
finished."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from darktower.client import SignalingClient, open_signaling
from darktower.loadtest import open_udp_proxy
from darktower.meeting_controller import Running
from darktower.model import MeetingId, Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1 import registry_pb2 as reg
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import TransportLimits
from darktower.transport.rpc import call

from ._harness import WAIT_S, next_event, open_stack, wait_ended


@contextmanager
def _recorded(running: Running) -> Iterator[list[reg.MeetingEvent]]:
    """Every event the controller's outbox takes while the block runs (they still go on)."""
    outbox = running.controller.events
    events: list[reg.MeetingEvent] = []
    emit = outbox.emit

    def record(event: reg.MeetingEvent) -> None:
        events.append(event)
        emit(event)

    outbox.emit = record  # type: ignore[method-assign]
    try:
        yield events
    finally:
        outbox.emit = emit  # type: ignore[method-assign]


def _summary(events: list[reg.MeetingEvent]) -> list[tuple[str, ...]]:
    """Each event as (kind, what it is about)."""
    out: list[tuple[str, ...]] = []
    for event in events:
        kind = event.WhichOneof("kind") or ""
        body = getattr(event, kind)
        if kind in ("participant_joined", "participant_left"):
            reason = common_pb2.LeaveReason.Name(body.reason) if kind == "participant_left" else ""
            out.append((kind, body.name, reason))
        elif kind in ("stream_published", "stream_unpublished"):
            out.append((kind, body.stream.stream_id))
        elif kind == "meeting_ended":
            out.append((kind, body.reason))
        elif kind == "recording_finished":
            out.append((kind, body.recording_id, common_pb2.LeaveReason.Name(body.reason)))
        else:
            out.append((kind,))
    return out


def _publish(stream_id: str, kind: int) -> sig.ClientMessage:
    return sig.ClientMessage(publish=sig.PublishStream(stream_id=stream_id, stream_type=kind))


async def _closed(running: Running, meeting_id: str) -> None:
    meeting = running.controller.tree.meeting(MeetingId(meeting_id))
    if meeting is not None:
        with trio.fail_after(WAIT_S):
            await meeting.wait_closed()


async def test_a_meeting_s_life_as_events(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        with _recorded(stack.running) as events:
            await stack.assign("m", recording_enabled=True)
            async with stack.join("m", Role.HOST, name="Ada") as host:
                async with stack.join("m", name="Bob") as guest:
                    pid = guest.participant_id
                    for stream_id, kind in (
                        ("mic", common_pb2.AUDIO),
                        ("cam", common_pb2.VIDEO_CAMERA),
                        ("scr", common_pb2.VIDEO_SCREEN),
                    ):
                        await guest.request(_publish(stream_id, kind))
                    await stack.mh.wait_for(lambda: bool(stack.mh.recordings_started))
                    await guest.request(
                        sig.ClientMessage(unpublish=sig.UnpublishStream(stream_id="cam"))
                    )
                    await host.request(
                        sig.ClientMessage(
                            moderate=sig.ModerateParticipant(
                                participant_id=pid, actions=[common_pb2.MODERATION_MUTE_AUDIO]
                            )
                        )
                    )
                    await guest.leave()
                await next_event(host, "participant_left")
                await host.request(sig.ClientMessage(end_meeting=sig.EndMeeting()))
            await _closed(stack.running, "m")
        assert [e.meeting_id for e in events] == ["m"] * len(events)
        assert len({e.event_id for e in events}) == len(events)
        assert all(e.occurred_at > 0 for e in events)
        assert _summary(events) == [
            ("meeting_started",),
            ("participant_joined", "Ada", ""),
            ("participant_joined", "Bob", ""),
            ("stream_published", "mic"),
            ("stream_published", "cam"),
            ("stream_published", "scr"),
            ("stream_unpublished", "cam"),
            ("participant_moderated",),  # Bob's blocks, for the GC (not a webhook event)
            ("stream_unpublished", "mic"),  # by the host's mute
            ("stream_unpublished", "scr"),  # with its leave
            ("participant_left", "Bob", "VOLUNTARY"),
            ("recording_finished", f"{pid}-1", "VOLUNTARY"),
            ("participant_left", "Ada", "MEETING_ENDED"),
            ("meeting_ended", "ended"),
        ]
        joined = {e.participant_joined.name: e.participant_joined for e in events[1:3]}
        assert joined["Ada"].host and not joined["Bob"].host
        assert joined["Bob"].participant_id == pid
        published = events[3].stream_published
        assert published.participant_id == pid
        assert published.stream.stream_type == common_pb2.AUDIO


async def test_empty_meetings_end_empty_and_a_drain_ends_nothing(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path, empty_meeting_timeout_s=0.3) as stack:
        with _recorded(stack.running) as events:
            await stack.assign("timer")
            async with stack.join("timer") as client:
                await client.leave()
            await _closed(stack.running, "timer")  # its own empty-meeting time passed
            assert _summary(events)[-1] == ("meeting_ended", "empty")
            # a meeting nobody joined here neither started nor ends here
            events.clear()
            await stack.assign("never")
            await _closed(stack.running, "never")
            assert events == []
            # a drain: everyone leaves, the meeting goes on elsewhere: no meeting_ended
            await stack.assign("drained")
            async with stack.join("drained", name="Cy") as client:
                stack.running.controller.tree.drain(2.0)
                await wait_ended(client)
            await _closed(stack.running, "drained")
            assert [s[0] for s in _summary(events)] == [
                "meeting_started",
                "participant_joined",
                "participant_left",
            ]


async def test_the_gc_s_end_of_a_meeting_nobody_is_in_is_empty_before_the_mc_s_own_time(
    tmp_path: pathlib.Path,
) -> None:
    # The GC ends a meeting nobody is in (its own empty-meeting time) before the MC's own
    # time passes: empty too. (That time is long here, so the GC's call always comes first.)
    async with open_stack(tmp_path, empty_meeting_timeout_s=60 * WAIT_S) as stack:
        with _recorded(stack.running) as events:
            await stack.assign("gc-ended")
            async with stack.join("gc-ended") as client:
                await client.leave()
            await call(
                stack.mc.EndMeeting,
                mtg_pb.EndMeetingRequest(meeting_id="gc-ended", reason="empty"),
            )
            await _closed(stack.running, "gc-ended")
            assert _summary(events)[-1] == ("meeting_ended", "empty")


async def test_the_owner_s_end_of_a_meeting_nobody_is_in_is_ended(tmp_path: pathlib.Path) -> None:
    # No empty-meeting time of the MC's own: the meetings end only by the GC's EndMeeting.
    async with open_stack(tmp_path, empty_meeting_timeout_s=0) as stack:
        with _recorded(stack.running) as events:
            for meeting_id, reason in (("owner", "ended"), ("older-gc", ""), ("gc", "empty")):
                events.clear()
                await stack.assign(meeting_id)
                async with stack.join(meeting_id) as client:
                    await client.leave()
                await call(
                    stack.mc.EndMeeting,
                    mtg_pb.EndMeetingRequest(meeting_id=meeting_id, reason=reason),
                )
                await _closed(stack.running, meeting_id)
                assert _summary(events)[-1] == ("meeting_ended", reason or "ended")


async def test_a_resume_is_no_join_and_a_window_that_passes_is_a_leave(
    tmp_path: pathlib.Path,
) -> None:
    idle_s = 1.0
    limits = TransportLimits(idle_timeout_s=idle_s, keepalive_interval_s=idle_s / 3)
    async with open_stack(tmp_path, idle_timeout_s=idle_s, resume_grace_s=2.0) as stack:
        await stack.assign("m")
        async with (
            stack.join("m") as witness,
            open_udp_proxy(stack.running.signal_address) as proxy,
        ):

            def connect(**kw: str) -> Any:
                return open_signaling(
                    proxy.via(stack.running.signal_url),
                    meeting_id="m",
                    server_certificate_hashes=[stack.running.certificate_sha256],
                    limits=limits,
                    **kw,
                )

            async def blackout(client: SignalingClient) -> None:
                proxy.pause()
                updated = await next_event(witness, "participant_updated")
                assert updated.participant_updated.connection == sig.RECONNECTING
                proxy.resume()
                with trio.fail_after(WAIT_S):
                    await client.closed.wait()

            with _recorded(stack.running) as events:
                async with connect(join_token=stack.token("m", participant_name="Dee")) as subject:
                    resume_token = subject.join_response.resume_token
                    await blackout(subject)
                async with connect(join_token="", resume_token=resume_token) as back:
                    assert back.join_response.resumed
                    await next_event(witness, "participant_updated")  # connected again
                    await blackout(back)
                left = await next_event(witness, "participant_left")  # the window passed
                assert left.participant_left.reason == common_pb2.CONNECTION_LOST
            assert _summary(events) == [
                ("participant_joined", "Dee", ""),
                ("participant_left", "Dee", "CONNECTION_LOST"),
            ]
