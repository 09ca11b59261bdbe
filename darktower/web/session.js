// One person's meeting session: the signaling session with the MC, the media session with the
// MH, the local encoders (localmedia.js) and one decoder per subscribed remote stream. DOM-free
// apart from the `view` it is given (app.js's, tiles.js):
//   view.addTile(participantId, name, {self, kickable}) -> {canvas}; view.removeTile(id)
//   view.setPreview(mediaStream | null); view.notice(text); view.ended(text) (over; for the person)
//   view.update(session)  state, participants, role, connection, publication or recording changed
//   optional: view.renameTile(oldId, newId) (the own tile after a rejoin), view.tileStats(id,
//   text) (adaptive.js), view.addScreenTile(participantId, streamId, name) -> {canvas},
//   view.removeScreenTile(streamId), view.setScreenPreview(stream | null), view.moderated(text),
//   view.chatChanged(messages) (presence.js, screenshare.js). The session owns everything it
// starts; end() releases all of it and is idempotent.
// Reconnection (docs/protocol.md §13) is recovery.js's (resume, media reconnection, rejoin);
// end-to-end encryption (§16) encryption.js's (every JoinRequest offers a public key; frames
// sealed and opened); publication state, moderation and chat (§18) presence.js's.

import { Adaptive } from "./adaptive.js";
import * as api from "./api.js";
import { VIDEO_CODEC_NAMES, decodableVideoCodecs } from "./codecs.js";
import { MeetingEncryption } from "./encryption.js";
import { LocalMedia } from "./localmedia.js";
import { routedUrl } from "./media.js";
import { MediaLink } from "./medialink.js";
import { Presence } from "./presence.js";
import { ConnectionState, LeaveReason } from "./proto.js";
import { Recovery } from "./recovery.js";
import {
  RECONNECT_ATTEMPT_TIMEOUT_MS,
  RECONNECT_WINDOW_MS,
  STREAM_LOSS_GRACE_MS,
  sleep,
} from "./retry.js";
import { Roster } from "./roster.js";
import { CAPABILITIES, SignalingLink } from "./signaling.js";

// What the person is told when the session ends, by LeaveReason.
export const END_TEXT = Object.freeze({
  [LeaveReason.VOLUNTARY]: "You left the meeting",
  [LeaveReason.KICKED]: "You were removed from the meeting",
  [LeaveReason.CONNECTION_LOST]: "Connection lost",
  [LeaveReason.MEETING_ENDED]: "The meeting has ended",
  [LeaveReason.SERVER_SHUTDOWN]: "The server shut down and the meeting could not be rejoined",
});
// Why the page rejoins when the MC said nothing more (the MH's SERVER_SHUTDOWN close code alone).
const SHUTDOWN_DETAIL = "the meeting controller is shutting down";
// What the person is told when a JoinResponse after an encrypted one is not encrypted.
export const UNENCRYPTED_TEXT =
  "The meeting is no longer end-to-end encrypted: you were disconnected so that nothing " +
  "is sent unencrypted";
const REASON_NAME = Object.fromEntries(Object.entries(LeaveReason).map(([k, v]) => [v, k]));
// A server that closes a WebTransport session for a reason uses the close code BASE + LeaveReason
// (the MH does; docs/protocol.md §9), so a reason survives a lost SessionEnded. The one copy of
// darktower/protocol/close_codes.py's base on the page: tests/browser/test_codes.py keeps them equal.
export const SESSION_CLOSE_CODE_BASE = 0x4d00;

export function reasonFromClose(closeInfo) {
  const reason = (closeInfo?.closeCode ?? -1) - SESSION_CLOSE_CODE_BASE;
  return REASON_NAME[reason] !== undefined ? reason : null;
}

export class MeetingSession {
  // `via` ({"host:port": "host:port"}, or null) reroutes the WebTransport sessions (media.js's
  // routedUrl); `reconnectWindowMs` bounds each reconnection (retry.js).
  constructor(
    view,
    { certHash = null, audioContext = null, via = null, reconnectWindowMs = RECONNECT_WINDOW_MS } = {},
  ) {
    this.view = view;
    this.certHash = certHash;
    this.audioContext = audioContext;
    this.via = via;
    this.reconnectWindowMs = reconnectWindowMs;
    this.state = "idle"; // idle -> joining -> joined <-> reconnecting -> ended
    this.meetingId = null;
    this.participantId = null;
    this.role = null;
    this.name = "";
    this.accessToken = null; // the join's: a rejoin asks the GC with it (the host stays a host)
    this.signalingUrl = null;
    this.resumeToken = null; // the latest JoinResponse's: single-use
    this.link = null; // the current SignalingLink (this.signaling is its Signaling)
    this.capabilities = CAPABILITIES; // every JoinRequest's; join() lists the decodable codecs
    this.recording = false; // the meeting is being recorded (docs/protocol.md §2.1)
    this.media = new MediaLink({
      certHash,
      via,
      timeoutMs: RECONNECT_ATTEMPT_TIMEOUT_MS,
      onFrame: (frame) => this.onMediaFrame(frame),
      onClosed: (info, error) => this.onMediaClosed(info, error),
    });
    this.endReason = null; // {code, name, text} once ended
    this.endedPromise = new Promise((resolve) => {
      this.resolveEnded = resolve;
    });
    this.leftWaiters = []; // [participant id, resolve] of kicks awaiting ParticipantLeft
    this.stats = {
      decodedFrames: {}, // participant id -> decoded video frames
      decodedAudio: {}, // participant id -> decoded audio chunks
      decodedMix: 0, // decoded audio chunks of the audio mix (docs/protocol.md §2.2)
      unknownFrames: 0, // frames of a stream id we never subscribed to
      sent: { video: 0, audio: 0 },
      reconnects: { signaling: 0, media: 0 }, // completed reconnections
      rejoins: 0, // completed rejoins through the GC
    };
    this.recovery = new Recovery(this); // resume, media reconnection, rejoin (recovery.js)
    // Keys, shares, frames' encryption (encryption.js); counts in stats.e2ee.
    this.e2ee = new MeetingEncryption({
      stats: this.stats,
      send: (body) => this.signaling.request("keyShare", body),
      publisherOf: (streamId) => this.roster.publisherOf(streamId),
      deliver: (frame) => this.roster.push(frame),
      onChange: () => this.view.update(this),
      onFatal: (e) => {
        this.view.notice(`End-to-end encryption stopped: ${e.message}`);
        this.leave();
      },
    });
    this.sealFrame = (header, payload) => this.e2ee.seal(header, payload);
    this.local = new LocalMedia(view, this.stats); // camera, microphone, encoders (localmedia.js)
    this.roster = new Roster(view, {
      stats: this.stats,
      audioContext,
      subscribe: (body) => this.signaling.request("subscribe", this.adaptive.pinning(body)),
      onChange: () => this.view.update(this),
      onLeft: (participantId) => {
        for (const [id, resolve] of this.leftWaiters) if (id === participantId) resolve();
        this.leftWaiters = this.leftWaiters.filter(([id]) => id !== participantId);
      },
    });
    this.adaptive = new Adaptive(this); // layers, quality, reports, speakers (adaptive.js)
    this.presence = new Presence(this); // publication state, moderation, chat (presence.js)
  }

  // participant id -> {name, streams, tile, reconnecting} of the others (roster.js).
  get participants() {
    return this.roster.participants;
  }

  // The meeting is end-to-end encrypted (its JoinResponse said so).
  get encrypted() {
    return this.e2ee.encrypted;
  }

  // participant id -> safety number of everyone in an encrypted meeting, the own one included.
  safetyNumbers() {
    return this.e2ee.safetyNumbers();
  }

  // Signaling or media is being reconnected.
  get reconnecting() {
    return this.state === "reconnecting" || this.recovery.mediaReconnecting;
  }

  // Joins `meetingId` as `name`: a join token from the GC (a host's when `accessToken` is the
  // owner's), then signaling, media, publishing and subscribing. Resolves once joined; rejects
  // (and ends the session) when any step fails. `videoCodecs` (signaling names) restricts the
  // video codecs the page says it decodes, in that order (the MC transcodes the others);
  // `mixAudio` subscribes to the audio mix instead of each participant's audio
  // (docs/protocol.md §2.2).
  async join({ meetingId, name, accessToken = null, videoCodecs = null, mixAudio = false }) {
    if (this.state !== "idle") throw new Error(`cannot join in state ${this.state}`);
    this.setState("joining");
    this.meetingId = meetingId;
    this.name = name;
    this.accessToken = accessToken;
    this.roster.mixAudio = Boolean(mixAudio);
    try {
      await this.listCapabilities(videoCodecs);
      await this.local.start(); // camera and microphone; without them, receive-only
      const ticket = await api.joinMeeting(meetingId, name, accessToken);
      this.role = api.jwtPayload(ticket.join_token).role ?? ticket.role ?? "guest";
      this.roster.kickable = this.role === "host";
      this.signalingUrl = ticket.meeting_controller_url;
      await this.e2ee.newKeyPair();
      const link = await this.openSignaling();
      this.link = link;
      const reply = await link.signaling.request("join", {
        meetingId,
        joinToken: ticket.join_token,
        participantName: name,
        capabilities: this.capabilities,
        e2eePublicKey: this.e2ee.publicKey,
      });
      const joined = reply.joinResponse;
      if (!joined) throw new Error("the meeting controller did not answer with JoinResponse");
      this.participantId = this.roster.selfId = joined.participantId;
      this.resumeToken = joined.resumeToken || null;
      this.recording = Boolean(joined.recording);
      this.view.addTile(this.participantId, `${name} (you)`, { self: true, kickable: false });
      this.goLive(link, () => {
        this.startEncryption(joined);
        this.presence.joined(joined);
        for (const p of joined.existingParticipants) this.roster.add(p);
      });
      this.roster.subscribeMix();
      await this.e2ee.ready; // no frame is sent before there is a key for it
      await this.media.connect(joined.mediaServer);
      if (this.state === "ended") {
        this.media.close(); // ended while connecting: end() ran before there was media
        return;
      }
      await this.publishLocal();
      if (this.state !== "ended") this.setState("joined");
      // Lost while publishing: reconnect it now that the session is joined.
      if (this.state === "joined" && !this.media.connected) this.recovery.recoverMedia(null);
    } catch (e) {
      if (this.state !== "ended") this.end(LeaveReason.CONNECTION_LOST, e.message);
      throw e;
    }
  }

  // The capabilities of every JoinRequest: the video codecs this browser decodes, of
  // `restrict` when given (in its order). Throws when none is left (an empty list would mean
  // any codec to the MC).
  async listCapabilities(restrict = null) {
    const videoCodecs = await decodableVideoCodecs(restrict ?? VIDEO_CODEC_NAMES);
    if (videoCodecs.length === 0) {
      const asked = (restrict ?? VIDEO_CODEC_NAMES).join(", ");
      throw new Error(`this browser decodes none of the video codecs ${asked}`);
    }
    this.capabilities = { ...CAPABILITIES, videoCodecs };
  }

  // After a JoinResponse (a join or a rejoin): the meeting's encryption, and whether frames sent
  // are sealed. Once sealed, always: a later JoinResponse without encryption ends the session
  // (refusesDowngrade) before it is applied, and frames are never sent in clear again.
  startEncryption(joined) {
    if (!this.e2ee.start(joined, this.participantId)) {
      this.endUnencrypted();
      return;
    }
    if (this.e2ee.encrypted) this.media.seal = this.sealFrame;
  }

  // A JoinResponse (a resume's or a rejoin's, on `link`) without encryption_keys after an
  // encrypted one (docs/protocol.md §16): the MC cannot turn the encryption off, so the session
  // ends, and says why. True when it did.
  refusesDowngrade(joined, link) {
    if (this.e2ee.accepts(joined)) return false;
    link?.retire();
    this.endUnencrypted();
    return true;
  }

  endUnencrypted() {
    const detail = "a JoinResponse without encryption_keys in an end-to-end encrypted meeting";
    this.end(LeaveReason.CONNECTION_LOST, detail, UNENCRYPTED_TEXT);
  }

  // A frame of a subscribed stream: decrypted first in an encrypted meeting.
  onMediaFrame(frame) {
    this.adaptive.onFrame(frame);
    if (this.e2ee.encrypted) this.e2ee.receive(frame);
    else this.roster.push(frame);
  }

  // Each await may see the session end (kick, close): nothing is started after that.
  async publishLocal() {
    await this.local.publish(() => this.signaling, this.media, {
      isEnded: () => this.state === "ended",
      onLoss: (...args) => this.reportStreamLoss(...args),
    });
  }

  // A publish stream of the current media session failed: tell the person, unless the session
  // ends or reconnects within the grace (then the end reason or the reconnection says it all),
  // or the stream is no longer published then (`alive()` false: the MC ended it, §18.2).
  reportStreamLoss(what, error, alive = () => true) {
    if (this.state === "ended") return;
    const grace = new Promise((resolve) => setTimeout(resolve, STREAM_LOSS_GRACE_MS));
    const recoveries = this.stats.reconnects.media + this.stats.reconnects.signaling;
    Promise.race([grace, this.endedPromise]).then(() => {
      const reconnected = this.stats.reconnects.media + this.stats.reconnects.signaling;
      if (this.state === "ended" || this.reconnecting || reconnected !== recoveries) return;
      if (alive()) this.view.notice(`${what} stopped: ${error?.message ?? error}`);
    });
  }

  // --- signaling events -------------------------------------------------------------------------

  onEvent(kind, body) {
    if (this.state === "ended") return;
    switch (kind) {
      case "participantJoined":
        if (body.participant) {
          this.e2ee.joined(body.participant);
          this.roster.add(body.participant);
        }
        break;
      case "participantLeft":
        this.e2ee.left(body.participantId);
        this.roster.remove(body.participantId);
        break;
      case "streamPublished":
        if (body.participantId !== this.participantId && body.stream) {
          this.roster.addStream(body.participantId, body.stream);
        }
        break;
      case "streamUnpublished":
        if (this.local.publishes(body.streamId)) this.local.dropped(body.streamId);
        else this.roster.removeStream(body.streamId);
        break;
      case "keyFrameRequest":
        this.local.requestKeyFrame(body.streamId);
        break;
      case "sessionEnded":
        // The MC shuts down while the meeting goes on: rejoin it (not an end).
        if (Number(body.reason) === LeaveReason.SERVER_SHUTDOWN) {
          this.recovery.rejoin(LeaveReason.SERVER_SHUTDOWN, body.message || SHUTDOWN_DETAIL);
        } else {
          this.end(body.reason, body.message);
        }
        break;
      case "error":
        this.view.notice(`Server error: ${body.message}`);
        break;
      case "participantUpdated":
        this.roster.setConnection(body.participantId, body.connection);
        if (body.connection === ConnectionState.CONNECTED) this.e2ee.connected(body.participantId);
        this.presence.updated(body);
        break;
      case "keyShare":
        this.e2ee.keyShare(body);
        break;
      case "recordingStatus":
        this.recording = Boolean(body.recording);
        this.view.update(this);
        break;
      case "subscriptionUpdated":
        this.roster.updated(body.streamId, body.derived);
        break;
      case "mediaReconnect":
        // Unprompted (request id 0): the MC moves us to another MH, or heard from the MH that a
        // media session of ours was lost. While one to that MH is up and not being replaced, the
        // lost one is an older one (the MH replaces a session quietly) or this one, whose loss
        // the page notices itself: as the Python client does, that is ignored.
        if (
          this.media.connectedTo(body.mediaServer?.mediaHandlerUrl) &&
          !this.recovery.mediaReconnecting
        ) {
          break;
        }
        this.recovery.recoverMedia(body.mediaServer);
        break;
      default:
        // Moderation and chat; quality updates and active speakers (adaptive.js); anything newer.
        if (!this.presence.onEvent(kind, body)) this.adaptive.onEvent(kind, body);
        break;
    }
  }

  onSignalingClosed({ error, closeInfo }) {
    // A session that ends without SessionEnded was lost (or never established), unless its close
    // code tells why. Lost after the join, it is resumed when the MC gave a resume token.
    // (A rejoin handles its own failures.)
    if (this.state === "ended" || this.recovery.rejoining) return;
    const reason = reasonFromClose(closeInfo);
    if (reason === LeaveReason.SERVER_SHUTDOWN) {
      this.recovery.rejoin(reason, SHUTDOWN_DETAIL);
      return;
    }
    if (reason === null && this.state === "joined" && this.resumeToken) {
      this.recovery.resume();
      return;
    }
    this.end(reason ?? LeaveReason.CONNECTION_LOST, error?.message);
  }

  onMediaClosed(closeInfo, error) {
    if (this.state === "ended") return;
    const reason = reasonFromClose(closeInfo);
    // Kicked or ended: the MC says so too, but whichever arrives first ends the session.
    if (reason === LeaveReason.KICKED || reason === LeaveReason.MEETING_ENDED) {
      this.end(reason);
      return;
    }
    // The MC's SessionEnded (with its message) is on its way and starts the rejoin; without it
    // the page rejoins all the same.
    if (reason === LeaveReason.SERVER_SHUTDOWN) {
      const rejoins = this.stats.rejoins;
      sleep(STREAM_LOSS_GRACE_MS).then(() => {
        if (this.state === "joined" && this.stats.rejoins === rejoins) {
          this.recovery.rejoin(reason, SHUTDOWN_DETAIL);
        }
      });
      return;
    }
    // While signaling resumes, the resume brings a media token of its own.
    if (this.state === "joined") this.recovery.recoverMedia(null);
  }

  // --- reconnection (docs/protocol.md §13) -------------------------------------------------------

  // A signaling session at the MC's URL (signaling.js's SignalingLink).
  openSignaling(timeoutMs = null) {
    const handlers = {
      onEvent: (kind, body) => this.onEvent(kind, body),
      onClose: (info) => this.onSignalingClosed(info),
    };
    const url = routedUrl(this.signalingUrl, this.via);
    return SignalingLink.open(url, this.certHash, handlers, { timeoutMs });
  }

  // Makes `link` the session's signaling (the one before it is retired): `apply()` first (its
  // JoinResponse), then the events that came after it.
  goLive(link, apply) {
    if (this.link && this.link !== link) this.link.retire();
    this.link = link;
    this.signaling = link.signaling;
    link.goLive(apply);
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

  // Releases everything and tells the person why (`text`, else the reason's). Idempotent: the
  // first reason wins.
  end(reason, detail = "", text = null) {
    if (this.state === "ended") return;
    const code = Number(reason);
    this.endReason = {
      code,
      name: REASON_NAME[code] ?? String(code),
      text: text ?? END_TEXT[code] ?? "The session ended",
      detail: detail || "",
    };
    this.recovery.mediaReconnecting = false;
    this.recording = false;
    this.setState("ended");
    this.local.stopEncoders();
    this.adaptive.stop();
    this.e2ee.stop();
    this.roster.stop();
    this.media.close();
    if (this.link) this.link.retire();
    this.local.release();
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
      publications: this.presence.publications(), // participant id -> PublicationState (§18.1)
      reconnecting: this.reconnecting,
      recording: this.recording,
      encrypted: this.encrypted,
      safetyNumbers: this.safetyNumbers(),
      capabilities: this.capabilities,
      subscriptions: this.roster.subscriptions(),
      activeSpeakers: this.adaptive.speakers, // the dominant speaker first (ActiveSpeakers)
      reconnectingParticipants: [...this.participants]
        .filter(([, p]) => p.reconnecting)
        .map(([id]) => id),
      endReason: this.endReason,
      stats: JSON.parse(JSON.stringify(this.stats)),
    };
  }
}
