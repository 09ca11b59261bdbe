// The meeting's side panel (`#side`): the participant list (people.js's PeoplePanel), the chat
// (chat.js's ChatPanel) and the devices (`#devices-panel`: devices.js's pickers), one at a time,
// opened with the toolbar's toggles; on a narrow window a drawer over the stage. The components
// are fed from the session: the roster with everyone's publication and connection state
// (docs/protocol.md §18.1), the chat (§18.3); and given the session's moderate, kick and send.

const $ = (id) => document.getElementById(id);

export class SidePanels {
  // `hooks`: {session() -> the current MeetingSession or null, notice(text),
  // onChange() (a panel opened or closed)}.
  constructor(hooks) {
    this.hooks = hooks;
    this.open = null; // "people" | "chat" | "devices" | null
    this.people = null;
    this.chat = null;
    this.unread = 0;
    this.loaded = null;
  }

  // Loads the two components (once) and mounts them.
  load() {
    this.loaded ??= Promise.all([import("./people.js"), import("./chat.js")]).then(
      ([{ PeoplePanel }, { ChatPanel }]) => {
        const session = () => this.hooks.session();
        this.people = new PeoplePanel($("people-panel"), {
          isHost: () => session()?.role === "host",
          selfId: session()?.participantId ?? "",
          moderate: (pid, actions) => session().presence.moderate(pid, actions),
          kick: (pid) => session().kick(pid),
        });
        this.chat = new ChatPanel($("chat-panel"), {
          selfId: session()?.participantId ?? "",
          send: (text, to) => session().presence.sendChat(text, to),
          people: () => this.roster().map(({ participantId, name }) => ({ participantId, name })),
          onUnread: (count) => {
            this.unread = count;
            this.badge();
          },
        });
        this.refresh();
      },
      (e) => this.hooks.notice(`The side panels could not load: ${e.message}`),
    );
    return this.loaded;
  }

  // Everyone as the people panel takes them, the own entry first.
  roster() {
    const s = this.hooks.session();
    if (!s?.participantId) return [];
    const speaking = s.adaptive?.speakers[0] ?? null;
    const own = {
      participantId: s.participantId,
      name: s.name || "You",
      host: s.role === "host",
      self: true,
      connection: s.reconnecting ? "reconnecting" : "connected",
      publication: { ...s.presence.self },
      speaking: speaking === s.participantId,
    };
    const others = [...s.participants].map(([participantId, p]) => ({
      participantId,
      name: p.name || "Guest",
      host: Boolean(p.host),
      self: false,
      connection: p.reconnecting ? "reconnecting" : "connected",
      publication: { ...p.publication },
      speaking: speaking === participantId,
    }));
    return [own, ...others];
  }

  // The session changed: the list again, the own id, whether chat is encrypted.
  refresh() {
    const s = this.hooks.session();
    if (!s || !this.people) return;
    this.people.setSelf(s.participantId ?? "");
    this.people.update(this.roster());
    this.chat.setSelf(s.participantId ?? "");
    this.chat.setEncrypted(Boolean(s.encrypted));
  }

  // New chat messages (presence.js keeps them all; the panel drops repeats by messageId).
  addChat(messages) {
    this.load().then(() => {
      for (const m of messages) this.chat?.add(m);
      if (this.open === "chat") this.chat?.markRead();
    });
  }

  // Opens panel `name` (closes it when it is open).
  toggle(name) {
    this.open = this.open === name ? null : name;
    $("side").hidden = this.open === null;
    $("stage").classList.toggle("with-side", this.open !== null);
    for (const panel of ["people", "chat", "devices"]) {
      $(`${panel}-panel`).hidden = panel !== this.open;
    }
    if (this.open === "chat") {
      this.chat?.markRead();
      $("chat-panel").querySelector("textarea")?.focus({ preventScroll: true });
    }
    this.hooks.onChange();
  }

  close() {
    if (this.open) this.toggle(this.open);
  }

  badge() {
    const badge = $("chat-unread");
    badge.textContent = String(this.unread);
    badge.hidden = this.unread === 0 || this.open === "chat";
  }
}
