// WebCodecs on both ends: camera and microphone to encoded chunks, encoded chunks to pictures
// on a canvas and sound. No transport here: encoders hand chunks to a callback, decoders take
// media frames as frames.js decodes them.

import { AudioLevelMeter } from "./audiolevel.js";
import { FrameType } from "./frames.js";

// Key frames: at least every KEY_FRAME_INTERVAL_MS, and on request (KeyFrameRequest, a dropped
// delta frame on a congested stream).
export const KEY_FRAME_INTERVAL_MS = 2000;
export const VIDEO_BITRATE = 1_000_000;
export const AUDIO_BITRATE = 64_000;
export const VIDEO_FRAMERATE = 30;
// Limit: raw frames waiting in an encoder. Policy when full: the newest captured frame is closed
// unencoded (counted in `dropped`), so a slow encoder lowers the frame rate instead of the delay.
const MAX_ENCODE_QUEUE = 2;
// Limit: audio buffers waiting in the encoder. Policy when full: the newest is dropped (counted);
// a gap of 20 ms is better than a growing delay.
const MAX_AUDIO_ENCODE_QUEUE = 10;
// Limit: chunks waiting in a decoder. Policy when full: video waits for the next key frame (a
// delta frame cannot be skipped alone), audio drops the chunk; both counted in `dropped`.
const MAX_DECODE_QUEUE = 30;
// Audio scheduled ahead of the playback clock beyond this is dropped rather than delayed.
const MAX_AUDIO_AHEAD_S = 0.3;

// Signaling codec names (StreamMetadata.codec, DerivedStream.codec; read case-insensitively,
// docs/protocol.md §2.2) -> WebCodecs codec strings. H.264 is Annex B (no `description`): the
// parameter sets come in band, before each key frame, as the media processor's transcodes send
// them (docs/architecture.md §10).
const H264 = "avc1.42E01F"; // Constrained Baseline, level 3.1
const CODECS = {
  vp8: "vp8",
  vp9: "vp09.00.10.08",
  av1: "av01.0.04M.08",
  h264: H264,
  "h.264": H264,
  avc1: H264,
  opus: "opus",
};
// The video codecs the page can be sent, in its order of preference: the MC transcodes a
// publisher's codec the page did not list to the first of those it listed (docs/protocol.md §2.2).
export const VIDEO_CODEC_NAMES = Object.freeze(["VP8", "VP9", "H264", "AV1"]);

// VP8 has no colour space in its bitstream and the spec fixes it to BT.601 limited range, but
// Chromium's decoder labels its frames BT.709: drawn as such, the picture comes out much darker
// (the fake camera's green 135 became 78). The decoder is told the spec's colour space.
// Codecs whose bitstream says it (VP9, AV1, H.264) are left to the bitstream. A transcode's
// pictures keep its source's colours (docs/architecture.md §10), whatever its bitstream says:
// one made from VP8 is decoded in VP8's colour space (the media processor's H.264 says none,
// which Chromium takes for BT.709: 135 -> 76 again).
const DECODER_COLOR_SPACE = {
  vp8: { primaries: "smpte170m", transfer: "smpte170m", matrix: "smpte170m", fullRange: false },
};

export function webCodec(name) {
  const codec = CODECS[String(name).toLowerCase()];
  if (!codec) throw new Error(`unsupported codec ${name}`);
  return codec;
}

// Those of `names` (signaling codec names, in the caller's order) this browser's VideoDecoder
// takes: what the page's JoinRequest lists in `capabilities.video_codecs`.
export async function decodableVideoCodecs(names = VIDEO_CODEC_NAMES) {
  if (typeof VideoDecoder === "undefined") return [];
  const found = [];
  for (const name of names) {
    try {
      const { supported } = await VideoDecoder.isConfigSupported({ codec: webCodec(name) });
      if (supported) found.push(name);
    } catch {
      // A name the page does not know, or a codec string the browser rejects: not decodable.
    }
  }
  return found;
}

export function nowUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

export function chunkBytes(chunk) {
  const out = new Uint8Array(chunk.byteLength);
  chunk.copyTo(out);
  return out;
}

// Reads a MediaStreamTrack's frames (VideoFrame or AudioData) until stopped.
export async function pumpTrack(track, onItem, signal) {
  if (typeof MediaStreamTrackProcessor === "undefined") {
    throw new Error("this browser lacks MediaStreamTrackProcessor (use Chromium)");
  }
  const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
  try {
    while (!signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      if (signal.aborted) {
        value.close();
        return;
      }
      onItem(value);
    }
  } finally {
    releaseReader(reader);
  }
}

const IDLE = Object.freeze({});

// Cancels a track reader, closing the frames its stream still holds: cancel alone drops them
// unclosed (Chromium warns of each, and the camera's frame pool may stall). Reads while a frame
// is there at once; then a read still pending closes what it gets, and the reader is cancelled.
export function releaseReader(reader) {
  const pending = reader.read();
  Promise.race([pending, Promise.resolve(IDLE)]).then(
    (got) => {
      if (got === IDLE) {
        pending.then(({ value }) => value?.close(), () => {});
        reader.cancel().catch(() => {});
      } else if (!got.done) {
        got.value.close();
        releaseReader(reader);
      }
    },
    () => {},
  );
}

// A sender's track reader replaced by one of `track` (its encoder keeps running).
function replacePump(sender, track) {
  sender.abort.abort();
  sender.abort = new AbortController();
  const onItem = (item) => sender.encode(item);
  sender.done = pumpTrack(track, onItem, sender.abort.signal);
}

// Camera track -> VP8 chunks: onChunk(frameType, payload, timestampUs). Owns its encoder and the
// track reader; stop() ends both.
export class VideoSender {
  constructor(track, onChunk, { codec = "VP8", bitrate = VIDEO_BITRATE } = {}) {
    this.track = track;
    this.codec = codec;
    this.bitrate = bitrate;
    this.onChunk = onChunk;
    this.stats = { encoded: 0, keyFrames: 0, dropped: 0 };
    this.wantKey = true;
    this.lastKeyAt = -Infinity;
    this.abort = new AbortController();
    this.encoder = new VideoEncoder({
      output: (chunk) => {
        const type = chunk.type === "key" ? FrameType.VIDEO_KEY : FrameType.VIDEO_DELTA;
        this.stats.encoded++;
        if (type === FrameType.VIDEO_KEY) this.stats.keyFrames++;
        this.onChunk(type, chunkBytes(chunk), nowUs());
      },
      error: (e) => this.fail(e),
    });
    this.configured = null;
    this.muted = false;
    this.done = pumpTrack(track, (frame) => this.encode(frame), this.abort.signal);
  }

  // Encodes `track` from now on (another device), from a key frame.
  replaceTrack(track) {
    replacePump(this, track);
    this.wantKey = true;
  }

  // Muted: no frame is encoded; unmuted, from a key frame.
  setMuted(muted) {
    if (this.muted && !muted) this.wantKey = true;
    this.muted = muted;
  }

  // The next frame is encoded as a key frame.
  requestKeyFrame() {
    this.wantKey = true;
  }

  setBitrate(bitrate) {
    this.bitrate = bitrate;
    if (this.configured) this.configure(this.configured.width, this.configured.height);
  }

  configure(width, height) {
    this.configured = {
      codec: webCodec(this.codec),
      width,
      height,
      bitrate: this.bitrate,
      framerate: VIDEO_FRAMERATE,
      latencyMode: "realtime",
    };
    this.encoder.configure(this.configured);
  }

  encode(frame) {
    try {
      if (this.encoder.state === "closed" || this.muted) return;
      const { displayWidth: w, displayHeight: h } = frame;
      if (!this.configured || this.configured.width !== w || this.configured.height !== h) {
        this.configure(w, h);
        this.wantKey = true;
      }
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
    } finally {
      frame.close();
    }
  }

  fail(error) {
    this.error = error;
    this.stop();
  }

  stop() {
    this.abort.abort();
    if (this.encoder.state !== "closed") this.encoder.close();
  }
}

// Microphone track -> Opus chunks: onChunk(FrameType.AUDIO, payload, timestampUs, level), the
// level (0..127 in -dBov, docs/protocol.md §17.1) measured on the chunk's PCM (audiolevel.js).
export class AudioSender {
  constructor(track, onChunk, { bitrate = AUDIO_BITRATE } = {}) {
    this.onChunk = onChunk;
    this.bitrate = bitrate;
    this.stats = { encoded: 0, dropped: 0 };
    this.meter = new AudioLevelMeter();
    this.abort = new AbortController();
    this.encoder = new AudioEncoder({
      output: (chunk) => {
        this.stats.encoded++;
        const level = this.meter.take(chunk.timestamp, chunk.duration);
        this.onChunk(FrameType.AUDIO, chunkBytes(chunk), nowUs(), level);
      },
      error: (e) => this.fail(e),
    });
    this.muted = false;
    this.done = pumpTrack(track, (data) => this.encode(data), this.abort.signal);
  }

  // Encodes `track` from now on (another microphone).
  replaceTrack(track) {
    replacePump(this, track);
  }

  // Muted: nothing is encoded, so nothing is sent (docs/protocol.md §18.1).
  setMuted(muted) {
    this.muted = muted;
  }

  encode(data) {
    try {
      if (this.encoder.state === "closed" || this.muted) return;
      const format = `${data.sampleRate}/${data.numberOfChannels}`;
      if (this.encoder.state === "unconfigured" || this.format !== format) {
        // The first data, or another microphone's format.
        this.format = format;
        this.encoder.configure({
          codec: "opus",
          sampleRate: data.sampleRate,
          numberOfChannels: data.numberOfChannels,
          bitrate: this.bitrate,
        });
      }
      if (this.encoder.encodeQueueSize >= MAX_AUDIO_ENCODE_QUEUE) {
        this.stats.dropped++;
        return;
      }
      this.meter.add(data);
      this.encoder.encode(data);
    } finally {
      data.close();
    }
  }

  fail(error) {
    this.error = error;
    this.stop();
  }

  stop() {
    this.abort.abort();
    if (this.encoder.state !== "closed") this.encoder.close();
  }
}

// Media frames of one remote video stream -> pictures on `canvas`. Decoding starts at a key
// frame; after an error or an overflow it waits for the next one.
export class VideoReceiver {
  constructor(codec, canvas, { onDecoded } = {}) {
    this.codec = webCodec(codec);
    this.colorCodec = this.codec; // the codec whose colour space the pictures are in
    this.canvas = canvas;
    this.onDecoded = onDecoded ?? (() => {});
    this.stats = { decoded: 0, dropped: 0, errors: 0 };
    this.needKey = true;
    this.decoder = this.makeDecoder();
  }

  makeDecoder() {
    return new VideoDecoder({
      output: (frame) => {
        try {
          this.draw(frame);
        } finally {
          frame.close();
        }
        this.stats.decoded++;
        this.onDecoded(this.stats.decoded);
      },
      error: () => {
        // The decoder closes itself on error: start again at the next key frame.
        this.stats.errors++;
        this.needKey = true;
        if (!this.stopped) this.decoder = this.makeDecoder();
      },
    });
  }

  draw(frame) {
    const c = this.canvas;
    if (!c) return;
    if (c.width !== frame.displayWidth || c.height !== frame.displayHeight) {
      c.width = frame.displayWidth;
      c.height = frame.displayHeight;
    }
    c.getContext("2d").drawImage(frame, 0, 0, c.width, c.height);
  }

  // `frame` as frames.js decodes it.
  push(frame) {
    if (this.stopped) return;
    const key = frame.frameType === FrameType.VIDEO_KEY;
    if (this.decoder.state !== "closed" && this.decoder.decodeQueueSize >= MAX_DECODE_QUEUE) {
      this.needKey = true;
    }
    if (this.needKey && !key) {
      this.stats.dropped++;
      return;
    }
    if (this.decoder.state === "unconfigured" || (key && this.needKey)) {
      if (this.decoder.state === "closed") this.decoder = this.makeDecoder();
      // Whatever is queued is stale behind this key frame: discard it.
      if (this.decoder.state === "configured") this.decoder.reset();
      const colorSpace = DECODER_COLOR_SPACE[this.colorCodec];
      this.decoder.configure({
        codec: this.codec,
        optimizeForLatency: true,
        ...(colorSpace ? { colorSpace } : {}),
      });
    }
    this.needKey = false;
    this.decoder.decode(
      new EncodedVideoChunk({
        type: key ? "key" : "delta",
        timestamp: Number(frame.timestampUs),
        data: frame.payload,
      }),
    );
  }

  // The stream had a gap (a media reconnection): decode again from the next key frame.
  resync() {
    this.needKey = true;
  }

  // The frames come from another stream now (a transcode, or the source again: docs/protocol.md
  // §2.2), in `codec`, its pictures made from `source` (the source's codec): the decoder is
  // configured for them at that stream's first key frame.
  setCodec(codec, source = codec) {
    this.codec = webCodec(codec);
    this.colorCodec = webCodec(source);
    this.needKey = true;
  }

  stop() {
    this.stopped = true;
    if (this.decoder.state !== "closed") this.decoder.close();
  }
}

// Media frames of one remote audio stream -> decoded AudioData, played through `audioContext`
// when one is given (else only decoded and counted).
export class AudioReceiver {
  constructor(codec, { audioContext = null, numberOfChannels = 1, onDecoded } = {}) {
    this.codec = webCodec(codec);
    this.ctx = audioContext;
    this.onDecoded = onDecoded ?? (() => {});
    this.playAt = 0;
    this.stats = { decoded: 0, dropped: 0, errors: 0 };
    this.decoder = new AudioDecoder({
      output: (data) => {
        try {
          this.play(data);
        } finally {
          data.close();
        }
        this.stats.decoded++;
        this.onDecoded(this.stats.decoded);
      },
      error: () => {
        this.stats.errors++;
      },
    });
    this.decoder.configure({ codec: this.codec, sampleRate: 48000, numberOfChannels });
  }

  play(data) {
    const ctx = this.ctx;
    if (!ctx || ctx.state !== "running") return;
    const buffer = ctx.createBuffer(data.numberOfChannels, data.numberOfFrames, data.sampleRate);
    for (let ch = 0; ch < data.numberOfChannels; ch++) {
      const plane = new Float32Array(data.numberOfFrames);
      data.copyTo(plane, { planeIndex: ch, format: "f32-planar" });
      buffer.copyToChannel(plane, ch);
    }
    const start = Math.max(this.playAt, ctx.currentTime + 0.02);
    if (start - ctx.currentTime > MAX_AUDIO_AHEAD_S) {
      this.stats.dropped++;
      return;
    }
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    source.start(start);
    this.playAt = start + buffer.duration;
  }

  push(frame) {
    if (this.decoder.state !== "configured") return;
    if (this.decoder.decodeQueueSize >= MAX_DECODE_QUEUE) {
      this.stats.dropped++;
      return;
    }
    this.decoder.decode(
      new EncodedAudioChunk({
        type: "key",
        timestamp: Number(frame.timestampUs),
        data: frame.payload,
      }),
    );
  }

  stop() {
    if (this.decoder.state !== "closed") this.decoder.close();
  }
}
