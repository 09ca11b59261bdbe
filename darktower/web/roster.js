// The other participants of a meeting session as the page shows them: a tile each, a decoder per
// subscribed stream (frames are demultiplexed here by stream id), and whether each is
// reconnecting (ParticipantUpdated, docs/protocol.md §13).
//
// Derived streams (docs/protocol.md §2.2): a subscription the MC answers with `Ack.derived` gets
// its frames from that stream (a transcode: decoded into the source's tile with the derived
// codec; the audio mix: played by one receiver per mix stream id, shared by every subscription
// it carries), moved by SubscriptionUpdated; while a derived stream carries it, frames of the
// source are not decoded (they would feed another encoder's frames to the same decoder). With
// `mixAudio` the page takes the mix asked for with SubscribeStream{mix_audio} and subscribes to
// no participant's audio (the mix carries it).
//
// The meeting product (docs/protocol.md §18.1): each participant's publication state and host
// flag (the join catch-up's Participant, then ParticipantUpdated); a VIDEO_SCREEN stream gets
// a tile of its own (view.addScreenTile), its frames counted in stats.decodedScreen.

import { AudioReceiver, VideoReceiver } from "./codecs.js";
import { publicationOf } from "./presence.js";
import { ConnectionState, StreamType } from "./proto.js";

// Limit: frames of stream ids no subscription has, held for the derived stream of an Ack still
// on its way (the MH may route a transcode's or the mix's first frames before the MC's Ack
// reaches the page; a transcode's first key frame lost so would stall its picture until the
// next one, seconds later). Policy: the oldest go first beyond MAX_UNCLAIMED_FRAMES or
// MAX_UNCLAIMED_BYTES, and any older than UNCLAIMED_MAX_AGE_MS; every such frame counts in
// stats.unknownFrames unless a subscription claims it.
const MAX_UNCLAIMED_FRAMES = 64;
const MAX_UNCLAIMED_BYTES = 1024 * 1024;
const UNCLAIMED_MAX_AGE_MS = 1000;

export class Roster {
  // `subscribe(body)` -> promise of the reply (SubscribeStream); `onChange()` after a participant
  // came, went or changed state; `onLeft(participantId)` when one is removed; `stats` is the
  // session's (decodedFrames, decodedAudio, decodedMix, unknownFrames are counted in it).
  constructor(view, { stats, audioContext = null, subscribe, onChange, onLeft }) {
    this.view = view;
    this.stats = stats;
    this.audioContext = audioContext;
    this.subscribe = subscribe;
    this.onChange = onChange;
    this.onLeft = onLeft;
    this.selfId = null; // the session's own participant id: never in the roster
    this.kickable = false; // tiles get a Remove button (the session is a host's)
    // participant id -> {name, streams: Set of stream ids, tile, reconnecting}
    this.participants = new Map();
    // stream, simulcast layer or derived stream id -> a subscription's record {participantId,
    // kind, receiver, streamId, ids, codec, derived, frames, layers (SimulcastLayer)} or a
    // mix's {kind: "mix", receiver, users}
    this.remote = new Map();
    this.mixAudio = false; // the page takes the audio mix instead of each participant's audio
    // The subscription made with SubscribeStream{mix_audio}: a record without a receiver.
    this.mixSubscription = null;
    this.unclaimed = { frames: [], bytes: 0 }; // see MAX_UNCLAIMED_FRAMES
  }

  add(p) {
    if (p.participantId === this.selfId || this.participants.has(p.participantId)) return;
    const tile = this.view.addTile(p.participantId, p.name || "Guest", {
      self: false,
      kickable: this.kickable,
    });
    this.participants.set(p.participantId, {
      name: p.name,
      streams: new Set(),
      tile,
      reconnecting: p.connection === ConnectionState.RECONNECTING,
      host: Boolean(p.host),
      publication: publicationOf(p.publication),
    });
    this.stats.decodedFrames[p.participantId] ??= 0;
    for (const stream of p.streams) this.addStream(p.participantId, stream);
    this.onChange();
  }

  remove(participantId) {
    this.onLeft(participantId);
    const p = this.participants.get(participantId);
    if (!p) return;
    for (const streamId of p.streams) this.removeStream(streamId);
    this.participants.delete(participantId);
    this.view.removeTile(participantId);
    this.onChange();
  }

  addStream(participantId, stream) {
    const p = this.participants.get(participantId);
    if (!p || this.remote.has(stream.streamId)) return;
    if (this.mixAudio && stream.streamType === StreamType.AUDIO) return; // the mix carries it
    const codec = stream.metadata?.codec || (stream.streamType === StreamType.AUDIO ? "Opus" : "VP8");
    let record;
    try {
      if (stream.streamType === StreamType.AUDIO) {
        record = {
          participantId,
          kind: "audio",
          receiver: new AudioReceiver(codec, {
            audioContext: this.audioContext,
            onDecoded: () => {
              this.stats.decodedAudio[participantId] =
                (this.stats.decodedAudio[participantId] ?? 0) + 1;
            },
          }),
        };
      } else if (stream.streamType === StreamType.VIDEO_SCREEN) {
        const screen = this.view.addScreenTile(participantId, stream.streamId, p.name || "Guest");
        const counts = (this.stats.decodedScreen ??= {});
        record = {
          participantId,
          kind: "video",
          screen: true,
          receiver: new VideoReceiver(codec, screen.canvas, {
            onDecoded: () => {
              counts[participantId] = (counts[participantId] ?? 0) + 1;
            },
          }),
        };
      } else {
        record = {
          participantId,
          kind: "video",
          receiver: new VideoReceiver(codec, p.tile.canvas, {
            onDecoded: () => {
              this.stats.decodedFrames[participantId] =
                (this.stats.decodedFrames[participantId] ?? 0) + 1;
            },
          }),
        };
      }
    } catch (e) {
      this.view.notice(`Cannot play ${p.name}'s stream: ${e.message}`);
      return;
    }
    // Each simulcast layer's frames carry the layer's UUID (docs/protocol.md §7): all land here.
    const layers = stream.metadata?.video?.simulcastLayers ?? [];
    const ids = [stream.streamId, ...layers.map((l) => l.layerId)];
    for (const id of ids) this.remote.set(id, record);
    Object.assign(record, { streamId: stream.streamId, ids, codec, derived: null, layers });
    record.frames = { source: 0, derived: 0, other: 0 };
    p.streams.add(stream.streamId);
    this.subscribe({ streamId: stream.streamId }).then(
      (reply) => {
        if (this.remote.get(stream.streamId) === record) this.derive(record, reply.ack?.derived);
      },
      (e) => this.view.notice(`Could not subscribe to ${p.name}: ${e.message}`),
    );
  }

  removeStream(streamId) {
    const record = this.remote.get(streamId);
    if (!record || record.kind === "mix") return;
    this.underive(record);
    record.receiver.stop();
    if (record.screen) this.view.removeScreenTile(streamId);
    for (const id of record.ids) this.remote.delete(id);
    this.participants.get(record.participantId)?.streams.delete(streamId);
  }

  // The participant whose stream (or simulcast layer) `streamId` is, or undefined.
  publisherOf(streamId) {
    const record = this.remote.get(streamId);
    return record?.kind === "audio" || record?.kind === "video" ? record.participantId : undefined;
  }

  push(frame) {
    const record = this.remote.get(frame.streamId);
    if (!record) {
      this.hold(frame);
      return;
    }
    if (record.kind !== "mix") {
      // A subscription decodes the stream that carries it now, and nothing else.
      const from = record.derived ? record.derived.streamId : null;
      if (frame.streamId === from) record.frames.derived++;
      else if (from === null) record.frames.source++;
      else {
        record.frames.other++;
        return;
      }
    }
    record.receiver.push(frame);
  }

  // --- derived streams (docs/protocol.md §2.2) --------------------------------------------------

  // SubscribeStream{mix_audio} when the page takes the mix (at the join, and again after a
  // rejoin: a new MC). The Ack names the mix.
  subscribeMix() {
    if (!this.mixAudio) return;
    if (this.mixSubscription) this.underive(this.mixSubscription);
    const record = { kind: "mixSubscription", streamId: "", derived: null };
    this.mixSubscription = record;
    this.subscribe({ mixAudio: true }).then(
      (reply) => {
        if (this.mixSubscription === record) this.derive(record, reply.ack?.derived);
      },
      (e) => this.view.notice(`Could not subscribe to the audio mix: ${e.message}`),
    );
  }

  // SubscriptionUpdated: the stream that carries the subscription of `streamId` (empty: the mix
  // asked for) is `derived` now (unset: the source itself).
  updated(streamId, derived) {
    const record = streamId ? this.remote.get(streamId) : this.mixSubscription;
    if (!record || record.kind === "mix" || record.streamId !== (streamId ?? "")) return;
    this.derive(record, derived);
  }

  // `record`'s frames come from `derived` (Ack.derived, SubscriptionUpdated.derived) now; unset
  // or without a stream id: from its source.
  derive(record, derived) {
    const id = derived?.streamId ? String(derived.streamId).toLowerCase() : null;
    const mix = Boolean(derived?.mix) || record.kind === "mixSubscription";
    const { codec = "", bitrate = 0 } = derived ?? {};
    const now = id ? { streamId: id, codec, bitrate, mix } : null;
    const was = record.derived;
    if (was?.streamId === now?.streamId && was?.codec === now?.codec && was?.mix === now?.mix) {
      return;
    }
    this.underive(record);
    record.derived = now;
    if (now?.mix) this.useMix(record, id);
    else if (now) this.remote.set(id, record);
    if (record.kind === "video") {
      try {
        record.receiver.setCodec(now?.codec || record.codec, record.codec);
      } catch (e) {
        this.view.notice(`Cannot play a stream: ${e.message}`);
      }
    }
    if (id) this.claim(id);
  }

  // A frame of a stream id no subscription has: held a while, for the derived stream of an Ack
  // still on its way (see MAX_UNCLAIMED_FRAMES).
  hold(frame) {
    this.stats.unknownFrames++;
    const now = performance.now();
    const held = this.unclaimed;
    held.frames.push({ frame, at: now });
    held.bytes += frame.payload.byteLength;
    while (
      held.frames.length > MAX_UNCLAIMED_FRAMES ||
      held.bytes > MAX_UNCLAIMED_BYTES ||
      (held.frames.length > 0 && now - held.frames[0].at > UNCLAIMED_MAX_AGE_MS)
    ) {
      held.bytes -= held.frames.shift().frame.payload.byteLength;
    }
  }

  // The held frames of stream `id`, which a subscription has now, are delivered to it.
  claim(id) {
    const held = this.unclaimed;
    const now = performance.now();
    const mine = held.frames.filter((h) => h.frame.streamId === id);
    if (mine.length === 0) return;
    held.frames = held.frames.filter((h) => h.frame.streamId !== id);
    for (const { frame, at } of mine) {
      held.bytes -= frame.payload.byteLength;
      if (now - at > UNCLAIMED_MAX_AGE_MS) continue;
      this.stats.unknownFrames--;
      this.push(frame);
    }
  }

  // `record` is no longer carried by its derived stream (if it had one).
  underive(record) {
    const was = record.derived;
    record.derived = null;
    if (!was) return;
    const holder = this.remote.get(was.streamId);
    if (holder?.kind === "mix") {
      holder.users.delete(record);
      if (holder.users.size > 0) return;
      holder.receiver.stop();
      this.remote.delete(was.streamId);
    } else if (holder === record) {
      this.remote.delete(was.streamId);
    }
  }

  // The mix of stream id `id` plays for `record` too: one receiver per mix, however many
  // subscriptions it carries.
  useMix(record, id) {
    let mix = this.remote.get(id);
    if (mix?.kind !== "mix") {
      const receiver = new AudioReceiver("Opus", {
        audioContext: this.audioContext,
        onDecoded: () => {
          this.stats.decodedMix++;
        },
      });
      mix = { kind: "mix", streamId: id, receiver, users: new Set() };
      this.remote.set(id, mix);
    }
    mix.users.add(record);
  }

  // The subscriptions as tests read them (snapshot()): each one's source, what carries it and
  // what it decoded.
  subscriptions() {
    const records = new Set([...this.remote.values()].filter((r) => r.kind !== "mix"));
    if (this.mixSubscription) records.add(this.mixSubscription);
    return [...records].map((r) => ({
      streamId: r.streamId,
      participantId: r.participantId ?? null,
      kind: r.kind === "mixSubscription" ? "mix" : r.kind,
      derived: r.derived ? { ...r.derived } : null,
      frames: r.frames ? { ...r.frames } : null,
      decoded: r.receiver?.stats.decoded ?? 0,
    }));
  }

  // A participant's connection state (ParticipantUpdated): its tile shows "Reconnecting…".
  setConnection(participantId, connection) {
    const p = this.participants.get(participantId);
    if (!p) return;
    p.reconnecting = connection === ConnectionState.RECONNECTING;
    this.onChange();
  }

  // A participant's publication state (ParticipantUpdated, docs/protocol.md §18.1).
  setPublication(participantId, publication) {
    const p = this.participants.get(participantId);
    if (!p) return;
    p.publication = publicationOf(publication);
    this.onChange();
  }

  // The participant list as the MC has it now: who left or joined and which streams changed
  // while we were away. Kept streams keep their subscriptions (the MC kept them).
  reconcile(list) {
    const now = new Map(list.map((p) => [p.participantId, p]));
    for (const id of [...this.participants.keys()]) if (!now.has(id)) this.remove(id);
    for (const p of list) {
      const known = this.participants.get(p.participantId);
      if (!known) {
        this.add(p);
        continue;
      }
      // What we knew of its states is stale: the resumed list has them now.
      known.reconnecting = p.connection === ConnectionState.RECONNECTING;
      known.publication = publicationOf(p.publication);
      const streams = new Set(p.streams.map((stream) => stream.streamId));
      for (const id of [...known.streams]) if (!streams.has(id)) this.removeStream(id);
      for (const stream of p.streams) this.addStream(p.participantId, stream);
    }
    this.onChange();
  }

  // Every stream had a gap (a media reconnection): video decodes again from a key frame.
  resync() {
    for (const record of new Set(this.remote.values())) record.receiver.resync?.();
  }

  // Stops every decoder.
  stop() {
    for (const record of new Set(this.remote.values())) record.receiver.stop();
    this.remote.clear();
    this.mixSubscription = null;
    this.unclaimed = { frames: [], bytes: 0 };
  }
}
