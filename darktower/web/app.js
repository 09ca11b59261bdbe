// The Dark Tower browser client: the page's DOM and its test hooks. The meeting logic is in
// session.js; the wire codecs in proto.js and frames.js; the GC calls in api.js.
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
//                                           takes the audio mix instead of each one's audio
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
//   darktower.snapshot()                    all of the above as one JSON-able object, plus
//                                           reconnectingParticipants: ids whose tile shows
//                                           "Reconnecting…" (ParticipantUpdated);
//                                           capabilities: the JoinRequest's; subscriptions:
//                                           [{streamId, participantId, kind ("video" | "audio"
//                                           | "mix": the one asked for), derived (null, or
//                                           {streamId, codec, bitrate, mix}: what carries it),
//                                           frames {source, derived, other: dropped}, decoded}]
// E.g. `await page.wait_for_function("darktower.stats.decodedFrames[pid] >= 30", arg=...)`;
// the grid to screenshot is `#grid`, the reason shown to the person is `#end-reason`, a tile's
// reconnecting marker is `.tile .reconnecting` (hidden unless reconnecting), its stats overlay
// `.tile .stats` (layer, bitrate, RTT, loss).

import * as api from "./api.js";
import { MeetingSession } from "./session.js";

const $ = (id) => document.getElementById(id);
// Limit: notices kept on screen; the oldest goes first.
const MAX_NOTICES = 5;
const RECONNECTING_TEXT = "Reconnecting…";

export function meetingIdFromLocation(loc = window.location) {
  const m = loc.pathname.match(/^\/m\/([^/]+)/);
  if (m) return decodeURIComponent(m[1]);
  return new URLSearchParams(loc.search).get("meeting") || "";
}

const hostTokenKey = (meetingId) => `darktower.host.${meetingId}`;

// The DOM side of a MeetingSession (its `view`).
class PageView {
  constructor() {
    this.tiles = new Map();
  }

  addTile(participantId, name, { self, kickable }) {
    const tile = document.createElement("figure");
    tile.className = self ? "tile self" : "tile";
    tile.dataset.participantId = participantId;
    const media = document.createElement(self ? "video" : "canvas");
    if (self) {
      media.muted = true;
      media.autoplay = true;
      media.playsInline = true;
      media.srcObject = this.preview ?? null;
    } else {
      media.width = 640;
      media.height = 480;
    }
    const marker = document.createElement("span");
    marker.className = "reconnecting";
    marker.textContent = RECONNECTING_TEXT;
    marker.hidden = true;
    const stats = document.createElement("span");
    stats.className = "stats";
    stats.hidden = true;
    const caption = document.createElement("figcaption");
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    // The safety number of its key (an encrypted meeting): compared out of band.
    const safety = document.createElement("span");
    safety.className = "safety";
    safety.title = "Safety number: the same on every page for this person";
    safety.hidden = true;
    caption.append(label, safety);
    if (!self) {
      const pin = document.createElement("button");
      pin.className = "pin";
      pin.textContent = "Pin";
      pin.title = `Keep ${name}'s video whoever speaks`;
      pin.addEventListener("click", () => {
        const pinned = !tile.classList.contains("pinned");
        hooks.pin(participantId, pinned).catch((e) => this.notice(`Could not pin: ${e.message}`));
      });
      caption.append(pin);
    }
    if (kickable) {
      const kick = document.createElement("button");
      kick.className = "kick";
      kick.textContent = "Remove";
      kick.title = `Remove ${name} from the meeting`;
      kick.addEventListener("click", () => {
        kick.disabled = true;
        hooks.kick(participantId).catch((e) => {
          kick.disabled = false;
          this.notice(`Could not remove ${name}: ${e.message}`);
        });
      });
      caption.append(kick);
    }
    tile.append(media, marker, stats, caption);
    $("grid").append(tile);
    this.tiles.set(participantId, tile);
    return { canvas: self ? null : media };
  }

  removeTile(participantId) {
    this.tiles.get(participantId)?.remove();
    this.tiles.delete(participantId);
  }

  // The own tile after a rejoin: the same element under the new participant id.
  renameTile(oldId, newId) {
    const tile = this.tiles.get(oldId);
    if (!tile) return;
    this.tiles.delete(oldId);
    tile.dataset.participantId = newId;
    this.tiles.set(newId, tile);
  }

  // The stats overlay of a tile (adaptive.js).
  tileStats(participantId, text) {
    const overlay = this.tiles.get(participantId)?.querySelector(".stats");
    if (!overlay) return;
    overlay.textContent = text;
    overlay.hidden = !text;
  }

  setPreview(stream) {
    this.preview = stream;
    for (const video of document.querySelectorAll(".tile.self video")) video.srcObject = stream;
  }

  notice(text) {
    const list = $("notices");
    const item = document.createElement("li");
    item.textContent = text;
    list.append(item);
    while (list.children.length > MAX_NOTICES) list.firstElementChild.remove();
  }

  update(session) {
    document.body.dataset.state = session.state;
    $("lobby").hidden = session.state !== "idle" && session.state !== "joining";
    $("meeting").hidden = session.state !== "joined" && session.state !== "reconnecting";
    $("ended").hidden = session.state !== "ended";
    $("end-meeting").hidden = session.role !== "host";
    $("rec").hidden = !session.recording;
    $("e2ee").hidden = !session.encrypted;
    $("meeting-label").textContent = session.meetingId ?? "";
    const link = new URL(`/m/${encodeURIComponent(session.meetingId ?? "")}`, location.href);
    $("share-link").href = link.href;
    $("share-link").textContent = link.href;
    let status = session.state;
    if (session.reconnecting) status = RECONNECTING_TEXT;
    else if (session.state === "joined") {
      status = `${session.participants.size + 1} in the meeting · you are ${session.role}`;
    }
    $("status").textContent = status;
    const safetyNumbers = session.safetyNumbers();
    const dominant = session.adaptive?.speakers[0] ?? null;
    for (const [participantId, tile] of this.tiles) {
      const safety = tile.querySelector(".safety");
      safety.textContent = safetyNumbers[participantId] ?? "";
      safety.hidden = !safety.textContent;
      const reconnecting =
        participantId === session.participantId
          ? session.reconnecting
          : Boolean(session.participants.get(participantId)?.reconnecting);
      tile.classList.toggle("is-reconnecting", reconnecting);
      tile.classList.toggle("speaking", participantId === dominant);
      const pinned = Boolean(session.adaptive?.pinned.has(participantId));
      tile.classList.toggle("pinned", pinned);
      const pin = tile.querySelector(".pin");
      if (pin) pin.textContent = pinned ? "Unpin" : "Pin";
      tile.querySelector(".reconnecting").hidden = !reconnecting;
    }
    for (const button of document.querySelectorAll("#lobby button")) {
      button.disabled = session.state === "joining";
    }
  }

  ended(text) {
    $("meeting").hidden = true;
    $("lobby").hidden = true;
    $("ended").hidden = false;
    $("end-reason").textContent = text;
    $("rec").hidden = true;
    $("e2ee").hidden = true;
    $("grid").replaceChildren();
    this.tiles.clear();
  }
}

const view = new PageView();
let session = null;
let audioContext = null;
let via = null; // connectVia()

function newSession(certHash) {
  // Created on the person's click when there is one; without a gesture it stays suspended and
  // audio is decoded but not played.
  audioContext ??= typeof AudioContext === "undefined" ? null : new AudioContext();
  audioContext?.resume().catch(() => {});
  session = new MeetingSession(view, { certHash, audioContext, via });
  return session;
}

async function join({ meetingId, name, accessToken = null, videoCodecs = null, mixAudio = false }) {
  if (!meetingId) throw new Error("a meeting id is needed to join");
  if (session && session.state !== "ended") throw new Error(`already ${session.state}`);
  const token = accessToken ?? sessionStorage.getItem(hostTokenKey(meetingId));
  const certHash = await api.certificateHash();
  const s = newSession(certHash);
  await s.join({ meetingId, name: name || "Guest", accessToken: token, videoCodecs, mixAudio });
  history.replaceState(null, "", `/m/${encodeURIComponent(meetingId)}`);
  return s.snapshot();
}

// Dev stack only: the development credential makes this page a meeting owner.
async function create({ name, displayName, settings = {}, ...options } = {}) {
  const accessToken = await api.devAccessToken();
  const title = displayName || `${name || "Guest"}'s meeting`;
  const meeting = await api.createMeeting(accessToken, title, settings);
  sessionStorage.setItem(hostTokenKey(meeting.meeting_id), accessToken);
  return join({ ...options, meetingId: meeting.meeting_id, name, accessToken });
}

function current() {
  if (!session || session.state !== "joined") throw new Error("not in a meeting");
  return session;
}

const EMPTY = {
  decodedFrames: {},
  decodedAudio: {},
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
  create,
  join,
  kick: async (participantId) => current().kick(participantId).then(() => undefined),
  pin: async (participantId, pinned = true) => current().adaptive.pin(participantId, pinned),
  endMeeting: async () => current().endMeeting().then(() => undefined),
  leave: async () => session?.leave(),
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
};
window.darktower = hooks;

// --- the lobby ------------------------------------------------------------------------------------

function lobbyAction(action) {
  return async (event) => {
    event.preventDefault();
    const name = $("name").value.trim();
    localStorage.setItem("darktower.name", name);
    try {
      await action(name);
    } catch (e) {
      view.notice(e.message);
      // A failed attempt leaves an ended session: let the person try again from the lobby.
      if (session?.state === "ended" && !session.participantId) {
        session = null;
        $("ended").hidden = true;
        $("lobby").hidden = false;
        for (const button of document.querySelectorAll("#lobby button")) button.disabled = false;
      }
    }
  };
}

function init() {
  $("name").value = localStorage.getItem("darktower.name") ?? "";
  $("meeting-id").value = meetingIdFromLocation();
  $("create").addEventListener(
    "click",
    lobbyAction((name) => create({ name })),
  );
  $("lobby").addEventListener(
    "submit",
    lobbyAction((name) => join({ meetingId: $("meeting-id").value.trim(), name })),
  );
  $("leave").addEventListener("click", () => session?.leave());
  $("end-meeting").addEventListener("click", () => {
    hooks.endMeeting().catch((e) => view.notice(`Could not end the meeting: ${e.message}`));
  });
  $("rejoin").addEventListener("click", () => location.reload());
}

init();
