"""Data messages at the client, on fakes (docs/protocol.md §18.4): one datagram each, the
sender's rate kept as the MH keeps it, the bounded receive queue, padding and malformed
datagrams."""

from __future__ import annotations

import uuid

import pytest
import trio
import trio.testing

from darktower.client import DATA_BUFFER, SessionEnded
from darktower.client._data import DATA_MESSAGES_PER_S
from darktower.frames import MAX_DATA_PAYLOAD, DataMessage, decode_data, encode_data
from darktower.model import LeaveReason

from ._product_fakes import product_session

ANN = str(uuid.uuid4())


async def test_send_data_to_everyone_and_to_one(autojump_clock: trio.testing.MockClock) -> None:
    async with product_session() as (session, _, media):
        assert session.send_data(b"cursor 1,2")
        assert session.send_data(b"psst", to=ANN)
        everyone, private = (decode_data(d) for d in media.datagrams)
        assert everyone == DataMessage(str(uuid.UUID(int=0)), False, b"cursor 1,2")
        assert private == DataMessage(ANN, True, b"psst")
        assert session.send_data(b"x" * MAX_DATA_PAYLOAD)
        with pytest.raises(ValueError):
            session.send_data(b"x" * (MAX_DATA_PAYLOAD + 1))
        with pytest.raises(ValueError):
            session.send_data(b"x", to="ann")  # not a participant id
        assert session.data.sent == 3


async def test_the_sender_keeps_the_mhs_rate(autojump_clock: trio.testing.MockClock) -> None:
    async with product_session() as (session, _, media):
        sent = [session.send_data(b"m") for _ in range(DATA_MESSAGES_PER_S + 5)]
        assert sent.count(True) == DATA_MESSAGES_PER_S
        assert session.data.send_dropped["rate"] == 5
        await trio.sleep(0.5)  # half a second refills half the bucket
        sent = [session.send_data(b"m") for _ in range(DATA_MESSAGES_PER_S)]
        assert sent.count(True) == DATA_MESSAGES_PER_S // 2
        await trio.sleep(1)
        # Full-size messages: the message bucket binds (30 of 1,020 bytes are under 32 KiB).
        big = [session.send_data(b"x" * MAX_DATA_PAYLOAD) for _ in range(DATA_MESSAGES_PER_S)]
        assert big.count(True) == 30 and len(media.datagrams) == 2 * DATA_MESSAGES_PER_S + 15


async def test_without_a_media_connection_data_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with product_session() as (session, _, media):
        media.closed = True
        assert not session.send_data(b"lost")
        assert session.data.send_dropped["no_media"] == 1


async def test_received_data_messages_padding_and_malformed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with product_session() as (session, _, media):
        media.receive(bytes(64))  # the MH's padding: ignored
        media.receive(b"\x01\x01")  # short
        media.receive(b"\x02" + bytes(19))  # another version
        media.receive(encode_data(b"hello", ANN, private=False))
        assert (session.data.malformed, session.data.received) == (2, 1)
        message = await session.data.receive()
        assert message == DataMessage(ANN, False, b"hello")


async def test_the_receive_queue_drops_the_oldest(autojump_clock: trio.testing.MockClock) -> None:
    async with product_session() as (session, _, media):
        for n in range(DATA_BUFFER + 3):
            media.receive(encode_data(b"%d" % n, ANN, private=False))
        assert session.data.dropped == 3
        first = await session.data.receive()
        assert first.payload == b"3"


async def test_data_iteration_ends_with_the_session(autojump_clock: trio.testing.MockClock) -> None:
    async with product_session() as (session, signaling, media):
        media.receive(encode_data(b"last", ANN, private=False))
        signaling.end(LeaveReason.KICKED)
        with pytest.raises(SessionEnded) as ended:
            async for message in session.data:
                assert message.payload == b"last"
        assert ended.value.reason is LeaveReason.KICKED
        with pytest.raises(SessionEnded):
            session.send_data(b"more")
