"""Joins that are refused before anything is allocated; capacity."""

from __future__ import annotations

import pathlib
import time

import pytest

from darktower.errors import (
    CapacityExceeded,
    Forbidden,
    InternalError,
    InvalidRequest,
    NotFound,
    Unauthorized,
)
from darktower.model import MeetingId, Role
from darktower.protocol import encode_message
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.protocol.tokens import JoinTokenIssuer, generate_signing_key
from darktower.transport import connect_webtransport

from ._harness import open_stack, read_until_end


async def test_bad_tokens_are_refused_before_allocation(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        await stack.assign("other")
        expired = stack.issuer.issue(MeetingId("m"), Role.GUEST, time.time() - 3600)
        forged = JoinTokenIssuer(generate_signing_key()).issue(
            MeetingId("m"), Role.HOST, time.time()
        )
        wrong_audience = JoinTokenIssuer(stack.issuer._key, audience="darktower-api").issue(
            MeetingId("m"), Role.GUEST, time.time()
        )
        cases = [
            ("m", "not-a-jwt", Unauthorized),
            ("m", expired, Unauthorized),
            ("m", forged, Unauthorized),
            ("m", wrong_audience, Unauthorized),
            ("m", stack.token("other"), Forbidden),
            ("unassigned", stack.token("unassigned"), NotFound),
        ]
        for meeting_id, token, error in cases:
            with pytest.raises(error):
                async with stack.join(meeting_id, token=token):
                    raise AssertionError("joined with a bad token")
        assert stack.mh.registered == []  # nothing was allocated
        assert stack.running.controller.participant_count == 0


async def test_capacity_of_meeting_and_of_controller(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path, max_meetings=2) as stack:
        await stack.assign("small", max_participants=2)
        await stack.assign("small")  # idempotent: the GC may retry
        await stack.assign("second")
        with pytest.raises(CapacityExceeded):
            await stack.assign("third")
        async with stack.join("small"), stack.join("small"):
            with pytest.raises(CapacityExceeded):
                async with stack.join("small"):
                    raise AssertionError("joined a full meeting")
        # places free up when participants leave
        async with stack.join("small") as again:
            assert again.participant_id


async def test_first_message_must_be_join(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with connect_webtransport(
            stack.running.signal_url, server_certificate_hashes=[stack.running.certificate_sha256]
        ) as session:
            stream = await session.open_bidirectional_stream()
            await stream.send_all(
                encode_message(sig.ClientMessage(request_id=7, ping=sig.Ping(timestamp=1)))
            )
            (reply,) = await read_until_end(stream)
            assert reply.request_id == 7
            assert reply.error.code == common_pb2.INVALID_REQUEST
            await session.wait_closed()
            assert session.peer_close_code == int(InvalidRequest.code)


async def test_handshake_timeout(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path, handshake_timeout_s=0.3) as stack:
        async with connect_webtransport(
            stack.running.signal_url, server_certificate_hashes=[stack.running.certificate_sha256]
        ) as session:
            stream = await session.open_bidirectional_stream()
            await stream.send_all(b"")  # opens the stream; no JoinRequest follows
            (reply,) = await read_until_end(stream)
            assert reply.error.code == common_pb2.INVALID_REQUEST
            assert "handshake" in reply.error.message
            await session.wait_closed()


async def test_unreachable_media_handler_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    import trio

    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    dead = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    async with open_stack(tmp_path, media_handler=f"127.0.0.1:{dead}") as stack:
        await stack.assign("m")
        with pytest.raises(InternalError, match="media handler"):
            async with stack.join("m"):
                raise AssertionError("joined without a media handler")
