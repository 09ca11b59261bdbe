"""Abuse of signaling and media after real joins, next to a bystander who must not notice.

Each case joins with its own join ticket from the GC (or connects raw, for malformed joins),
does one bad thing and records how the MC or MH reacted. A bystander participant joined
before the first case and stays; at the end it must still be in the meeting and answer a Ping.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable

import trio
from aioquic.buffer import encode_uint_var

from darktower.client import (
    SignalingClient,
)
from darktower.errors import DarkTowerError, sole_error
from darktower.protocol.pb.v1 import common_pb2 as common
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import SessionRefused

from ._abuse_media import media_cases
from ._abuse_meeting import (
    CASE_S,
    REACTION_S,
    Case,
    TargetMeeting,
    client_reaction,
    frame,
    reaction,
    unknown_field,
)
from ._tally import Tally

BIG = 65_460  # the codec length that fits one message while StreamPublished does not
# Cases (each its own participant) at once.
CONCURRENCY = 4


def _raw_join(make: Callable[[str, str, random.Random], bytes], *, uni: bool = False) -> Case:
    async def case(meeting: TargetMeeting, rng: random.Random) -> str:
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


def _after_join(
    send: Callable[[SignalingClient, TargetMeeting, random.Random], Awaitable[None]],
) -> Case:
    async def case(meeting: TargetMeeting, rng: random.Random) -> str:
        async with meeting.joined("abuser") as client:
            await send(client, meeting, rng)
            return await client_reaction(client)

    return case


def _raw_after_join(make: Callable[[SignalingClient, TargetMeeting, random.Random], bytes]) -> Case:
    async def send(client: SignalingClient, meeting: TargetMeeting, rng: random.Random) -> None:
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


def _bystander_id(meeting: TargetMeeting) -> str:
    return meeting.bystander.participant_id if meeting.bystander is not None else ""


async def _many(client: SignalingClient, messages: list[bytes]) -> None:
    await client.stream.send_all(b"".join(messages))


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
    ]


# What a service raises at a client that it refused (a reaction, not a failure to deliver).
REFUSALS = (DarkTowerError, SessionRefused, trio.BrokenResourceError)


async def abuse_signaling(
    meeting: TargetMeeting, rng: random.Random, tally: Tally, *, cases: int, seconds: float
) -> None:
    """Every signaling and media case once (random order), then random repeats, up to
    ``cases`` within ``seconds``, CONCURRENCY at a time (each joins: a real session)."""
    plan = signaling_cases() + media_cases()
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
                exc = sole_error(group)
                if not isinstance(exc, REFUSALS):  # could not connect or join: not delivered
                    tally.failed(kind, f"{type(exc).__name__}: {str(exc)[:80]}")
                    return
                outcome = f"raised {type(exc).__name__}"  # the service refused: a reaction
            tally.record(kind, f"{kind}: {outcome}")
        finally:
            limiter.release_on_behalf_of(token)

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for kind, case in plan:
                token = object()  # taken in plan order (trio starts tasks in no promised order)
                await limiter.acquire_on_behalf_of(token)
                nursery.start_soon(one, kind, case, token)
