// The meeting's tiles: the DOM side of a MeetingSession (its `view`, see session.js). A tile per
// participant in `#grid` (the own one first: the camera's preview), a large tile per screen
// share in `#screens`, each tile's badges (muted, camera off, sharing: docs/protocol.md §18.1),
// its reconnecting mark, stats overlay, safety number and Pin / Remove buttons. The grid's
// columns follow the number of tiles (grid.js); the rest of the page (toolbar, panels, end
// screens) is told through `hooks` given by app.js.

import { layoutGrid } from "./grid.js";

const $ = (id) => document.getElementById(id);
// Limit: notices kept on screen; the oldest goes first.
const MAX_NOTICES = 5;
export const RECONNECTING_TEXT = "Reconnecting…";
const SVG_NS = "http://www.w3.org/2000/svg";
// 16×16 stroked outlines of the tile badges.
const BADGES = [
  ["muted", "Microphone muted", "M8 1.5a2 2 0 0 0-2 2V8a2 2 0 0 0 4 0V3.5a2 2 0 0 0-2-2zM4.5 7.5a3.5 3.5 0 0 0 7 0M8 11v3M2 2l12 12"],
  ["video-off", "Camera off", "M1.5 4.5h8.5v7H1.5zM10 7l4.5-2.5v7L10 9M2 2l12 12"],
  ["sharing", "Sharing the screen", "M1.5 2.5h13v8.5h-13zM5 14h6M8 11v3"],
];

function badge([key, label, path]) {
  const span = document.createElement("span");
  span.className = `badge ${key}`;
  span.setAttribute("role", "img");
  span.setAttribute("aria-label", label);
  span.title = label;
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("aria-hidden", "true");
  const p = document.createElementNS(SVG_NS, "path");
  p.setAttribute("d", path);
  svg.append(p);
  span.append(svg);
  span.hidden = true;
  return span;
}

function initials(name) {
  const words = String(name).replace(/\(you\)$/, "").trim().split(/\s+/).filter(Boolean);
  return words.slice(0, 2).map((w) => [...w][0].toUpperCase()).join("") || "?";
}

export class PageView {
  // `hooks`: {pin(participantId, pinned), kick(participantId), onUpdate(session),
  // onEnded(session, text), onModerated(text), onChat(messages)} (app.js).
  constructor(hooks) {
    this.hooks = hooks;
    this.tiles = new Map();
    this.screens = new Map(); // stream id -> screen tile (another's), "self" -> the own share
    this.preview = null;
    window.addEventListener("resize", () => this.layout()); // a phone turned, a window resized
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
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.setAttribute("aria-hidden", "true");
    avatar.textContent = initials(name);
    const marker = document.createElement("span");
    marker.className = "reconnecting";
    marker.textContent = RECONNECTING_TEXT;
    marker.hidden = true;
    const stats = document.createElement("span");
    stats.className = "stats";
    stats.hidden = true;
    const caption = document.createElement("figcaption");
    const badges = document.createElement("span");
    badges.className = "badges";
    badges.append(...BADGES.map(badge));
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    // The safety number of its key (an encrypted meeting): compared out of band.
    const safety = document.createElement("span");
    safety.className = "safety";
    safety.title = "Safety number: the same on every page for this person";
    safety.hidden = true;
    caption.append(badges, label, safety);
    if (!self) {
      const pin = document.createElement("button");
      pin.type = "button";
      pin.className = "pin";
      pin.textContent = "Pin";
      pin.title = `Keep ${name}'s video whoever speaks`;
      pin.addEventListener("click", () => {
        const pinned = !tile.classList.contains("pinned");
        this.hooks.pin(participantId, pinned).catch((e) => this.notice(`Could not pin: ${e.message}`));
      });
      caption.append(pin);
    }
    if (kickable) {
      const kick = document.createElement("button");
      kick.type = "button";
      kick.className = "kick";
      kick.textContent = "Remove";
      kick.title = `Remove ${name} from the meeting`;
      kick.addEventListener("click", () => {
        kick.disabled = true;
        this.hooks.kick(participantId).catch((e) => {
          kick.disabled = false;
          this.notice(`Could not remove ${name}: ${e.message}`);
        });
      });
      caption.append(kick);
    }
    tile.append(media, avatar, marker, stats, caption);
    $("grid").append(tile);
    this.tiles.set(participantId, tile);
    this.layout();
    return { canvas: self ? null : media };
  }

  removeTile(participantId) {
    this.tiles.get(participantId)?.remove();
    this.tiles.delete(participantId);
    this.layout();
  }

  // The own tile after a rejoin: the same element under the new participant id.
  renameTile(oldId, newId) {
    const tile = this.tiles.get(oldId);
    if (!tile) return;
    this.tiles.delete(oldId);
    tile.dataset.participantId = newId;
    this.tiles.set(newId, tile);
  }

  // A screen share's own large tile (another's VIDEO_SCREEN stream).
  addScreenTile(participantId, streamId, name) {
    const canvas = document.createElement("canvas");
    canvas.width = 1280;
    canvas.height = 720;
    const tile = this.screenTile(`${name}'s screen`, canvas);
    tile.dataset.participantId = participantId;
    tile.dataset.streamId = streamId;
    this.screens.set(streamId, tile);
    this.layout();
    return { canvas };
  }

  removeScreenTile(streamId) {
    this.screens.get(streamId)?.remove();
    this.screens.delete(streamId);
    this.layout();
  }

  // The own screen share's preview (null: stopped).
  setScreenPreview(stream) {
    this.removeScreenTile("self");
    if (!stream) return;
    const video = document.createElement("video");
    video.muted = true;
    video.autoplay = true;
    video.playsInline = true;
    video.srcObject = stream;
    const tile = this.screenTile("You are sharing your screen", video);
    tile.classList.add("self");
    this.screens.set("self", tile);
    this.layout();
  }

  screenTile(text, media) {
    const tile = document.createElement("figure");
    tile.className = "tile screen";
    const caption = document.createElement("figcaption");
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = text;
    caption.append(label);
    tile.append(media, caption);
    $("screens").append(tile);
    return tile;
  }

  layout() {
    layoutGrid($("grid"), this.tiles.size, $("stage"), this.screens.size);
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
    for (const video of document.querySelectorAll(".tile.self video")) {
      if (!video.closest(".screen")) video.srcObject = stream;
    }
  }

  notice(text) {
    const list = $("notices");
    const item = document.createElement("li");
    item.textContent = text;
    list.append(item);
    while (list.children.length > MAX_NOTICES) list.firstElementChild.remove();
  }

  moderated(text) {
    this.hooks.onModerated(text);
  }

  chatChanged(messages) {
    this.hooks.onChat(messages);
  }

  update(session) {
    const safetyNumbers = session.safetyNumbers();
    const dominant = session.adaptive?.speakers[0] ?? null;
    const publications = session.presence?.publications() ?? {};
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
      const state = publications[participantId] ?? {};
      tile.querySelector(".badge.muted").hidden = !state.audioMuted;
      tile.querySelector(".badge.video-off").hidden = !state.videoOff;
      tile.querySelector(".badge.sharing").hidden = !state.sharing;
      tile.classList.toggle("video-off", Boolean(state.videoOff));
    }
    this.hooks.onUpdate(session);
  }

  ended(text) {
    $("grid").replaceChildren();
    $("screens").replaceChildren();
    this.tiles.clear();
    this.screens.clear();
    this.hooks.onEnded(text);
  }
}
