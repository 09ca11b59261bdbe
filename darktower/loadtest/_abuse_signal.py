"""Abuse of signaling and media after real joins, next to a bystander who must not notice.

Each case joins with its own join ticket from the GC (or connects raw, for malformed joins),
does one bad thing and records how the MC or MH reacted. A bystander participant joined
before the first case and stays; at the end it must still be in the meeting and answer a Ping.
"""

from __future__ import annotations

import random
import urllib.parse
import uuid
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
from darktower.errors import DarkTowerError
from darktower.frames import FrameHeader, FrameType
from darktower.frames._header import HEADER_STRUCT
from darktower.protocol import MessageDecoder
from darktower.protocol.pb.v1 import common_pb2 as common
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import SessionRefused, WebTransportSession, connect_webtransport

from ._tally import Tally

# How long a case waits for the service's reaction to what it sent.
REACTION_S = 1.0
# A whole case (GC ticket, join, the abuse, the reaction) gets at most this long.
CASE_S = 10.0
# The bystander's Ping at the end must be answered within this.
BYSTANDER_PING_S = 5.0
BIG = 65_460  # the codec length that fits one message while StreamPublished does not
READ_SIZE = 64 * 1024
# Events about other participants (the other cases'): not a reaction to this case.
BYSTANDER_EVENTS = frozenset(
    ("participant_joined", "participant_left", "stream_published", "stream_unpublished")
)
# Cases (each its own participant) at once.
CONCURRENCY = 4


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


class Meeting:
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
        ) as client:
            yield client

    @asynccontextmanager
    async def raw(self) -> AsyncIterator[tuple[WebTransportSession, str]]:
        """A WebTransport session to the MC, nothing sent yet; and a fresh join token."""
        url, token = await self.ticket("raw")
        async with connect_webtransport(url, server_certificate_hashes=self.pins) as session:
            yield session, token


@asynccontextmanager
async def open_meeting(access: Access) -> AsyncIterator[Meeting]:
    """Create a meeting, join the bystander (signaling and media); end the meeting on exit."""
    async with open_gc_client(access.api_url, server_certificate_hashes=list(access.pins)) as gc:
        owner = await gc.authenticate(access.client_id, access.client_secret)
        created = await gc.create_meeting("hostile-checker", max_participants=1000)
        # Everyone joins as a guest (the owner's access token would make each a host).
        gc.access_token = None
        meeting = Meeting(gc, access, created.meeting_id)
        try:
            async with AsyncExitStack() as stack:
                bystander = await stack.enter_async_context(meeting.joined("bystander"))
                meeting.bystander = bystander
                meeting.bystander_media = await stack.enter_async_context(
                    open_media_client(
                        media_url(bystander.join_response), server_certificate_hashes=meeting.pins
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


async def bystander_alive(meeting: Meeting) -> tuple[bool, str]:
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


# --- the cases ----------------------------------------------------------------------------
Case = Callable[[Meeting, random.Random], Awaitable[str]]


def _raw_join(make: Callable[[str, str, random.Random], bytes], *, uni: bool = False) -> Case:
    async def case(meeting: Meeting, rng: random.Random) -> str:
        async with meeting.raw() as (session, token):
            if uni:
                send = await session.open_unidirectional_stream()
                await send.send_all(make(meeting.meeting_id, token, rng))
                await send.send_eof()
                with trio.move_on_after(REACTION_S):
                    await session.wait_closed()
                return "session closed" if session.is_closed else "session kept"
            stream = await session.open_bidirectional_stream()
            await stream.send_all(make(meeting.meeting_id, token, rng))
            return await reaction(stream)

    return case


def _join(mid: str, token: str, **fields: object) -> sig.ClientMessage:
    join = sig.JoinRequest(meeting_id=mid, join_token=token)
    for key, value in fields.items():
        setattr(join, key, value)
    return sig.ClientMessage(request_id=1, join=join)


def _after_join(send: Callable[[SignalingClient, Meeting, random.Random], Awaitable[None]]) -> Case:
    async def case(meeting: Meeting, rng: random.Random) -> str:
        async with meeting.joined("abuser") as client:
            await send(client, meeting, rng)
            return await client_reaction(client)

    return case


def _raw_after_join(make: Callable[[SignalingClient, Meeting, random.Random], bytes]) -> Case:
    async def send(client: SignalingClient, meeting: Meeting, rng: random.Random) -> None:
        await client.stream.send_all(make(client, meeting, rng))

    return _after_join(send)


def _publish(stream_id: str, **metadata: object) -> sig.ClientMessage:
    return sig.ClientMessage(
        request_id=7,
        publish=sig.PublishStream(
            stream_id=stream_id,
            stream_type=common.VIDEO_CAMERA,
            metadata=common.StreamMetadata(**metadata),  # type: ignore[arg-type]
        ),
    )


def _bystander_id(meeting: Meeting) -> str:
    return meeting.bystander.participant_id if meeting.bystander is not None else ""


async def _many(client: SignalingClient, messages: list[bytes]) -> None:
    await client.stream.send_all(b"".join(messages))


def _media(make: Callable[[MediaClient, random.Random], Awaitable[None]]) -> Case:
    async def case(meeting: Meeting, rng: random.Random) -> str:
        async with meeting.joined("media-abuser") as client:
            async with open_media_client(
                media_url(client.join_response), server_certificate_hashes=meeting.pins
            ) as media:
                await make(media, rng)
                with trio.move_on_after(REACTION_S):
                    await media.session.wait_closed()
                return "media session closed" if media.session.is_closed else "media session kept"

    return case


async def _media_random(media: MediaClient, rng: random.Random) -> None:
    publisher = await media.publish(uuid.uuid4())
    await publisher.send_raw(rng.randbytes(rng.randint(46, 4000)))


async def _media_huge_length(media: MediaClient, rng: random.Random) -> None:
    publisher = await media.publish(uuid.uuid4())
    header = HEADER_STRUCT.pack(1, int(FrameType.VIDEO_KEY), uuid.uuid4().bytes, 0, 0, 2**32 - 1, 1)
    await publisher.send_raw(header + rng.randbytes(1000))
    await publisher.aclose()


async def _media_unknown_stream(media: MediaClient, rng: random.Random) -> None:
    publisher = await media.publish(uuid.uuid4())
    for _ in range(10):
        await publisher.send_frame(FrameType.VIDEO_DELTA, rng.randbytes(500))


async def _media_partial_streams(media: MediaClient, rng: random.Random) -> None:
    header = FrameHeader(
        frame_type=FrameType.VIDEO_KEY,
        stream_id=uuid.uuid4(),
        timestamp_us=0,
        sequence=0,
        payload_length=1024 * 1024,
    ).encode()
    for _ in range(64):  # 64 streams, each 8 KiB into a 1 MiB frame: 512 KiB held, at most
        stream = await media.session.open_bidirectional_stream()
        await stream.send_all(header + rng.randbytes(8192))


async def _media_datagrams(media: MediaClient, rng: random.Random) -> None:
    for _ in range(50):
        try:
            media.session.send_datagram(rng.randbytes(rng.randint(1, 1000)))
        except Exception:
            break


async def _media_uni(media: MediaClient, rng: random.Random) -> None:
    stream = await media.session.open_unidirectional_stream()
    await stream.send_all(rng.randbytes(5000))
    await stream.send_eof()


def _media_token(token: Callable[[str], str]) -> Case:
    async def case(meeting: Meeting, rng: random.Random) -> str:
        async with meeting.joined("token-abuser") as client:
            url = media_url(client.join_response)
            split = urllib.parse.urlsplit(url)
            bad = urllib.parse.urlunsplit(split._replace(query=token(split.query)))
            try:
                async with open_media_client(bad, server_certificate_hashes=meeting.pins):
                    return "accepted"
            except Exception as exc:
                return f"refused {getattr(exc, 'status', type(exc).__name__)}"

    return case


async def _media_twice(meeting: Meeting, rng: random.Random) -> str:
    async with meeting.joined("twice") as client:
        url = media_url(client.join_response)
        async with open_media_client(url, server_certificate_hashes=meeting.pins):
            try:
                async with open_media_client(url, server_certificate_hashes=meeting.pins):
                    return "second accepted"
            except Exception as exc:
                return f"second refused {getattr(exc, 'status', type(exc).__name__)}"


def signaling_cases() -> list[tuple[str, Case]]:
    big = "c" * BIG
    return [
        (
            "join-huge-name",
            _raw_join(lambda m, t, r: frame(_join(m, t, participant_name="n" * 60000))),
        ),
        (
            "join-huge-e2ee-key",
            _raw_join(lambda m, t, r: frame(_join(m, t, e2ee_public_key=b"k" * 60000))),
        ),
        (
            "join-unknown-fields",
            _raw_join(lambda m, t, r: frame(_join(m, t), unknown_field(60000))),
        ),
        ("join-bad-token", _raw_join(lambda m, t, r: frame(_join(m, r.randbytes(300).hex())))),
        ("join-wrong-meeting", _raw_join(lambda m, t, r: frame(_join(str(uuid.uuid4()), t)))),
        (
            "join-oversize-length",
            _raw_join(lambda m, t, r: encode_uint_var(2**20) + r.randbytes(500)),
        ),
        ("join-bad-varint", _raw_join(lambda m, t, r: b"\xff" * 11)),
        ("join-random-body", _raw_join(lambda m, t, r: encode_uint_var(300) + r.randbytes(300))),
        ("join-random-bytes", _raw_join(lambda m, t, r: r.randbytes(r.randint(1, 3000)))),
        ("join-truncated", _raw_join(lambda m, t, r: frame(_join(m, t))[:20])),
        ("join-publish-first", _raw_join(lambda m, t, r: frame(_publish(str(uuid.uuid4()))))),
        ("join-twice", _raw_join(lambda m, t, r: frame(_join(m, t)) * 2)),
        ("join-on-uni-stream", _raw_join(lambda m, t, r: frame(_join(m, t)), uni=True)),
        (
            "publish-huge-codec",
            _raw_after_join(lambda c, m, r: frame(_publish(str(uuid.uuid4()), codec=big))),
        ),
        ("publish-huge-stream-id", _raw_after_join(lambda c, m, r: frame(_publish("s" * 60000)))),
        (
            "publish-many-layers",
            _raw_after_join(
                lambda c, m, r: frame(
                    _publish(
                        str(uuid.uuid4()),
                        video=common.VideoMetadata(
                            simulcast_layers=[
                                common.SimulcastLayer(layer_id=f"l{i:05d}" * 4) for i in range(2400)
                            ]
                        ),
                    )
                )
            ),
        ),
        (
            "publish-many-streams",
            _after_join(
                lambda c, m, r: _many(c, [frame(_publish(str(uuid.uuid4()))) for _ in range(300)])
            ),
        ),
        (
            "publish-unknown-fields",
            _raw_after_join(
                lambda c, m, r: frame(_publish(str(uuid.uuid4())), unknown_field(60000))
            ),
        ),
        (
            "key-share-huge-to-bystander",
            _raw_after_join(
                lambda c, m, r: frame(
                    sig.ClientMessage(
                        key_share=sig.E2EEKeyShare(
                            from_participant_id=c.participant_id,
                            to_participant_id=_bystander_id(m),
                            ciphertext=b"x" * BIG,
                        )
                    )
                )
            ),
        ),
        (
            "key-share-spoofed-sender",
            _raw_after_join(
                lambda c, m, r: frame(
                    sig.ClientMessage(
                        key_share=sig.E2EEKeyShare(
                            from_participant_id=_bystander_id(m), to_participant_id=c.participant_id
                        )
                    )
                )
            ),
        ),
        (
            "kick-bystander-as-guest",
            _raw_after_join(
                lambda c, m, r: frame(
                    sig.ClientMessage(
                        request_id=3, kick=sig.KickParticipant(participant_id=_bystander_id(m))
                    )
                )
            ),
        ),
        (
            "end-meeting-as-guest",
            _raw_after_join(
                lambda c, m, r: frame(sig.ClientMessage(request_id=3, end_meeting=sig.EndMeeting()))
            ),
        ),
        (
            "subscribe-unknown-x200",
            _after_join(
                lambda c, m, r: _many(
                    c,
                    [
                        frame(
                            sig.ClientMessage(
                                request_id=9,
                                subscribe=sig.SubscribeStream(stream_id=str(uuid.uuid4())),
                            )
                        )
                        for _ in range(200)
                    ],
                )
            ),
        ),
        (
            "ping-flood-x3000",
            _after_join(
                lambda c, m, r: _many(
                    c, [frame(sig.ClientMessage(request_id=5, ping=sig.Ping()))] * 3000
                )
            ),
        ),
        (
            "quality-nan",
            _raw_after_join(
                lambda c, m, r: frame(
                    sig.ClientMessage(
                        quality=sig.StreamQualityUpdate(stream_id="x", packet_loss=float("nan"))
                    )
                )
            ),
        ),
        (
            "empty-envelope",
            _raw_after_join(lambda c, m, r: frame(sig.ClientMessage(request_id=2**64 - 1))),
        ),
        ("second-join", _raw_after_join(lambda c, m, r: frame(_join(m.meeting_id, "x")))),
        ("garbage-after-join", _raw_after_join(lambda c, m, r: r.randbytes(r.randint(1, 3000)))),
        (
            "oversize-length-after-join",
            _raw_after_join(lambda c, m, r: encode_uint_var(2**25) + r.randbytes(2000)),
        ),
        ("media-random-frame", _media(_media_random)),
        ("media-huge-payload-length", _media(_media_huge_length)),
        ("media-unregistered-stream", _media(_media_unknown_stream)),
        ("media-64-partial-frames", _media(_media_partial_streams)),
        ("media-datagram-garbage", _media(_media_datagrams)),
        ("media-uni-stream-garbage", _media(_media_uni)),
        ("media-bad-token", _media_token(lambda q: "token=" + "A" * 300)),
        ("media-no-token", _media_token(lambda q: "")),
        ("media-second-connection", _media_twice),
    ]


# What a service raises at a client that it refused (a reaction, not a failure to deliver).
REFUSALS = (DarkTowerError, SessionRefused, trio.BrokenResourceError)


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def abuse_signaling(
    meeting: Meeting, rng: random.Random, tally: Tally, *, cases: int, seconds: float
) -> None:
    """Every signaling and media case once (random order), then random repeats, up to
    ``cases`` within ``seconds``, CONCURRENCY at a time (each joins: a real session)."""
    plan = signaling_cases()
    rng.shuffle(plan)
    while len(plan) < cases:
        plan.append(rng.choice(plan))
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def one(kind: str, case: Case, token: object) -> None:
        try:
            try:
                with trio.fail_after(CASE_S):
                    outcome = await case(meeting, rng)
            except Exception as group:
                exc = _unwrap(group)
                if not isinstance(exc, REFUSALS):  # could not connect or join: not delivered
                    tally.failed(kind, f"{type(exc).__name__}: {str(exc)[:80]}")
                    return
                outcome = f"raised {type(exc).__name__}"  # the service refused: a reaction
            tally.record(kind, f"{kind}: {outcome}")
        finally:
            limiter.release_on_behalf_of(token)

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for kind, case in plan[: max(cases, len(signaling_cases()))]:
                token = object()  # taken in plan order (trio starts tasks in no promised order)
                await limiter.acquire_on_behalf_of(token)
                nursery.start_soon(one, kind, case, token)
