"""Resume within the grace window (docs/protocol.md §13), over real QUIC: the subject reaches the
MC through the network-fault proxy, whose blackout (pause) the MC notices at its idle timeout
(1 s here); a witness connected directly sees what the others see. Real time, short windows;
the tests wait on events, never on sleeps."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from darktower.client import SignalingClient, SignalingEnded, open_signaling
from darktower.errors import NotFound, RateLimited
from darktower.loadtest import UdpProxy, open_udp_proxy
from darktower.meeting_controller import MIN_RESUME_INTERVAL_S
from darktower.model import LeaveReason, MeetingId, ParticipantId, Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import TransportLimits

from ._harness import WAIT_S, Stack, next_event, open_stack

IDLE_S = 1.0  # the MC's idle timeout: a blackout is noticed about this long after it began
GRACE_S = 2.0  # the resume window
# The subject's own QUIC side gives up on the dead connection about as fast.
CLIENT_LIMITS = TransportLimits(idle_timeout_s=IDLE_S, keepalive_interval_s=IDLE_S / 3)


def _stack(tmp_path: pathlib.Path, **overrides: Any) -> Any:
    settings: dict[str, Any] = {"idle_timeout_s": IDLE_S, "resume_grace_s": GRACE_S}
    return open_stack(tmp_path, **(settings | overrides))


def _connect(stack: Stack, url: str, meeting_id: str, **kw: Any) -> Any:
    return open_signaling(
        url,
        meeting_id=meeting_id,
        join_token=kw.pop("join_token", ""),
        server_certificate_hashes=[stack.running.certificate_sha256],
        limits=CLIENT_LIMITS,
        **kw,
    )


@asynccontextmanager
async def _subject(stack: Stack, proxy: UdpProxy, meeting_id: str) -> AsyncIterator[Any]:
    """A guest joined through ``proxy``."""
    url = proxy.via(stack.running.signal_url)
    async with _connect(stack, url, meeting_id, join_token=stack.token(meeting_id)) as client:
        yield client


def _resume(stack: Stack, url: str, meeting_id: str, token: str) -> Any:
    return _connect(stack, url, meeting_id, resume_token=token)


async def _events_until(client: SignalingClient, kind: str) -> list[sig.ServerMessage]:
    """Every event up to and including the next one of ``kind``."""
    out: list[sig.ServerMessage] = []
    with trio.fail_after(WAIT_S):
        async for event in client.events:
            out.append(event)
            if event.WhichOneof("message") == kind:
                return out
    raise AssertionError(f"events ended before a {kind}")


async def _blackout_noticed(proxy: UdpProxy, witness: SignalingClient, pid: str) -> None:
    proxy.pause()
    updated = await next_event(witness, "participant_updated")
    assert updated.participant_updated.participant_id == pid
    assert updated.participant_updated.connection == sig.RECONNECTING


async def test_a_blackout_within_the_window_resumes_the_same_participant(
    tmp_path: pathlib.Path,
) -> None:
    async with _stack(tmp_path) as stack:
        await stack.assign("m")
        async with (
            stack.join("m", Role.HOST) as witness,
            open_udp_proxy(stack.running.signal_address) as proxy,
        ):
            async with _subject(stack, proxy, "m") as subject:
                pid, token = subject.participant_id, subject.join_response.resume_token
                assert len(token) == 43 and not subject.join_response.resumed
                await next_event(witness, "participant_joined")
                await subject.request(sig.ClientMessage(publish=sig.PublishStream(stream_id="cam")))
                await witness.request(sig.ClientMessage(publish=sig.PublishStream(stream_id="mic")))
                await subject.request(
                    sig.ClientMessage(subscribe=sig.SubscribeStream(stream_id="mic"))
                )
                await witness.request(
                    sig.ClientMessage(subscribe=sig.SubscribeStream(stream_id="cam"))
                )
                await next_event(witness, "stream_published")
                registrations = len(stack.mh.registered)
                await _blackout_noticed(proxy, witness, pid)
                # the reconnecting state is a scope of the live tree, its deadline the window's
                async with httpx.AsyncClient(base_url=stack.running.ops_url) as http:
                    tree = json.loads((await http.get("/debug/tree")).text)
                [participant] = [
                    p for m in tree["meetings"] for p in m["participants"] if p["id"] == pid
                ]
                [window] = [s for s in participant["streams"] if s["name"] == "reconnecting"]
                assert 0 < window["deadline_in_s"] <= GRACE_S
                proxy.resume()
            async with _resume(stack, proxy.via(stack.running.signal_url), "m", token) as back:
                response = back.join_response
                assert response.resumed and response.participant_id == pid
                assert response.resume_token not in ("", token)
                assert response.media_server.connection_token == f"token-{pid}-3"
                assert [p.participant_id for p in response.existing_participants] == [
                    witness.participant_id
                ]
                # RegisterParticipant again at the same MH (a fresh token; the MH keeps routes)
                assert len(stack.mh.registered) == registrations + 1
                assert stack.mh.registered[-1].participant_id == pid
                assert not stack.mh.removed
                # publications and subscriptions kept
                member = stack.running.controller.rooms[MeetingId("m")].members[ParticipantId(pid)]
                assert list(member.streams) == ["cam"] and list(member.subscriptions) == ["mic"]
                # the witness saw RECONNECTING, then CONNECTED, and neither a leave nor a join
                await back.request(sig.ClientMessage(publish=sig.PublishStream(stream_id="cam2")))
                seen = await _events_until(witness, "stream_published")
                kinds = [e.WhichOneof("message") for e in seen]
                assert kinds == ["participant_updated", "stream_published"], kinds
                assert seen[0].participant_updated.connection == sig.CONNECTED
                assert seen[0].participant_updated.participant_id == pid
                # the resumed session works as any: a clean leave
                ended = await back.leave()
                assert ended is not None and ended.reason == common_pb2.VOLUNTARY
            left = await next_event(witness, "participant_left")
            assert left.participant_left.reason == common_pb2.VOLUNTARY
            await stack.mh.wait_for(lambda: len(stack.mh.removed) == 1)


async def test_past_the_window_the_participant_leaves_once_connection_lost(
    tmp_path: pathlib.Path,
) -> None:
    async with _stack(tmp_path) as stack:
        await stack.assign("m")
        async with (
            stack.join("m", Role.HOST) as witness,
            open_udp_proxy(stack.running.signal_address) as proxy,
        ):
            async with _subject(stack, proxy, "m") as subject:
                pid, token = subject.participant_id, subject.join_response.resume_token
                await next_event(witness, "participant_joined")
                await _blackout_noticed(proxy, witness, pid)
                noticed = trio.current_time()
                # a participant joining meanwhile is told who is reconnecting
                async with stack.join("m") as late:
                    assert pid in [
                        p.participant_id for p in late.join_response.existing_participants
                    ]
                    told = await next_event(late, "participant_updated")
                    assert told.participant_updated.participant_id == pid
                    assert told.participant_updated.connection == sig.RECONNECTING
                    await late.leave()
                left = await next_event(witness, "participant_left")
                if left.participant_left.participant_id != pid:  # the late joiner's
                    left = await next_event(witness, "participant_left")
                assert trio.current_time() - noticed >= GRACE_S - 0.1
                assert left.participant_left.participant_id == pid
                assert left.participant_left.reason == common_pb2.CONNECTION_LOST
                await stack.mh.wait_for(
                    lambda: any(r.participant_id == pid for r in stack.mh.removed)
                )
                [removed] = [r for r in stack.mh.removed if r.participant_id == pid]
                assert removed.reason == common_pb2.CONNECTION_LOST
                proxy.resume()
            with pytest.raises(NotFound):
                async with _resume(stack, proxy.via(stack.running.signal_url), "m", token):
                    raise AssertionError("resumed after the window")
            # exactly once: nothing more of it reaches the witness before the next joiner
            async with stack.join("m"):
                seen = await _events_until(witness, "participant_joined")
            assert [e.WhichOneof("message") for e in seen] == ["participant_joined"]
            assert [r.participant_id for r in stack.mh.removed].count(pid) == 1
            assert pid not in str(stack.running.controller.tree.snapshot())


async def test_a_kick_during_the_window_applies_and_the_resume_is_refused_kicked(
    tmp_path: pathlib.Path,
) -> None:
    async with _stack(tmp_path) as stack:
        await stack.assign("m")
        async with (
            stack.join("m", Role.HOST) as host,
            open_udp_proxy(stack.running.signal_address) as proxy,
        ):
            async with _subject(stack, proxy, "m") as subject:
                pid, token = subject.participant_id, subject.join_response.resume_token
                await next_event(host, "participant_joined")
                await _blackout_noticed(proxy, host, pid)
                await host.request(sig.ClientMessage(kick=sig.KickParticipant(participant_id=pid)))
                left = await next_event(host, "participant_left")
                assert left.participant_left.participant_id == pid
                assert left.participant_left.reason == common_pb2.KICKED
                await stack.mh.wait_for(lambda: len(stack.mh.removed) == 1)
                assert stack.mh.removed[0].reason == common_pb2.KICKED
                proxy.resume()
            with pytest.raises(SignalingEnded) as refused:
                async with _resume(stack, proxy.via(stack.running.signal_url), "m", token):
                    raise AssertionError("resumed after a kick")
            assert refused.value.reason is LeaveReason.KICKED


async def test_the_meetings_end_during_the_window_refuses_the_resume_meeting_ended(
    tmp_path: pathlib.Path,
) -> None:
    async with _stack(tmp_path) as stack:
        await stack.assign("m")
        async with (
            stack.join("m", Role.HOST) as host,
            open_udp_proxy(stack.running.signal_address) as proxy,
        ):
            async with _subject(stack, proxy, "m") as subject:
                pid, token = subject.participant_id, subject.join_response.resume_token
                await next_event(host, "participant_joined")
                await _blackout_noticed(proxy, host, pid)
                await host.request(sig.ClientMessage(end_meeting=sig.EndMeeting()))
                proxy.resume()
            with pytest.raises(SignalingEnded) as refused:
                async with _resume(stack, proxy.via(stack.running.signal_url), "m", token):
                    raise AssertionError("resumed after the meeting's end")
            assert refused.value.reason is LeaveReason.MEETING_ENDED


async def test_a_token_is_single_use_and_a_resume_takes_over_a_live_connection(
    tmp_path: pathlib.Path,
) -> None:
    """A client that lost its connection before the MC noticed resumes at once: the MC drops
    the old connection for the new one, and the others notice nothing."""
    async with _stack(tmp_path) as stack:
        await stack.assign("m")
        url = stack.running.signal_url
        async with stack.join("m", Role.HOST) as witness, stack.join("m") as subject:
            pid, first = subject.participant_id, subject.join_response.resume_token
            await next_event(witness, "participant_joined")
            async with _resume(stack, url, "m", first) as back:
                assert back.join_response.resumed and back.participant_id == pid
                second = back.join_response.resume_token
                # the old connection is closed; it ends with no SessionEnded
                with trio.fail_after(WAIT_S):
                    await subject.closed.wait()
                assert subject.session_ended is None
                # used: refused; the participant carries on
                with pytest.raises(NotFound):
                    async with _resume(stack, url, "m", first):
                        raise AssertionError("a used token resumed")
                pong = await back.request(sig.ClientMessage(ping=sig.Ping(timestamp=3)))
                assert pong.pong.timestamp == 3
                # a second resume this soon is refused RATE_LIMITED, its token still good ...
                with pytest.raises(RateLimited) as limited:
                    async with _resume(stack, url, "m", second):
                        raise AssertionError("resumed twice within the interval")
                assert 0 < limited.value.retry_after_s <= MIN_RESUME_INTERVAL_S
                await trio.sleep(limited.value.retry_after_s)  # the interval is the subject
                # ... and works once the interval has passed (once more a takeover)
                async with _resume(stack, url, "m", second) as again:
                    assert again.participant_id == pid
                    await again.leave()
            left = await _events_until(witness, "participant_left")
            assert [e.WhichOneof("message") for e in left] == ["participant_left"]
            assert left[0].participant_left.reason == common_pb2.VOLUNTARY


async def test_a_token_is_useless_for_another_meeting_and_a_made_up_one_too(
    tmp_path: pathlib.Path,
) -> None:
    async with _stack(tmp_path) as stack:
        await stack.assign("m1")
        await stack.assign("m2")
        url = stack.running.signal_url
        async with stack.join("m1") as subject:
            token = subject.join_response.resume_token
            altered = token[:-1] + ("B" if token.endswith("A") else "A")
            for meeting_id, presented in [("m2", token), ("m1", altered), ("m1", "x")]:
                with pytest.raises(NotFound):
                    async with _resume(stack, url, meeting_id, presented):
                        raise AssertionError("resumed with a foreign token")
            # the subject was not disturbed
            pong = await subject.request(sig.ClientMessage(ping=sig.Ping(timestamp=9)))
            assert pong.pong.timestamp == 9
        metrics = stack.running.controller.metrics
        assert metrics.resumes.value("not_found") == 3


async def test_a_resume_lost_before_its_answer_ends_the_participant_at_once(
    tmp_path: pathlib.Path,
) -> None:
    """The resume's token is spent when it is presented; if that connection goes before the
    MC answers (here: while the MH is slow to give the media token), nothing can resume the
    participant any more, so it leaves CONNECTION_LOST at once, not after a second window."""
    async with _stack(tmp_path, resume_grace_s=60.0) as stack:
        await stack.assign("m")
        async with (
            stack.join("m", Role.HOST) as witness,
            open_udp_proxy(stack.running.signal_address) as proxy,
        ):
            async with _subject(stack, proxy, "m") as subject:
                pid, token = subject.participant_id, subject.join_response.resume_token
                await next_event(witness, "participant_joined")
                await _blackout_noticed(proxy, witness, pid)
            registrations = len(stack.mh.registered)
            stack.mh.hold_register = trio.Event()
            async with trio.open_nursery() as nursery:

                async def resume() -> None:
                    async with _resume(stack, stack.running.signal_url, "m", token):
                        raise AssertionError("answered although the MH never did")

                nursery.start_soon(resume)
                await stack.mh.wait_for(lambda: len(stack.mh.registered) > registrations)
                nursery.cancel_scope.cancel()  # the client gives up: its connection closes
            left = await next_event(witness, "participant_left")  # well within the 60 s window
            assert left.participant_left.participant_id == pid
            assert left.participant_left.reason == common_pb2.CONNECTION_LOST
            stack.mh.hold_register.set()


# What Chromium's QUIC stack sends when it gives up on a connection (its idle timeout): NO_ERROR,
# its own error code in front of the reason phrase.
BROWSER_IDLE_CLOSE = "25:No recent network activity after 2002010us. Timeout:2s"


@pytest.mark.parametrize(
    ("reason", "resumable"),
    [(BROWSER_IDLE_CLOSE, True), ("", False), ("0:closed by the page", False)],
)
async def test_a_browsers_idle_close_opens_the_window_and_a_plain_close_is_a_leave(
    tmp_path: pathlib.Path, reason: str, resumable: bool
) -> None:
    """A client that closes its QUIC connection with NO_ERROR leaves (VOLUNTARY), unless the
    reason phrase says its QUIC stack gave up (a browser whose MC was silent for a while):
    then it is a lost connection, and the participant may resume (docs/protocol.md §13)."""
    async with _stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m", Role.HOST) as witness:
            async with _connect(
                stack, stack.running.signal_url, "m", join_token=stack.token("m")
            ) as subject:
                pid, token = subject.participant_id, subject.join_response.resume_token
                await next_event(witness, "participant_joined")
                conn = subject.session._conn
                conn.quic.close(error_code=0, reason_phrase=reason)
                conn.flush()
                if not resumable:
                    left = await next_event(witness, "participant_left")
                    assert left.participant_left.participant_id == pid
                    assert left.participant_left.reason == common_pb2.VOLUNTARY
                    return
                updated = await next_event(witness, "participant_updated")
                assert updated.participant_updated.participant_id == pid
                assert updated.participant_updated.connection == sig.RECONNECTING
            async with _resume(stack, stack.running.signal_url, "m", token) as back:
                assert back.join_response.resumed and back.join_response.participant_id == pid
            back_again = await next_event(witness, "participant_updated")
            assert back_again.participant_updated.connection == sig.CONNECTED
