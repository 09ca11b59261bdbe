"""The page's media frame codec (darktower/web/frames.js) in Chromium against darktower.frames:
byte-level round trips both ways."""

from __future__ import annotations

import random
import uuid

import pytest
import trio

from darktower.frames import FrameFlags, FrameHeader, FrameType, encode_frame

from .._browser import run_page_script
from ._static import BLANK_PAGE, serve_web

pytestmark = pytest.mark.browser


FRAME_HEADERS = [
    FrameHeader(
        frame_type=FrameType.AUDIO,
        stream_id=uuid.UUID("12345678-9abc-def0-0fed-cba987654321"),
        timestamp_us=1_764_100_000_123_456,
        sequence=0,
        flags=FrameFlags.END_OF_FRAME,
    ),
    FrameHeader(
        frame_type=FrameType.VIDEO_KEY,
        stream_id=uuid.UUID(int=1),
        timestamp_us=2**64 - 1,
        sequence=2**64 - 1,
        flags=FrameFlags.END_OF_FRAME | FrameFlags.DISCARDABLE,
    ),
    FrameHeader(
        frame_type=FrameType.VIDEO_DELTA,
        stream_id=uuid.UUID(int=2**128 - 1),
        timestamp_us=2**53 + 1,
        sequence=12345,
        flags=FrameFlags(0),
    ),
]
PAYLOAD_SIZES = [0, 1, 100_000]

FRAMES_SCRIPT = """
async ({frames, odd, bad, chunkSizes}) => {
  const F = await import("/static/frames.js");
  const B = await import("/static/bytes.js");
  const out = {decoded: [], reencoded: [], own: [], counts: []};
  for (const hex of frames) {
    const f = F.decodeFrame(B.fromHex(hex));
    out.decoded.push({frameType: f.frameType, streamId: f.streamId, version: f.version,
      timestampUs: f.timestampUs.toString(), sequence: f.sequence.toString(), flags: f.flags,
      payloadLength: f.payload.length, payload: B.toHex(f.payload.subarray(0, 8))});
    out.reencoded.push(B.toHex(F.encodeFrame(f, f.payload)));
    // The page's own frame from plain values: Numbers where they are safe, else BigInts.
    const ts = f.timestampUs <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(f.timestampUs) : f.timestampUs;
    out.own.push(B.toHex(F.encodeFrame({frameType: f.frameType, streamId: f.streamId,
      timestampUs: ts, sequence: f.sequence, flags: f.flags}, f.payload)));
  }
  // Reserved flag bits and bytes are ignored on receive.
  const o = F.decodeFrame(B.fromHex(odd));
  out.odd = {flags: o.flags, sequence: o.sequence.toString(), payload: B.toHex(o.payload)};
  // The whole stream in chunks of each size.
  const all = B.fromHex(frames.join(""));
  for (const size of chunkSizes) {
    const readable = new ReadableStream({start(ctl) {
      for (let i = 0; i < all.length; i += size) ctl.enqueue(all.slice(i, i + size));
      ctl.close();
    }});
    let n = 0;
    for await (const f of F.readFrames(readable)) {
      if (B.toHex(F.encodeFrame(f, f.payload)) !== frames[n]) throw new Error(`frame ${n} (${size})`);
      n++;
    }
    out.counts.push(n);
  }
  out.errors = {};
  for (const [name, hex] of Object.entries(bad)) {
    try { F.decodeHeader(B.fromHex(hex), 1000); out.errors[name] = "accepted"; }
    catch (e) { out.errors[name] = e.reason; }
  }
  const dec = new F.FrameDecoder();
  dec.push(B.fromHex(frames[2]).subarray(0, 50));  // 100 kB payload, cut
  try { dec.next(); dec.end(); out.errors.cut = "accepted"; } catch (e) { out.errors.cut = e.reason; }
  return out;
}
"""


async def test_media_frames_round_trip_through_the_page() -> None:
    rng = random.Random(8)
    frames: list[bytes] = []
    for header in FRAME_HEADERS:
        for size in PAYLOAD_SIZES:
            frames.append(encode_frame(header, rng.randbytes(size)))
    base_header = FRAME_HEADERS[0]
    odd = bytearray(encode_frame(base_header, b"xyz"))
    odd[38:40] = b"\xff\xfd"  # reserved flag bits and END_OF_FRAME set, DISCARDABLE clear
    odd[40:46] = b"\xaa" * 6
    good = encode_frame(base_header, b"")
    bad = {
        "version": (b"\x02" + good[1:]).hex(),
        "frame_type": (good[:1] + b"\x03" + good[2:]).hex(),
        "too_large": (good[:34] + (1001).to_bytes(4, "big") + good[38:]).hex(),
        "truncated": good[:45].hex(),
        "fits": (good[:34] + (1000).to_bytes(4, "big") + good[38:]).hex(),
    }
    arg = {
        "frames": [f.hex() for f in frames],
        "odd": bytes(odd).hex(),
        "bad": bad,
        "chunkSizes": [1, 45, 47, 4096, sum(map(len, frames))],
    }
    with serve_web({"/blank": BLANK_PAGE}) as base:
        result = await trio.to_thread.run_sync(run_page_script, base + "/blank", FRAMES_SCRIPT, arg)

    for wire, decoded, reencoded, own in zip(
        frames, result["decoded"], result["reencoded"], result["own"], strict=True
    ):
        header = FrameHeader.decode(wire)
        assert decoded == {
            "frameType": int(header.frame_type),
            "streamId": str(header.stream_id),
            "version": 1,
            "timestampUs": str(header.timestamp_us),
            "sequence": str(header.sequence),
            "flags": int(header.flags),
            "payloadLength": header.payload_length,
            "payload": wire[46:54].hex(),
        }
        assert reencoded == wire.hex()
        assert own == wire.hex()
    assert result["odd"] == {"flags": 1, "sequence": "0", "payload": b"xyz".hex()}
    assert result["counts"] == [len(frames)] * 5
    assert result["errors"] == {
        "version": "version",
        "frame_type": "frame_type",
        "too_large": "too_large",
        "truncated": "truncated",
        "fits": "accepted",
        "cut": "truncated",
    }
