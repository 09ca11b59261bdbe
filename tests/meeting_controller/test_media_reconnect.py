"""Media reconnection, the MC's side (docs/protocol.md §13): MediaReconnectRequest is answered
with a fresh connection token; the MH's ParticipantDisconnected sends one unsolicited, once per
loss; an MH that refuses or is gone leaves a resume in place without media; an MH that forgot
the participant (``created``) gets its streams and routes again before the token goes out."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import trio

from darktower.errors import CapacityExceeded, InternalError
from darktower.loadtest import open_udp_proxy
from darktower.model import MeetingId
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._harness import Stack, next_event, open_stack
from .test_resume import _events_until, _resume, _stack, _subject


def _disconnected(meeting_id: str, pid: str) -> mh_pb.TelemetryEvent:
    return mh_pb.TelemetryEvent(
        meeting_id=meeting_id,
        participant_disconnected=mh_pb.ParticipantDisconnected(participant_id=pid),
    )


async def test_media_reconnect_request_is_answered_with_a_fresh_token(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m") as client:
            pid = client.participant_id
            assert client.join_response.media_server.connection_token == f"token-{pid}"
            reply = await client.request(
                sig.ClientMessage(media_reconnect_request=sig.MediaReconnectRequest())
            )
            assert reply.WhichOneof("message") == "media_reconnect" and reply.request_id
            media = reply.media_reconnect.media_server
            assert media.connection_token == f"token-{pid}-2"
            assert media.media_handler_url == client.join_response.media_server.media_handler_url
            # RegisterParticipant again for the same participant, at the same MH
            assert [r.participant_id for r in stack.mh.registered] == [pid, pid]
            assert not stack.mh.registered[-1].streams
            # an MH that refuses: the client is told, and may ask again
            stack.mh.refuse_register = CapacityExceeded("room full")
            with pytest.raises(CapacityExceeded):
                await client.request(
                    sig.ClientMessage(media_reconnect_request=sig.MediaReconnectRequest())
                )
            stack.mh.refuse_register = InternalError("down")
            with pytest.raises(InternalError):
                await client.request(
                    sig.ClientMessage(media_reconnect_request=sig.MediaReconnectRequest())
                )
            stack.mh.refuse_register = None
            reply = await client.request(
                sig.ClientMessage(media_reconnect_request=sig.MediaReconnectRequest())
            )
            assert reply.media_reconnect.media_server.connection_token


async def test_participant_disconnected_sends_one_unsolicited_media_reconnect(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        with trio.fail_after(10):
            await stack.mh.telemetry_subscribed.wait()
        async with stack.join("m") as client, stack.join("m") as other:
            pid = client.participant_id
            await stack.mh.telemetry_send.send(_disconnected("m", pid))
            pushed = await next_event(client, "media_reconnect")
            assert pushed.request_id == 0
            assert pushed.media_reconnect.media_server.connection_token == f"token-{pid}-2"
            # once per loss: nothing more until the next loss (a marker event follows)
            await other.request(sig.ClientMessage(publish=sig.PublishStream(stream_id="s")))
            seen = await _events_until(client, "stream_published")
            assert [e.WhichOneof("message") for e in seen] == ["stream_published"]
            assert [r.participant_id for r in stack.mh.registered].count(pid) == 2
            # a second loss, a second message; unknown participants and meetings: nothing
            await stack.mh.telemetry_send.send(_disconnected("m", "nobody"))
            await stack.mh.telemetry_send.send(_disconnected("elsewhere", pid))
            await stack.mh.telemetry_send.send(_disconnected("m", pid))
            pushed = await next_event(client, "media_reconnect")
            assert pushed.media_reconnect.media_server.connection_token == f"token-{pid}-3"
            # the other participant got none of it
            pong = await other.request(sig.ClientMessage(ping=sig.Ping(timestamp=1)))
            assert pong.pong.timestamp == 1
            await client.request(sig.ClientMessage(publish=sig.PublishStream(stream_id="t")))
            seen = await _events_until(other, "stream_published")
            assert [e.WhichOneof("message") for e in seen] == ["stream_published"]
            # an MH that refuses: no message (the client may ask), the session carries on
            stack.mh.refuse_register = InternalError("down")
            registered = len(stack.mh.registered)
            await stack.mh.telemetry_send.send(_disconnected("m", pid))
            await stack.mh.wait_for(lambda: len(stack.mh.registered) == registered + 1)
            stack.mh.refuse_register = None
            await other.request(sig.ClientMessage(publish=sig.PublishStream(stream_id="u")))
            seen = await _events_until(client, "stream_published")
            assert [e.WhichOneof("message") for e in seen] == ["stream_published"]


async def test_no_unsolicited_media_reconnect_while_reconnecting(tmp_path: pathlib.Path) -> None:
    """Signaling down too: the resume's JoinResponse brings the fresh token."""
    async with _stack(tmp_path) as stack:
        await stack.assign("m")
        with trio.fail_after(10):
            await stack.mh.telemetry_subscribed.wait()
        async with (
            stack.join("m") as witness,
            open_udp_proxy(stack.running.signal_address) as proxy,
        ):
            async with _subject(stack, proxy, "m") as subject:
                pid, token = subject.participant_id, subject.join_response.resume_token
                await next_event(witness, "participant_joined")
                proxy.pause()
                await next_event(witness, "participant_updated")
                registered = len(stack.mh.registered)
                await stack.mh.telemetry_send.send(_disconnected("m", pid))
                # the MC read it (the witness's own loss, sent after, reaches the witness)
                await stack.mh.telemetry_send.send(_disconnected("m", witness.participant_id))
                await next_event(witness, "media_reconnect")
                assert len(stack.mh.registered) == registered + 1
                proxy.resume()
            async with _resume(stack, proxy.via(stack.running.signal_url), "m", token) as back:
                assert back.join_response.media_server.connection_token
                await witness.request(sig.ClientMessage(publish=sig.PublishStream(stream_id="s")))
                seen = await _events_until(back, "stream_published")
                assert [e.WhichOneof("message") for e in seen] == ["stream_published"]


async def test_a_resume_with_the_media_handler_gone_succeeds_without_media(
    tmp_path: pathlib.Path,
) -> None:
    """The participant keeps its place; the media server is empty and its client asks again
    with MediaReconnectRequest (docs/protocol.md §13)."""
    async with _stack(tmp_path) as stack:
        await stack.assign("m")
        url = stack.running.signal_url
        async with stack.join("m") as subject:
            pid = subject.participant_id
            stack.mh.refuse_register = InternalError("gone")
            async with _resume(stack, url, "m", subject.join_response.resume_token) as back:
                response = back.join_response
                assert response.resumed and response.participant_id == pid
                assert not response.media_server.connection_token
                assert not response.media_server.media_handler_url
                with pytest.raises(InternalError):
                    await back.request(
                        sig.ClientMessage(media_reconnect_request=sig.MediaReconnectRequest())
                    )
                stack.mh.refuse_register = None
                reply = await back.request(
                    sig.ClientMessage(media_reconnect_request=sig.MediaReconnectRequest())
                )
                assert reply.media_reconnect.media_server.connection_token
                await back.leave()


def _reconnect_request() -> sig.ClientMessage:
    return sig.ClientMessage(media_reconnect_request=sig.MediaReconnectRequest())


def _route(stream: str, destinations: list[str], layer: str = "", bitrate: int = 0) -> Any:
    return mh_pb.RouteMediaCommand(
        meeting_id="m",
        source_stream_id=stream,
        destination_participant_ids=destinations,
        options=mh_pb.RoutingOptions(preferred_layer=layer, target_bitrate=bitrate),
    )


async def _subscribe(client: Any, stream: str, layer: str = "", bitrate: int = 0) -> None:
    options = sig.SubscriptionOptions(preferred_layer=layer, max_bitrate=bitrate)
    await client.request(
        sig.ClientMessage(subscribe=sig.SubscribeStream(stream_id=stream, options=options))
    )


def _calls(stack: Stack, registered: int, routes: int) -> tuple[list[Any], list[Any]]:
    """The RegisterParticipant and RouteMedia requests the MH saw since, as the MC built them
    (the transport's protocol_version and the room's epoch left out: every registration carries
    the room's)."""
    room = stack.running.controller.rooms[MeetingId("m")]

    def plain(request: Any) -> Any:
        copy = type(request)()
        copy.CopyFrom(request)
        copy.ClearField("protocol_version")
        if isinstance(request, mh_pb.RegisterParticipant):
            assert request.room_epoch == room.epoch
            copy.ClearField("room_epoch")
        return copy

    return (
        [plain(r) for r in stack.mh.registered[registered:]],
        [plain(r) for r in stack.mh.routes[routes:]],
    )


def _plain(stream_id: str) -> common_pb2.MediaStream:
    """A stream published with no type nor metadata, as the MC keeps it."""
    return common_pb2.MediaStream(stream_id=stream_id, metadata=common_pb2.StreamMetadata())


async def test_a_forgotten_participant_gets_its_streams_and_routes_again_before_its_token(
    tmp_path: pathlib.Path,
) -> None:
    """The MH answers created = true (it forgot the participant after its media grace): the MC
    registers its streams (simulcast layers included) and routes its subscriptions and the
    others' subscriptions to its streams again, then hands out the token; if that fails, no
    token, and the next request replays again (docs/protocol.md §13)."""
    layers = [
        common_pb2.SimulcastLayer(layer_id="cam-lo", width=320, height=180, max_bitrate=150_000),
        common_pb2.SimulcastLayer(layer_id="cam-hi", width=1280, height=720, max_bitrate=1_500_000),
    ]
    cam = common_pb2.MediaStream(
        stream_id="cam",
        stream_type=common_pb2.VIDEO_CAMERA,
        metadata=common_pb2.StreamMetadata(
            codec="VP8", video=common_pb2.VideoMetadata(width=1280, simulcast_layers=layers)
        ),
    )
    mic = common_pb2.MediaStream(
        stream_id="mic", stream_type=common_pb2.AUDIO, metadata=common_pb2.StreamMetadata()
    )
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m") as a, stack.join("m") as b, stack.join("m") as c:
            for stream in (cam, mic):
                await a.request(
                    sig.ClientMessage(
                        publish=sig.PublishStream(
                            stream_id=stream.stream_id,
                            stream_type=stream.stream_type,
                            metadata=stream.metadata,
                        )
                    )
                )
            await b.request(sig.ClientMessage(publish=sig.PublishStream(stream_id="b-cam")))
            await a.request(sig.ClientMessage(publish=sig.PublishStream(stream_id="a-screen")))
            await _subscribe(a, "b-cam", "", 800_000)
            await _subscribe(b, "cam", "cam-lo", 300_000)
            await _subscribe(c, "cam", "cam-lo", 300_000)
            await _subscribe(b, "mic")
            pid = a.participant_id
            a_streams = [cam, mic, _plain("a-screen")]
            registered, routes = len(stack.mh.registered), len(stack.mh.routes)

            # kept by the MH (created = false): only a fresh token, nothing replayed
            reply = await a.request(_reconnect_request())
            assert reply.media_reconnect.media_server.connection_token
            assert _calls(stack, registered, routes) == (
                [mh_pb.RegisterParticipant(participant_id=pid, meeting_id="m")],
                [],
            )

            # forgotten (created = true): streams, its subscriptions, the others' to its streams
            stack.mh.forgotten.add(pid)
            registered, routes = len(stack.mh.registered), len(stack.mh.routes)
            reply = await a.request(_reconnect_request())
            # the token of the first call (the stand-in numbers each call's token)
            first = len([r for r in stack.mh.registered if r.participant_id == pid]) - 1
            assert reply.media_reconnect.media_server.connection_token == f"token-{pid}-{first}"
            replay = (
                [
                    mh_pb.RegisterParticipant(participant_id=pid, meeting_id="m"),
                    mh_pb.RegisterParticipant(
                        participant_id=pid, meeting_id="m", streams=a_streams
                    ),
                ],
                [
                    _route("b-cam", [pid], "", 800_000),
                    _route("cam", [b.participant_id, c.participant_id], "cam-lo", 300_000),
                    _route("mic", [b.participant_id]),
                ],
            )
            assert _calls(stack, registered, routes) == replay

            # a replay that fails: no token; the next request replays again (the MH now
            # answers created = false: it has the bare registration)
            stack.mh.forgotten.add(pid)
            stack.mh.refuse_route = InternalError("down")
            registered, routes = len(stack.mh.registered), len(stack.mh.routes)
            with pytest.raises(InternalError):
                await a.request(_reconnect_request())
            assert _calls(stack, registered, routes) == (replay[0], replay[1][:1])
            stack.mh.refuse_route = None
            registered, routes = len(stack.mh.registered), len(stack.mh.routes)
            reply = await a.request(_reconnect_request())
            assert reply.media_reconnect.media_server.connection_token
            assert _calls(stack, registered, routes) == replay
            # and then it is done: the next token is only a token
            registered, routes = len(stack.mh.registered), len(stack.mh.routes)
            await a.request(_reconnect_request())
            assert _calls(stack, registered, routes) == (replay[0][:1], [])


async def test_a_forgotten_participant_is_replayed_on_the_unsolicited_media_reconnect(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        with trio.fail_after(10):
            await stack.mh.telemetry_subscribed.wait()
        async with stack.join("m") as a, stack.join("m") as b:
            await a.request(sig.ClientMessage(publish=sig.PublishStream(stream_id="s")))
            await _subscribe(b, "s")
            pid = a.participant_id
            stack.mh.forgotten.add(pid)
            registered, routes = len(stack.mh.registered), len(stack.mh.routes)
            await stack.mh.telemetry_send.send(_disconnected("m", pid))
            pushed = await next_event(a, "media_reconnect")
            assert pushed.media_reconnect.media_server.connection_token
            assert _calls(stack, registered, routes) == (
                [
                    mh_pb.RegisterParticipant(participant_id=pid, meeting_id="m"),
                    mh_pb.RegisterParticipant(
                        participant_id=pid,
                        meeting_id="m",
                        streams=[_plain("s")],
                    ),
                ],
                [_route("s", [b.participant_id])],
            )


async def test_media_back_after_the_media_handler_forgot_the_participant(
    tmp_path: pathlib.Path,
) -> None:
    """The real MC and MH: a participant's media path is cut longer than the MH's media grace
    (the MH forgets it); when the path returns, its media reconnection brings its streams and
    subscriptions back both ways, without a rejoin."""
    from darktower.client import Reconnecting, Resumed
    from tests._stack import open_services
    from tests.client.test_reconnect import (
        IDLE_S,
        MEETING,
        behind_proxies,
        expect,
        flows,
        host,
        talking,
    )

    async with open_services(
        tmp_path,
        mc={"idle_timeout_s": IDLE_S},
        mh={"media_grace_s": 0.2},
    ) as services:
        await services.assign(MEETING)
        assert services.mh is not None
        async with host(services) as h, behind_proxies(services, "bob") as bob:
            b = bob.session
            to_bob = await talking(h, b)
            from_bob = await talking(b, h)
            await flows(*to_bob)
            await flows(*from_bob)
            pid = b.participant_id
            room = services.mh.handler.rooms[MEETING]  # type: ignore[index]
            # The host's subscription to bob's stream at the MH: forgetting bob ends it.
            sub = room.publications[from_bob[0].stream_id].subscriptions[h.participant_id]
            assert sub.task is not None
            bob.media_proxy.pause()
            assert await expect(b, Reconnecting) == Reconnecting(media_only=True)
            with trio.fail_after(30):
                await sub.task.wait_closed()  # the grace passed: the MH forgot bob
            bob.media_proxy.resume()
            resumed = await expect(b, Resumed)
            assert resumed.media_only and b.participant_id == pid
            await flows(*to_bob)
            await flows(*from_bob)
            assert pid in h.participants
