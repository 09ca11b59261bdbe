// Adaptive media on the page (docs/protocol.md §17): what it measures of each stream it receives,
// the MH's StreamQualityUpdates (for a stream it publishes: feedback to its encoders,
// localmedia.js; for one it receives: the layer, paused, the estimate), the page's own sparse
// reports, the stats overlay of each tile, the active speakers and pinned videos.
//
// stats.layers: subscribed stream id -> {participantId, kind ("video" | "audio"), layerId (the
// simulcast layer whose frames arrive, "" for a plain stream), width, height (that layer's, 0
// if not simulcast), frames, keyFrames, bytes, lost (sequence gaps), switches (layer changes
// seen), bitrate (bits/s received over the last second), loss (0..1, since the last report),
// server: {layerId, paused, availableBitrate, rttMs, packetLoss} of the MH's last update, or
// null}.
//
// The page's reports (a StreamQualityUpdate on a stream it receives) carry the loss it saw
// (sequence gaps since the previous report) and the round trip of its media session. Their
// available_bitrate stays 0: the MC makes a subscriber's available_bitrate the cap of its route
// (docs/protocol.md §17.2), and what arrives now (one layer) is not what the path can take, so
// reporting it would keep the subscriber on the layer it has. Sparse (the MC's signaling
// budget, docs/protocol.md §3.1): each stream at most once in REPORT_INTERVAL_MS, and the page
// at most one report per REPORT_TICK_MS whatever the room's size.

import { FrameType } from "./frames.js";

export const REPORT_INTERVAL_MS = 5000;
export const REPORT_TICK_MS = 1000;
// A sequence number further ahead than this is a new start (a media reconnection), not a loss.
const MAX_GAP = 1000n;
const HEADER_BYTES = 46;
// Limit: participant ids kept of an ActiveSpeakers (the MH sends the recent ones, a few). Policy
// when over: the rest are ignored (only the first, the dominant speaker, is shown).
const MAX_SPEAKERS = 32;

export class Adaptive {
  // The adaptive media of `session` (session.js): its stats, roster (roster.js), local media
  // (localmedia.js), view (tileStats(participantId, text), if it has it, and update(session)),
  // signaling (the reports, once joined) and media session (its RTT). The report timer runs
  // from here until stop().
  constructor(session) {
    this.session = session;
    this.stats = session.stats;
    this.stats.layers = {};
    this.stats.reports = { sent: 0, failed: 0 };
    this.roster = session.roster;
    this.local = session.local;
    this.view = session.view;
    this.speakers = []; // ActiveSpeakers: the dominant speaker first
    this.pinned = new Set(); // participant ids whose video the person pinned
    this.rttMs = 0; // the media session's smoothed RTT, when the browser tells it
    // stream id -> {lastId, lastSeq (of the last frame), bytes (this tick), lost, frames (since
    // the last report), reportedAt, tickAt}
    this.counters = new Map();
    this.timer = null;
    this.start();
  }

  start() {
    if (this.timer === null) this.timer = setInterval(() => this.tick(), REPORT_TICK_MS);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  // The stats and counters of the subscription `record` (roster.js), made on first use.
  entry(record) {
    const id = record.streamId;
    const s = (this.stats.layers[id] ??= {
      participantId: record.participantId,
      kind: record.kind,
      layerId: "",
      width: 0,
      height: 0,
      frames: 0,
      keyFrames: 0,
      bytes: 0,
      lost: 0,
      switches: 0,
      bitrate: 0,
      loss: 0,
      server: null,
    });
    let c = this.counters.get(id);
    if (!c) {
      c = { lastId: null, lastSeq: 0n, bytes: 0, lost: 0, frames: 0, reportedAt: 0, tickAt: 0 };
      this.counters.set(id, c);
    }
    return [s, c];
  }

  // Every frame received, before it is decrypted (the header is in clear).
  onFrame(frame) {
    const record = this.roster.remote.get(frame.streamId);
    if (!record || (record.kind !== "video" && record.kind !== "audio")) return;
    const [s, c] = this.entry(record);
    const bytes = HEADER_BYTES + frame.payload.byteLength;
    s.frames++;
    s.bytes += bytes;
    c.bytes += bytes;
    c.frames++;
    if (frame.frameType === FrameType.VIDEO_KEY) s.keyFrames++;
    if (c.lastId === frame.streamId) {
      const gap = frame.sequence - c.lastSeq - 1n;
      if (gap > 0n && gap < MAX_GAP) {
        s.lost += Number(gap);
        c.lost += Number(gap);
      }
    } else if (c.lastId !== null) {
      s.switches++; // another layer (or a derived stream): its own sequence numbers
    }
    c.lastId = frame.streamId;
    c.lastSeq = frame.sequence;
    const layer = record.layers?.find((l) => l.layerId === frame.streamId);
    s.layerId = layer ? layer.layerId : "";
    s.width = layer?.width ?? 0;
    s.height = layer?.height ?? 0;
  }

  // A signaling event adaptive media handles; false for any other.
  onEvent(kind, body) {
    if (kind === "quality") this.onQuality(body);
    else if (kind === "activeSpeakers") this.onSpeakers(body);
    else return false;
    return true;
  }

  onQuality(update) {
    if (this.local.publishes(update.streamId)) {
      this.local.onQuality(update);
      return;
    }
    const record = this.roster.remote.get(update.streamId);
    if (!record || record.streamId !== update.streamId) return;
    if (record.kind !== "video" && record.kind !== "audio") return;
    const [s] = this.entry(record);
    s.server = {
      layerId: update.layerId ?? "",
      paused: Boolean(update.paused),
      availableBitrate: update.availableBitrate ?? 0,
      rttMs: update.rttMs ?? 0,
      packetLoss: update.packetLoss ?? 0,
    };
    this.show(record.participantId);
  }

  onSpeakers(body) {
    this.speakers = (body.participantIds ?? []).slice(0, MAX_SPEAKERS);
    this.view.update(this.session);
  }

  // Pins (or unpins) the video of `participantId` (docs/protocol.md §17.2): SubscribeStream
  // again with SubscriptionOptions.pinned, so that LastN never holds it back. Resolves once the
  // MC acknowledged each of its video streams.
  async pin(participantId, pinned = true) {
    const p = this.roster.participants.get(participantId);
    if (!p) throw new Error(`no participant ${participantId}`);
    if (pinned) this.pinned.add(participantId);
    else this.pinned.delete(participantId);
    this.view.update(this.session);
    for (const streamId of p.streams) {
      if (this.roster.remote.get(streamId)?.kind !== "video") continue;
      const reply = await this.session.signaling.request("subscribe", {
        streamId,
        options: { pinned },
      });
      this.roster.updated(streamId, reply.ack?.derived);
    }
  }

  // A SubscribeStream `body` of the roster's (a new stream, a rejoin's subscriptions): pinned
  // when it is the video of a pinned participant.
  pinning(body) {
    const record = this.roster.remote.get(body.streamId);
    if (record?.kind !== "video" || !this.pinned.has(record.participantId)) return body;
    return { ...body, options: { ...body.options, pinned: true } };
  }

  // Once a REPORT_TICK_MS: bitrates, the overlay, the RTT, and at most one report.
  tick() {
    const now = performance.now();
    for (const [id, c] of this.counters) {
      const s = this.stats.layers[id];
      const record = this.roster.remote.get(id);
      if (!s || !record || record.streamId !== id) {
        this.counters.delete(id);
        delete this.stats.layers[id];
        continue;
      }
      const elapsed = c.tickAt ? now - c.tickAt : REPORT_TICK_MS;
      s.bitrate = Math.round((c.bytes * 8 * 1000) / Math.max(elapsed, 1));
      c.tickAt = now;
      c.bytes = 0;
    }
    for (const participantId of this.roster.participants.keys()) this.show(participantId);
    this.showOwn();
    this.measureRtt();
    this.sendReport(now);
  }

  measureRtt() {
    const wt = this.session.media.connection?.wt;
    if (!wt?.getStats) return;
    wt.getStats().then(
      (s) => {
        if (s?.smoothedRtt > 0) this.rttMs = Math.round(s.smoothedRtt);
      },
      () => {},
    );
  }

  // The stream not reported for longest, if that is REPORT_INTERVAL_MS ago and it received
  // frames since.
  sendReport(now) {
    if (this.session.state !== "joined" || !this.session.signaling) return;
    let due = null;
    for (const [id, c] of this.counters) {
      if (c.frames === 0 || now - c.reportedAt < REPORT_INTERVAL_MS) continue;
      if (due === null || c.reportedAt < due[1].reportedAt) due = [id, c];
    }
    if (due === null) return;
    const [streamId, c] = due;
    const loss = c.lost / (c.lost + c.frames);
    this.stats.layers[streamId].loss = loss;
    c.reportedAt = now;
    c.lost = 0;
    c.frames = 0;
    const body = { streamId, packetLoss: loss, rttMs: this.rttMs };
    this.session.signaling.request("quality", body).then(
      () => {
        this.stats.reports.sent++;
      },
      () => {
        this.stats.reports.failed++;
      },
    );
  }

  // The own tile's overlay: each published layer's height and bitrate, or "paused".
  showOwn() {
    const layers = Object.values(this.stats.publishedLayers ?? {}).filter((l) => l.height);
    if (!this.view.tileStats || !this.session.participantId || layers.length === 0) return;
    const text = layers
      .map((l) => `${l.height}p ${l.paused ? "paused" : `${Math.round(l.bitrate / 1000)}k`}`)
      .join(" · ");
    this.view.tileStats(this.session.participantId, text);
  }

  // The stats overlay of a participant's tile: its video's layer, bitrate, RTT and loss.
  show(participantId) {
    if (!this.view.tileStats) return;
    const video = Object.values(this.stats.layers).find(
      (s) => s.participantId === participantId && s.kind === "video",
    );
    if (!video) return;
    const server = video.server;
    const parts = [];
    if (server?.paused) parts.push("paused");
    if (video.width) parts.push(`${video.width}×${video.height}`);
    parts.push(`${Math.round(video.bitrate / 1000)} kbit/s`);
    const rtt = server?.rttMs || this.rttMs;
    if (rtt) parts.push(`RTT ${rtt} ms`);
    const loss = server?.packetLoss || video.loss;
    parts.push(`loss ${(loss * 100).toFixed(1)} %`);
    this.view.tileStats(participantId, parts.join(" · "));
  }
}
