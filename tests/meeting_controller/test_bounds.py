"""Signaling bounds over real QUIC: a field over its maximum is refused naming it, nothing a
client sends can make a message to somebody else too large, and a server message that cannot
be encoded for one recipient is dropped for that recipient only (docs/protocol.md)."""

from __future__ import annotations

import pathlib

import pytest
import trio

from darktower.errors import InvalidRequest
from darktower.meeting_controller import MAX_PUBLISHED_STREAMS
from darktower.model import MeetingId, Role
from darktower.protocol import MAX_MESSAGE_SIZE, PROTOCOL_VERSION
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._harness import Stack, next_event, open_stack

# The report: a codec this long fits one ClientMessage, StreamPublished does not.
HUGE_CODEC = 65_460


async def _ping(client: object, value: int) -> None:
    reply = await client.request(sig.ClientMessage(ping=sig.Ping(timestamp=value)))  # type: ignore[attr-defined]
    assert reply.pong.timestamp == value


async def test_oversize_codec_is_refused_naming_the_field_and_harms_nobody(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m", Role.HOST) as witness, stack.join("m") as attacker:
            await next_event(witness, "participant_joined")
            publish = sig.PublishStream(
                stream_id="s1", metadata=common_pb2.StreamMetadata(codec="x" * HUGE_CODEC)
            )
            assert sig.ClientMessage(request_id=9, publish=publish).ByteSize() <= MAX_MESSAGE_SIZE
            with pytest.raises(InvalidRequest) as refused:
                await attacker.request(sig.ClientMessage(publish=publish))
            assert refused.value.details["field"] == "publish.metadata.codec"
            # both sessions still live; the refused stream was never announced
            await _ping(witness, 1)
            await _ping(attacker, 2)
            assert not stack.running.controller.rooms[MeetingId("m")].publisher_of("s1")


async def test_large_public_keys_cannot_make_later_joins_too_large(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m", enable_e2e_encryption=True)
        for _ in range(2):
            with pytest.raises(InvalidRequest) as refused:
                async with stack.join("m", e2ee_public_key=b"k" * 40_000):
                    pass
            assert refused.value.details["field"] == "join.e2ee_public_key"
        async with stack.join("m", e2ee_public_key=b"k" * 32) as first:
            async with stack.join("m", e2ee_public_key=b"q" * 32) as second:
                assert [p.public_key for p in second.join_response.existing_participants] == [
                    b"k" * 32
                ]
                await _ping(first, 3)


def _with_unknown_field(
    metadata: common_pb2.StreamMetadata, size: int
) -> common_pb2.StreamMetadata:
    """``metadata`` carrying a length-delimited field number 99 of ``size`` bytes."""
    padded = common_pb2.StreamMetadata()
    tag_and_length = bytes([0x9A, 0x06]) + _varint(size)  # field 99, wire type 2
    padded.MergeFromString(metadata.SerializeToString() + tag_and_length + b"u" * size)
    return padded


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


async def test_unknown_fields_are_not_kept_or_relayed(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m", Role.HOST) as publisher, stack.join("m") as watcher:
            for n in range(2):
                metadata = _with_unknown_field(common_pb2.StreamMetadata(codec="VP8"), 40_000)
                await publisher.request(
                    sig.ClientMessage(
                        publish=sig.PublishStream(stream_id=f"s{n}", metadata=metadata)
                    )
                )
                announced = await next_event(watcher, "stream_published")
                assert announced.stream_published.stream.metadata.ByteSize() < 100
            async with stack.join("m") as late:
                streams = {
                    s.stream_id for p in late.join_response.existing_participants for s in p.streams
                }
                assert streams == {"s0", "s1"}
            await _ping(watcher, 4)


async def test_key_share_sized_to_overflow_at_its_recipient_is_refused(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m", enable_e2e_encryption=True)
        async with (
            stack.join("m", e2ee_public_key=b"v" * 32) as victim,
            stack.join("m", e2ee_public_key=b"a" * 32) as attacker,
        ):
            # the largest ciphertext the sender's message allows (stamped with its version, as
            # the client sends it): the relayed copy gains the sender's id, and would no longer
            # fit the victim's 64 KiB limit
            share = sig.E2EEKeyShare(to_participant_id=victim.participant_id)
            share.ciphertext = b"c" * MAX_MESSAGE_SIZE
            while (
                sig.ClientMessage(
                    request_id=1, key_share=share, protocol_version=PROTOCOL_VERSION
                ).ByteSize()
                > MAX_MESSAGE_SIZE
            ):
                share.ciphertext = share.ciphertext[:-1]
            relayed = sig.ServerMessage(key_share=share, protocol_version=PROTOCOL_VERSION)
            relayed.key_share.from_participant_id = attacker.participant_id
            assert relayed.ByteSize() > MAX_MESSAGE_SIZE
            with pytest.raises(InvalidRequest) as refused:
                await attacker.request(sig.ClientMessage(key_share=share))
            assert refused.value.details["field"] == "key_share.ciphertext"
            await _ping(victim, 5)
            await _ping(attacker, 6)


async def test_unencodable_message_is_dropped_for_its_recipient_only(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m") as recipient:
            room = stack.running.controller.rooms[MeetingId("m")]
            member = room.members[recipient.participant_id]  # type: ignore[index]
            too_large = sig.ServerMessage(
                key_share=sig.E2EEKeyShare(ciphertext=b"x" * (MAX_MESSAGE_SIZE + 1))
            )
            room.deliver(member, too_large)
            room.deliver(member, sig.ServerMessage(pong=sig.Pong(timestamp=77)))
            event = await next_event(recipient, "pong")  # the next message still arrives
            assert event.pong.timestamp == 77
            await _ping(recipient, 7)
            metrics = stack.running.controller.metrics
            assert metrics.dropped.value("key_share") == 1
            assert "darktower_mc_messages_dropped_total" in metrics.registry.render()


def _large_stream(owner: int, n: int) -> sig.PublishStream:
    """A stream with every field at its maximum (docs/protocol.md)."""
    from darktower.protocol import _bounds as b

    wide = "\U0001d11e"  # four bytes in UTF-8: the largest a bounded string can be
    layers = [
        common_pb2.SimulcastLayer(
            layer_id=f"{owner}-{n}-{i}".ljust(b.MAX_LAYER_ID_CHARS, wide),
            width=1280,
            height=720,
            max_bitrate=2_500_000,
        )
        for i in range(b.MAX_SIMULCAST_LAYERS)
    ]
    return sig.PublishStream(
        stream_id=f"{owner}-{n}".ljust(b.MAX_ID_CHARS, wide),
        stream_type=common_pb2.VIDEO_CAMERA,
        metadata=common_pb2.StreamMetadata(
            codec=wide * b.MAX_CODEC_CHARS,
            max_bitrate=4_000_000,
            video=common_pb2.VideoMetadata(
                width=1920, height=1080, framerate=60, simulcast_layers=layers
            ),
        ),
    )


async def _publish_all(stack: Stack, client: object, owner: int) -> None:
    for n in range(MAX_PUBLISHED_STREAMS):
        await client.request(sig.ClientMessage(publish=_large_stream(owner, n)))  # type: ignore[attr-defined]


async def test_join_response_is_batched_over_real_quic(tmp_path: pathlib.Path) -> None:
    """Three participants with every field at its maximum do not fit one message: the joiner
    gets them all through ParticipantsBatch messages, assembled by the client."""
    async with open_stack(tmp_path) as stack:
        await stack.assign("m", enable_e2e_encryption=True)
        async with (
            stack.join("m", name="a", e2ee_public_key=b"a" * 32) as a,
            stack.join("m", name="b", e2ee_public_key=b"b" * 32) as b,
            stack.join("m", name="c", e2ee_public_key=b"c" * 32) as c,
        ):
            for owner, client in enumerate((a, b, c)):
                await _publish_all(stack, client, owner)
            async with stack.join("m", e2ee_public_key=b"d" * 32) as late:
                response = late.join_response
                assert response.participant_batches >= 1
                got = {p.participant_id: p for p in response.existing_participants}
                assert set(got) == {a.participant_id, b.participant_id, c.participant_id}
                assert all(len(p.streams) == 16 and len(p.public_key) == 32 for p in got.values())
                await _ping(late, 8)
            with trio.fail_after(10):
                await _ping(a, 9)
