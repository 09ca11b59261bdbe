// The WebTransport session to the Media Handler (docs/protocol.md §7): one bidirectional stream per
// published stream carrying its frames, and the MH's unidirectional streams (one per routed
// stream) read and demultiplexed by the stream id in each frame header.

import { FrameType, HEADER_SIZE, encodeFrame, readFrames } from "./frames.js";

// Limit: bytes of frames written to one publish stream and not yet taken by the transport.
// Policy when over: audio frames are dropped; video delta frames are dropped from then on until
// the next key frame, which the publisher asks its encoder for (onNeedKeyFrame); key frames are
// always queued. Every drop is counted. So a congested uplink costs frames, never delay or memory.
export const MAX_PENDING_BYTES = 512 * 1024;

// The URL a WebTransport constructor accepts: URLs may be written wss://, the services hand
// out https://; both name the same endpoint.
export function webTransportUrl(url) {
  return String(url).replace(/^wss?:\/\//i, "https://");
}

// An open WebTransport session. `certHash` (32 bytes or null) pins the dev stack's self-signed
// certificate (ECDSA P-256, valid at most 14 days: what serverCertificateHashes accepts). Throws
// when the session cannot be established, or is not within `timeoutMs` (then it is closed).
export async function openWebTransport(url, certHash, { timeoutMs = null } = {}) {
  const options = {};
  if (certHash) options.serverCertificateHashes = [{ algorithm: "sha-256", value: certHash }];
  const wt = new WebTransport(webTransportUrl(url), options);
  // Observed before awaiting `ready`, so that a failed session never reports an unhandled
  // rejection; callers read the outcome from `ready` and `closed`.
  wt.closed.catch(() => {});
  if (timeoutMs === null) {
    await wt.ready;
    return wt;
  }
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no session within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    await Promise.race([wt.ready, expired]);
  } catch (e) {
    try {
      wt.close();
    } catch {
      // Never established.
    }
    throw e;
  } finally {
    clearTimeout(timer);
  }
  return wt;
}

// `url` with its host:port replaced as `via` says ({"host:port": "host:port"}), else unchanged.
// A test puts a fault-injecting proxy between the page and a service this way; the certificate
// pin does not name the host, so it still holds.
export function routedUrl(url, via) {
  if (!via) return url;
  const u = new URL(webTransportUrl(url));
  const target = via[u.host];
  if (!target) return url;
  u.host = target;
  return u.toString();
}

// One published stream: frames of `streamId` on its own bidirectional QUIC stream.
export class Publisher {
  constructor(stream, streamId, { onNeedKeyFrame = () => {}, onError = () => {} } = {}) {
    this.writer = stream.writable.getWriter();
    this.streamId = streamId;
    this.onNeedKeyFrame = onNeedKeyFrame;
    this.onError = onError;
    this.sequence = 0;
    this.pendingBytes = 0;
    this.waitForKey = false;
    this.error = null;
    this.stats = { sent: 0, bytes: 0, dropped: 0 };
    this.sealing = Promise.resolve(); // the last frame being sealed (an encrypted meeting)
    // The MH writes nothing back on a publish stream; reading it tells us when it resets it.
    stream.readable.getReader().closed.catch((e) => this.fail(e));
  }

  // Queues one frame. Never waits: see MAX_PENDING_BYTES for what happens under congestion.
  // `seal(header, payload)` (an encrypted meeting) -> promise of the wire frame: frames are
  // written in the order they were sent, each once it is sealed; one that fails is dropped.
  // `audioLevel` (0..127 in -dBov, docs/protocol.md §17.1) goes in the header of an audio frame.
  send(frameType, payload, timestampUs, seal = null, audioLevel = null) {
    if (this.error) return false;
    const key = frameType === FrameType.VIDEO_KEY;
    if (frameType === FrameType.VIDEO_DELTA && this.waitForKey) {
      this.stats.dropped++;
      return false;
    }
    if (!key && this.pendingBytes > MAX_PENDING_BYTES) {
      this.stats.dropped++;
      if (frameType === FrameType.VIDEO_DELTA) {
        this.waitForKey = true;
        this.onNeedKeyFrame();
      }
      return false;
    }
    if (key) this.waitForKey = false;
    const header = {
      frameType,
      streamId: this.streamId,
      timestampUs,
      sequence: this.sequence++,
      audioLevel,
    };
    this.stats.sent++;
    if (!seal) {
      this.write(encodeFrame(header, payload));
      return true;
    }
    // Counted as pending while it is sealed, so that congestion sees it.
    const reserved = HEADER_SIZE + payload.byteLength;
    this.pendingBytes += reserved;
    const sealed = seal(header, payload);
    sealed.catch(() => {}); // handled below, in turn
    this.sealing = this.sealing
      .then(() => sealed)
      .then(
        (bytes) => {
          this.pendingBytes -= reserved;
          if (!this.error) this.write(bytes);
        },
        () => {
          this.pendingBytes -= reserved;
          this.stats.sent--;
          this.stats.dropped++;
        },
      );
    return true;
  }

  write(bytes) {
    this.pendingBytes += bytes.byteLength;
    this.stats.bytes += bytes.byteLength;
    this.writer.write(bytes).then(
      () => {
        this.pendingBytes -= bytes.byteLength;
      },
      (e) => this.fail(e),
    );
  }

  fail(error) {
    if (this.error) return;
    this.error = error ?? new Error("publish stream closed");
    this.onError(this.error);
  }

  close() {
    if (!this.error) this.error = new Error("closed");
    this.writer.close().catch(() => {});
  }
}

// The media session. `onFrame(frame)` receives every frame of every subscribed stream (frames.js
// form); the caller demultiplexes by `frame.streamId`. Owns the session and one reader per
// incoming stream; close() ends them all.
export class MediaConnection {
  constructor(wt, { onFrame, onStreamError = () => {} }) {
    this.wt = wt;
    this.onFrame = onFrame;
    this.onStreamError = onStreamError;
    this.publishers = new Map();
    this.stats = { streams: 0, frames: 0, streamErrors: 0 };
    this.closed = wt.closed;
    this.receiving = this.acceptStreams();
  }

  // Opens the session at `url` with the connection token as `?token=` (docs/protocol.md §5.1).
  static async open(url, token, certHash, handlers, { timeoutMs = null } = {}) {
    const u = new URL(webTransportUrl(url));
    u.searchParams.set("token", token);
    const wt = await openWebTransport(u.toString(), certHash, { timeoutMs });
    return new MediaConnection(wt, handlers);
  }

  async acceptStreams() {
    const reader = this.wt.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        this.stats.streams++;
        this.readStream(value);
      }
    } catch {
      // The session ended; `closed` tells how.
    }
  }

  async readStream(readable) {
    try {
      for await (const frame of readFrames(readable)) {
        this.stats.frames++;
        this.onFrame(frame);
      }
    } catch (e) {
      // A malformed or reset stream ends only itself.
      this.stats.streamErrors++;
      this.onStreamError(e);
    }
  }

  // A Publisher for `streamId` (announced with PublishStream and acknowledged first: the MH
  // refuses frames of a stream it does not know).
  async publish(streamId, handlers) {
    const stream = await this.wt.createBidirectionalStream();
    const publisher = new Publisher(stream, streamId, handlers);
    this.publishers.set(streamId, publisher);
    return publisher;
  }

  close(closeCode = 0, reason = "") {
    for (const p of this.publishers.values()) p.close();
    try {
      this.wt.close({ closeCode, reason });
    } catch {
      // Already closed.
    }
  }
}
