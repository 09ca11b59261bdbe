// The meeting's chat as the page shows it (docs/protocol.md §18.3): a log of ChatMessages, a
// recipient picker (everyone, or one participant), a text box and a Send button. A component on
// its own: the page gives it a root element, a `send(text, toParticipantId)` that resolves on
// the MC's Ack (rejects with its error), `people()` for the picker, and each ChatMessage and
// ChatHistory it receives.
//
// Every text shown here comes from the network (names, messages): it is inserted as text
// (textContent), never as HTML.

import { ErrorCode } from "./schema.js";

// Limit: messages kept in the log. Policy: beyond it the oldest are removed from the page.
export const MAX_MESSAGES = 500;
// Limit: message ids remembered to drop a message already shown (a resumed session's history
// repeats messages, docs/protocol.md §18.3). Policy: the oldest ids are forgotten first; twice
// the log, so an id stays remembered after its message left the log.
const MAX_SEEN_IDS = 2 * MAX_MESSAGES;
// The MC's bound on a message's text (characters). `maxlength` counts UTF-16 code units, never
// fewer than characters, so the box never holds more than the MC takes.
export const MAX_TEXT = 2000;
// Names of participants remembered for "to <name>" after they left. Policy: oldest first.
const MAX_NAMES = 256;
// The log follows new messages while its view is within this many pixels of the bottom.
const STICK_PX = 48;

const ENCRYPTED_NOTICE =
  "Chat goes through the server: it is not end-to-end encrypted, unlike the meeting's audio and video.";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// µs since the epoch (a number, a BigInt or a decimal string) -> a Date, or null.
function sentDate(sentAt) {
  try {
    if (sentAt === undefined || sentAt === null || sentAt === "") return null;
    const ms = Number(BigInt(sentAt) / 1000n);
    return ms > 0 && Number.isFinite(ms) ? new Date(ms) : null;
  } catch {
    const ms = Number(sentAt) / 1000;
    return ms > 0 && Number.isFinite(ms) ? new Date(ms) : null;
  }
}

// A send rejected by the MC (a SignalingError: numeric `code`, `details` map) as one sentence.
export function sendErrorText(error) {
  const code = typeof error?.code === "number" ? error.code : ErrorCode[error?.code];
  if (code === ErrorCode.RATE_LIMITED) {
    const after = Number.parseFloat(error.details?.retry_after_s);
    return Number.isFinite(after) && after >= 0
      ? `Slow down: try again in ${Math.max(1, Math.ceil(after))} s`
      : "Slow down: too many messages, try again in a moment";
  }
  if (code === ErrorCode.NOT_FOUND) return "Not sent: that participant is no longer in the meeting";
  if (code === ErrorCode.INVALID_REQUEST) return "Not sent: the message is empty or too long";
  const reason = typeof error?.message === "string" && error.message ? `: ${error.message}` : "";
  return `Not sent${reason}`;
}

export class ChatPanel {
  // `send(text, toParticipantId)` -> promise (toParticipantId "" for everyone); `people()` ->
  // [{participantId, name}] (the own entry is left out of the picker); `onUnread(count)` when
  // the unread count changes.
  constructor(root, { selfId = "", send, people = () => [], onUnread = null } = {}) {
    this.root = root;
    this.selfId = selfId;
    this.sendFn = send;
    this.people = people;
    this.onUnread = onUnread;
    this.unread = 0;
    this.kept = new Map(); // messageId -> {message, item}, oldest first
    this.seen = new Set(); // messageIds shown, oldest first (bounded by MAX_SEEN_IDS)
    this.names = new Map(); // participantId -> last known name (bounded by MAX_NAMES)
    this.sending = false;
    this.destroyed = false;
    this.build();
  }

  build() {
    const panel = el("section", "chat-panel");
    panel.setAttribute("aria-label", "Chat");
    this.notice = el("p", "chat-notice", ENCRYPTED_NOTICE);
    this.notice.hidden = true;
    this.log = el("ol", "chat-log");
    this.log.setAttribute("role", "log");
    this.log.setAttribute("aria-live", "polite");
    this.log.setAttribute("aria-label", "Chat messages");
    this.log.tabIndex = 0;
    this.empty = el("p", "chat-empty", "No messages yet.");

    const form = el("form", "chat-form");
    form.noValidate = true;
    const to = el("label", "chat-to");
    to.append(el("span", "chat-to-label", "To"));
    this.picker = el("select", "chat-recipient");
    this.picker.append(new Option("Everyone", ""));
    to.append(this.picker);
    this.box = el("textarea", "chat-text");
    this.box.maxLength = MAX_TEXT;
    this.box.rows = 2;
    this.box.placeholder = "Message (Enter to send, Shift+Enter for a new line)";
    this.box.setAttribute("aria-label", "Message");
    this.sendButton = el("button", "chat-send", "Send");
    this.sendButton.type = "submit";
    this.error = el("p", "chat-error");
    this.error.setAttribute("role", "alert");
    this.error.hidden = true;
    const row = el("div", "chat-compose");
    row.append(this.box, this.sendButton);
    form.append(to, row, this.error);
    panel.append(this.notice, this.empty, this.log, form);

    this.listeners = [
      [form, "submit", (e) => {
        e.preventDefault();
        this.submit();
      }],
      [this.box, "keydown", (e) => {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
          e.preventDefault();
          this.submit();
        }
      }],
      [this.picker, "focus", () => this.refreshRecipients()],
      [this.picker, "pointerdown", () => this.refreshRecipients()],
      [this.log, "scroll", () => {
        this.stuck = this.atBottom();
      }],
    ];
    for (const [target, type, fn] of this.listeners) target.addEventListener(type, fn);
    // The log follows new messages while its view is at the bottom, also across its size
    // changes (the panel shown again after messages came while it was hidden, the error line).
    this.stuck = true;
    this.resize = new ResizeObserver(() => {
      if (this.stuck) this.log.scrollTop = this.log.scrollHeight;
    });
    this.resize.observe(this.log);
    this.panel = panel;
    this.root.append(panel);
    this.refreshRecipients();
  }

  remember(participantId, name) {
    if (!participantId || typeof name !== "string") return;
    this.names.delete(participantId);
    this.names.set(participantId, name);
    if (this.names.size > MAX_NAMES) this.names.delete(this.names.keys().next().value);
  }

  // A participant's name: from people(), else the last one seen.
  nameOf(participantId) {
    try {
      const p = Array.from(this.people() ?? []).find((x) => x?.participantId === participantId);
      if (p && typeof p.name === "string") this.remember(participantId, p.name);
    } catch {
      // people() failing leaves the names seen so far
    }
    return this.names.get(participantId) || "someone";
  }

  // The picker's options from people(), keeping the chosen recipient: one that left stays
  // chosen, marked "(left)", rather than turning a private message into one to everyone.
  refreshRecipients() {
    if (this.destroyed) return;
    let list = [];
    try {
      list = Array.from(this.people() ?? []);
    } catch {
      list = [];
    }
    const chosen = this.picker.value;
    const options = [new Option("Everyone", "")];
    let found = chosen === "";
    for (const p of list) {
      if (!p || !p.participantId || p.participantId === this.selfId) continue;
      this.remember(p.participantId, p.name);
      options.push(new Option(p.name || "(no name)", p.participantId));
      if (p.participantId === chosen) found = true;
    }
    if (!found) {
      options.push(new Option(`${this.names.get(chosen) ?? "Someone"} (left)`, chosen));
    }
    this.picker.replaceChildren(...options);
    this.picker.value = chosen;
  }

  // The recipient chosen in the picker ("" for everyone); `set` chooses one (for a reply).
  get recipient() {
    return this.picker.value;
  }

  set recipient(participantId) {
    this.refreshRecipients();
    if (participantId && ![...this.picker.options].some((o) => o.value === participantId)) {
      this.picker.append(new Option(this.names.get(participantId) ?? participantId, participantId));
    }
    this.picker.value = participantId || "";
  }

  async submit() {
    if (this.sending || this.destroyed) return;
    const text = this.box.value.trim();
    if (!text) return;
    const to = this.picker.value;
    this.sending = true;
    this.sendButton.disabled = true;
    this.error.hidden = true;
    this.error.textContent = "";
    try {
      await this.sendFn(text, to);
      if (this.destroyed) return;
      // The box may have been edited while the message was on its way: only the sent text goes.
      if (this.box.value.trim() === text) this.box.value = "";
    } catch (error) {
      if (this.destroyed) return;
      this.error.textContent = sendErrorText(error);
      this.error.hidden = false;
    } finally {
      this.sending = false;
      if (!this.destroyed) this.sendButton.disabled = false;
    }
  }

  // A decoded ChatMessage; one already shown (same messageId) is dropped.
  add(message) {
    if (this.destroyed || !message) return;
    const id = String(message.messageId ?? "");
    if (id && this.seen.has(id)) return;
    if (id) {
      this.seen.add(id);
      if (this.seen.size > MAX_SEEN_IDS) this.seen.delete(this.seen.values().next().value);
    }
    this.remember(message.fromParticipantId, message.fromName);
    const item = el("li", "chat-message");
    item.dataset.messageId = id;
    this.render(item, message);
    this.log.append(item);
    // An id-less message (not from the MC) is kept under a key of its own.
    this.kept.set(id || Symbol("message"), { message, item });
    while (this.kept.size > MAX_MESSAGES) {
      const [key, oldest] = this.kept.entries().next().value;
      oldest.item.remove();
      this.kept.delete(key);
    }
    this.empty.hidden = true;
    if (this.stuck) this.log.scrollTop = this.log.scrollHeight;
    if (message.fromParticipantId !== this.selfId) {
      this.unread += 1;
      this.notifyUnread();
    }
  }

  // A ChatHistory's messages, oldest first.
  history(messages) {
    for (const message of messages ?? []) this.add(message);
  }

  atBottom() {
    return this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight <= STICK_PX;
  }

  render(item, message) {
    const own = message.fromParticipantId === this.selfId && this.selfId !== "";
    const to = message.toParticipantId || "";
    item.classList.toggle("own", own);
    item.classList.toggle("private", to !== "");
    const head = el("p", "chat-meta");
    head.append(el("span", "chat-from", own ? "You" : message.fromName || "(no name)"));
    if (to) {
      let mark;
      if (to === this.selfId && !own) mark = "to you";
      else mark = `to ${to === this.selfId ? "yourself" : this.nameOf(to)}`;
      head.append(el("span", "chat-private", `${mark} (private)`));
    }
    const date = sentDate(message.sentAt);
    if (date) {
      const time = el(
        "time",
        "chat-time",
        date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
      );
      time.dateTime = date.toISOString();
      head.append(time);
    }
    item.replaceChildren(head, el("p", "chat-body", String(message.text ?? "")));
  }

  // The own participant id (a rejoin gives a new one): the marks of the kept messages follow.
  setSelf(selfId) {
    this.selfId = selfId ?? "";
    for (const { message, item } of this.kept.values()) this.render(item, message);
    this.refreshRecipients();
  }

  // In an end-to-end encrypted meeting (docs/protocol.md §16) the page says chat is not.
  setEncrypted(encrypted) {
    this.notice.hidden = !encrypted;
  }

  markRead() {
    if (this.unread === 0) return;
    this.unread = 0;
    this.notifyUnread();
  }

  notifyUnread() {
    if (typeof this.onUnread === "function") {
      try {
        this.onUnread(this.unread);
      } catch (error) {
        console.error("chat onUnread", error);
      }
    }
  }

  destroy() {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const [target, type, fn] of this.listeners) target.removeEventListener(type, fn);
    this.resize.disconnect();
    this.panel.remove();
    this.kept.clear();
    this.seen.clear();
    this.names.clear();
  }
}
