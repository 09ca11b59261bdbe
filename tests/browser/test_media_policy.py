"""The page's publish-side congestion policy (media.js Publisher) and its demultiplexing of the
MH's streams (MediaConnection), with stand-in streams in the page: no network needed."""

from __future__ import annotations

import pytest
import trio

from .._browser import run_page_script
from ._static import BLANK_PAGE, serve_web

pytestmark = pytest.mark.browser

POLICY_SCRIPT = """
async () => {
  const M = await import("/static/media.js");
  const F = await import("/static/frames.js");
  // A publish stream whose writes complete only when the test says so.
  const held = [];
  const written = [];
  const stream = {
    writable: new WritableStream({write(chunk) {
      written.push(F.decodeFrame(chunk));
      return new Promise(r => held.push(r));
    }}, {highWaterMark: 1e9}),
    readable: new ReadableStream({}),
  };
  let keyRequests = 0;
  const id = crypto.randomUUID();
  const pub = new M.Publisher(stream, id, {onNeedKeyFrame: () => keyRequests++});
  const big = new Uint8Array(200 * 1024);
  const sent = [];
  const send = (type) => sent.push(pub.send(type, big, 1000 + sent.length));
  send(F.FrameType.VIDEO_KEY);     // queued: 200 KiB pending
  send(F.FrameType.VIDEO_DELTA);   // queued: 400 KiB
  send(F.FrameType.VIDEO_DELTA);   // queued: 600 KiB, now over the 512 KiB limit
  send(F.FrameType.VIDEO_DELTA);   // dropped, asks for a key frame
  send(F.FrameType.AUDIO);         // dropped (audio drops while over)
  send(F.FrameType.VIDEO_KEY);     // a key frame is always queued
  const pendingOver = pub.pendingBytes;
  // The transport catches up: every write completes.
  await new Promise(r => setTimeout(r, 0));
  while (held.length) { held.shift()(); await new Promise(r => setTimeout(r, 0)); }
  send(F.FrameType.VIDEO_DELTA);   // after the key frame, under the limit: queued
  send(F.FrameType.AUDIO);         // queued
  await new Promise(r => setTimeout(r, 0));
  while (held.length) { held.shift()(); await new Promise(r => setTimeout(r, 0)); }
  return {
    sent, keyRequests, pendingOver, pendingAfter: pub.pendingBytes, stats: pub.stats,
    wire: written.map(f => ({type: f.frameType, seq: Number(f.sequence), id: f.streamId,
                             ts: Number(f.timestampUs), flags: f.flags})),
    id,
  };
}
"""


async def test_publisher_drops_by_policy_when_the_uplink_is_congested() -> None:
    with serve_web({"/blank": BLANK_PAGE}) as base:
        r = await trio.to_thread.run_sync(run_page_script, base + "/blank", POLICY_SCRIPT)
    assert r["sent"] == [True, True, True, False, False, True, True, True]
    assert r["keyRequests"] == 1
    assert r["pendingOver"] == 4 * (200 * 1024 + 46)
    assert r["pendingAfter"] == 0
    assert r["stats"]["dropped"] == 2
    # On the wire: consecutive sequence numbers over what was sent, one stream id, END_OF_FRAME.
    assert [w["type"] for w in r["wire"]] == [1, 2, 2, 1, 2, 0]
    assert [w["seq"] for w in r["wire"]] == list(range(6))
    assert {w["id"] for w in r["wire"]} == {r["id"]}
    assert {w["flags"] for w in r["wire"]} == {1}
    assert [w["ts"] for w in r["wire"]] == [1000, 1001, 1002, 1005, 1006, 1007]


DEMUX_SCRIPT = """
async () => {
  const M = await import("/static/media.js");
  const F = await import("/static/frames.js");
  const a = crypto.randomUUID(), b = crypto.randomUUID();
  const frame = (id, seq) => F.encodeFrame(
      {frameType: F.FrameType.VIDEO_DELTA, streamId: id, timestampUs: seq, sequence: seq},
      new Uint8Array([seq]));
  const uni = (chunks, error) => new ReadableStream({start(ctl) {
    for (const c of chunks) ctl.enqueue(c);
    if (error) ctl.error(new Error("reset")); else ctl.close();
  }});
  // Two routed streams, one split across chunks, and a third that is reset mid-frame.
  const joined = F.encodeFrame({frameType: 0, streamId: b, timestampUs: 9, sequence: 9},
                               new Uint8Array(100));
  const incoming = [
    uni([frame(a, 1), frame(a, 2)]),
    uni([joined.slice(0, 10), joined.slice(10, 60), joined.slice(60)]),
    uni([frame(a, 3).slice(0, 30)], true),
  ];
  let closeResolve;
  const wt = {
    incomingUnidirectionalStreams: new ReadableStream({start(ctl) {
      for (const s of incoming) ctl.enqueue(s);
      ctl.close();
    }}),
    closed: new Promise(r => closeResolve = r),
    close(info) { closeResolve(info); },
  };
  const got = [];
  const errors = [];
  const conn = new M.MediaConnection(wt, {onFrame: f => got.push([f.streamId, Number(f.sequence),
                                                                  f.payload.length]),
                                          onStreamError: e => errors.push(e.message)});
  await conn.receiving;
  for (let i = 0; i < 20 && conn.stats.streamErrors + got.length < 4; i++)
    await new Promise(r => setTimeout(r, 10));
  conn.close(0, "bye");
  return {got: got.map(([id, s, n]) => [id === a ? "a" : "b", s, n]), errors,
          stats: conn.stats, closed: await wt.closed,
          url: M.webTransportUrl("wss://mc.example:4433/v1/signal")};
}
"""


async def test_media_connection_demultiplexes_incoming_streams() -> None:
    with serve_web({"/blank": BLANK_PAGE}) as base:
        r = await trio.to_thread.run_sync(run_page_script, base + "/blank", DEMUX_SCRIPT)
    assert sorted(r["got"]) == [["a", 1, 1], ["a", 2, 1], ["b", 9, 100]]
    assert r["stats"] == {"streams": 3, "frames": 3, "streamErrors": 1}
    assert len(r["errors"]) == 1  # the reset stream ends only itself
    assert r["closed"] == {"closeCode": 0, "reason": "bye"}
    assert r["url"] == "https://mc.example:4433/v1/signal"
