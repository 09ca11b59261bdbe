"""The level of each audio frame the page publishes (docs/protocol.md §17.1), measured in
Chromium on generated PCM before it is encoded: RFC 6464's scale, silence, and the byte in an
end-to-end encrypted frame. The whole page's levels on the wire: test_adaptive.py."""

from __future__ import annotations

import pytest
import trio

from darktower.frames import Frame

from .._browser import run_page_script
from ._static import BLANK_PAGE, serve_web

pytestmark = pytest.mark.browser


LEVELS_SCRIPT = """
async ({amplitudes, buffers}) => {
  const C = await import("/static/codecs.js");
  const L = await import("/static/audiolevel.js");
  const E = await import("/static/e2ee.js");
  const F = await import("/static/frames.js");
  const B = await import("/static/bytes.js");
  const out = {bounds: [L.levelOf(1), L.levelOf(0), L.levelOf(1e-20), L.levelOf(0.5)]};
  // An encrypted frame keeps its level in clear, authenticated with the rest of the header.
  const keys = await E.generationKeys(0, E.randomSecret());
  const header = {frameType: F.FrameType.AUDIO, streamId: crypto.randomUUID(), timestampUs: 1,
    sequence: 0, audioLevel: 33};
  const wire = await E.encryptFrame(keys, 0n, header, new Uint8Array(10));
  const sealed = F.decodeFrame(wire);
  const plain = await E.decryptPayload(keys, sealed);
  wire[40] = 0x80 | 34;
  let forged = "accepted";
  try { await E.decryptPayload(keys, F.decodeFrame(wire)); } catch (e) { forged = e.name; }
  out.sealed = {level: sealed.audioLevel, plain: plain.byteLength, forged,
    wire: B.toHex(F.encodeFrame(header, new Uint8Array(3)))};
  for (const amplitude of amplitudes) {
    const track = new MediaStreamTrackGenerator({kind: "audio"});
    const writer = track.writable.getWriter();
    const levels = [];
    const sender = new C.AudioSender(track, (type, payload, ts, level) => levels.push(level));
    for (let i = 0; i < buffers; i++) {
      const samples = new Float32Array(480);
      for (let n = 0; n < 480; n++) {
        samples[n] = amplitude * Math.sin(2 * Math.PI * 440 * (i * 480 + n) / 48000);
      }
      await writer.write(new AudioData({format: "f32-planar", sampleRate: 48000,
        numberOfFrames: 480, numberOfChannels: 1, timestamp: i * 10000, data: samples}));
      // At the pace of a microphone: the track's reader keeps only the newest buffers.
      await new Promise(r => setTimeout(r, 10));
    }
    const deadline = Date.now() + 10000;
    while (levels.length < buffers / 2 - 2 && Date.now() < deadline) {
      await new Promise(r => setTimeout(r, 20));
    }
    sender.stop();
    track.stop();
    out[amplitude] = levels;
  }
  return out;
}
"""


async def test_the_level_is_measured_on_the_pcm_before_it_is_encoded() -> None:
    """RFC 6464's scale: a full-scale square wave is 0 dBov; a sine of amplitude 0.5 is
    -9 dBov (level 9); silence is 127."""
    arg = {"amplitudes": [0, 0.5], "buffers": 60}
    with serve_web({"/blank": BLANK_PAGE}) as base:
        result = await trio.to_thread.run_sync(run_page_script, base + "/blank", LEVELS_SCRIPT, arg)
    assert result["bounds"] == [0, 127, 127, 3]
    sealed = result["sealed"]
    assert sealed["level"] == 33 and sealed["plain"] == 10
    assert sealed["forged"] == "OperationError"  # the level byte is authenticated
    assert Frame.from_wire(bytes.fromhex(sealed["wire"])).audio_level == 33  # as Python reads it
    silent, loud = result["0"], result["0.5"]
    assert len(silent) >= 20 and len(loud) >= 20
    assert set(silent) == {127}
    assert set(loud[1:-1]) == {9}
