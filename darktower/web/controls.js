// The meeting's toolbar (`#controls`): microphone, camera, screen share, invite link, the side
// panels (people, chat, devices), leave and end. Each control is a button with a visible label;
// a toggle has aria-pressed (true: muted, camera off, sharing, panel open). Keyboard shortcuts
// (shown on each button as <kbd> and in `#shortcuts`) work anywhere in the meeting but in a
// text field: M microphone, V camera, S screen share, I copy the invite link, P people,
// C chat, D devices. While a host blocks a kind (docs/protocol.md §18.2) its button shows it
// (class `blocked`, aria-disabled) and a click says why instead of asking the server.

const $ = (id) => document.getElementById(id);

// key -> [button id]: the shortcuts.
export const SHORTCUTS = Object.freeze({
  m: "mic",
  v: "camera",
  s: "share",
  i: "invite",
  p: "people-toggle",
  c: "chat-toggle",
  d: "devices-toggle",
});

const EDITABLE = new Set(["INPUT", "TEXTAREA", "SELECT"]);

// Wires the buttons to `actions` ({mic(), camera(), share(), invite(), panel(name), leave(),
// endMeeting()}; each may return a promise; a rejection is shown with `notice(text)`).
export function initControls(actions, notice) {
  const run = (what, fn) => () => {
    Promise.resolve()
      .then(fn)
      .catch((e) => notice(e?.name === "BlockedError" ? e.message : `${what}: ${e.message}`));
  };
  $("mic").addEventListener("click", run("Microphone", actions.mic));
  $("camera").addEventListener("click", run("Camera", actions.camera));
  $("share").addEventListener("click", run("Screen share", actions.share));
  $("invite").addEventListener("click", run("Invite link", actions.invite));
  $("leave").addEventListener("click", run("Leave", actions.leave));
  $("end-meeting").addEventListener("click", run("Could not end the meeting", actions.endMeeting));
  for (const name of ["people", "chat", "devices"]) {
    $(`${name}-toggle`).addEventListener("click", () => actions.panel(name));
  }
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    if ($("meeting").hidden) return;
    const target = e.target;
    if (EDITABLE.has(target?.tagName) || target?.isContentEditable) return;
    const id = SHORTCUTS[e.key.toLowerCase()];
    if (!id) return;
    const button = $(id);
    if (!button || button.hidden) return;
    e.preventDefault();
    button.click();
  });
}

function setPressed(id, pressed) {
  $(id).setAttribute("aria-pressed", pressed ? "true" : "false");
}

function setBlocked(id, blocked, why) {
  const button = $(id);
  button.classList.toggle("blocked", blocked);
  if (blocked) {
    button.setAttribute("aria-disabled", "true");
    button.title = why;
  } else {
    button.removeAttribute("aria-disabled");
    button.title = button.dataset.title ?? "";
  }
}

// The toolbar as `session` is now (`self`: its own publication state; `panel`: the open one).
export function updateControls(session, panel) {
  const self = session.presence.self;
  const local = session.local;
  const audioOff = session.presence.isMuted("audio");
  const videoOff = session.presence.isMuted("video");
  setPressed("mic", audioOff);
  setPressed("camera", videoOff);
  setPressed("share", Boolean(local.screen));
  $("mic").querySelector(".label").textContent = audioOff ? "Unmute" : "Mute";
  $("camera").querySelector(".label").textContent = videoOff ? "Start video" : "Stop video";
  $("share").querySelector(".label").textContent = local.screen ? "Stop sharing" : "Share screen";
  setBlocked("mic", self.audioBlocked, "The host muted your microphone");
  setBlocked("camera", self.videoBlocked, "The host turned your camera off");
  setBlocked("share", self.screenBlocked, "The host stopped your screen share");
  $("end-meeting").hidden = session.role !== "host";
  for (const name of ["people", "chat", "devices"]) {
    const toggle = $(`${name}-toggle`);
    toggle.setAttribute("aria-pressed", panel === name ? "true" : "false");
    toggle.setAttribute("aria-expanded", panel === name ? "true" : "false");
  }
}
