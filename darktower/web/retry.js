// How the page retries a lost connection (docs/protocol.md §13): exponential backoff with jitter,
// so that the pages of a restarted or unreachable server do not all come back in step, within a
// bounded window.

// The first retry waits about this long; each further one twice as long, up to the maximum.
export const RECONNECT_BASE_DELAY_MS = 250;
export const RECONNECT_MAX_DELAY_MS = 2000;
// Limit: how long the page tries to get a lost session back. Policy when over: the session
// rejoins through the GC (or ends with CONNECTION_LOST). Longer than the MC's default resume
// grace (15 s): past the grace the MC refuses the resume itself, so this bound only matters when
// the MC cannot be reached at all.
export const RECONNECT_WINDOW_MS = 30_000;
// Limit: how long the page tries to rejoin the meeting through the GC once resuming cannot
// succeed (its MC shut down, restarted or is gone; docs/protocol.md §13), counted from the loss.
// Policy when over: the session ends with the reason it was rejoining for. Long enough for the GC
// to notice a lost MC (its heartbeat timeout) after the page noticed.
export const REJOIN_WINDOW_MS = 60_000;
// Limit: one attempt (a WebTransport session, then its first reply). Policy when over: the
// attempt is abandoned and the next one starts after its backoff.
export const RECONNECT_ATTEMPT_TIMEOUT_MS = 5000;

// The wait before retry number `attempt` (0 = the first): half the exponential step plus a
// random share of the other half ("equal jitter").
export function backoffDelayMs(attempt, random = Math.random) {
  const step = Math.min(RECONNECT_MAX_DELAY_MS, RECONNECT_BASE_DELAY_MS * 2 ** attempt);
  return step / 2 + (random() * step) / 2;
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// When the MH removes a participant (kick, meeting end) it resets the publish streams a moment
// before its session close and the MC's SessionEnded say why: a publish stream's loss is shown
// only if the session is still going this long after it.
export const STREAM_LOSS_GRACE_MS = 1000;
