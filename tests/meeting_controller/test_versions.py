"""The protocol version in each signaling message (docs/protocol.md §12): every ServerMessage
the MC sends carries it; a ClientMessage of a version the MC does not speak is refused with
INVALID_REQUEST naming the supported versions, ending the session only before the join."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import trio

from darktower.errors import InvalidRequest
from darktower.model import Role
from darktower.protocol import PROTOCOL_VERSION, MessageDecoder, encode_message
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import connect_webtransport

from ._harness import WAIT_S, join_message, next_event, open_stack, read_until_end

UNSUPPORTED = PROTOCOL_VERSION + 1


async def _messages(stream: trio.abc.ReceiveStream) -> AsyncIterator[sig.ServerMessage]:
    decoder: MessageDecoder[sig.ServerMessage] = MessageDecoder(sig.ServerMessage)
    while True:
        for message in decoder:
            yield message
        with trio.fail_after(WAIT_S):
            data = await stream.receive_some()
        assert data, "the stream ended"
        decoder.receive_data(data)


async def test_an_unsupported_version_in_the_join_ends_the_session(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with connect_webtransport(
            stack.running.signal_url, server_certificate_hashes=[stack.running.certificate_sha256]
        ) as session:
            stream = await session.open_bidirectional_stream()
            join = join_message(stack, "m", request_id=4)
            join.protocol_version = UNSUPPORTED
            await stream.send_all(encode_message(join))
            (reply,) = await read_until_end(stream)
            assert reply.request_id == 4
            assert reply.error.code == common_pb2.INVALID_REQUEST
            assert f"unsupported protocol version {UNSUPPORTED}" in reply.error.message
            assert reply.error.details["supported"] == str(PROTOCOL_VERSION)
            assert reply.protocol_version == PROTOCOL_VERSION
            await session.wait_closed()
            assert session.peer_close_code == int(InvalidRequest.code)
        assert stack.mh.registered == []  # refused before anything was allocated
        async with stack.join("m") as fine:  # the MC goes on
            assert fine.participant_id


async def test_an_unsupported_version_after_the_join_is_refused_and_the_session_goes_on(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with (
            stack.join("m", Role.HOST) as host,
            connect_webtransport(
                stack.running.signal_url,
                server_certificate_hashes=[stack.running.certificate_sha256],
            ) as session,
        ):
            stream = await session.open_bidirectional_stream()
            join = join_message(stack, "m", request_id=1)
            join.protocol_version = PROTOCOL_VERSION
            await stream.send_all(encode_message(join))
            received = _messages(stream)
            response = await anext(received)
            assert response.WhichOneof("message") == "join_response"
            joined = await next_event(host, "participant_joined")  # an event for another
            ping = sig.ClientMessage(request_id=5, ping=sig.Ping(timestamp=1))
            ping.protocol_version = UNSUPPORTED
            await stream.send_all(encode_message(ping))
            refused = await anext(received)
            assert refused.request_id == 5
            assert refused.error.code == common_pb2.INVALID_REQUEST
            assert refused.error.details["field"] == "protocol_version"
            # the session goes on; a message without the field speaks version 1
            await stream.send_all(
                encode_message(sig.ClientMessage(request_id=6, ping=sig.Ping(timestamp=2)))
            )
            pong = await anext(received)
            assert (pong.request_id, pong.pong.timestamp) == (6, 2)
            await stream.send_all(
                encode_message(sig.ClientMessage(request_id=7, leave=sig.LeaveRequest()))
            )
            ended = await anext(received)
            assert ended.session_ended.reason == common_pb2.VOLUNTARY
            left = await next_event(host, "participant_left")
            for message in (response, joined, refused, pong, ended, left):
                assert message.protocol_version == PROTOCOL_VERSION, message
