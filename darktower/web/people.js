// The meeting's participant list as the page shows it (docs/protocol.md §18.1, §18.2): each
// participant's name, host badge, publication state (muted, camera off, sharing, blocked by a
// host), connection state and speaking, and for a host a menu per other participant with the
// moderation actions and "Remove from meeting". A component on its own: the page gives it a root
// element, `isHost()`, `moderate(participantId, actions)` (ModerationAction numbers) and
// `kick(participantId)`, and calls `update(participants)` with the whole list whenever it
// changes.
//
// Rows are kept by participant id and only what changed is touched, so an update of a large
// meeting is cheap and an open menu keeps its focus. Names come from the network: they are
// inserted as text, never as HTML.

import { ModerationAction } from "./schema.js";

const A = ModerationAction;

// The host's menu: [key, label, action, shown while (publication)].
const MENU_ACTIONS = [
  ["mute-audio", "Mute microphone", A.MODERATION_MUTE_AUDIO, (p) => !p.audioBlocked],
  ["stop-video", "Stop camera", A.MODERATION_STOP_VIDEO, (p) => !p.videoBlocked],
  ["stop-screen", "Stop screen share", A.MODERATION_STOP_SCREEN, (p) => p.sharing],
  ["allow-audio", "Allow microphone", A.MODERATION_ALLOW_AUDIO, (p) => p.audioBlocked],
  ["allow-video", "Allow camera", A.MODERATION_ALLOW_VIDEO, (p) => p.videoBlocked],
  ["allow-screen", "Allow screen share", A.MODERATION_ALLOW_SCREEN, (p) => p.screenBlocked],
];
const ACTION_BY_KEY = new Map(MENU_ACTIONS.map(([key, label, action]) => [key, { label, action }]));

// 16×16 stroked outlines (currentColor).
const SLASH = "M2 2l12 12";
const MIC = "M8 1.5a2 2 0 0 0-2 2V8a2 2 0 0 0 4 0V3.5a2 2 0 0 0-2-2zM4.5 7.5a3.5 3.5 0 0 0 7 0M8 11v3";
const CAMERA = "M1.5 4.5h8.5v7H1.5zM10 7l4.5-2.5v7L10 9";
const SCREEN = "M1.5 2.5h13v8.5h-13zM5 14h6M8 11v3";
// The icons of a row by key, each an outline (its label is set by the state it shows).
const ICONS = {
  reconnecting: "M13 8a5 5 0 1 1-1.5-3.6M13 1.5v3h-3",
  audio: MIC + SLASH,
  video: CAMERA + SLASH,
  sharing: SCREEN,
  screenBlocked: SCREEN + SLASH,
  speaking: "M2 6v4h2.5L8 13V3L4.5 6zM10.5 5.5a3.5 3.5 0 0 1 0 5M12.5 3.5a6 6 0 0 1 0 9",
};
const SVG_NS = "http://www.w3.org/2000/svg";

let panels = 0; // for element ids unique in the page

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function icon(key) {
  const wrap = el("span", `person-icon icon-${key}`);
  wrap.setAttribute("role", "img");
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS(SVG_NS, "path");
  path.setAttribute("d", ICONS[key]);
  svg.append(path);
  wrap.append(svg);
  wrap.hidden = true;
  return wrap;
}

function show(node, shown) {
  if (node.hidden === shown) node.hidden = !shown;
}

function setIcon(node, shown, label) {
  show(node, shown);
  if (shown && node.getAttribute("aria-label") !== label) {
    node.setAttribute("aria-label", label);
    node.title = label;
  }
}

// A rejected action (a SignalingError, or any error) as a short reason.
function reasonOf(error) {
  const code = error?.codeName ?? (typeof error?.code === "string" ? error.code : "");
  if (code === "FORBIDDEN") return "only a host can do this";
  if (code === "NOT_FOUND") return "they are no longer in the meeting";
  if (code === "RATE_LIMITED") return "too many requests, try again in a moment";
  return (typeof error?.message === "string" && error.message) || "the server refused";
}

const STATE_KEYS = ["audioMuted", "videoOff", "sharing", "audioBlocked", "videoBlocked", "screenBlocked"];

function publicationOf(p) {
  const s = p?.publication ?? {};
  return Object.fromEntries(STATE_KEYS.map((key) => [key, Boolean(s[key])]));
}

// One participant's row: its elements, built once, and the state last shown.
class PersonRow {
  constructor(participantId, uid) {
    this.participantId = participantId;
    this.name = "";
    this.publication = publicationOf(null);
    this.confirming = false;
    this.item = el("li", "person");
    this.item.dataset.participantId = participantId;
    this.avatar = el("span", "person-avatar");
    this.avatar.setAttribute("aria-hidden", "true");
    const main = el("span", "person-main");
    this.nameNode = el("span", "person-name");
    this.you = el("span", "person-you", "(you)");
    this.host = el("span", "person-host", "Host");
    main.append(this.nameNode, this.you, this.host);
    const icons = el("span", "person-icons");
    this.icons = {};
    for (const key of Object.keys(ICONS)) {
      this.icons[key] = icon(key);
      if (key === "screenBlocked") this.icons[key].classList.add("blocked");
      icons.append(this.icons[key]);
    }
    this.error = el("p", "person-error");
    this.error.setAttribute("role", "alert");
    this.error.hidden = true;
    this.item.append(this.avatar, main, icons);
    this.menuId = `dt-people-${uid}-menu`;
    this.actions = null; // the menu button and its menu, while the viewer is a host
    this.item.append(this.error);
  }

  update(p, self, hostView) {
    const name = typeof p.name === "string" && p.name ? p.name : "(no name)";
    if (name !== this.name) {
      this.name = name;
      setText(this.nameNode, name);
      setText(this.avatar, [...name][0]?.toUpperCase() ?? "?");
      if (this.actions) this.labelActions();
    }
    this.self = self;
    this.isHost = Boolean(p.host);
    show(this.you, self);
    show(this.host, this.isHost);
    const s = publicationOf(p);
    this.publication = s;
    const reconnecting = p.connection === "reconnecting";
    const speaking = Boolean(p.speaking);
    this.item.classList.toggle("self", self);
    this.item.classList.toggle("reconnecting", reconnecting);
    this.item.classList.toggle("speaking", speaking);
    setIcon(this.icons.reconnecting, reconnecting, "Reconnecting");
    setIcon(
      this.icons.audio,
      s.audioMuted || s.audioBlocked,
      s.audioBlocked ? "Microphone blocked by host" : "Microphone muted",
    );
    setIcon(
      this.icons.video,
      s.videoOff || s.videoBlocked,
      s.videoBlocked ? "Camera blocked by host" : "Camera off",
    );
    setIcon(this.icons.sharing, s.sharing, "Sharing screen");
    setIcon(this.icons.screenBlocked, s.screenBlocked, "Screen share blocked by host");
    setIcon(this.icons.speaking, speaking, "Speaking");
    this.icons.audio.classList.toggle("blocked", s.audioBlocked);
    this.icons.video.classList.toggle("blocked", s.videoBlocked);

    const menu = hostView && !self;
    if (menu && !this.actions) this.buildActions();
    if (!menu && this.actions) {
      this.actions.wrap.remove();
      this.actions.menu.remove();
      this.actions = null;
      this.confirming = false;
    }
    if (this.actions) this.renderMenu();
  }

  buildActions() {
    const wrap = el("span", "person-actions");
    const button = el("button", "person-menu-button");
    button.type = "button";
    button.setAttribute("aria-haspopup", "menu");
    button.setAttribute("aria-expanded", "false");
    button.setAttribute("aria-controls", this.menuId);
    const dots = el("span", "", "⋯");
    dots.setAttribute("aria-hidden", "true");
    button.append(dots);
    const menu = el("div", "person-menu");
    menu.id = this.menuId;
    menu.setAttribute("role", "menu");
    menu.hidden = true;
    // The menu opens inside the row, below it (a scrolled list would clip a floating one).
    wrap.append(button);
    this.item.insertBefore(wrap, this.error);
    this.item.insertBefore(menu, this.error);
    this.actions = { wrap, button, menu, items: new Map(), keys: "" };
    this.labelActions();
  }

  labelActions() {
    const label = `Actions for ${this.name}`;
    this.actions.button.setAttribute("aria-label", label);
    this.actions.button.title = label;
    this.actions.menu.setAttribute("aria-label", label);
    this.actions.prompt?.replaceChildren(`Remove ${this.name} from the meeting?`);
  }

  get open() {
    return Boolean(this.actions && !this.actions.menu.hidden);
  }

  // The menu's entries for the current state; elements are reused by key, so a focused entry
  // that is still shown keeps its focus.
  renderMenu() {
    const a = this.actions;
    const keys = this.confirming
      ? ["kick-confirm", "kick-cancel"]
      : [...MENU_ACTIONS.filter(([, , , shown]) => shown(this.publication)).map(([k]) => k), "kick"];
    const joined = keys.join(" ");
    if (joined === a.keys) return;
    const focused = [...a.items.entries()].find(([, node]) => node === document.activeElement)?.[0];
    a.keys = joined;
    const nodes = keys.map((key) => {
      let node = a.items.get(key);
      if (!node) {
        const label = {
          kick: "Remove from meeting",
          "kick-confirm": "Remove",
          "kick-cancel": "Cancel",
        }[key] ?? ACTION_BY_KEY.get(key).label;
        node = el("button", `person-menu-item item-${key}`, label);
        node.type = "button";
        node.tabIndex = -1;
        node.setAttribute("role", "menuitem");
        node.dataset.key = key;
        if (key === "kick" || key === "kick-confirm") node.classList.add("destructive");
        a.items.set(key, node);
      }
      return node;
    });
    if (this.confirming) {
      a.prompt ??= el("p", "person-menu-prompt");
      a.prompt.setAttribute("role", "presentation");
      a.prompt.replaceChildren(`Remove ${this.name} from the meeting?`);
      a.menu.replaceChildren(a.prompt, ...nodes);
    } else {
      a.menu.replaceChildren(...nodes);
    }
    if (this.open && focused !== undefined) {
      (a.items.get(focused)?.isConnected ? a.items.get(focused) : nodes[0]).focus();
    }
  }

  menuItems() {
    return this.actions ? [...this.actions.menu.querySelectorAll('[role="menuitem"]')] : [];
  }

  showError(text) {
    this.error.textContent = text;
    this.error.hidden = !text;
  }
}

export class PeoplePanel {
  // `isHost()` -> whether the viewer is a host (asked at each update); `moderate(participantId,
  // actions)` and `kick(participantId)` -> promises, rejected with the server's error.
  constructor(root, { isHost = () => false, selfId = "", moderate, kick } = {}) {
    this.root = root;
    this.isHost = isHost;
    this.selfId = selfId;
    this.moderateFn = moderate;
    this.kickFn = kick;
    this.uid = ++panels;
    this.rowIds = 0;
    this.rows = new Map(); // participantId -> PersonRow
    this.openRow = null;
    this.destroyed = false;

    this.panel = el("section", "people-panel");
    this.panel.setAttribute("aria-label", "Participants");
    this.count = el("p", "people-count", "0 in the meeting");
    this.count.setAttribute("aria-live", "polite");
    this.list = el("ul", "people-list");
    this.list.setAttribute("role", "list");
    this.list.setAttribute("aria-label", "Participants");
    this.panel.append(this.count, this.list);
    this.root.append(this.panel);

    this.onClick = (e) => this.click(e);
    this.onKeyDown = (e) => this.keydown(e);
    this.onOutside = (e) => {
      const a = this.openRow?.actions;
      if (a && !a.wrap.contains(e.target) && !a.menu.contains(e.target)) this.close(false);
    };
    this.list.addEventListener("click", this.onClick);
    this.list.addEventListener("keydown", this.onKeyDown);
    document.addEventListener("pointerdown", this.onOutside, true);
  }

  setSelf(selfId) {
    this.selfId = selfId ?? "";
  }

  // The whole list: [{participantId, name, host, self, connection, publication, speaking}].
  update(participants) {
    if (this.destroyed) return;
    const active = this.list.contains(document.activeElement) ? document.activeElement : null;
    let hostView = false;
    try {
      hostView = Boolean(this.isHost());
    } catch {
      hostView = false;
    }
    const seen = new Map();
    for (const p of participants ?? []) {
      if (p && typeof p.participantId === "string" && p.participantId) seen.set(p.participantId, p);
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        if (this.openRow === row) this.openRow = null;
        row.item.remove();
        this.rows.delete(id);
      }
    }
    for (const [id, p] of seen) {
      let row = this.rows.get(id);
      if (!row) {
        row = new PersonRow(id, `${this.uid}-${++this.rowIds}`);
        this.rows.set(id, row);
      }
      const self = Boolean(p.self) || (this.selfId !== "" && id === this.selfId);
      row.update(p, self, hostView);
      if (this.openRow === row && !row.actions) this.openRow = null;
    }
    // Self first, then hosts, then by name; moves only the rows out of place.
    const order = [...this.rows.values()].sort(
      (a, b) =>
        Number(b.self) - Number(a.self) ||
        Number(b.isHost) - Number(a.isHost) ||
        a.name.localeCompare(b.name, undefined, { sensitivity: "base" }) ||
        (a.participantId < b.participantId ? -1 : a.participantId > b.participantId ? 1 : 0),
    );
    order.forEach((row, i) => {
      const at = this.list.children[i] ?? null;
      if (at !== row.item) this.list.insertBefore(row.item, at);
    });
    setText(this.count, `${this.rows.size} in the meeting`);
    // A moved row loses focus in some browsers: give it back.
    if (active && document.activeElement !== active) {
      if (active.isConnected) active.focus({ preventScroll: true });
      else if (this.openRow) this.openRow.menuItems()[0]?.focus({ preventScroll: true });
    }
  }

  rowOf(target) {
    const item = target?.closest?.("li.person");
    return item ? this.rows.get(item.dataset.participantId) : undefined;
  }

  openMenu(row, focus = "first") {
    if (this.openRow && this.openRow !== row) this.close(false);
    row.confirming = false;
    row.renderMenu();
    row.actions.menu.hidden = false;
    row.actions.button.setAttribute("aria-expanded", "true");
    this.openRow = row;
    row.actions.menu.scrollIntoView?.({ block: "nearest" });
    const items = row.menuItems();
    items[focus === "last" ? items.length - 1 : 0]?.focus();
  }

  // Closes the open menu; `refocus` puts the focus back on its button.
  close(refocus = true) {
    const row = this.openRow;
    if (!row) return;
    this.openRow = null;
    if (!row.actions) return;
    row.actions.menu.hidden = true;
    row.actions.button.setAttribute("aria-expanded", "false");
    if (row.confirming) {
      row.confirming = false;
      row.renderMenu();
    }
    if (refocus) row.actions.button.focus();
  }

  click(e) {
    const row = this.rowOf(e.target);
    if (!row?.actions) return;
    if (row.actions.button.contains(e.target)) {
      if (row.open) this.close();
      else this.openMenu(row);
      return;
    }
    const item = e.target.closest('[role="menuitem"]');
    if (item && row.actions.menu.contains(item)) this.choose(row, item.dataset.key);
  }

  choose(row, key) {
    if (key === "kick") {
      row.confirming = true;
      row.renderMenu();
      row.actions.items.get("kick-cancel").focus();
      return;
    }
    if (key === "kick-cancel") {
      row.confirming = false;
      row.renderMenu();
      row.actions.items.get("kick").focus();
      return;
    }
    this.close();
    row.showError("");
    const pid = row.participantId;
    const name = row.name;
    if (key === "kick-confirm") {
      this.run(row, () => this.kickFn(pid), `Could not remove ${name}`);
      return;
    }
    const entry = ACTION_BY_KEY.get(key);
    if (entry) {
      this.run(row, () => this.moderateFn(pid, [entry.action]), `${entry.label} failed for ${name}`);
    }
  }

  async run(row, call, failure) {
    try {
      await call();
    } catch (error) {
      if (!this.destroyed && this.rows.get(row.participantId) === row) {
        row.showError(`${failure}: ${reasonOf(error)}`);
      }
    }
  }

  keydown(e) {
    const row = this.rowOf(e.target);
    if (!row?.actions) return;
    const { button, menu } = row.actions;
    if (e.target === button) {
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        this.openMenu(row, e.key === "ArrowUp" ? "last" : "first");
      } else if (e.key === "Escape" && row.open) {
        e.preventDefault();
        e.stopPropagation();
        this.close();
      }
      return;
    }
    if (!menu.contains(e.target)) return;
    const items = row.menuItems();
    const at = items.indexOf(e.target);
    let next = null;
    if (e.key === "ArrowDown") next = (at + 1) % items.length;
    else if (e.key === "ArrowUp") next = (at - 1 + items.length) % items.length;
    else if (e.key === "Home") next = 0;
    else if (e.key === "End") next = items.length - 1;
    else if (e.key === "Escape") {
      e.preventDefault();
      e.stopPropagation();
      this.close();
      return;
    } else if (e.key === "Tab") {
      this.close(false);
      return;
    }
    if (next !== null && items.length) {
      e.preventDefault();
      items[next].focus();
    }
  }

  destroy() {
    if (this.destroyed) return;
    this.destroyed = true;
    this.list.removeEventListener("click", this.onClick);
    this.list.removeEventListener("keydown", this.onKeyDown);
    document.removeEventListener("pointerdown", this.onOutside, true);
    this.panel.remove();
    this.rows.clear();
    this.openRow = null;
  }
}
