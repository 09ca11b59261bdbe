"""Steps of the end-to-end flow shared by the in-process and the three-process tests, on the
low-level clients (signaling and media separately), so that each wire step is visible."""

from __future__ import annotations

import uuid

import trio

from darktower.client import MediaClient, SignalingClient
from darktower.frames import FrameType
from darktower.protocol.pb import common_pb2 as common
from darktower.protocol.pb import signaling_pb2 as sig
from tests._stack import next_message

WAIT_S = 20  # a bound on each wait: real QUIC on real time, on a possibly busy machine
FRAMES = 12


async def next_event(client: SignalingClient, kind: str) -> sig.ServerMessage:
    """The next server message of ``kind`` (others are skipped)."""
    return await next_message(client, kind, wait_s=WAIT_S)


async def receive_frames(media: MediaClient, n: int) -> list[bytes]:
    """The next ``n`` frames, as the exact bytes on the wire."""
    out: list[bytes] = []
    with trio.fail_after(WAIT_S):
        while len(out) < n:
            frame = await media.receive_frame()
            out.append(bytes(frame.raw))
    return out


async def publish_to(
    publisher_signaling: SignalingClient,
    publisher_media: MediaClient,
    subscribers: list[tuple[SignalingClient, MediaClient]],
) -> None:
    """One video stream published, subscribed by each of ``subscribers``, FRAMES frames sent;
    each subscriber receives them byte-identical."""
    stream_id = str(uuid.uuid4())
    await publisher_signaling.request(
        sig.ClientMessage(
            publish=sig.PublishStream(stream_id=stream_id, stream_type=common.VIDEO_CAMERA)
        )
    )
    for signaling, _ in subscribers:
        published = await next_event(signaling, "stream_published")
        assert published.stream_published.stream.stream_id == stream_id
        await signaling.request(
            sig.ClientMessage(subscribe=sig.SubscribeStream(stream_id=stream_id))
        )
    publisher = await publisher_media.publish(stream_id)
    sent = []
    for i in range(FRAMES):
        kind = FrameType.VIDEO_KEY if i == 0 else FrameType.VIDEO_DELTA
        sent.append(bytes(await publisher.send_frame(kind, bytes([i]) * (100 + i))))
    for _, media in subscribers:
        assert await receive_frames(media, FRAMES) == sent
