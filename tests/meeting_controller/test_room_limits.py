"""At the MeetingController level on memory streams and virtual time: a meeting fills to
1,000 participants (the JoinResponse split into batches), and a meeting that stays empty ends."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from darktower.meeting_controller import MediaHandlers, MeetingController, RoomMember, SignalPort
from darktower.model import MeetingId, ParticipantId, Role
from darktower.nurseries import TaskTree
from darktower.protocol import MAX_MESSAGE_SIZE, MessageDecoder, encode_message
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from .test_cancellation import ISSUER, VERIFIER, FakeLink

MEETING = MeetingId("m")


@asynccontextmanager
async def _controller(**kw: object) -> AsyncIterator[MeetingController]:
    async with trio.open_nursery() as nursery:
        tree = await nursery.start(TaskTree().run)
        mhs = MediaHandlers(lambda event: None)
        await mhs.add(FakeLink())
        yield MeetingController(tree, mhs, verifier=VERIFIER, **kw)  # type: ignore[arg-type]
        tree.drain(1.0)
        await tree.wait_closed()
        nursery.cancel_scope.cancel()


def _realistic_member(n: int) -> RoomMember:
    """A participant with 3-layer simulcast camera, screen share, microphone and an E2EE key."""
    send, _ = trio.open_memory_channel[object](0)
    layers = [
        common_pb2.SimulcastLayer(
            layer_id=str(uuid.uuid4()), width=320 << i, height=180 << i, max_bitrate=150_000 << i
        )
        for i in range(3)
    ]
    camera = common_pb2.MediaStream(
        stream_id=str(uuid.uuid4()),
        stream_type=common_pb2.VIDEO_CAMERA,
        metadata=common_pb2.StreamMetadata(
            codec="VP8",
            max_bitrate=2_500_000,
            video=common_pb2.VideoMetadata(
                width=1280, height=720, framerate=30, simulcast_layers=layers
            ),
        ),
    )
    screen = common_pb2.MediaStream(
        stream_id=str(uuid.uuid4()),
        stream_type=common_pb2.VIDEO_SCREEN,
        metadata=common_pb2.StreamMetadata(
            codec="VP8",
            max_bitrate=3_000_000,
            video=common_pb2.VideoMetadata(width=1920, height=1080, framerate=15),
        ),
    )
    mic = common_pb2.MediaStream(
        stream_id=str(uuid.uuid4()),
        stream_type=common_pb2.AUDIO,
        metadata=common_pb2.StreamMetadata(codec="opus", max_bitrate=64_000),
    )
    pid = ParticipantId(str(uuid.uuid4()))
    return RoomMember(
        id=pid,
        name=f"Participant number {n:04d}",
        role=Role.GUEST,
        joined_at_us=int(time.time() * 1e6),
        public_key=uuid.uuid4().bytes * 2,
        key_id=str(n),
        outbox=send,  # type: ignore[arg-type]
        media_handler_url="https://127.0.0.1:4434/v1/media",
        connection_token="t",
        streams={s.stream_id: s for s in (camera, screen, mic)},
    )


def _join(token: str, request_id: int = 1) -> bytes:
    return encode_message(
        sig.ClientMessage(
            request_id=request_id,
            join=sig.JoinRequest(meeting_id=MEETING, join_token=token, e2ee_public_key=b"k" * 32),
        )
    )


async def _read_join(
    stream: trio.abc.ReceiveStream,
) -> tuple[list[sig.ServerMessage], list[int]]:
    """The JoinResponse and its batches, and the size of each message on the wire."""
    buffer = bytearray()
    messages: list[sig.ServerMessage] = []
    sizes: list[int] = []
    decoder: MessageDecoder[sig.ServerMessage] = MessageDecoder(sig.ServerMessage)
    while True:
        data = await stream.receive_some()
        assert data
        buffer += data
        decoder.receive_data(data)
        for message in decoder:
            messages.append(message)
            sizes.append(message.ByteSize())
            kind = message.WhichOneof("message")
            if kind == "error":
                raise AssertionError(message.error.message)
            first = messages[0].join_response
            if kind == "join_response" and first.participant_batches == 0:
                return messages, sizes
            if kind == "participants_batch" and message.participants_batch.final:
                return messages, sizes


async def test_a_meeting_fills_to_1000_participants(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _controller() as ctl:
        config = mtg_pb.MeetingConfig(max_participants=1000, enable_e2e_encryption=True)
        await ctl.assign(MEETING, config)
        room = ctl.rooms[MEETING]
        for n in range(999):
            member = _realistic_member(n)
            room.members[member.id] = member
        one = next(iter(room.members.values())).to_pb(e2ee=True).ByteSize()
        assert 999 * one > 5 * MAX_MESSAGE_SIZE  # far beyond one message
        client, server = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctl.serve_session, SignalPort(server))
            await client.send_all(_join(ISSUER.issue(MEETING, Role.GUEST, time.time())))
            messages, sizes = await _read_join(client)
            assert max(sizes) <= MAX_MESSAGE_SIZE
            response = messages[0].join_response
            batches = [m.participants_batch for m in messages[1:]]
            assert response.participant_batches == len(batches) >= 5
            assert [b.final for b in batches] == [False] * (len(batches) - 1) + [True]
            assert {m.request_id for m in messages} == {1}
            listed = list(response.existing_participants) + [
                p for b in batches for p in b.participants
            ]
            assert [p.participant_id for p in listed] == [
                m for m in room.members if m != response.participant_id
            ]
            assert all(len(p.streams) == 3 and len(p.public_key) == 32 for p in listed)
            # the meeting is full: the next one is refused
            other, other_server = trio.testing.memory_stream_pair()
            nursery.start_soon(ctl.serve_session, SignalPort(other_server))
            await other.send_all(_join(ISSUER.issue(MEETING, Role.GUEST, time.time())))
            refusal = MessageDecoder(sig.ServerMessage)
            while (reply := refusal.next_message()) is None:
                refusal.receive_data(await other.receive_some())
            assert reply.error.code == common_pb2.CAPACITY_EXCEEDED
            await client.send_all(encode_message(sig.ClientMessage(leave=sig.LeaveRequest())))
            for member in list(room.members.values()):
                member.outbox.close()
            room.members.clear()


async def test_a_meeting_nobody_joins_ends_after_the_empty_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _controller(empty_meeting_timeout_s=600.0) as ctl:
        start = trio.current_time()
        await ctl.assign(MEETING, mtg_pb.MeetingConfig())
        scope = ctl.rooms[MEETING].scope
        await trio.sleep(599)
        assert MEETING in ctl.rooms
        await scope.wait_closed()
        assert trio.current_time() - start == 600
        assert MEETING not in ctl.rooms and MEETING in ctl.ended  # the GC hears of it


async def test_a_meeting_everybody_left_ends_after_the_empty_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _controller(empty_meeting_timeout_s=60.0) as ctl:
        await ctl.assign(MEETING, mtg_pb.MeetingConfig())
        room = ctl.rooms[MEETING]
        client, server = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctl.serve_session, SignalPort(server))
            await client.send_all(_join(ISSUER.issue(MEETING, Role.HOST, time.time())))
            await _read_join(client)
            await trio.sleep(500)  # someone is in it: it lives on
            assert MEETING in ctl.rooms
            left_at = trio.current_time()
            await client.send_all(encode_message(sig.ClientMessage(leave=sig.LeaveRequest())))
            await room.scope.wait_closed()
            assert trio.current_time() - left_at == 60
            assert room.end_message == "the meeting stayed empty"


async def test_an_empty_timeout_of_zero_never_ends_the_meeting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _controller(empty_meeting_timeout_s=0.0) as ctl:
        await ctl.assign(MEETING, mtg_pb.MeetingConfig())
        await trio.sleep(10 * 24 * 3600)
        assert MEETING in ctl.rooms
