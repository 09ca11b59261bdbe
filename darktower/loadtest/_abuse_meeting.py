"""The checker's own meeting: a GC client for join tickets, a bystander participant who
must not notice anything, and how a case reads the service's reaction."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import attrs
import trio
from aioquic.buffer import encode_uint_var

from darktower.client import (
    GlobalControllerClient,
    MediaClient,
    SignalingClient,
    media_url,
    open_gc_client,
    open_media_client,
    open_signaling,
)
from darktower.protocol import MessageDecoder
from darktower.protocol.pb.v1 import common_pb2 as common
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import WebTransportSession, connect_webtransport

# How long a case waits for the service's reaction to what it sent.
REACTION_S = 1.0
# A whole case (GC ticket, join, the abuse, the reaction) gets at most this long.
CASE_S = 10.0
# The bystander's Ping at the end must be answered within this.
BYSTANDER_PING_S = 5.0
READ_SIZE = 64 * 1024
# Events about other participants (the other cases'): not a reaction to this case.
BYSTANDER_EVENTS = frozenset(
    ("participant_joined", "participant_left", "stream_published", "stream_unpublished")
)


@attrs.frozen
class Access:
    """Where the GC is and how to get join tickets from it."""

    api_url: str
    client_id: str
    client_secret: str
    pins: tuple[bytes, ...]


def frame(message: sig.ClientMessage, extra: bytes = b"") -> bytes:
    """Varint length + body, never checked for size (the checker sends what a client must not)."""
    body = message.SerializeToString() + extra
    return encode_uint_var(len(body)) + body


def unknown_field(size: int) -> bytes:
    """A length-delimited field number 999 of ``size`` bytes (unknown to every message)."""
    return encode_uint_var((999 << 3) | 2) + encode_uint_var(size) + b"u" * size


async def reaction(stream: trio.abc.ReceiveStream, wait_s: float = REACTION_S) -> str:
    """What the server answered on a signaling stream: the first message's kind (an error by
    its code), 'stream ended', 'reset/closed' or 'silent'."""
    decoder: MessageDecoder[sig.ServerMessage] = MessageDecoder(sig.ServerMessage)
    receive = stream.receive_some
    with trio.move_on_after(wait_s):
        try:
            while True:
                message = decoder.next_message()
                if message is not None:
                    kind = message.WhichOneof("message")
                    if kind == "error":
                        return f"error {common.ErrorCode.Name(message.error.code)}"
                    if kind == "session_ended":
                        return f"ended {common.LeaveReason.Name(message.session_ended.reason)}"
                    return str(kind)
                data = await receive(READ_SIZE)
                if not data:
                    return "stream ended"
                decoder.receive_data(data)
        except trio.BrokenResourceError as exc:
            return f"closed ({type(exc).__name__})"
        except Exception as exc:  # a reply we cannot decode is itself a finding
            return f"undecodable reply ({type(exc).__name__})"
    return "silent"


async def client_reaction(client: SignalingClient, wait_s: float = REACTION_S) -> str:
    """The next event on a joined client (or how its session ended)."""
    with trio.move_on_after(wait_s):
        while True:
            try:
                event = await client.events.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                reason = client.end_reason
                return f"ended {reason.name if reason else 'closed'}"
            kind = event.WhichOneof("message")
            if kind not in BYSTANDER_EVENTS:
                break
        if kind == "error":
            return f"error {common.ErrorCode.Name(event.error.code)}"
        if kind == "session_ended":
            return f"ended {common.LeaveReason.Name(event.session_ended.reason)}"
        return str(kind)
    return "silent"


class TargetMeeting:
    """A meeting of the checker's own, a GC client for tickets, and the bystander."""

    def __init__(self, gc: GlobalControllerClient, access: Access, meeting_id: str) -> None:
        self.gc = gc
        self.access = access
        self.meeting_id = meeting_id
        self.signal_url = ""
        self.bystander: SignalingClient | None = None
        self.bystander_media: MediaClient | None = None

    @property
    def pins(self) -> list[bytes]:
        return list(self.access.pins)

    @property
    def origin(self) -> str:
        return self.gc.origin  # what the client library sends; the services allow it

    async def ticket(self, name: str) -> tuple[str, str]:
        ticket = await self.gc.join_meeting(self.meeting_id, name)
        self.signal_url = ticket.meeting_controller_url
        return ticket.meeting_controller_url, ticket.join_token

    @asynccontextmanager
    async def joined(self, name: str) -> AsyncIterator[SignalingClient]:
        url, token = await self.ticket(name)
        async with open_signaling(
            url,
            meeting_id=self.meeting_id,
            join_token=token,
            participant_name=name,
            server_certificate_hashes=self.pins,
            origin=self.origin,
        ) as client:
            yield client

    @asynccontextmanager
    async def raw(self) -> AsyncIterator[tuple[WebTransportSession, str]]:
        """A WebTransport session to the MC, nothing sent yet; and a fresh join token."""
        url, token = await self.ticket("raw")
        async with connect_webtransport(
            url, server_certificate_hashes=self.pins, origin=self.origin
        ) as session:
            yield session, token


@asynccontextmanager
async def open_meeting(access: Access) -> AsyncIterator[TargetMeeting]:
    """Create a meeting, join the bystander (signaling and media); end the meeting on exit."""
    async with open_gc_client(access.api_url, server_certificate_hashes=list(access.pins)) as gc:
        owner = await gc.authenticate(access.client_id, access.client_secret)
        created = await gc.create_meeting("hostile-checker", max_participants=1000)
        # Everyone joins as a guest (the owner's access token would make each a host).
        gc.access_token = None
        meeting = TargetMeeting(gc, access, created.meeting_id)
        try:
            async with AsyncExitStack() as stack:
                bystander = await stack.enter_async_context(meeting.joined("bystander"))
                meeting.bystander = bystander
                meeting.bystander_media = await stack.enter_async_context(
                    open_media_client(
                        media_url(bystander.join_response),
                        server_certificate_hashes=meeting.pins,
                        origin=meeting.origin,
                    )
                )
                yield meeting
        finally:
            with trio.move_on_after(REACTION_S, shield=True):
                try:
                    gc.access_token = owner
                    await gc.end_meeting(created.meeting_id)
                except Exception:  # the GC may be the casualty: reported by the probes
                    pass


async def bystander_alive(meeting: TargetMeeting) -> tuple[bool, str]:
    client = meeting.bystander
    if client is None:
        return False, "never joined"
    if client.closed.is_set():
        reason = client.end_reason
        return False, f"session ended ({reason.name if reason else 'connection lost'})"
    try:
        with trio.fail_after(BYSTANDER_PING_S):
            await client.request(sig.ClientMessage(ping=sig.Ping(timestamp=1)))
    except Exception as exc:
        return False, f"no Pong ({type(exc).__name__}: {exc})"
    return True, "still in the meeting, answers Ping"


Case = Callable[[TargetMeeting, random.Random], Awaitable[str]]
