// The page's full screens besides the lobby and the meeting (`#ended`): why a session ended
// (left, removed, meeting ended, connection lost), why a join could not happen (the meeting is
// full, has ended or does not exist) and an unsupported browser. Each has a title
// (`#end-title`), the reason (`#end-reason`, the text session.js gives for an end) and what the
// person can do (`#end-help`); `#ended`'s data-screen names it for tests and styles.

const $ = (id) => document.getElementById(id);

export const SCREENS = Object.freeze({
  left: ["You left", "Rejoin from the lobby whenever you like."],
  kicked: ["Removed", "A host removed you. Ask them if you think it was a mistake."],
  "meeting-ended": ["Meeting ended", "The host ended the meeting for everyone."],
  "connection-lost": ["Disconnected", "Check your connection, then rejoin from the lobby."],
  full: [
    "This meeting is full",
    "It has as many participants as it allows. Try again when someone leaves.",
  ],
  "no-meeting": ["No such meeting", "The link may be wrong, or the meeting has ended."],
  unsupported: [
    "This browser cannot join meetings",
    "Dark Tower needs WebTransport and WebCodecs: use a recent Chrome, Edge or Chromium.",
  ],
  other: ["The session ended", "Rejoin from the lobby."],
});

const BY_REASON = {
  VOLUNTARY: "left",
  KICKED: "kicked",
  MEETING_ENDED: "meeting-ended",
  CONNECTION_LOST: "connection-lost",
};

// What this browser lacks of what the page needs (empty: nothing).
export function missingFeatures(w = globalThis) {
  const need = ["WebTransport", "VideoEncoder", "VideoDecoder", "AudioEncoder", "AudioDecoder"];
  const missing = need.filter((name) => typeof w[name] === "undefined");
  if (!w.isSecureContext) missing.push("a secure context (https)");
  return missing;
}

// The screen of a failed join's error, or null when it is none of those (the lobby says it).
export function screenOfJoinError(error) {
  const code = error?.codeName ?? error?.code ?? "";
  const text = String(error?.message ?? "");
  if (code === "CAPACITY_EXCEEDED" && /full/i.test(text)) return "full";
  if (/\bfull\b/i.test(text)) return "full";
  if (error?.status === 404 || code === "NOT_FOUND" || /no such meeting/i.test(text)) {
    return "no-meeting";
  }
  if (error?.status === 409 || error?.status === 410 || /\bended\b/i.test(text)) {
    return "meeting-ended";
  }
  return null;
}

// Shows screen `kind`: its title, `reason` (a session's end text) and what to do; without a
// reason, what to do is the reason.
export function showScreen(kind, reason = null) {
  const [title, help] = SCREENS[kind] ?? SCREENS.other;
  $("ended").dataset.screen = kind in SCREENS ? kind : "other";
  $("end-title").textContent = title;
  $("end-reason").textContent = reason ?? help;
  $("end-help").textContent = reason ? help : "";
  $("lobby").hidden = true;
  $("meeting").hidden = true;
  $("ended").hidden = false;
  $("rejoin").hidden = kind === "unsupported";
}

// The screen of a session's end (endReason.name).
export function screenOfEnd(endReason) {
  return BY_REASON[endReason?.name] ?? "other";
}
