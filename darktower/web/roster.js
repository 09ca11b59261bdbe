// The other participants of a meeting session as the page shows them: a tile each, a decoder per
// subscribed stream (frames are demultiplexed here by stream id), and whether each is
// reconnecting (ParticipantUpdated, docs/protocol.md §13).

import { AudioReceiver, VideoReceiver } from "./codecs.js";
import { ConnectionState, StreamType } from "./proto.js";

export class Roster {
  // `subscribe(streamId)` -> promise (SubscribeStream); `onChange()` after a participant came,
  // went or changed state; `onLeft(participantId)` when one is removed; `stats` is the session's
  // (decodedFrames, decodedAudio, unknownFrames are counted in it).
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
    this.remote = new Map(); // stream or simulcast layer id -> {participantId, kind, receiver}
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
      reconnecting: false,
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
    const ids = [stream.streamId, ...(stream.metadata?.video?.simulcastLayers ?? []).map((l) => l.layerId)];
    for (const id of ids) this.remote.set(id, record);
    record.ids = ids;
    p.streams.add(stream.streamId);
    this.subscribe(stream.streamId).catch((e) => {
      this.view.notice(`Could not subscribe to ${p.name}: ${e.message}`);
    });
  }

  removeStream(streamId) {
    const record = this.remote.get(streamId);
    if (!record) return;
    record.receiver.stop();
    for (const id of record.ids) this.remote.delete(id);
    this.participants.get(record.participantId)?.streams.delete(streamId);
  }

  push(frame) {
    const record = this.remote.get(frame.streamId);
    if (!record) {
      this.stats.unknownFrames++;
      return;
    }
    record.receiver.push(frame);
  }

  // A participant's connection state (ParticipantUpdated): its tile shows "Reconnecting…".
  setConnection(participantId, connection) {
    const p = this.participants.get(participantId);
    if (!p) return;
    p.reconnecting = connection === ConnectionState.RECONNECTING;
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
      // What we knew of its connection state is stale: a resumed list says it is here.
      known.reconnecting = false;
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
  }
}
