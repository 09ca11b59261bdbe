// The media side of a meeting session across media reconnections (docs/protocol.md §13): the
// current MediaConnection and the local streams published on it. connect() opens a media session
// with a connection token and opens each published stream on it again; the encoders keep running
// and their frames go to whichever publish stream is current (none while reconnecting: send()
// then drops them and counts them in `stats.dropped`).
//
// `onFrame(frame)` gets the frames of every subscribed stream; `onClosed(closeInfo, error)` is
// called when the current media session ends by itself (not when close() or a newer connect()
// replaced it).

import { MediaConnection, routedUrl } from "./media.js";

export class MediaLink {
  constructor({ certHash = null, via = null, timeoutMs = null, onFrame, onClosed }) {
    this.certHash = certHash;
    this.via = via;
    this.timeoutMs = timeoutMs;
    this.onFrame = onFrame;
    this.onClosed = onClosed;
    this.connection = null;
    this.url = null; // the current session's media handler URL, as the MC named it
    this.generation = 0; // each connect() and close() starts a new one; older ones give up
    this.local = new Map(); // stream id -> {handlers, publisher}
    this.stats = { connects: 0, dropped: 0 };
    // In an end-to-end encrypted meeting: (header, payload) -> promise of the encrypted wire
    // frame (encryption.js), applied to every frame sent; null: frames go in clear.
    this.seal = null;
  }

  get connected() {
    return this.connection !== null;
  }

  // Whether the current session is at the media handler `url` names.
  connectedTo(url) {
    return this.connection !== null && this.url === url;
  }

  // Opens a media session at `server` ({mediaHandlerUrl, connectionToken}) and publishes every
  // local stream on it, each asked for a key frame; then it replaces the current session, which
  // is closed. The old one is kept until then: the MH replaces a participant's media session
  // by a newer one quietly, while a session the page closes first counts as lost media (the MC
  // would answer with another MediaReconnect). Throws when the session or a publish stream
  // cannot be opened, or when a newer connect() or close() came first.
  async connect(server) {
    if (!server?.mediaHandlerUrl) throw new Error("the meeting controller named no media server");
    const generation = ++this.generation;
    const connection = await MediaConnection.open(
      routedUrl(server.mediaHandlerUrl, this.via),
      server.connectionToken,
      this.certHash,
      { onFrame: (frame) => this.onFrame(frame) },
      { timeoutMs: this.timeoutMs },
    );
    const publishers = new Map();
    try {
      for (const [streamId, entry] of this.local) {
        if (generation !== this.generation) break;
        publishers.set(streamId, await this.openPublisher(connection, streamId, entry));
      }
      if (generation !== this.generation) throw new Error("media reconnection superseded");
    } catch (e) {
      connection.close();
      throw e;
    }
    const old = this.connection;
    this.connection = connection;
    this.url = server.mediaHandlerUrl;
    for (const [streamId, entry] of this.local) entry.publisher = publishers.get(streamId) ?? null;
    old?.close();
    for (const entry of this.local.values()) {
      entry.handlers.onReconnected?.();
      entry.handlers.onNeedKeyFrame?.();
    }
    this.stats.connects++;
    connection.closed.then(
      (info) => this.lost(generation, info, null),
      (e) => this.lost(generation, null, e),
    );
  }

  lost(generation, closeInfo, error) {
    if (generation !== this.generation) return;
    this.drop();
    this.onClosed(closeInfo, error);
  }

  // Publishes `streamId` (announced with PublishStream and acknowledged first: the MH refuses
  // frames of a stream it does not know) on the current session and on every later one.
  // `handlers`: onNeedKeyFrame(), onError(error) as for a Publisher; onReconnected() when a
  // later connect() opened it on a new media session.
  async publish(streamId, handlers) {
    const entry = { handlers, publisher: null };
    this.local.set(streamId, entry);
    const connection = this.connection;
    if (!connection) return;
    const publisher = await this.openPublisher(connection, streamId, entry);
    if (this.connection === connection) entry.publisher = publisher;
    else publisher.close();
  }

  // A Publisher on `connection` whose errors reach `entry.handlers` only while it is the
  // stream's current one (a stream of a replaced session fails with it, and that is no news).
  async openPublisher(connection, streamId, entry) {
    const publisher = await connection.publish(streamId, {
      onNeedKeyFrame: () => entry.handlers.onNeedKeyFrame?.(),
      onError: (e) => {
        if (entry.publisher === publisher && this.connection === connection) {
          entry.handlers.onError?.(e);
        }
      },
    });
    return publisher;
  }

  // `streamId` is published no more: its publish stream is closed and not opened again.
  unpublish(streamId) {
    const entry = this.local.get(streamId);
    this.local.delete(streamId);
    entry?.publisher?.close();
  }

  // One frame of a local stream to the MH; false when it was not queued (no session, or the
  // Publisher's congestion policy dropped it). `audioLevel`: see Publisher.send.
  send(streamId, frameType, payload, timestampUs, audioLevel = null) {
    const publisher = this.local.get(streamId)?.publisher;
    if (!publisher) {
      this.stats.dropped++;
      return false;
    }
    return publisher.send(frameType, payload, timestampUs, this.seal, audioLevel);
  }

  // Closes the current session (if any); the published streams wait for the next connect().
  drop() {
    const connection = this.connection;
    this.connection = null;
    this.url = null;
    for (const entry of this.local.values()) entry.publisher = null;
    connection?.close();
  }

  // Closes everything; nothing is opened again.
  close() {
    this.generation++;
    this.drop();
    this.local.clear();
  }
}
