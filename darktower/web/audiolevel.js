// The level of the page's own audio, frame by frame (docs/protocol.md §17.1): measured on the
// PCM before it is encoded, as in RFC 6464 (the RMS of the samples in dB below the overload
// point, a full-scale square wave, 0 the loudest and 127 silence). The MH picks the dominant
// speaker from it (§17.4); it travels in header byte 40 of each audio frame, outside the
// encrypted payload.

import { SILENCE_DBOV } from "./frames.js";

// Limit: measured buffers waiting for the encoded chunk that covers them. Policy when over: the
// oldest is forgotten (an encoder that fell this far behind drops input anyway).
const MAX_PENDING = 64;

// -dBov of a mean square `meanSquare` of samples in -1..1: 0..127, rounded.
export function levelOf(meanSquare) {
  if (!(meanSquare > 0)) return SILENCE_DBOV;
  const dbov = 10 * Math.log10(meanSquare);
  return Math.min(SILENCE_DBOV, Math.max(0, Math.round(-dbov)));
}

// The mean square of an AudioData's samples, over every channel.
export function meanSquareOf(data) {
  const frames = data.numberOfFrames;
  if (!frames) return 0;
  const plane = new Float32Array(frames);
  let sum = 0;
  for (let ch = 0; ch < data.numberOfChannels; ch++) {
    data.copyTo(plane, { planeIndex: ch, format: "f32-planar" });
    for (let i = 0; i < frames; i++) sum += plane[i] * plane[i];
  }
  return sum / (frames * data.numberOfChannels);
}

// Buffers measured as they go into the encoder (add), chunks' levels as they come out (take): a
// chunk's level is that of the buffers from its start to before its end (its timestamp plus its
// duration), in the encoder's timestamps, so a 20 ms Opus frame gets the level of the two 10 ms
// buffers it was made of.
export class AudioLevelMeter {
  constructor() {
    this.pending = []; // [{timestamp (µs), sum (of squares), count}]
  }

  add(data) {
    const count = data.numberOfFrames * data.numberOfChannels;
    this.pending.push({ timestamp: data.timestamp, sum: meanSquareOf(data) * count, count });
    if (this.pending.length > MAX_PENDING) this.pending.shift();
  }

  // The level (0..127) of the chunk at `timestamp` lasting `durationUs` (0 or null: up to its
  // start only); 127 when nothing was measured for it.
  take(timestamp, durationUs) {
    const end = timestamp + (durationUs || 0);
    let sum = 0;
    let count = 0;
    while (this.pending.length && this.pending[0].timestamp < end) {
      const item = this.pending.shift();
      sum += item.sum;
      count += item.count;
    }
    if (count === 0 && this.pending.length && this.pending[0].timestamp === timestamp) {
      const item = this.pending.shift();
      sum += item.sum;
      count += item.count;
    }
    return count ? levelOf(sum / count) : SILENCE_DBOV;
  }
}
