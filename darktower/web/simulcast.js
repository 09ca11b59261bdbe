// The camera as simulcast (docs/protocol.md §7, §17.3): one VP8 encoder per layer, each layer its
// own stream id (a UUID) on a QUIC stream of its own, fed the same captured frames (the encoder
// scales them to its layer's size). The MH forwards one layer per subscriber; the publisher
// hears back, in StreamQualityUpdate, what its subscribers can take:
//   - `layers[i].active` false: nobody receives that layer, so it is not encoded (no frames)
//     until an update says active again, and then it starts with a key frame (dynacast);
//   - `available_bitrate` (each layer's own, else the stream's; 0: not known) caps the
//     encoders' bitrates, never above the layer's own maximum. Only these caps lower a rate:
//     what it produced last is never taken for what the path can take, so a cap that lifts
//     brings the layer back to its maximum.

import {
  KEY_FRAME_INTERVAL_MS,
  VIDEO_FRAMERATE,
  chunkBytes,
  nowUs,
  pumpTrack,
  webCodec,
} from "./codecs.js";
import { FrameType } from "./frames.js";

// The layers, highest first: each a fraction of the camera's size (fitted within TOP_SIZE)
// and a maximum bitrate (a 640×480 camera: 640×480 at 500 kbit/s, 320×240 at 150 kbit/s,
// 160×120 at 50 kbit/s).
export const LAYER_PLAN = Object.freeze([
  Object.freeze({ scale: 1, maxBitrate: 500_000 }),
  Object.freeze({ scale: 2, maxBitrate: 150_000 }),
  Object.freeze({ scale: 4, maxBitrate: 50_000 }),
]);
export const TOP_SIZE = Object.freeze({ width: 640, height: 480 });
// A cap never takes an encoder below this (or below its maximum, if that is lower).
export const MIN_LAYER_BITRATE = 30_000;
// A cap that moves the encoder's bitrate by less than this fraction does not reconfigure it
// (going back to the layer's maximum always does).
const BITRATE_HYSTERESIS = 0.2;
// Limit: raw frames waiting in one layer's encoder. Policy when full: that layer skips the
// frame (counted in `dropped`), so a slow encoder lowers its frame rate instead of the delay.
const MAX_ENCODE_QUEUE = 2;

const even = (n) => Math.max(2, 2 * Math.round(n / 2));

function encoderConfig(codec, width, height, bitrate) {
  return {
    codec: webCodec(codec),
    width,
    height,
    bitrate,
    framerate: VIDEO_FRAMERATE,
    latencyMode: "realtime",
  };
}

// The layers this browser can encode for a `width`×`height` camera, highest first:
// [{layerId (a new UUID), width, height, maxBitrate}]. A layer whose configuration
// VideoEncoder.isConfigSupported refuses is left out, so there may be fewer than three, or none.
export async function planLayers(width, height, { codec = "VP8", plan = LAYER_PLAN } = {}) {
  const fit = Math.min(1, TOP_SIZE.width / width, TOP_SIZE.height / height);
  const layers = [];
  for (const { scale, maxBitrate } of plan) {
    const w = even((width * fit) / scale);
    const h = even((height * fit) / scale);
    const config = encoderConfig(codec, w, h, maxBitrate);
    let supported = false;
    try {
      ({ supported } = await VideoEncoder.isConfigSupported(config));
    } catch {
      // A configuration the browser rejects outright: not supported.
    }
    if (supported) layers.push({ layerId: crypto.randomUUID(), width: w, height: h, maxBitrate });
  }
  return layers;
}

// One layer's encoder. `stats` (a plain object, kept up to date): width, height, maxBitrate,
// bitrate (the encoder's now), paused, encoded, keyFrames, dropped, resumes.
class LayerEncoder {
  constructor(layer, codec, onChunk, stats) {
    this.layer = layer;
    this.codec = codec;
    this.bitrate = layer.maxBitrate;
    this.paused = false;
    this.wantKey = true;
    this.lastKeyAt = -Infinity;
    this.error = null;
    this.stats = Object.assign(stats, {
      width: layer.width,
      height: layer.height,
      maxBitrate: layer.maxBitrate,
      bitrate: this.bitrate,
      paused: false,
      encoded: 0,
      keyFrames: 0,
      dropped: 0,
      resumes: 0,
    });
    this.encoder = new VideoEncoder({
      output: (chunk) => {
        const type = chunk.type === "key" ? FrameType.VIDEO_KEY : FrameType.VIDEO_DELTA;
        this.stats.encoded++;
        if (type === FrameType.VIDEO_KEY) this.stats.keyFrames++;
        onChunk(layer.layerId, type, chunkBytes(chunk), nowUs());
      },
      error: (e) => {
        this.error = e;
        this.stats.error = String(e?.message ?? e);
      },
    });
    this.configure();
  }

  configure() {
    const { width, height } = this.layer;
    this.encoder.configure(encoderConfig(this.codec, width, height, this.bitrate));
    this.stats.bitrate = this.bitrate;
  }

  encode(frame) {
    if (this.paused || this.encoder.state !== "configured") return;
    if (this.encoder.encodeQueueSize >= MAX_ENCODE_QUEUE) {
      this.stats.dropped++;
      return;
    }
    const now = performance.now();
    const keyFrame = this.wantKey || now - this.lastKeyAt >= KEY_FRAME_INTERVAL_MS;
    if (keyFrame) {
      this.wantKey = false;
      this.lastKeyAt = now;
    }
    this.encoder.encode(frame, { keyFrame });
  }

  requestKeyFrame() {
    this.wantKey = true;
  }

  // Paused: no frame is encoded. Resumed: the first frame is a key frame.
  setPaused(paused) {
    if (paused === this.paused) return;
    this.paused = paused;
    this.stats.paused = paused;
    if (!paused) {
      this.wantKey = true;
      this.stats.resumes++;
    }
  }

  // The most its subscribers can take (bits/s; 0 or null: no cap): the encoder's bitrate is the
  // layer's maximum under that cap, not below MIN_LAYER_BITRATE.
  setCap(cap) {
    const max = this.layer.maxBitrate;
    const target = cap > 0 ? Math.min(max, Math.max(cap, Math.min(max, MIN_LAYER_BITRATE))) : max;
    if (target === this.bitrate) return;
    const moved = Math.abs(target - this.bitrate) / this.bitrate;
    if (moved <= BITRATE_HYSTERESIS && target !== max) return;
    this.bitrate = target;
    if (this.encoder.state === "configured") this.configure();
  }

  stop() {
    if (this.encoder.state !== "closed") this.encoder.close();
  }
}

// The camera track encoded as `layers` (planLayers()): onChunk(layerId, frameType, payload,
// timestampUs) for each encoded frame of each layer. `stats`: layer id -> that layer's
// LayerEncoder stats (filled in here). Owns its encoders and the track reader; stop() ends them.
export class SimulcastSender {
  constructor(track, layers, onChunk, { codec = "VP8", stats = {} } = {}) {
    this.layers = new Map();
    for (const layer of layers) {
      stats[layer.layerId] ??= {};
      const encoder = new LayerEncoder(layer, codec, onChunk, stats[layer.layerId]);
      this.layers.set(layer.layerId, encoder);
    }
    this.muted = false;
    this.replaceTrack(track);
  }

  // Encodes `track` from now on (another camera: docs/protocol.md §18.1 keeps the publication),
  // from a key frame.
  replaceTrack(track) {
    this.abort?.abort();
    this.abort = new AbortController();
    this.done = pumpTrack(track, (frame) => this.encode(frame), this.abort.signal);
    this.requestKeyFrame();
  }

  // Muted (the camera turned off): no frame is encoded; on again, from a key frame.
  setMuted(muted) {
    if (this.muted && !muted) this.requestKeyFrame();
    this.muted = muted;
  }

  has(layerId) {
    return this.layers.has(layerId);
  }

  encode(frame) {
    try {
      if (this.muted) return;
      for (const layer of this.layers.values()) layer.encode(frame);
    } finally {
      frame.close();
    }
  }

  // The next frame of layer `layerId` (null: of every layer) is a key frame.
  requestKeyFrame(layerId = null) {
    if (layerId === null) for (const layer of this.layers.values()) layer.requestKeyFrame();
    else this.layers.get(layerId)?.requestKeyFrame();
  }

  // Layer `layerId` is encoded again (from a key frame) if it was paused.
  resume(layerId) {
    this.layers.get(layerId)?.setPaused(false);
  }

  // A StreamQualityUpdate for the published stream (docs/protocol.md §17.3): each layer that
  // `layers` names is paused or resumed as its `active` says (one it does not name stays as it
  // is), and capped by what its own subscribers can take (LayerFeedback.availableBitrate), else
  // by the stream's `availableBitrate` (a plain stream's; 0 in both: no cap).
  onFeedback(update) {
    const streamCap = update.availableBitrate || 0;
    const feedback = new Map((update.layers ?? []).map((f) => [f.layerId, f]));
    for (const [layerId, layer] of this.layers) {
      const f = feedback.get(layerId);
      if (f) layer.setPaused(!f.active);
      layer.setCap(f?.availableBitrate || streamCap);
    }
  }

  stop() {
    this.abort.abort();
    for (const layer of this.layers.values()) layer.stop();
  }
}
