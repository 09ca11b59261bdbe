"""Fuzz the MC's signaling over real QUIC: random and mutated messages before and after the
join. Each bad message gets the right error (INVALID_REQUEST naming the field for one over its
bound) or closes its session with INVALID_REQUEST; afterwards the MC still serves a
well-formed join, and a witness in the meeting noticed nothing."""

from __future__ import annotations

import pathlib
import random
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
from google.protobuf.message import DecodeError

from darktower.errors import InvalidRequest
from darktower.model import Role
from darktower.protocol import MAX_MESSAGE_SIZE, MessageDecoder, check_bounds, encode_varint
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import connect_webtransport
from tests._fuzz import fuzz_cases, fuzz_rng

from ._harness import WAIT_S, Stack, join_message, open_stack

# Messages per session after the join: under the rate limiter's burst (200).
PER_SESSION = 60


# Events, request_id 0: the MH's feedback (docs/protocol.md §17), and what the MC tells every
# member, the sender included, before it answers: its own publication state (§18.1: a fuzzed
# screen publish or mute) and its own chat message (§18.3).
# (participant_joined/left: the meeting's other sessions, an earlier example's among them,
# come and go at their own time.)
_UNSOLICITED = frozenset(
    {
        "quality",
        "active_speakers",
        "key_frame_request",
        "participant_updated",
        "participant_joined",
        "participant_left",
        "chat_message",
    }
)


class Raw:
    """One raw signaling session: send bytes, read the replies in order. (The session is
    closed from our side once the MC ended it, as a client does; the MC waits for that.)"""

    def __init__(self, session: Any, stream: Any) -> None:
        self.session = session
        self.stream = stream
        self.decoder: MessageDecoder[sig.ServerMessage] = MessageDecoder(sig.ServerMessage)

    async def next(self) -> sig.ServerMessage | None:
        """The next server message other than the events of ``_UNSOLICITED`` (a fuzzed stream
        that was published gets the MH's), None once the stream ends."""
        with trio.fail_after(WAIT_S):
            while True:
                while (message := self.decoder.next_message()) is None:
                    try:
                        data = await self.stream.receive_some()
                    except trio.BrokenResourceError:
                        return None
                    if not data:
                        return None
                    self.decoder.receive_data(data)
                if message.request_id or message.WhichOneof("message") not in _UNSOLICITED:
                    return message

    async def expect_closed_with_invalid_request(self) -> None:
        error = await self.next()
        assert error is not None and error.WhichOneof("message") == "error", error
        assert error.error.code == common_pb2.INVALID_REQUEST
        ended = await self.next()
        assert ended is not None and ended.WhichOneof("message") == "session_ended"
        assert await self.next() is None  # and nothing after it
        self.session.close_nowait(0, "")  # as a client does: the MC waits for it (bounded)


async def _open(stack: Stack, exits: AsyncExitStack) -> Raw:
    session = await exits.enter_async_context(
        connect_webtransport(
            stack.running.signal_url,
            server_certificate_hashes=[stack.running.certificate_sha256],
        )
    )
    return Raw(session, await session.open_bidirectional_stream())


def _text(rng: random.Random, limit: int) -> str:
    """Mostly within ``limit`` characters, sometimes just over or far over."""
    size = rng.choice([0, 1, limit // 2, limit, limit + 1, limit * 3, rng.randrange(limit * 2 + 1)])
    return "".join(rng.choice("aé𝄞-0") for _ in range(size))


def _blob(rng: random.Random, limit: int) -> bytes:
    size = rng.choice([0, limit, limit + 1, rng.randrange(limit * 3 + 1)])
    return rng.randbytes(size)


def _message(rng: random.Random, request_id: int) -> sig.ClientMessage:
    """A structurally valid message whose fields are random, some over their bounds."""
    from darktower.protocol import _bounds as b

    kind = rng.choice(
        [
            "publish",
            "unpublish",
            "subscribe",
            "unsubscribe",
            "quality",
            "kick",
            "ping",
            "key_share",
            "end_meeting",
            "join",
            "empty",
        ]
    )
    m = sig.ClientMessage(request_id=request_id)
    if kind == "publish":
        layers = [
            common_pb2.SimulcastLayer(layer_id=_text(rng, b.MAX_LAYER_ID_CHARS))
            for _ in range(rng.choice([0, 3, b.MAX_SIMULCAST_LAYERS + 1]))
        ]
        m.publish.stream_id = _text(rng, b.MAX_ID_CHARS)
        m.publish.stream_type = rng.choice([0, 1, 2, 2, 9])  # type: ignore[assignment]
        m.publish.metadata.codec = _text(rng, b.MAX_CODEC_CHARS)
        m.publish.metadata.video.simulcast_layers.extend(layers)
    elif kind in ("unpublish", "unsubscribe"):
        getattr(m, kind).stream_id = _text(rng, b.MAX_ID_CHARS)
    elif kind == "subscribe":
        m.subscribe.stream_id = _text(rng, b.MAX_ID_CHARS)
        m.subscribe.options.preferred_layer = _text(rng, b.MAX_LAYER_ID_CHARS)
    elif kind == "quality":
        m.quality.stream_id = _text(rng, b.MAX_ID_CHARS)
        m.quality.rtt_ms = rng.randrange(2**32)
    elif kind == "kick":
        m.kick.participant_id = _text(rng, b.MAX_ID_CHARS)
    elif kind == "ping":
        m.ping.timestamp = rng.randrange(2**64)
    elif kind == "key_share":
        m.key_share.to_participant_id = _text(rng, b.MAX_ID_CHARS)
        m.key_share.key_id = _text(rng, b.MAX_KEY_ID_CHARS)
        m.key_share.ciphertext = _blob(rng, b.MAX_KEY_SHARE_CIPHERTEXT_BYTES)
    elif kind == "end_meeting":
        m.end_meeting.SetInParent()
    elif kind == "join":
        m.join.participant_name = _text(rng, b.MAX_NAME_CHARS)
    return m


def _mutate(rng: random.Random, body: bytes) -> bytes:
    """``body`` with a few bytes changed, cut, or extended with an unknown field or noise."""
    out = bytearray(body)
    action = rng.randrange(4)
    if action == 0 and out:
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif action == 1 and out:
        del out[rng.randrange(len(out)) :]
    elif action == 2:
        size = rng.randrange(3000)
        out += bytes([0x9A, 0x06]) + encode_varint(size) + rng.randbytes(size)  # field 99
    else:
        out += rng.randbytes(rng.randrange(1, 16))
    return bytes(out)


async def _check_reply(raw: Raw, body: bytes) -> bool:
    """Send ``body`` as one message and check the MC's answer; False once the session ended."""
    await raw.stream.send_all(encode_varint(len(body)) + body)
    try:
        sent = sig.ClientMessage.FromString(body)
    except DecodeError:
        await raw.expect_closed_with_invalid_request()
        return False
    sent.DiscardUnknownFields()
    kind = sent.WhichOneof("message")
    if kind == "leave":
        reply = await raw.next()
        assert reply is not None and reply.session_ended.reason == common_pb2.VOLUNTARY
        raw.session.close_nowait(0, "")
        return False
    reply = await raw.next()
    assert reply is not None, f"no reply to {kind}"
    assert reply.request_id == sent.request_id
    replied = reply.WhichOneof("message")
    try:
        check_bounds(sent)
    except InvalidRequest as exc:
        if kind is not None and kind != "join":
            assert replied == "error" and reply.error.code == common_pb2.INVALID_REQUEST
            assert reply.error.details["field"] == exc.details["field"], (reply, exc)
            return True
    if kind in (None, "join"):  # an empty envelope, a second join
        assert replied == "error" and reply.error.code == common_pb2.INVALID_REQUEST
    elif kind in ("kick", "end_meeting"):  # a guest's
        assert replied == "error" and reply.error.code == common_pb2.FORBIDDEN
    elif kind == "ping":
        assert reply.pong.timestamp == sent.ping.timestamp
    else:
        assert replied in ("ack", "error"), reply
    return True


async def _joined(stack: Stack, exits: AsyncExitStack) -> Raw:
    raw = await _open(stack, exits)
    await raw.stream.send_all(
        encode_varint(len(body := join_message(stack, "m").SerializeToString())) + body
    )
    reply = await raw.next()
    assert reply is not None and reply.WhichOneof("message") == "join_response"
    return raw


@pytest.mark.fuzz
async def test_random_and_mutated_signaling_against_a_live_mc(tmp_path: pathlib.Path) -> None:
    rng = fuzz_rng("mc-signaling")
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m", Role.HOST) as witness:
            # before the join: a mutated or random first message
            for case in range(fuzz_cases(10)):
                async with AsyncExitStack() as exits:
                    raw = await _open(stack, exits)
                    join = join_message(stack, "m", request_id=case + 1)
                    body = join.SerializeToString()
                    if rng.random() < 0.8:
                        body = _mutate(rng, body)
                    else:
                        body = _message(rng, case + 1).SerializeToString()
                    await raw.stream.send_all(encode_varint(len(body)) + body)
                    reply = await raw.next()
                    assert reply is not None
                    if reply.WhichOneof("message") == "join_response":
                        continue  # the mutation kept it a valid join
                    assert reply.WhichOneof("message") == "error", reply
                    try:
                        first = sig.ClientMessage.FromString(body)
                        valid = first.WhichOneof("message") == "join"
                        if valid:
                            check_bounds(first)
                    except (DecodeError, InvalidRequest):
                        valid = False
                    if not valid:
                        assert reply.error.code == common_pb2.INVALID_REQUEST, reply
                    assert await raw.next() is None  # the MC ended the stream after its error
            # after the join: random messages, mutated ones, framing faults
            sent = 0
            while sent < fuzz_cases(120):
                async with AsyncExitStack() as exits:
                    raw = await _joined(stack, exits)
                    for _ in range(PER_SESSION):
                        sent += 1
                        message = _message(rng, rng.choice([0, sent]))
                        body = message.SerializeToString()
                        if rng.random() < 0.3:
                            body = _mutate(rng, body)
                        if rng.random() < 0.02:  # a length over the limit
                            await raw.stream.send_all(encode_varint(MAX_MESSAGE_SIZE + 1))
                            await raw.expect_closed_with_invalid_request()
                            break
                        if len(body) > MAX_MESSAGE_SIZE or not await _check_reply(raw, body):
                            break
            # the MC still serves a well-formed join, and the witness noticed nothing wrong
            async with stack.join("m") as late:
                assert late.join_response.participant_id
            pong = await witness.request(sig.ClientMessage(ping=sig.Ping(timestamp=11)))
            assert pong.pong.timestamp == 11
            assert witness.session_ended is None
