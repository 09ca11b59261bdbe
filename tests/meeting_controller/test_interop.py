"""An independent peer: aioquic's asyncio client with only the generated protobuf classes joins,
publishes, then vanishes without a close; the MC notices at the idle timeout, keeps it
reconnecting for the resume window, then drops it with CONNECTION_LOST (both short here, on
real time; the test waits on events, not sleeps)."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import trio
from aioquic.asyncio import connect
from aioquic.quic.events import StreamDataReceived

from darktower.model import Role
from darktower.protocol.pb.v1 import common_pb2, signaling_pb2
from tests._aioquic_peer import AioquicPeer, peer_configuration

from ._harness import next_event, open_stack


def _delimited(message: Any) -> bytes:
    body = message.SerializeToString()
    size, prefix = len(body), b""
    while True:
        byte = size & 0x7F
        size >>= 7
        prefix += bytes([byte | (0x80 if size else 0)])
        if not size:
            return prefix + body


def _parse(buffer: bytearray) -> list[signaling_pb2.ServerMessage]:
    out = []
    while buffer:
        size, shift, i = 0, 0, 0
        while True:
            if i >= len(buffer):
                return out
            byte = buffer[i]
            size |= (byte & 0x7F) << shift
            shift, i = shift + 7, i + 1
            if not byte & 0x80:
                break
        if len(buffer) < i + size:
            return out
        message = signaling_pb2.ServerMessage()
        message.ParseFromString(bytes(buffer[i : i + size]))
        del buffer[: i + size]
        out.append(message)
    return out


async def _independent_peer(port: int, meeting_id: str, token: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with connect(
        "127.0.0.1", port, configuration=peer_configuration(), create_protocol=AioquicPeer
    ) as c:
        client: AioquicPeer = c  # type: ignore[assignment]
        session_id = await client.open_session(port, "/v1/signal")
        stream_id = client.open_bidi_stream(session_id)
        join = signaling_pb2.ClientMessage(
            request_id=1,
            join=signaling_pb2.JoinRequest(
                meeting_id=meeting_id, join_token=token, participant_name="aio"
            ),
        )
        publish = signaling_pb2.ClientMessage(
            request_id=2,
            publish=signaling_pb2.PublishStream(stream_id="mic", stream_type=common_pb2.AUDIO),
        )
        client._quic.send_stream_data(stream_id, _delimited(join) + _delimited(publish))
        client.transmit()
        buffer = bytearray()
        replies: list[signaling_pb2.ServerMessage] = []
        while len(replies) < 2:
            ev = await client.next_event()
            if isinstance(ev, StreamDataReceived):
                buffer += ev.data
                replies += _parse(buffer)
        out["replies"] = replies
        # vanish: no session close, no CONNECTION_CLOSE (connect()'s exit would send one)
        client._quic.close = lambda *args, **kwargs: None  # type: ignore[method-assign]
        client._closed.set()
    return out


async def test_independent_aioquic_peer_joins_and_vanishes(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path, idle_timeout_s=1.0, resume_grace_s=0.5) as stack:
        await stack.assign("m")
        async with stack.join("m", Role.HOST) as host:
            port = stack.running.signal_address[1]
            token = stack.token("m", participant_name="aio")
            result = await trio.to_thread.run_sync(asyncio.run, _independent_peer(port, "m", token))
            join_response, ack = result["replies"]
            assert join_response.request_id == 1
            assert join_response.join_response.participant_id
            assert ack.request_id == 2 and ack.ack.stream_id == "mic"
            peer = join_response.join_response.participant_id
            assert (
                await next_event(host, "participant_joined")
            ).participant_joined.participant.name == "aio"
            assert (
                await next_event(host, "stream_published")
            ).stream_published.stream.stream_id == "mic"
            # no close was ever sent: the idle timeout ends the connection, the resume window
            # (docs/protocol.md §13) the participant
            updated = await next_event(host, "participant_updated")
            assert updated.participant_updated.participant_id == peer
            assert updated.participant_updated.connection == signaling_pb2.RECONNECTING
            left = await next_event(host, "participant_left")
            assert left.participant_left.participant_id == peer
            assert left.participant_left.reason == common_pb2.CONNECTION_LOST
