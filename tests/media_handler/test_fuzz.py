"""Live fuzz loop: random and mutated frame bytes on the publish streams of a real MH over
QUIC. Each bad stream is reset with the contract's code (STREAM_ERROR, or CAPACITY_EXCEEDED
for the memory bounds) and nothing else: the fuzzing participant's session stays open, and
another participant still receives every well-formed frame sent to it."""

from __future__ import annotations

import random
import uuid

import pytest
import trio

from darktower.client import MediaPublisher
from darktower.errors import ErrorCode
from darktower.frames import FrameFlags, FrameHeader, FrameType, encode_frame
from darktower.transport import StreamReset
from tests._fuzz import fuzz_cases, fuzz_rng

from ._harness import WAIT_S, audio, new_id, open_harness, video

pytestmark = pytest.mark.fuzz

MAX_PAYLOAD = 4096
RESET_CODES = {ErrorCode.STREAM_ERROR, ErrorCode.CAPACITY_EXCEEDED}


def _frames(rng: random.Random, stream_ids: list[uuid.UUID]) -> bytes:
    """One to three well-formed frames of one of ``stream_ids`` (now and then over the
    payload limit)."""
    sid = rng.choice(stream_ids)
    out = b""
    for i in range(rng.randint(1, 3)):
        size = (
            rng.randint(MAX_PAYLOAD - 8, MAX_PAYLOAD + 8)
            if rng.random() < 0.1
            else rng.randint(0, 600)
        )
        header = FrameHeader(
            frame_type=rng.choice(list(FrameType)),
            stream_id=sid,
            timestamp_us=rng.getrandbits(64),
            sequence=i,
            payload_length=size,
            flags=FrameFlags(rng.randint(0, 3)),
        )
        out += encode_frame(header, rng.randbytes(size))
    return out


def _case(rng: random.Random, stream_ids: list[uuid.UUID]) -> bytes:
    kind = rng.random()
    if kind < 0.25:
        return rng.randbytes(rng.randint(0, 400))
    data = bytearray(_frames(rng, stream_ids))
    if kind < 0.4:
        return bytes(data)  # well formed (or over the limit, or another's stream id)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data))
        what = rng.random()
        if what < 0.4 and at < 46:
            data[at] = rng.randrange(256)  # the header: version, type, id, length, flags
        elif what < 0.7:
            data[at] ^= 1 << rng.randrange(8)
        elif what < 0.85:
            del data[at:]
            if not data:
                break
        else:
            data[at:at] = rng.randbytes(rng.randint(1, 8))
    return bytes(data)


async def _outcome(pub: MediaPublisher, data: bytes, rng: random.Random) -> int | None:
    """Send ``data`` in random pieces and finish: None if the MH finished the stream too (it
    routed everything), else the code it reset the stream with."""
    try:
        cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 3)))
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            await pub.send_raw(data[a:b])
        await pub.stream.send_eof()
    except StreamReset:
        pass  # the MH stopped the stream already; its reset follows
    with trio.fail_after(WAIT_S):
        try:
            while await pub.stream.receive_some():
                pass
        except StreamReset as exc:
            return exc.code
    return None


async def test_random_and_mutated_frames_reset_only_their_stream() -> None:
    rng = fuzz_rng("media handler publish streams")
    meeting, cam_a, cam_f, mic_f = new_id(), new_id(), new_id(), new_id()
    async with open_harness(
        max_frame_payload=MAX_PAYLOAD, max_buffered_bytes_per_participant=3 * MAX_PAYLOAD
    ) as h:
        url_a = await h.register(meeting, "a", [video(cam_a)])
        url_f = await h.register(meeting, "f", [video(cam_f), audio(mic_f)])
        url_s = await h.register(meeting, "s")
        async with h.client(url_a) as a, h.client(url_f) as f, h.client(url_s) as s:
            for who in ("a", "f", "s"):
                await h.connected(meeting, who)
            for source in (cam_a, cam_f, mic_f):
                await h.route(meeting, source, ["s"])
            good = await a.publish(cam_a)
            sent = [await good.send_frame(FrameType.VIDEO_KEY, b"first")]
            ids = [uuid.UUID(x) for x in (cam_a, cam_f, mic_f)] + [uuid.uuid4()]
            resets = finished = 0
            for i in range(fuzz_cases(100)):
                pub = await f.publish(ids[0])  # the id is unused: the bytes are sent raw
                code = await _outcome(pub, _case(rng, ids), rng)
                if code is None:
                    finished += 1
                else:
                    assert code in RESET_CODES, code
                    resets += 1
                if i % 10 == 0:
                    sent.append(await good.send_frame(FrameType.VIDEO_KEY, b"during"))
            sent.append(await good.send_frame(FrameType.VIDEO_KEY, b"marker"))
            # The other participant gets every frame of a, well formed, in order.
            got = []
            with trio.fail_after(WAIT_S):
                while not got or got[-1] != sent[-1]:
                    frame = await s.receive_frame()
                    if frame.stream_id == uuid.UUID(cam_a):
                        got.append(bytes(frame.raw))
            assert got == sent
            assert s.stream_errors == 0
            # Only streams were reset: every session is open, and each reset was counted.
            for client in (a, f, s):
                assert not client.session.is_closed
            errors = h.handler.metrics.stream_errors
            assert sum(errors._values.values()) == resets  # type: ignore[attr-defined]
            assert resets > 0 and h.handler.rooms[meeting].members["f"].ingress.held == 0  # type: ignore[index]
            print(f"fuzz media handler: {resets} streams reset, {finished} finished")
