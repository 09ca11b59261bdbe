// What the meeting product adds to a session (docs/protocol.md §18): the own publication state
// (mute, camera off, sharing, what a host blocks) and everyone else's, the host's moderation
// both ways, and the chat. DOM-free: the session's `view` is told through update(session),
// notice(text) and, when it has them, moderated(text) and chatChanged(messages).
//
// Mute and camera off (§18.1): muting is local at once (no frame is sent) and then told to the
// MC with SetPublicationState; unmuting asks the MC first, so a kind the host blocks is refused
// (FORBIDDEN, details.reason "blocked_by_host") before a frame goes out. A `Moderated` from a
// host turns the own kinds it names off and says why; while a kind is blocked the page does not
// ask to turn it on.

import { ErrorCode } from "./proto.js";
import { ModerationAction } from "./schema.js";
import { startScreenShare } from "./screenshare.js";

// Limit: chat messages kept by the page (the MC keeps 200 for late joiners, docs/protocol.md
// §18.3); the oldest go first.
export const MAX_CHAT_MESSAGES = 500;
// Limit: Moderated messages kept for the test hooks; the oldest go first.
const MAX_MODERATIONS = 20;

export const EMPTY_PUBLICATION = Object.freeze({
  audioMuted: false,
  videoOff: false,
  sharing: false,
  audioBlocked: false,
  videoBlocked: false,
  screenBlocked: false,
});

// A PublicationState as decoded (unset fields undefined) -> every field a boolean.
export function publicationOf(state) {
  const out = {};
  for (const key of Object.keys(EMPTY_PUBLICATION)) out[key] = Boolean(state?.[key]);
  return out;
}

// What the person is told of each action a host took (Moderated.actions).
const MODERATED_TEXT = {
  [ModerationAction.MODERATION_MUTE_AUDIO]: "muted your microphone",
  [ModerationAction.MODERATION_STOP_VIDEO]: "turned your camera off",
  [ModerationAction.MODERATION_STOP_SCREEN]: "stopped your screen share",
  [ModerationAction.MODERATION_ALLOW_AUDIO]: "allowed you to unmute",
  [ModerationAction.MODERATION_ALLOW_VIDEO]: "allowed you to turn your camera on",
  [ModerationAction.MODERATION_ALLOW_SCREEN]: "allowed you to share your screen",
};

const BLOCKED_TEXT = {
  audio: "The host muted your microphone: you can unmute once they allow it",
  video: "The host turned your camera off: you can turn it on once they allow it",
  screen: "The host stopped your screen share: you can share once they allow it",
};

// A refusal the person is shown as it is (its message says why).
export class BlockedError extends Error {
  constructor(kind) {
    super(BLOCKED_TEXT[kind]);
    this.name = "BlockedError";
    this.kind = kind;
  }
}

export class Presence {
  constructor(session) {
    this.session = session;
    this.self = { ...EMPTY_PUBLICATION };
    this.chat = []; // ChatMessage, oldest first, by messageId once
    this.chatIds = new Set();
    this.moderations = []; // {byParticipantId, actions, message, text}
    this.lastModerated = null; // the text shown for the last Moderated
    this.errors = { setPublication: 0 }; // refusals other than FORBIDDEN (an older MC)
  }

  get view() {
    return this.session.view;
  }

  // A signaling event of §18; true when it was one.
  onEvent(kind, body) {
    switch (kind) {
      case "moderated":
        this.moderated(body);
        return true;
      case "chat":
        this.addChat([body]);
        return true;
      case "chatHistory":
        this.addChat(body.messages ?? []);
        return true;
      default:
        return false;
    }
  }

  // ParticipantUpdated (the own one too): its whole publication state.
  updated(body) {
    if (!body.publication) return;
    if (body.participantId === this.session.participantId) {
      this.self = publicationOf(body.publication);
      this.follow();
    } else {
      this.session.roster.setPublication(body.participantId, body.publication);
    }
    this.view.update(this.session);
  }

  // The own state as a JoinResponse's catch-up has it (a resume: the MC's word).
  joined(joined) {
    const own = (joined.existingParticipants ?? []).find(
      (p) => p.participantId === this.session.participantId,
    );
    if (own?.publication) this.self = publicationOf(own.publication);
    this.follow();
  }

  // What the MC says is off (a kind blocked from the join on, a resumed state) is off here too;
  // never the other way (the person turns things on, after the MC's Ack).
  follow() {
    const local = this.session.local;
    if (this.self.audioMuted && !local.muted.audio) local.setMuted("audio", true);
    if (this.self.videoOff && !local.muted.video) local.setMuted("video", true);
  }

  // Whether the own `kind` ("audio" | "video") is off, as the toolbar shows it.
  isMuted(kind) {
    const local = this.session.local;
    return kind === "audio"
      ? local.muted.audio || this.self.audioMuted
      : local.muted.video || this.self.videoOff;
  }

  moderated(body) {
    const state = publicationOf(body.publication);
    this.self = state;
    const local = this.session.local;
    const actions = new Set(body.actions ?? []);
    // The MC ended these streams (its StreamUnpublished may say so too): forgotten here.
    if (actions.has(ModerationAction.MODERATION_MUTE_AUDIO)) local.dropped(local.audioId);
    if (actions.has(ModerationAction.MODERATION_STOP_VIDEO)) local.dropped(local.videoId);
    if (state.audioMuted && !local.muted.audio) local.setMuted("audio", true);
    if (state.videoOff && !local.muted.video) local.setMuted("video", true);
    if (!state.sharing && local.screen) local.screen.ended();
    const by = this.session.participants.get(body.byParticipantId)?.name;
    const who = by ? `The host (${by})` : "The host";
    const did = (body.actions ?? []).map((a) => MODERATED_TEXT[a]).filter(Boolean);
    let text = `${who} ${did.join(" and ") || "changed what you may publish"}`;
    if (body.message) text += `: “${body.message}”`;
    this.lastModerated = text;
    this.moderations.push({
      byParticipantId: body.byParticipantId ?? "",
      actions: [...(body.actions ?? [])],
      message: body.message ?? "",
      text,
    });
    if (this.moderations.length > MAX_MODERATIONS) this.moderations.shift();
    if (this.view.moderated) this.view.moderated(text);
    else this.view.notice(text);
    this.view.update(this.session);
  }

  addChat(messages) {
    let added = false;
    for (const m of messages) {
      if (!m?.messageId || this.chatIds.has(m.messageId)) continue;
      const message = { ...m, sentAt: Number(m.sentAt ?? 0) };
      this.chat.push(message);
      this.chatIds.add(m.messageId);
      added = true;
    }
    while (this.chat.length > MAX_CHAT_MESSAGES) this.chatIds.delete(this.chat.shift().messageId);
    if (added) this.view.chatChanged?.(messages.filter((m) => m?.messageId));
  }

  // --- actions ----------------------------------------------------------------------------------

  // Mutes (unmutes) the microphone (`kind` "audio") or turns the camera off (on) ("video").
  // Rejects with a BlockedError while the host blocks it (and the MC's FORBIDDEN says so too).
  async setMuted(kind, muted) {
    const s = this.session;
    if (kind !== "audio" && kind !== "video") throw new Error(`no such kind: ${kind}`);
    const blocked = kind === "audio" ? "audioBlocked" : "videoBlocked";
    if (!muted && this.self[blocked]) throw new BlockedError(kind);
    const want = { ...s.local.muted, [kind]: muted };
    if (muted) {
      await s.local.setMuted(kind, true);
      this.view.update(s);
    }
    try {
      await this.tell(want);
    } catch (e) {
      if (e?.code === ErrorCode.FORBIDDEN) {
        this.self[blocked] = true;
        this.view.update(s);
        throw new BlockedError(kind);
      }
      this.errors.setPublication++;
    }
    if (!muted) await s.local.setMuted(kind, false);
    this.self[kind === "audio" ? "audioMuted" : "videoOff"] = muted;
    this.view.update(s);
  }

  // Joined with the microphone muted or the camera off (the pre-join screen's): told to the MC.
  async joinedOff() {
    const muted = this.session.local.muted;
    if (!muted.audio && !muted.video) return;
    await this.tell(muted).catch(() => {
      this.errors.setPublication++;
    });
    this.self.audioMuted ||= muted.audio;
    this.self.videoOff ||= muted.video;
    this.view.update(this.session);
  }

  // SetPublicationState with the switches `want` ({audio, video} muted).
  async tell(want) {
    const s = this.session;
    if (!s.signaling || s.state === "ended") return;
    await s.signaling.request("setPublication", { audioMuted: want.audio, videoOff: want.video });
  }

  // The screen share (screenshare.js): resolves once it is published.
  async shareScreen() {
    const s = this.session;
    if (this.self.screenBlocked) throw new BlockedError("screen");
    if (s.local.screen) return;
    await startScreenShare(s.local, s.stats, s.view, {
      onStopped: () => {
        this.self.sharing = false;
        s.view.update(s);
      },
    });
    this.self.sharing = true;
    s.view.update(s);
  }

  async stopShare() {
    await this.session.local.screen?.stop();
  }

  // Host only (docs/protocol.md §18.2): resolves on the MC's Ack, once the streams the actions
  // end are removed at the MH.
  async moderate(participantId, actions, message = "") {
    const body = { participantId, actions: [...actions] };
    if (message) body.message = message;
    await this.session.signaling.request("moderate", body);
  }

  // SendChat (docs/protocol.md §18.3): to everyone, or to `toParticipantId` only.
  async sendChat(text, toParticipantId = "") {
    await this.session.signaling.request("sendChat", { text, toParticipantId: toParticipantId || "" });
  }

  // participant id -> publication state of everyone, the own one included.
  publications() {
    const out = { [this.session.participantId]: { ...this.self } };
    for (const [id, p] of this.session.participants) out[id] = { ...p.publication };
    return out;
  }
}
