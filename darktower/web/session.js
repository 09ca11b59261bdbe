// One person's meeting session: the signaling session with the MC, the media session with the
// MH, the local encoders and one decoder per subscribed remote stream. DOM-free apart from the
// `view` it is given (see app.js for the one the page uses):
//   view.addTile(participantId, name, {self, kickable}) -> {canvas}
//   view.removeTile(participantId)
//   view.setPreview(mediaStream | null)
//   view.notice(text)
//   view.update(session)          state, participants or role changed
//   view.ended(text)              the session is over; `text` is for the person
// The session owns everything it starts; end() releases all of it and is idempotent.

import * as api from "./api.js";
import {
  AudioReceiver,
  AudioSender,
  VIDEO_BITRATE,
  VIDEO_FRAMERATE,
  VideoReceiver,
  VideoSender,
} from "./codecs.js";
import { MediaConnection } from "./media.js";
import { LeaveReason, StreamType } from "./proto.js";
import { Signaling } from "./signaling.js";

// What the person is told when the session ends, by LeaveReason.
export const END_TEXT = Object.freeze({
  [LeaveReason.VOLUNTARY]: "You left the meeting",
  [LeaveReason.KICKED]: "You were removed from the meeting",
  [LeaveReason.CONNECTION_LOST]: "Connection lost",
  [LeaveReason.MEETING_ENDED]: "The meeting has ended",
});
const REASON_NAME = Object.fromEntries(Object.entries(LeaveReason).map(([k, v]) => [v, k]));
// A server that closes a WebTransport session for a reason uses the close code BASE + LeaveReason
// (the MH does; docs/protocol.md §9), so a reason survives a lost SessionEnded. The one copy of
// darktower/protocol/close_codes.py's base on the page: tests/browser/test_codes.py keeps them equal.
export const SESSION_CLOSE_CODE_BASE = 0x4d00;

export function reasonFromClose(closeInfo) {
  const reason = (closeInfo?.closeCode ?? -1) - SESSION_CLOSE_CODE_BASE;
  return REASON_NAME[reason] !== undefined ? reason : null;
}
// When the MH removes a participant (kick, meeting end) it resets the publish streams a moment
// before its session close and the MC's SessionEnded say why: a publish stream's loss is shown
// only if the session is still going this long after it.
export const STREAM_LOSS_GRACE_MS = 1000;
// Quality updates below this relative change do not reconfigure the encoder.
const BITRATE_HYSTERESIS = 0.2;
const CAPABILITIES = {
  videoCodecs: ["VP8", "VP9"],
  audioCodecs: ["Opus"],
  supportsSimulcast: false,
  maxVideoStreams: 16,
};

export class MeetingSession {
  constructor(view, { certHash = null, audioContext = null } = {}) {
    this.view = view;
    this.certHash = certHash;
    this.audioContext = audioContext;
    this.state = "idle"; // idle -> joining -> joined -> ended
    this.meetingId = null;
    this.participantId = null;
    this.role = null;
    this.name = "";
    this.participants = new Map(); // participant id -> {name, streams: Set of stream ids}
    this.remote = new Map(); // stream or simulcast layer id -> {participantId, kind, receiver}
    this.local = { stream: null, video: null, audio: null, videoId: null, audioId: null };
    this.endReason = null; // {code, name, text} once ended
    this.endedPromise = new Promise((resolve) => {
      this.resolveEnded = resolve;
    });
    this.leftWaiters = []; // [participant id, resolve] of kicks awaiting ParticipantLeft
    this.stats = {
      decodedFrames: {}, // participant id -> decoded video frames
      decodedAudio: {}, // participant id -> decoded audio chunks
      unknownFrames: 0, // frames of a stream id we never subscribed to
      sent: { video: 0, audio: 0 },
    };
  }

  // Camera and microphone (fake devices in tests). A person without them still joins, receive-only.
  async startLocalMedia() {
    if (this.local.stream) return this.local.stream;
    try {
      this.local.stream = await navigator.mediaDevices.getUserMedia({
        video: { width: 640, height: 480, frameRate: VIDEO_FRAMERATE },
        audio: true,
      });
    } catch (e) {
      this.view.notice(`No camera or microphone (${e.message}): joining without them`);
      this.local.stream = null;
    }
    this.view.setPreview(this.local.stream);
    return this.local.stream;
  }

  // Joins `meetingId` as `name`: a join token from the GC (a host's when `accessToken` is the
  // owner's), then signaling, media, publishing and subscribing. Resolves once joined; rejects
  // (and ends the session) when any step fails.
  async join({ meetingId, name, accessToken = null }) {
    if (this.state !== "idle") throw new Error(`cannot join in state ${this.state}`);
    this.setState("joining");
    this.meetingId = meetingId;
    this.name = name;
    try {
      await this.startLocalMedia();
      const ticket = await api.joinMeeting(meetingId, name, accessToken);
      this.role = api.jwtPayload(ticket.join_token).role ?? ticket.role ?? "guest";
      this.signaling = await Signaling.open(ticket.meeting_controller_url, this.certHash, {
        onEvent: (kind, body) => this.onEvent(kind, body),
        onClose: (info) => this.onSignalingClosed(info),
      });
      const reply = await this.signaling.request("join", {
        meetingId,
        joinToken: ticket.join_token,
        participantName: name,
        capabilities: CAPABILITIES,
      });
      const joined = reply.joinResponse;
      if (!joined) throw new Error("the meeting controller did not answer with JoinResponse");
      this.participantId = joined.participantId;
      this.view.addTile(this.participantId, `${name} (you)`, { self: true, kickable: false });
      for (const p of joined.existingParticipants) this.addParticipant(p);
      const server = joined.mediaServer;
      if (!server?.mediaHandlerUrl) throw new Error("the meeting controller named no media server");
      this.media = await MediaConnection.open(
        server.mediaHandlerUrl,
        server.connectionToken,
        this.certHash,
        { onFrame: (frame) => this.onFrame(frame) },
      );
      this.media.closed.then(
        (info) => this.onMediaClosed(info),
        (e) => this.onMediaClosed(null, e),
      );
      if (this.state === "ended") {
        this.media.close(); // ended while connecting: end() ran before there was media
        return;
      }
      await this.publishLocal();
      if (this.state !== "ended") this.setState("joined");
    } catch (e) {
      if (this.state !== "ended") this.end(LeaveReason.CONNECTION_LOST, e.message);
      throw e;
    }
  }

  // Each await may see the session end (kick, close): nothing is started after that.
  async publishLocal() {
    const tracks = this.local.stream;
    if (!tracks) return;
    const [videoTrack] = tracks.getVideoTracks();
    const [audioTrack] = tracks.getAudioTracks();
    if (videoTrack) {
      const { width = 640, height = 480 } = videoTrack.getSettings();
      const streamId = crypto.randomUUID();
      await this.signaling.request("publish", {
        streamId,
        streamType: StreamType.VIDEO_CAMERA,
        metadata: {
          codec: "VP8",
          maxBitrate: VIDEO_BITRATE,
          video: { width, height, framerate: VIDEO_FRAMERATE },
        },
      });
      const publisher = await this.media.publish(streamId, {
        onNeedKeyFrame: () => this.local.video?.requestKeyFrame(),
        onError: (e) => this.reportStreamLoss("Video", e),
      });
      if (this.state === "ended") return;
      this.local.videoId = streamId;
      this.local.video = new VideoSender(videoTrack, (type, payload, ts) => {
        if (publisher.send(type, payload, ts)) this.stats.sent.video++;
      });
    }
    if (audioTrack) {
      const streamId = crypto.randomUUID();
      await this.signaling.request("publish", {
        streamId,
        streamType: StreamType.AUDIO,
        metadata: { codec: "Opus", maxBitrate: 64_000 },
      });
      const publisher = await this.media.publish(streamId, {
        onError: (e) => this.reportStreamLoss("Audio", e),
      });
      if (this.state === "ended") return;
      this.local.audioId = streamId;
      this.local.audio = new AudioSender(audioTrack, (type, payload, ts) => {
        if (publisher.send(type, payload, ts)) this.stats.sent.audio++;
      });
    }
  }

  // A publish stream failed: tell the person, unless the session ends within the grace (then the
  // end reason says it all).
  reportStreamLoss(what, error) {
    if (this.state === "ended") return;
    const grace = new Promise((resolve) => setTimeout(resolve, STREAM_LOSS_GRACE_MS));
    Promise.race([grace, this.endedPromise]).then(() => {
      if (this.state !== "ended") this.view.notice(`${what} stopped: ${error?.message ?? error}`);
    });
  }

  // --- participants and their streams -----------------------------------------------------------

  addParticipant(p) {
    if (p.participantId === this.participantId || this.participants.has(p.participantId)) return;
    const kickable = this.role === "host";
    const tile = this.view.addTile(p.participantId, p.name || "Guest", { self: false, kickable });
    this.participants.set(p.participantId, { name: p.name, streams: new Set(), tile });
    this.stats.decodedFrames[p.participantId] ??= 0;
    for (const stream of p.streams) this.addRemoteStream(p.participantId, stream);
    this.view.update(this);
  }

  removeParticipant(participantId) {
    for (const [id, resolve] of this.leftWaiters) if (id === participantId) resolve();
    this.leftWaiters = this.leftWaiters.filter(([id]) => id !== participantId);
    const p = this.participants.get(participantId);
    if (!p) return;
    for (const streamId of p.streams) this.removeRemoteStream(streamId);
    this.participants.delete(participantId);
    this.view.removeTile(participantId);
    this.view.update(this);
  }

  addRemoteStream(participantId, stream) {
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
    this.signaling.request("subscribe", { streamId: stream.streamId }).catch((e) => {
      this.view.notice(`Could not subscribe to ${p.name}: ${e.message}`);
    });
  }

  removeRemoteStream(streamId) {
    const record = this.remote.get(streamId);
    if (!record) return;
    record.receiver.stop();
    for (const id of record.ids) this.remote.delete(id);
    this.participants.get(record.participantId)?.streams.delete(streamId);
  }

  onFrame(frame) {
    const record = this.remote.get(frame.streamId);
    if (!record) {
      this.stats.unknownFrames++;
      return;
    }
    record.receiver.push(frame);
  }

  // --- signaling events -------------------------------------------------------------------------

  onEvent(kind, body) {
    if (this.state === "ended") return;
    switch (kind) {
      case "participantJoined":
        if (body.participant) this.addParticipant(body.participant);
        break;
      case "participantLeft":
        this.removeParticipant(body.participantId);
        break;
      case "streamPublished":
        if (body.participantId !== this.participantId && body.stream) {
          this.addRemoteStream(body.participantId, body.stream);
        }
        break;
      case "streamUnpublished":
        this.removeRemoteStream(body.streamId);
        break;
      case "keyFrameRequest":
        if (body.streamId === this.local.videoId) this.local.video?.requestKeyFrame();
        break;
      case "quality":
        this.onQuality(body);
        break;
      case "sessionEnded":
        this.end(body.reason, body.message);
        break;
      case "error":
        this.view.notice(`Server error: ${body.message}`);
        break;
      default:
        // keyShare and anything newer: end-to-end encryption is not in this page yet.
        break;
    }
  }

  onQuality(update) {
    const sender = this.local.video;
    if (update.streamId !== this.local.videoId || !sender || !update.availableBitrate) return;
    const target = Math.min(VIDEO_BITRATE, update.availableBitrate);
    if (Math.abs(target - sender.bitrate) / sender.bitrate > BITRATE_HYSTERESIS) {
      sender.setBitrate(target);
    }
  }

  onSignalingClosed({ error, closeInfo }) {
    // A session that ends without SessionEnded was lost (or never established), unless its close
    // code tells why.
    if (this.state === "ended") return;
    this.end(reasonFromClose(closeInfo) ?? LeaveReason.CONNECTION_LOST, error?.message);
  }

  onMediaClosed(closeInfo, error) {
    if (this.state === "ended") return;
    const reason = reasonFromClose(closeInfo);
    // Kicked or ended: the MC says so too, but whichever arrives first ends the session.
    if (reason === LeaveReason.KICKED || reason === LeaveReason.MEETING_ENDED) this.end(reason);
    else this.view.notice(`Media connection lost${error ? `: ${error.message}` : ""}`);
  }

  // --- actions ----------------------------------------------------------------------------------

  // Host only. Resolves on the MC's reply or once the participant has left, whichever comes
  // first (the contract does not say whether the kicker gets a reply); rejects on an
  // ErrorMessage (FORBIDDEN for a guest) or when neither happens within the request timeout.
  async kick(participantId) {
    const gone = new Promise((resolve) => this.leftWaiters.push([participantId, resolve]));
    return this.requestOr("kick", { participantId }, gone);
  }

  // Host only. Resolves on the MC's reply or once this session has ended, whichever is first.
  async endMeeting() {
    return this.requestOr("endMeeting", {}, this.endedPromise);
  }

  requestOr(kind, body, settled) {
    const reply = this.signaling.request(kind, body);
    // An error reply first still rejects; a late timeout after `settled` is of no interest.
    reply.catch(() => {});
    return Promise.race([reply, settled]).then(() => undefined);
  }

  // Leaves voluntarily: the MC answers SessionEnded (VOLUNTARY); ends locally if it does not.
  async leave() {
    if (this.state === "ended") return;
    try {
      await this.signaling?.request("leave", {}, 3000);
    } catch {
      // Ended below either way.
    }
    this.end(LeaveReason.VOLUNTARY);
  }

  setState(state) {
    this.state = state;
    this.view.update(this);
  }

  // Releases everything and tells the person why. Idempotent: the first reason wins.
  end(reason, detail = "") {
    if (this.state === "ended") return;
    const code = Number(reason);
    this.endReason = {
      code,
      name: REASON_NAME[code] ?? String(code),
      text: END_TEXT[code] ?? "The session ended",
      detail: detail || "",
    };
    this.setState("ended");
    this.local.video?.stop();
    this.local.audio?.stop();
    for (const record of new Set(this.remote.values())) record.receiver.stop();
    this.remote.clear();
    this.media?.close();
    this.signaling?.close();
    for (const track of this.local.stream?.getTracks() ?? []) track.stop();
    this.view.setPreview(null);
    this.view.ended(this.endReason.text);
    this.leftWaiters = [];
    this.resolveEnded(this.endReason);
  }

  // A JSON-able summary for tests and the status line.
  snapshot() {
    return {
      state: this.state,
      meetingId: this.meetingId,
      participantId: this.participantId,
      role: this.role,
      participants: [...this.participants].map(([id, p]) => ({ participantId: id, name: p.name })),
      endReason: this.endReason,
      stats: JSON.parse(JSON.stringify(this.stats)),
    };
  }
}
