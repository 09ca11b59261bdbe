"""Abuse of the Media Handler after real joins: malformed and oversized frames, partial
frames on many streams, garbage datagrams and streams, bad and reused connection tokens."""

from __future__ import annotations

import random
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable

import trio

from darktower.client import (
    MediaClient,
    media_url,
    open_media_client,
)
from darktower.frames import FrameHeader, FrameType
from darktower.frames._header import HEADER_STRUCT

from ._abuse_meeting import REACTION_S, Case, TargetMeeting


def _media(make: Callable[[MediaClient, random.Random], Awaitable[None]]) -> Case:
    async def case(meeting: TargetMeeting, rng: random.Random) -> str:
        async with meeting.joined("media-abuser") as client:
            async with open_media_client(
                media_url(client.join_response),
                server_certificate_hashes=meeting.pins,
                origin=meeting.origin,
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
    async def case(meeting: TargetMeeting, rng: random.Random) -> str:
        async with meeting.joined("token-abuser") as client:
            url = media_url(client.join_response)
            split = urllib.parse.urlsplit(url)
            bad = urllib.parse.urlunsplit(split._replace(query=token(split.query)))
            try:
                async with open_media_client(
                    bad, server_certificate_hashes=meeting.pins, origin=meeting.origin
                ):
                    return "accepted"
            except Exception as exc:
                return f"refused {getattr(exc, 'status', type(exc).__name__)}"

    return case


async def _media_twice(meeting: TargetMeeting, rng: random.Random) -> str:
    async with meeting.joined("twice") as client:
        url = media_url(client.join_response)
        async with open_media_client(
            url, server_certificate_hashes=meeting.pins, origin=meeting.origin
        ):
            try:
                async with open_media_client(
                    url, server_certificate_hashes=meeting.pins, origin=meeting.origin
                ):
                    return "second accepted"
            except Exception as exc:
                return f"second refused {getattr(exc, 'status', type(exc).__name__)}"


def media_cases() -> list[tuple[str, Case]]:
    return [
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
