// The Dark Tower browser client: the page's DOM and its test hooks. The meeting logic is in
// session.js; the wire codecs in proto.js and frames.js; the GC calls in api.js. The page's
// parts: the pre-join screen (prejoin.js, devices.js), the tiles (tiles.js, grid.js), the
// toolbar (controls.js), the side panels (panels.js: people.js, chat.js), the full screens
// (screens.js).
//
// Served by the Global Controller: index.html at "/" and "/m/<meeting id>", this directory at
// "/static/". The meeting id comes from the path "/m/<id>" or the query "?meeting=<id>".
//
// Test hooks (window.darktower), for Playwright and the browser tests. Everything is plain data
// or returns a promise that settles when the action is done:
//   darktower.create({name, displayName, settings?})   dev stack only: creates a meeting with
//                                           the dev credential (settings: api.js's
//                                           createMeeting, e.g. {recordingEnabled: true}), joins
//                                           it as its host (join's options too); -> snapshot()
//   darktower.join({meetingId, name, accessToken?, videoCodecs?, mixAudio?})   joins (as host
//                                           when accessToken is the owner's); resolves once
//                                           published; -> snapshot(). videoCodecs (e.g.
//                                           ["H264"]) restricts the codecs the page says it
//                                           decodes (the MC transcodes the others); mixAudio
//                                           takes the audio mix instead of each one's audio;
//                                           captures the camera afresh (the lobby's buttons
//                                           take over the pre-join screen's preview)
//   darktower.kick(participantId)           host only; resolves on the MC's Ack
//   darktower.endMeeting()                  host only; resolves on the MC's Ack
//   darktower.leave()                       resolves once the session has ended
//   darktower.connectVia({"host:port": "host:port"})   sessions started from now on (and the
//                                           current one's reconnections) open their
//                                           WebTransport sessions there instead: a test puts
//                                           a fault-injecting proxy between page and service
//   darktower.state                         "idle" | "joining" | "joined" | "reconnecting" |
//                                           "ended" (reconnecting: signaling is being resumed,
//                                           or the meeting rejoined through the GC)
//   darktower.reconnecting                  signaling or media is being reconnected ("Reconnecting…"
//                                           on the own tile and in the status bar)
//   darktower.participantId, .role ("host" | "guest"), .meetingId
//   darktower.participants                  [{participantId, name}] of the others
//   darktower.recording                     the meeting is being recorded (#rec shows "REC")
//   darktower.encrypted                     the meeting is end-to-end encrypted (#e2ee shows
//                                           the lock)
//   darktower.safetyNumbers                 {participantId: "01234 56789 01234 56789"} of
//                                           everyone in an encrypted meeting, the own one too
//                                           (each tile's `.safety`)
//   darktower.stats.decodedFrames           {participantId: decoded video frames}
//   darktower.stats.decodedAudio            {participantId: decoded audio chunks}
//   darktower.stats.decodedMix              decoded audio chunks of the audio mix
//   darktower.stats.reconnects              {signaling, media}: reconnections completed
//   darktower.stats.rejoins                 rejoins through the GC completed (the MC shut down
//                                           or was lost: a new participantId, same name)
//   darktower.stats.e2ee                    {encrypted, generation (the own sender key's),
//                                           decrypted, drops: {auth_failed, no_key,
//                                           stale_key, malformed, bad_share}, sealed,
//                                           sealFailures, held, heldDropped (own frames that
//                                           waited for a rotation's key; dropped waiting),
//                                           sharesSent (the MC took them), sharesFailed,
//                                           sharesDropped (superseded, recipient gone),
//                                           sharesRetried, sharesQueued, sharesOpened,
//                                           unknownStream, deliverFailures}: frames that did
//                                           not decrypt are dropped and counted by reason,
//                                           never decoded
//   darktower.stats.publishedLayers         {layerId: {width, height, maxBitrate, bitrate (the
//                                           encoder's now), paused (dynacast), encoded,
//                                           keyFrames, dropped, resumes, sent, keyFramesSent}}
//                                           of the own camera's simulcast layers
//   darktower.stats.layers                  {streamId: {participantId, kind, layerId (the
//                                           simulcast layer arriving), width, height, frames,
//                                           keyFrames, bytes, lost, switches, bitrate, loss,
//                                           server: {layerId, paused, availableBitrate, rttMs,
//                                           packetLoss} or null}} per subscription (adaptive.js)
//   darktower.stats.reports                 {sent, failed}: the page's own quality reports
//   darktower.activeSpeakers                participant ids of the last ActiveSpeakers, the
//                                           dominant speaker first (its tile has the class
//                                           `speaking`); in snapshot() too
//   darktower.pin(participantId, pinned = true)  pins (unpins) a participant's video: LastN
//                                           never holds it back; its tile has the class
//                                           `pinned` (the tile's Pin button does the same)
//   darktower.pinned                        participant ids pinned
//   darktower.endReason                     null, or {code, name: "KICKED" | "MEETING_ENDED" |
//                                           "CONNECTION_LOST" | "VOLUNTARY" | "SERVER_SHUTDOWN",
//                                           text, detail}
// The meeting product (docs/protocol.md §18):
//   darktower.setMuted(kind, muted)         kind "audio" (microphone) | "video" (camera off);
//                                           resolves once told to the MC; rejects with the
//                                           reason while a host blocks it (name BlockedError)
//   darktower.muted                         {audio, video}: the own switches
//   darktower.shareScreen() / stopShare()   resolves once the VIDEO_SCREEN stream is published
//                                           (getDisplayMedia) / unpublished
//   darktower.sharing                       the own screen is shared
//   darktower.publications                  {participantId: {audioMuted, videoOff, sharing,
//                                           audioBlocked, videoBlocked, screenBlocked}} of
//                                           everyone, the own one included (tile badges)
//   darktower.moderate(pid, actions, message?)  host only: ModerationAction numbers (or names
//                                           "MODERATION_MUTE_AUDIO", ...); resolves on the MC's Ack
//   darktower.moderation                    {last: the text of the last Moderated shown (the
//                                           #moderation banner) or null, all: [{byParticipantId,
//                                           actions, message, text}]}
//   darktower.sendChat(text, toParticipantId?)  resolves on the MC's Ack
//   darktower.chat                          [ChatMessage] received, oldest first, once each
//   darktower.switchDevice(kind, deviceId)  another camera ("video") or microphone ("audio")
//                                           under the same publication; -> the deviceId now
//   darktower.devices(kind)                 [{deviceId, label}] (enumerateDevices)
//   darktower.deviceId(kind)                the captured device's id
//   darktower.inviteLink / copyInvite()     the meeting's /m/<id> link / copied (the Invite
//                                           button); darktower.copied: the last link copied
//   darktower.openPanel(name | null)        "people" | "chat" | "devices": the side panel
//   darktower.panel                         the open panel, or null
//   darktower.screen                        the full screen shown (#ended's data-screen:
//                                           "left", "kicked", "meeting-ended",
//                                           "connection-lost", "full", "no-meeting",
//                                           "unsupported", "other") or null
//   darktower.prejoin                       {denied, previewing}: the pre-join screen's capture
//                                           (#prejoin-mic / #prejoin-camera: join muted / with
//                                           the camera off)
//   darktower.stats.decodedScreen           {participantId: decoded screen share frames}
//   darktower.stats.sent.screen             own screen share frames sent
//   darktower.snapshot()                    all of the above as one JSON-able object, plus
//                                           reconnectingParticipants: ids whose tile shows
//                                           "Reconnecting…" (ParticipantUpdated);
//                                           capabilities: the JoinRequest's; subscriptions:
//                                           [{streamId, participantId, kind ("video" | "audio"
//                                           | "mix": the one asked for), derived (null, or
//                                           {streamId, codec, bitrate, mix}: what carries it),
//                                           frames {source, derived, other: dropped}, decoded}]
// E.g. `await page.wait_for_function("darktower.stats.decodedFrames[pid] >= 30", arg=...)`;
// the grid to screenshot is `#grid` (screen shares `#screens`), the reason shown to the person
// is `#end-reason`, a tile's reconnecting marker is `.tile .reconnecting` (hidden unless
// reconnecting), its stats overlay `.tile .stats` (layer, bitrate, RTT, loss), its badges
// `.tile .badge.muted`, `.badge.video-off`, `.badge.sharing` (hidden unless so). The toolbar is
// `#controls` (controls.js: buttons and keyboard shortcuts).

import * as api from "./api.js";
import { initControls, updateControls } from "./controls.js";
import { fillPicker, listDevices } from "./devices.js";
import { SidePanels } from "./panels.js";
import { Prejoin } from "./prejoin.js";
import { ModerationAction } from "./schema.js";
import { missingFeatures, screenOfEnd, screenOfJoinError, showScreen } from "./screens.js";
import { MeetingSession } from "./session.js";
import { PageView, RECONNECTING_TEXT } from "./tiles.js";

const $ = (id) => document.getElementById(id);

export function meetingIdFromLocation(loc = window.location) {
  const m = loc.pathname.match(/^\/m\/([^/]+)/);
  if (m) return decodeURIComponent(m[1]);
  return new URLSearchParams(loc.search).get("meeting") || "";
}

const hostTokenKey = (meetingId) => `darktower.host.${meetingId}`;

let session = null;
let audioContext = null;
let via = null; // connectVia()
let copied = null; // the last invite link copied
const prejoin = new Prejoin();
const panels = new SidePanels({
  session: () => session,
  notice: (text) => view.notice(text),
  onChange: () => session && updateControls(session, panels.open),
});

function inviteLink(meetingId) {
  return new URL(`/m/${encodeURIComponent(meetingId ?? "")}`, location.href).href;
}

// The page around the tiles, as `s` is now (PageView's update hook).
function showSession(s) {
  document.body.dataset.state = s.state;
  $("lobby").hidden = s.state !== "idle" && s.state !== "joining";
  $("meeting").hidden = s.state !== "joined" && s.state !== "reconnecting";
  if (s.state !== "ended") $("ended").hidden = true;
  $("rec").hidden = !s.recording;
  $("e2ee").hidden = !s.encrypted;
  $("meeting-label").textContent = s.meetingId ?? "";
  const link = inviteLink(s.meetingId);
  $("share-link").href = link;
  $("share-link").textContent = link;
  let status = s.state;
  if (s.reconnecting) status = RECONNECTING_TEXT;
  else if (s.state === "joined") {
    status = `${s.participants.size + 1} in the meeting · you are ${s.role}`;
  }
  $("status").textContent = status;
  for (const button of document.querySelectorAll("#lobby button")) {
    button.disabled = s.state === "joining";
  }
  if (s.participantId) {
    updateControls(s, panels.open);
    panels.refresh();
  }
}

const view = new PageView({
  pin: (participantId, pinned) => hooks.pin(participantId, pinned),
  kick: (participantId) => hooks.kick(participantId),
  onUpdate: showSession,
  onEnded: (text) => {
    $("rec").hidden = true;
    $("e2ee").hidden = true;
    $("moderation").hidden = true;
    panels.close();
    showScreen(screenOfEnd(session?.endReason), text);
  },
  onModerated: (text) => {
    $("moderation-text").textContent = text;
    $("moderation").hidden = false;
  },
  onChat: (messages) => panels.addChat(messages),
});

function newSession(certHash) {
  // Created on the person's click when there is one; without a gesture it stays suspended and
  // audio is decoded but not played.
  audioContext ??= typeof AudioContext === "undefined" ? null : new AudioContext();
  audioContext?.resume().catch(() => {});
  session = new MeetingSession(view, { certHash, audioContext, via });
  return session;
}

// `fromLobby`: the person's join takes over the pre-join screen's capture; a script's (the
// test hooks) captures afresh (a test may have replaced getUserMedia after the page loaded).
async function join(
  { meetingId, name, accessToken = null, videoCodecs = null, mixAudio = false },
  fromLobby = false,
) {
  if (!meetingId) throw new Error("a meeting id is needed to join");
  if (session && session.state !== "ended") throw new Error(`already ${session.state}`);
  const token = accessToken ?? sessionStorage.getItem(hostTokenKey(meetingId));
  const certHash = await api.certificateHash();
  const s = newSession(certHash);
  s.local.muted = { ...prejoin.off }; // joined muted or with the camera off
  const preview = await prejoin.take(); // what the pre-join screen previewed
  if (fromLobby) await s.local.start(preview);
  else for (const track of preview?.getTracks() ?? []) track.stop();
  await s.join({ meetingId, name: name || "Guest", accessToken: token, videoCodecs, mixAudio });
  await s.presence.joinedOff();
  history.replaceState(null, "", `/m/${encodeURIComponent(meetingId)}`);
  panels.load().then(() => panels.refresh());
  return s.snapshot();
}

// Dev stack only: the development credential makes this page a meeting owner.
async function create({ name, displayName, settings = {}, ...options } = {}, fromLobby = false) {
  const accessToken = await api.devAccessToken();
  const title = displayName || `${name || "Guest"}'s meeting`;
  const meeting = await api.createMeeting(accessToken, title, settings);
  sessionStorage.setItem(hostTokenKey(meeting.meeting_id), accessToken);
  return join({ ...options, meetingId: meeting.meeting_id, name, accessToken }, fromLobby);
}

function current() {
  if (!session || session.state !== "joined") throw new Error("not in a meeting");
  return session;
}

// Copies the invite link (the Clipboard API; a selected text field where it is refused).
async function copyInvite() {
  const link = inviteLink(current().meetingId);
  try {
    await navigator.clipboard.writeText(link);
  } catch {
    const field = document.createElement("textarea");
    field.value = link;
    document.body.append(field);
    field.select();
    document.execCommand("copy");
    field.remove();
  }
  copied = link;
  view.notice(`Invite link copied: ${link}`);
  return link;
}

const actionOf = (a) => (typeof a === "string" ? ModerationAction[a] : a);

const EMPTY = {
  decodedFrames: {},
  decodedAudio: {},
  decodedScreen: {},
  decodedMix: 0,
  unknownFrames: 0,
  sent: { video: 0, audio: 0 },
  reconnects: { signaling: 0, media: 0 },
  rejoins: 0,
  layers: {},
  publishedLayers: {},
  reports: { sent: 0, failed: 0 },
};

const hooks = {
  create: (options) => create(options),
  join: (options) => join(options),
  kick: async (participantId) => current().kick(participantId).then(() => undefined),
  pin: async (participantId, pinned = true) => current().adaptive.pin(participantId, pinned),
  endMeeting: async () => current().endMeeting().then(() => undefined),
  leave: async () => session?.leave(),
  setMuted: async (kind, muted) => current().presence.setMuted(kind, muted),
  shareScreen: async () => current().presence.shareScreen(),
  stopShare: async () => current().presence.stopShare(),
  moderate: async (participantId, actions, message = "") =>
    current().presence.moderate(participantId, actions.map(actionOf), message),
  sendChat: async (text, to = "") => current().presence.sendChat(text, to),
  switchDevice: async (kind, deviceId) => current().local.switchDevice(kind, deviceId),
  devices: async (kind) => listDevices(kind),
  deviceId: (kind) => session?.local.deviceId(kind) ?? "",
  copyInvite,
  openPanel: (name) => {
    if (name !== panels.open) panels.toggle(name ?? panels.open);
  },
  connectVia: (map) => {
    via = map ? { ...map } : null;
    if (session) {
      session.via = via;
      session.media.via = via;
    }
  },
  snapshot: () => session?.snapshot() ?? { state: "idle", endReason: null, stats: EMPTY },
  get state() {
    return session?.state ?? "idle";
  },
  get reconnecting() {
    return session?.reconnecting ?? false;
  },
  get participantId() {
    return session?.participantId ?? null;
  },
  get role() {
    return session?.role ?? null;
  },
  get meetingId() {
    return session?.meetingId ?? null;
  },
  get participants() {
    return session?.snapshot().participants ?? [];
  },
  get recording() {
    return session?.recording ?? false;
  },
  get encrypted() {
    return session?.encrypted ?? false;
  },
  get safetyNumbers() {
    return session?.safetyNumbers() ?? {};
  },
  get stats() {
    return session?.stats ?? EMPTY;
  },
  get pinned() {
    return [...(session?.adaptive.pinned ?? [])];
  },
  get activeSpeakers() {
    return session?.adaptive.speakers ?? [];
  },
  get endReason() {
    return session?.endReason ?? null;
  },
  get muted() {
    return { ...(session?.local.muted ?? { audio: false, video: false }) };
  },
  get sharing() {
    return Boolean(session?.local.screen);
  },
  get publications() {
    return session?.presence.publications() ?? {};
  },
  get moderation() {
    const p = session?.presence;
    return { last: p?.lastModerated ?? null, all: [...(p?.moderations ?? [])] };
  },
  get chat() {
    return [...(session?.presence.chat ?? [])];
  },
  get inviteLink() {
    return session?.meetingId ? inviteLink(session.meetingId) : null;
  },
  get copied() {
    return copied;
  },
  get panel() {
    return panels.open;
  },
  get screen() {
    return $("ended").hidden ? null : ($("ended").dataset.screen ?? null);
  },
  get prejoin() {
    return { denied: prejoin.denied, previewing: Boolean(prejoin.stream) };
  },
};
window.darktower = hooks;

// --- the lobby and the toolbar --------------------------------------------------------------

function lobbyAction(action) {
  return async (event) => {
    event.preventDefault();
    const name = $("name").value.trim();
    localStorage.setItem("darktower.name", name);
    try {
      await action(name);
    } catch (e) {
      // A failed attempt leaves an ended session: a screen that says why (a full or ended
      // meeting), or the lobby again to try once more.
      if (session?.state === "ended" && !session.participantId) {
        session = null;
        const kind = screenOfJoinError(e);
        if (kind) {
          showScreen(kind);
          return;
        }
        $("ended").hidden = true;
        $("lobby").hidden = false;
        for (const button of document.querySelectorAll("#lobby button")) button.disabled = false;
        prejoin.taken = false;
        prejoin.capture();
      }
      view.notice(e.message);
    }
  };
}

const toggles = {
  mic: () => current().presence.setMuted("audio", !current().presence.isMuted("audio")),
  camera: () => current().presence.setMuted("video", !current().presence.isMuted("video")),
  share: () => (current().local.screen ? hooks.stopShare() : hooks.shareScreen()),
  invite: copyInvite,
  leave: () => session?.leave(),
  endMeeting: () => hooks.endMeeting(),
  panel: (name) => {
    panels.toggle(name);
    if (name === "devices" && panels.open === "devices") fillSwitches();
  },
};

function fillSwitches() {
  fillPicker($("camera-switch"), "video", hooks.deviceId("video")).catch(() => {});
  fillPicker($("mic-switch"), "audio", hooks.deviceId("audio")).catch(() => {});
}

function init() {
  const missing = missingFeatures();
  if (missing.length > 0) {
    showScreen("unsupported", `This browser lacks ${missing.join(", ")}`);
    return;
  }
  $("name").value = localStorage.getItem("darktower.name") ?? "";
  $("meeting-id").value = meetingIdFromLocation();
  $("create").addEventListener(
    "click",
    lobbyAction((name) => create({ name }, true)),
  );
  $("lobby").addEventListener(
    "submit",
    lobbyAction((name) => join({ meetingId: $("meeting-id").value.trim(), name }, true)),
  );
  initControls(toggles, (text) => view.notice(text));
  for (const [id, kind] of [["camera-switch", "video"], ["mic-switch", "audio"]]) {
    $(id).addEventListener("change", () => {
      hooks.switchDevice(kind, $(id).value).catch((e) => view.notice(`Could not switch: ${e.message}`));
    });
  }
  $("side-close").addEventListener("click", () => panels.close());
  $("moderation-close").addEventListener("click", () => {
    $("moderation").hidden = true;
  });
  $("rejoin").addEventListener("click", () => location.reload());
  prejoin.init();
}

init();
