"""The signaling client's encoder, without a network: every ClientMessage it sends carries the
protocol version (docs/protocol.md §12)."""

from __future__ import annotations

from typing import Any, cast

import trio
import trio.testing

from darktower.client import SignalingClient
from darktower.protocol import PROTOCOL_VERSION, MessageDecoder
from darktower.protocol.pb.v1 import signaling_pb2 as sig


async def sent(messages: list[sig.ClientMessage]) -> list[sig.ClientMessage]:
    """What a SignalingClient writes on its stream for ``messages``, decoded."""
    ours, theirs = trio.testing.memory_stream_pair()
    client = SignalingClient(cast(Any, None), cast(Any, ours))  # send() uses the stream only
    decoder: MessageDecoder[sig.ClientMessage] = MessageDecoder(sig.ClientMessage)
    out: list[sig.ClientMessage] = []
    for message in messages:
        await client.send(message)
        decoder.receive_data(await theirs.receive_some())
        out.extend(decoder)
    return out


async def test_every_client_message_carries_the_protocol_version() -> None:
    messages = [
        sig.ClientMessage(request_id=1, join=sig.JoinRequest(meeting_id="m", join_token="t")),
        sig.ClientMessage(request_id=2, ping=sig.Ping(timestamp=7)),
        sig.ClientMessage(leave=sig.LeaveRequest()),
    ]
    received = await sent(messages)
    assert [m.protocol_version for m in received] == [PROTOCOL_VERSION] * 3
    assert [m.WhichOneof("message") for m in received] == ["join", "ping", "leave"]
    # A version the caller chose (a test of the MC's refusal) is sent as it is.
    (odd,) = await sent([sig.ClientMessage(protocol_version=99, ping=sig.Ping())])
    assert odd.protocol_version == 99
