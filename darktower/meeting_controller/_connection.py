"""One signaling connection of a participant: a participant that resumes (docs/protocol.md §13)
has several in turn, one at a time."""

from __future__ import annotations

import attrs
import trio

from darktower.protocol import MessageDecoder
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._port import SignalPort
from ._room import Outgoing


@attrs.define(eq=False)
class Connection:
    """``port`` and what its client sent after its JoinRequest (``decoder``); ``outgoing`` is
    the reading end of the member's outbox while this connection serves it (None until it
    was answered). ``scope`` is cancelled when the connection is lost; ``finished`` is set
    once the participant no longer uses it (its session task may then return)."""

    port: SignalPort
    decoder: MessageDecoder[sig.ClientMessage]
    request_id: int  # of its JoinRequest
    started_at: float  # when its session began, for the join latency
    outgoing: trio.MemoryReceiveChannel[Outgoing] | None = None
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    finished: trio.Event = attrs.field(factory=trio.Event)
    lost: bool = False
