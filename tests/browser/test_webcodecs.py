"""The page's media pipeline without a network, in Chromium with the fake camera and microphone:
getUserMedia -> VideoSender (VP8) -> media frames (frames.js) -> VideoReceiver -> a canvas, and
AudioSender (Opus) -> AudioReceiver. Also: the page itself loads, and its hooks are there."""

from __future__ import annotations

import pytest
import trio

from .._browser import run_page_script
from ._static import BLANK_PAGE, serve_web

pytestmark = pytest.mark.browser

WANT_VIDEO_FRAMES = 30
WANT_AUDIO_CHUNKS = 10

PIPELINE_SCRIPT = """
async ({wantVideo, wantAudio, timeoutMs}) => {
  const C = await import("/static/codecs.js");
  const F = await import("/static/frames.js");
  const media = await navigator.mediaDevices.getUserMedia(
      {video: {width: 320, height: 240, frameRate: 30}, audio: true});
  const canvas = document.createElement("canvas");
  document.body.append(canvas);
  let videoDone, audioDone;
  const videoReached = new Promise(r => videoDone = r);
  const audioReached = new Promise(r => audioDone = r);
  const rx = new C.VideoReceiver("VP8", canvas,
      {onDecoded: n => { if (n >= wantVideo) videoDone(); }});
  const arx = new C.AudioReceiver("Opus", {onDecoded: n => { if (n >= wantAudio) audioDone(); }});
  // Every chunk goes through the wire format and the incremental reader, split in two pieces.
  const pipe = (receiver, streamId) => {
    const decoder = new F.FrameDecoder();
    let sequence = 0;
    const wire = [];
    return {wire, send: (type, payload, ts) => {
      const bytes = F.encodeFrame({frameType: type, streamId, timestampUs: ts, sequence: sequence++},
                                  payload);
      wire.push(type);
      decoder.push(bytes.slice(0, 20));
      decoder.push(bytes.slice(20));
      for (let f = decoder.next(); f !== undefined; f = decoder.next()) receiver.push(f);
    }};
  };
  const vpipe = pipe(rx, crypto.randomUUID()), apipe = pipe(arx, crypto.randomUUID());
  const tx = new C.VideoSender(media.getVideoTracks()[0], vpipe.send);
  const atx = new C.AudioSender(media.getAudioTracks()[0], apipe.send);
  const timeout = new Promise((_, reject) => setTimeout(
      () => reject(new Error(`timeout: video ${rx.stats.decoded}, audio ${arx.stats.decoded}, ` +
                             `errors ${tx.error} ${atx.error}`)), timeoutMs));
  await Promise.race([Promise.all([videoReached, audioReached]), timeout]);
  // A requested key frame is the next one encoded.
  const keysBefore = tx.stats.keyFrames, sentBefore = vpipe.wire.length;
  tx.requestKeyFrame();
  let keyDone;
  const keyReached = new Promise(r => keyDone = r);
  const poll = setInterval(() => { if (tx.stats.keyFrames > keysBefore) keyDone(); }, 10);
  await Promise.race([keyReached, timeout]);
  clearInterval(poll);
  const afterRequest = vpipe.wire.slice(sentBefore);
  tx.stop(); atx.stop(); rx.stop(); arx.stop();
  media.getTracks().forEach(t => t.stop());
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0;
  for (let i = 0; i < pixels.length; i += 4) if (pixels[i] + pixels[i + 1] + pixels[i + 2] > 0) lit++;
  return {
    decoded: rx.stats.decoded, decodeErrors: rx.stats.errors,
    firstType: vpipe.wire[0], keyFrames: tx.stats.keyFrames,
    firstAfterRequest: afterRequest.indexOf(F.FrameType.VIDEO_KEY),
    size: [canvas.width, canvas.height], litPixels: lit,
    audioEncoded: atx.stats.encoded, audioDecoded: arx.stats.decoded,
    audioTypes: [...new Set(apipe.wire)],
  };
}
"""


async def test_camera_to_vp8_to_canvas_and_microphone_to_opus() -> None:
    arg = {"wantVideo": WANT_VIDEO_FRAMES, "wantAudio": WANT_AUDIO_CHUNKS, "timeoutMs": 20_000}
    with serve_web({"/blank": BLANK_PAGE}) as base:
        result = await trio.to_thread.run_sync(
            run_page_script, base + "/blank", PIPELINE_SCRIPT, arg
        )
    assert result["decoded"] >= WANT_VIDEO_FRAMES
    assert result["decodeErrors"] == 0
    assert result["firstType"] == 1  # the stream starts with a key frame
    assert result["keyFrames"] >= 2  # the first, and the requested one
    # The requested key frame is at most one frame late (one may already be in the encoder).
    assert 0 <= result["firstAfterRequest"] <= 2
    assert result["size"] == [320, 240]
    assert result["litPixels"] > 320 * 240 // 10  # a picture, not a black canvas
    assert result["audioEncoded"] >= WANT_AUDIO_CHUNKS
    assert result["audioDecoded"] >= WANT_AUDIO_CHUNKS
    assert result["audioTypes"] == [0]


PAGE_SCRIPT = """
async () => {
  const deadline = Date.now() + 10000;
  while (!window.darktower && Date.now() < deadline) await new Promise(r => setTimeout(r, 20));
  const d = window.darktower;
  return {
    hooks: ["create", "join", "kick", "endMeeting", "leave", "snapshot"].filter(
        k => typeof d[k] === "function"),
    state: d.state, snapshot: d.snapshot(), meetingField: document.getElementById("meeting-id").value,
    lobbyShown: !document.getElementById("lobby").hidden,
    meetingShown: !document.getElementById("meeting").hidden,
    stylesheet: getComputedStyle(document.getElementById("meeting")).display,
    grid: !!document.getElementById("grid"),
  };
}
"""


@pytest.mark.parametrize(
    "path",
    ["/m/6f1f8a52-0d6c-4a57-9a6e-5c8f0e2b4a10", "/?meeting=6f1f8a52-0d6c-4a57-9a6e-5c8f0e2b4a10"],
)
async def test_page_loads_with_its_hooks_and_reads_the_meeting_id(path: str) -> None:
    with serve_web() as base:
        result = await trio.to_thread.run_sync(run_page_script, base + path, PAGE_SCRIPT)
    assert result["hooks"] == ["create", "join", "kick", "endMeeting", "leave", "snapshot"]
    assert result["state"] == "idle"
    assert result["snapshot"]["endReason"] is None
    assert result["meetingField"] == "6f1f8a52-0d6c-4a57-9a6e-5c8f0e2b4a10"
    assert result["lobbyShown"] is True
    assert result["meetingShown"] is False
    assert result["stylesheet"] == "none"  # style.css loaded and [hidden] wins
    assert result["grid"] is True


RELEASE_SCRIPT = """
async ({timeoutMs}) => {
  const C = await import("/static/codecs.js");
  const canvas = new OffscreenCanvas(16, 16);
  canvas.getContext("2d").fillRect(0, 0, 16, 16);
  let closed = 0;
  const frame = (timestamp) => {
    const f = new VideoFrame(canvas, {timestamp});
    const close = f.close.bind(f);
    f.close = () => { closed++; close(); };
    return f;
  };
  // A track's stream as a page behind on its reads leaves it: frames queued, then released.
  // Its source's cancel comes last (after every read), so the test waits on it.
  const released = async (queued) => {
    let cancelled;
    const done = new Promise(r => cancelled = r);
    const stream = new ReadableStream(
        {start(c) { for (let i = 0; i < queued; i++) c.enqueue(frame(i)); }, cancel: cancelled},
        {highWaterMark: 8});
    C.releaseReader(stream.getReader());
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error("timeout")), timeoutMs));
    await Promise.race([done, timeout]);
    return closed;
  };
  const afterQueued = await released(3);
  const afterEmpty = await released(0) - afterQueued;
  return {afterQueued, afterEmpty};
}
"""


async def test_a_released_track_reader_closes_the_frames_its_stream_held() -> None:
    # Cancel alone would drop them unclosed (Chromium logs each one it collects).
    with serve_web({"/blank": BLANK_PAGE}) as base:
        result = await trio.to_thread.run_sync(
            run_page_script, base + "/blank", RELEASE_SCRIPT, {"timeoutMs": 10_000}
        )
    assert result == {"afterQueued": 3, "afterEmpty": 0}
