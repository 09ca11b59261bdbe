// The 46-byte media frame header (docs/protocol.md §7) and an incremental frame reader.
//
//   offset size field
//        0    1 version            (1)
//        1    1 frame type         (0 audio, 1 video key, 2 video delta)
//        2   16 stream id          (UUID bytes)
//       18    8 timestamp          (microseconds since the epoch)
//       26    8 sequence number
//       34    4 payload length
//       38    2 flags              (bit 0 end of frame, bit 1 discardable, bits 2-15 reserved)
//       40    1 audio level        (bit 7: present, bits 0-6: -dBov; docs/protocol.md §17.1)
//       41    5 reserved
//       46      payload
//
// All integers big-endian; reserved bits and bytes are zero on send and ignored on receive.
// A decoded frame is {version, frameType, streamId (UUID string), timestampUs (BigInt),
// sequence (BigInt), flags, audioLevel (0..127, or null when not given), payload (Uint8Array),
// headerBytes (the 46 bytes as received: an encrypted frame's associated data,
// docs/protocol.md §16)}; encodeFrame takes Numbers or BigInts.

import { ByteQueue, bytesToUuid, readChunks, uuidToBytes } from "./bytes.js";

export const VERSION = 1;
export const HEADER_SIZE = 46;
export const FrameType = Object.freeze({ AUDIO: 0, VIDEO_KEY: 1, VIDEO_DELTA: 2 });
export const FrameFlags = Object.freeze({ END_OF_FRAME: 0x0001, DISCARDABLE: 0x0002 });
const FLAGS_MASK = FrameFlags.END_OF_FRAME | FrameFlags.DISCARDABLE;
const MAX_FRAME_TYPE = FrameType.VIDEO_DELTA;
// Header byte 40 (docs/protocol.md §17.1): bit 7 says a level is given, bits 0-6 are the level
// in -dBov, 0 the loudest and 127 silence.
const AUDIO_LEVEL_OFFSET = 40;
const AUDIO_LEVEL_PRESENT = 0x80;
export const SILENCE_DBOV = 127;

// Limit: the largest payload the reader accepts, as the server's decoder (4 MiB, far above any
// real key frame). Policy when exceeded: the reader throws from the header, before buffering
// any of the payload, and the caller abandons the stream.
export const DEFAULT_MAX_PAYLOAD = 4 * 1024 * 1024;

export class FrameError extends Error {
  constructor(message, reason) {
    super(message);
    this.name = "FrameError";
    this.reason = reason;
  }
}

// The 46 header bytes for `header` = {frameType, streamId (UUID string or 16 bytes),
// timestampUs, sequence, payloadLength, flags = END_OF_FRAME, version = 1, audioLevel (0..127
// in -dBov, or null/undefined: none)}.
export function encodeHeader(header) {
  const out = new Uint8Array(HEADER_SIZE);
  const view = new DataView(out.buffer);
  const flags = header.flags ?? FrameFlags.END_OF_FRAME;
  if (flags & ~FLAGS_MASK) throw new RangeError(`reserved flag bits set: ${flags}`);
  const id = typeof header.streamId === "string" ? uuidToBytes(header.streamId) : header.streamId;
  if (id.byteLength !== 16) throw new RangeError("a stream id is 16 bytes");
  view.setUint8(0, header.version ?? VERSION);
  view.setUint8(1, header.frameType);
  out.set(id, 2);
  view.setBigUint64(18, BigInt(header.timestampUs));
  view.setBigUint64(26, BigInt(header.sequence));
  view.setUint32(34, header.payloadLength);
  view.setUint16(38, flags);
  const level = header.audioLevel;
  if (level !== null && level !== undefined) {
    if (!Number.isInteger(level) || level < 0 || level > SILENCE_DBOV) {
      throw new RangeError(`an audio level is 0..127, not ${level}`);
    }
    view.setUint8(AUDIO_LEVEL_OFFSET, AUDIO_LEVEL_PRESENT | level);
  }
  return out;
}

// One whole frame: the header (its payload length taken from `payload`) followed by `payload`.
export function encodeFrame(header, payload) {
  const out = new Uint8Array(HEADER_SIZE + payload.byteLength);
  out.set(encodeHeader({ ...header, payloadLength: payload.byteLength }), 0);
  out.set(payload, HEADER_SIZE);
  return out;
}

// The header fields of the first 46 bytes of `bytes`, checked as the server checks them
// (version 1, a known frame type, payload length within `maxPayload`).
export function decodeHeader(bytes, maxPayload = DEFAULT_MAX_PAYLOAD) {
  if (bytes.byteLength < HEADER_SIZE) {
    throw new FrameError(`a frame header is ${HEADER_SIZE} bytes`, "truncated");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  const version = view.getUint8(0);
  if (version !== VERSION) {
    throw new FrameError(`unsupported media frame version ${version}`, "version");
  }
  const frameType = view.getUint8(1);
  if (frameType > MAX_FRAME_TYPE) {
    throw new FrameError(`unknown media frame type ${frameType}`, "frame_type");
  }
  const payloadLength = view.getUint32(34);
  const level = view.getUint8(AUDIO_LEVEL_OFFSET);
  if (payloadLength > maxPayload) {
    throw new FrameError(`payload of ${payloadLength} bytes over ${maxPayload}`, "too_large");
  }
  return {
    version,
    frameType,
    streamId: bytesToUuid(bytes.subarray(2, 18)),
    timestampUs: view.getBigUint64(18),
    sequence: view.getBigUint64(26),
    payloadLength,
    flags: view.getUint16(38) & FLAGS_MASK,
    audioLevel: level & AUDIO_LEVEL_PRESENT ? level & SILENCE_DBOV : null,
  };
}

// Exactly one whole frame from `bytes` (header + payload).
export function decodeFrame(bytes, maxPayload = DEFAULT_MAX_PAYLOAD) {
  const header = decodeHeader(bytes, maxPayload);
  if (bytes.byteLength !== HEADER_SIZE + header.payloadLength) {
    throw new FrameError("frame length does not match its header", "truncated");
  }
  return {
    ...header,
    payload: bytes.subarray(HEADER_SIZE),
    headerBytes: bytes.subarray(0, HEADER_SIZE),
  };
}

// Incremental frame decoder: push chunks of any size, pull frames. Holds at most one unfinished
// frame (≤ 46 + maxPayload bytes); a larger announced payload throws from the header.
export class FrameDecoder {
  constructor(maxPayload = DEFAULT_MAX_PAYLOAD) {
    this.maxPayload = maxPayload;
    this.queue = new ByteQueue();
    this.header = null; // the header of the frame whose payload is awaited
  }

  push(chunk) {
    this.queue.push(chunk);
  }

  next() {
    if (this.header === null) {
      if (this.queue.length < HEADER_SIZE) return undefined;
      const headerBytes = this.queue.take(HEADER_SIZE);
      this.header = { ...decodeHeader(headerBytes, this.maxPayload), headerBytes };
    }
    if (this.queue.length < this.header.payloadLength) return undefined;
    // A payload within one chunk is a view of it; the chunk is never written again.
    const frame = { ...this.header, payload: this.queue.take(this.header.payloadLength) };
    this.header = null;
    return frame;
  }

  end() {
    if (this.header !== null || this.queue.length) {
      throw new FrameError("stream ended inside a frame", "truncated");
    }
  }
}

// Yields the frames read from a ReadableStream of bytes (a WebTransport receive stream), in
// order; throws FrameError on malformed input. Stopping the iteration cancels the stream.
export async function* readFrames(readable, maxPayload = DEFAULT_MAX_PAYLOAD) {
  const decoder = new FrameDecoder(maxPayload);
  for await (const chunk of readChunks(readable)) {
    decoder.push(chunk);
    for (let f = decoder.next(); f !== undefined; f = decoder.next()) yield f;
  }
  decoder.end();
}
