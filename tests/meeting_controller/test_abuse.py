"""Malformed and oversize input, rate limits and slow readers: only the offender is dropped."""

from __future__ import annotations

import pathlib
from typing import Any

import trio

from darktower.model import Role
from darktower.protocol import MessageDecoder, encode_message, encode_varint
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import TransportLimits, connect_webtransport

from ._harness import Stack, join_message, next_event, open_stack, read_until_end


async def _raw_join(stack: Stack, session: Any, meeting_id: str) -> Any:
    stream = await session.open_bidirectional_stream()
    await stream.send_all(encode_message(join_message(stack, meeting_id)))
    return stream


def _connect(stack: Stack, limits: TransportLimits | None = None) -> Any:
    return connect_webtransport(
        stack.running.signal_url,
        server_certificate_hashes=[stack.running.certificate_sha256],
        limits=limits,
    )


async def _offender_is_dropped(stack: Stack, payload: bytes) -> list[sig.ServerMessage]:
    async with stack.join("m", Role.HOST) as witness:
        async with _connect(stack) as session:
            stream = await _raw_join(stack, session, "m")
            joined = await next_event(witness, "participant_joined")
            await stream.send_all(payload)
            replies = await read_until_end(stream)
            await session.wait_closed()
            assert session.peer_close_code == common_pb2.INVALID_REQUEST
        left = await next_event(witness, "participant_left")
        assert (
            left.participant_left.participant_id
            == joined.participant_joined.participant.participant_id
        )
        assert left.participant_left.reason == common_pb2.CONNECTION_LOST
        # nobody else noticed: the witness still talks to the MC
        pong = await witness.request(sig.ClientMessage(ping=sig.Ping(timestamp=5)))
        assert pong.pong.timestamp == 5
    return replies


async def test_malformed_message_closes_only_that_session(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        replies = await _offender_is_dropped(stack, encode_varint(3) + b"\xff\xff\xff")
        kinds = [r.WhichOneof("message") for r in replies]
        assert kinds[0] == "join_response" and kinds[-2:] == ["error", "session_ended"]
        assert replies[-2].error.code == common_pb2.INVALID_REQUEST
        assert replies[-1].session_ended.reason == common_pb2.CONNECTION_LOST


async def test_oversize_message_closes_only_that_session(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        replies = await _offender_is_dropped(stack, encode_varint(65 * 1024) + b"x" * 100)
        assert replies[-2].error.code == common_pb2.INVALID_REQUEST
        assert replies[-1].session_ended.reason == common_pb2.CONNECTION_LOST


async def test_empty_envelope_is_invalid_request(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m") as client:
            from darktower.errors import InvalidRequest

            try:
                await client.request(sig.ClientMessage())
            except InvalidRequest as exc:
                assert "empty" in str(exc)
            else:
                raise AssertionError("an empty envelope must be refused")


async def test_rate_limit_then_disconnect(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m", Role.HOST) as witness:
            async with _connect(stack) as session:
                stream = await _raw_join(stack, session, "m")
                decoder: MessageDecoder[sig.ServerMessage] = MessageDecoder(sig.ServerMessage)

                def pings(first: int, count: int) -> bytes:
                    return b"".join(
                        encode_message(sig.ClientMessage(request_id=i, ping=sig.Ping(timestamp=i)))
                        for i in range(first, first + count)
                    )

                # phase 1: the burst allowance (200) plus 40 over it: up to 40 RATE_LIMITED
                # replies (below the 50 that disconnect). The bucket refills 1000/min while the
                # burst is served, so a slow machine sees fewer; 40 leaves 2.4 s for that.
                t0 = trio.current_time()
                await stream.send_all(pings(2, 240))
                replies: list[sig.ServerMessage] = []
                with trio.fail_after(10):
                    while len(replies) < 241:
                        decoder.receive_data(await stream.receive_some())
                        replies.extend(decoder)
                # the bucket refills 1000/min while the burst is being served (slow machines)
                refilled = int((trio.current_time() - t0) * 1000 / 60) + 1
                kinds = [r.WhichOneof("message") for r in replies]
                assert kinds.count("pong") + kinds.count("error") == 240
                assert 200 <= kinds.count("pong") <= 200 + refilled
                assert kinds.count("error") >= 1
                errors = [r for r in replies if r.WhichOneof("message") == "error"]
                assert {r.error.code for r in errors} == {common_pb2.RATE_LIMITED}
                # phase 2: sustained abuse -> the session is dropped
                await stream.send_all(pings(300, 100))
                rest = await read_until_end(stream)
            assert rest[-1].session_ended.reason == common_pb2.CONNECTION_LOST
            assert rest[-2].error.code == common_pb2.RATE_LIMITED
            left = await next_event(witness, "participant_left")
            assert left.participant_left.reason == common_pb2.CONNECTION_LOST
            assert stack.running.controller.metrics.errors.value("RATE_LIMITED") >= 50


async def test_slow_reader_is_dropped_without_slowing_the_meeting(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path, outbound_queue_size=4) as stack:
        await stack.assign("m")
        # Key shares are at most 1 KiB (docs/protocol.md) and one sender may send 200 in a
        # burst: three senders fill the MC's send buffer (256 KiB) towards a reader that never
        # reads (and grants a 2 KiB window), then its 4-message queue.
        async with (
            stack.join("m", Role.HOST) as sender,
            stack.join("m") as second,
            stack.join("m") as third,
            _connect(stack, TransportLimits(stream_receive_window=2048)) as session,
        ):
            await _raw_join(stack, session, "m")  # joins, then never reads again
            joined = await next_event(sender, "participant_joined")
            while joined.participant_joined.participant.participant_id in (
                second.participant_id,
                third.participant_id,
            ):
                joined = await next_event(sender, "participant_joined")
            slow = joined.participant_joined.participant.participant_id
            share = sig.E2EEKeyShare(to_participant_id=slow, ciphertext=b"k" * 1024)
            with trio.fail_after(20):
                for _ in range(100):
                    try:
                        for client in (sender, second, third):
                            await client.request(sig.ClientMessage(key_share=share))
                    except Exception:
                        break  # the slow one is gone: NOT_FOUND
            left = await next_event(sender, "participant_left")
            assert left.participant_left.participant_id == slow
            assert left.participant_left.reason == common_pb2.CONNECTION_LOST
            pong = await sender.request(sig.ClientMessage(ping=sig.Ping(timestamp=9)))
            assert pong.pong.timestamp == 9
            assert stack.running.controller.metrics.errors.value("OUTBOUND_OVERFLOW") == 1
