"""The page's routing of derived streams (darktower/web/roster.js; docs/protocol.md §2.2) in
Chromium, with real media made by the tests (VP8, its H.264 transcode by the media processor's
Transcoder, Opus) and a stand-in for the MC's replies: a subscription whose Ack names a
transcode decodes that stream's frames into the source's tile, with its codec, and no frame of
the source; frames of a transcode that arrive before the Ack naming it are held and decoded once
it comes; SubscriptionUpdated moves it to the source again, or to another transcode; audio
subscriptions answered with the mix share one player, which stops with the last of them; with
``mixAudio`` the page subscribes to the mix instead of anyone's audio, and follows the mix's
SubscriptionUpdated (empty stream id)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio

from darktower.processing import Transcoder
from tests.processing._media import opus_frames, video_frames

from .._browser import run_page_script
from ._static import BLANK_PAGE, serve_web

pytestmark = pytest.mark.browser

FRAMES = 20  # one key frame, then deltas

SCRIPT = """
async ({vp8, h264, opus, ids}) => {
  const {Roster} = await import("/static/roster.js");
  const {fromHex} = await import("/static/bytes.js");
  const {FrameType} = await import("/static/frames.js");
  const {StreamType} = await import("/static/proto.js");
  const stats = {decodedFrames: {}, decodedAudio: {}, decodedMix: 0, unknownFrames: 0};
  const notices = [];
  const view = {addTile: () => ({canvas: document.createElement("canvas")}), removeTile() {},
                notice: (text) => notices.push(text)};
  // The MC's stand-in: each SubscribeStream is answered with the derived stream of `answers`.
  // A subscription of a stream in `gates` is answered once the test opens its gate.
  const answers = {}, asked = [], gates = {};
  let replies = 0;
  const subscribe = async (body) => {
    asked.push(body);
    await (gates[body.streamId]?.promise ?? null);
    replies++;
    return {ack: {streamId: body.streamId ?? "", derived: answers[body.streamId ?? ""]}};
  };
  const until = async (what, done) => {
    const t0 = performance.now();
    while (!done()) {
      if (performance.now() - t0 > 10000) throw new Error(`${what}: ${JSON.stringify(stats)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  const push = (roster, list, streamId, video) => {
    for (const [key, ts, hex] of list) {
      const frameType = !video ? FrameType.AUDIO : key ? FrameType.VIDEO_KEY : FrameType.VIDEO_DELTA;
      roster.push({frameType, streamId, timestampUs: ts, payload: fromHex(hex)});
    }
  };
  const video = (id, codec) => ({streamId: id, streamType: StreamType.VIDEO_CAMERA,
                                  metadata: {codec}});
  const audio = (id) => ({streamId: id, streamType: StreamType.AUDIO, metadata: {codec: "Opus"}});
  const out = {};
  const sub = (roster, id) => roster.subscriptions().find((s) => s.streamId === id);

  // Transcodes.
  const roster = new Roster(view, {stats, subscribe, onChange() {}, onLeft() {}});
  answers[ids.video] = {streamId: ids.transcode.toUpperCase(), codec: "H264", bitrate: 200000};
  answers[ids.audioP] = answers[ids.audioQ] = {streamId: ids.mix, codec: "Opus", mix: true};
  roster.add({participantId: "P", name: "P", streams: [video(ids.video, "VP8"), audio(ids.audioP)]});
  roster.add({participantId: "Q", name: "Q", streams: [audio(ids.audioQ)]});
  await until("replies", () => replies === 3);
  push(roster, vp8, ids.video, true);  // the source while a transcode carries it: not decoded
  push(roster, h264, ids.transcode, true);
  await until("the transcode decoded", () => stats.decodedFrames.P >= h264.length);
  out.transcoded = {sub: sub(roster, ids.video), decoded: stats.decodedFrames.P};

  roster.updated(ids.video, undefined);  // the source again
  push(roster, h264, ids.transcode, true);  // no longer routed here
  push(roster, vp8, ids.video, true);
  await until("the source decoded", () => stats.decodedFrames.P >= h264.length + vp8.length);
  out.source = {sub: sub(roster, ids.video), decoded: stats.decodedFrames.P,
                unknown: stats.unknownFrames};

  roster.updated(ids.video, {streamId: ids.transcode2, codec: "H264", bitrate: 100000});
  push(roster, h264, ids.transcode2, true);
  await until("the second transcode", () => stats.decodedFrames.P >= 2 * h264.length + vp8.length);
  out.transcoded2 = sub(roster, ids.video);

  // The transcode's frames before the Ack that names it: held, then decoded.
  let open;
  gates[ids.video2] = {promise: new Promise((resolve) => { open = resolve; })};
  answers[ids.video2] = {streamId: ids.transcode3, codec: "H264", bitrate: 200000};
  roster.add({participantId: "S", name: "S", streams: [video(ids.video2, "VP8")]});
  const unknownBefore = stats.unknownFrames;
  push(roster, h264, ids.transcode3, true);
  out.held = {unknown: stats.unknownFrames - unknownBefore, decoded: stats.decodedFrames.S};
  open();
  await until("the held frames", () => stats.decodedFrames.S >= h264.length);
  out.claimed = {unknown: stats.unknownFrames - unknownBefore, sub: sub(roster, ids.video2)};

  // The mix: one player for both audio subscriptions; their own streams are not played.
  push(roster, opus, ids.audioP, false);
  push(roster, opus, ids.mix, false);
  await until("the mix", () => stats.decodedMix >= opus.length);
  out.mix = {p: sub(roster, ids.audioP), q: sub(roster, ids.audioQ), decodedMix: stats.decodedMix,
             decodedAudio: stats.decodedAudio};
  roster.remove("P");  // Q's subscription still takes the mix
  const before = stats.decodedMix;
  push(roster, opus, ids.mix, false);
  await until("the mix after P left", () => stats.decodedMix >= before + opus.length);
  roster.remove("Q");  // the last one: the mix is gone
  const unknown = stats.unknownFrames;
  push(roster, opus, ids.mix, false);
  out.mixGone = stats.unknownFrames - unknown;
  roster.stop();

  // The mix asked for: no participant's audio is subscribed to.
  const taker = new Roster(view, {stats, subscribe, onChange() {}, onLeft() {}});
  taker.mixAudio = true;
  answers[""] = {streamId: ids.mix3, codec: "Opus", mix: true};
  asked.length = 0;
  taker.add({participantId: "R", name: "R", streams: [audio(ids.audioR)]});
  taker.subscribeMix();
  await until("the mix asked for", () => asked.length === 1 && sub(taker, "")?.derived);
  out.asked = [...asked];
  taker.updated("", {streamId: ids.mix2, codec: "Opus", mix: true});
  const mixed = stats.decodedMix;
  push(taker, opus, ids.mix2, false);
  await until("the moved mix", () => stats.decodedMix >= mixed + opus.length);
  out.taker = taker.subscriptions();
  taker.stop();
  out.notices = notices;
  return out;
}
"""


def _hex(frames: list[Any]) -> list[list[Any]]:
    return [[f.key, f.timestamp_us, f.payload.hex()] for f in frames]


async def test_derived_streams_are_decoded_in_place_of_their_source() -> None:
    vp8 = video_frames(FRAMES / 30, width=160, height=120, bitrate=150_000, key_every=FRAMES)
    transcoder = Transcoder("VP8", "H264", 200_000)
    h264 = [out for f in vp8 for out in transcoder.push(f.key, f.timestamp_us, f.payload)]
    assert h264 and h264[0].key
    opus = opus_frames(0.2)
    names = ("video", "video2", "transcode", "transcode2", "transcode3", "audioP", "audioQ")
    names += ("audioR", "mix", "mix2", "mix3")
    ids = {name: str(uuid.uuid4()) for name in names}
    arg = {"vp8": _hex(vp8), "h264": _hex(h264), "opus": _hex(opus), "ids": ids}
    with serve_web({"/blank": BLANK_PAGE}) as base:
        out = await trio.to_thread.run_sync(run_page_script, base + "/blank", SCRIPT, arg)

    transcoded = out["transcoded"]["sub"]
    # The derived stream id is taken in any case; the source's frames were not decoded.
    assert transcoded["derived"] == {
        "streamId": ids["transcode"],
        "codec": "H264",
        "bitrate": 200_000,
        "mix": False,
    }
    assert transcoded["frames"] == {"source": 0, "derived": len(h264), "other": len(vp8)}
    assert transcoded["decoded"] == out["transcoded"]["decoded"] == len(h264)

    source = out["source"]["sub"]
    assert source["derived"] is None
    assert source["frames"]["source"] == len(vp8)
    assert out["source"]["unknown"] == len(h264)  # the old transcode's frames go nowhere
    assert out["source"]["decoded"] == len(h264) + len(vp8)
    assert out["transcoded2"]["derived"]["streamId"] == ids["transcode2"]
    assert out["transcoded2"]["decoded"] == 2 * len(h264) + len(vp8)
    assert out["held"] == {"unknown": len(h264), "decoded": 0}
    assert out["claimed"]["unknown"] == 0
    assert out["claimed"]["sub"]["frames"]["derived"] == len(h264)
    assert out["claimed"]["sub"]["decoded"] == len(h264)

    mix = out["mix"]
    for key in ("p", "q"):
        assert mix[key]["derived"] == {
            "streamId": ids["mix"],
            "codec": "Opus",
            "bitrate": 0,
            "mix": True,
        }
        assert mix[key]["decoded"] == 0  # their own players get nothing
    assert mix["p"]["frames"]["other"] == len(opus)  # P's own stream, not played
    assert mix["decodedMix"] >= len(opus)
    assert mix["decodedAudio"] == {}
    assert out["mixGone"] == len(opus)

    assert out["asked"] == [{"mixAudio": True}]  # and no SubscribeStream for R's audio
    [taken] = out["taker"]
    assert taken["kind"] == "mix" and taken["derived"]["streamId"] == ids["mix2"]
    assert out["notices"] == []
