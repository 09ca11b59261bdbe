// The own key shares on their way to the MC (docs/protocol.md §16.2), for encryption.js: a
// room of a hundred gets a hundred shares after each key change, more than the page may have
// in flight (signaling.js) and more than the MC takes at once (docs/protocol.md §3.1).
//
// Limit: MAX_IN_FLIGHT shares awaiting the MC's reply. Queued: at most one share per recipient,
// the newest generation's (a newer one supersedes it, and a recipient that left takes its share
// out): the queue is bounded by the room. A share the MC refuses RATE_LIMITED goes back to the
// queue (MAX_ATTEMPTS in all) and the queue waits the retry_after_s it names, then sends one share
// at a time, paced, until no refusal has come for PACE_RESET_MS: the MC ends a session that keeps
// being refused. Every share is counted once, in the end, as sent (the MC acknowledged it), failed
// (refused, no reply, no key agreement, out of attempts) or dropped (superseded, its recipient
// gone, the key pair replaced).

import { ErrorCode } from "./proto.js";

export const MAX_IN_FLIGHT = 16;
export const MAX_ATTEMPTS = 5;
// The pace after a refusal, between these bounds; the wait a refusal asks for is clamped to
// [MIN_PACE_MS, MAX_WAIT_MS].
const MIN_PACE_MS = 50;
const MAX_PACE_MS = 1000;
const MAX_WAIT_MS = 10_000;
// Without a refusal this long (the MC's abuse window), the queue sends at full width again.
const PACE_RESET_MS = 10_000;

export function shareCounts() {
  return { sharesSent: 0, sharesFailed: 0, sharesDropped: 0, sharesRetried: 0, sharesQueued: 0 };
}

export class ShareQueue {
  // `seal(recipient, generation, secret)` -> promise of the E2EEKeyShare body, or of null when
  // that recipient is gone; `send(body)` -> promise of the MC's reply; counts go to `stats`.
  constructor({ seal, send, stats, maxInFlight = MAX_IN_FLIGHT, maxAttempts = MAX_ATTEMPTS }) {
    this.seal = seal;
    this.send = send;
    this.stats = stats;
    this.maxInFlight = maxInFlight;
    this.maxAttempts = maxAttempts;
    this.queue = new Map(); // recipient -> {generation, secret, attempts}, oldest first
    this.latest = new Map(); // recipient -> the newest generation pushed for it
    this.inFlight = 0;
    this.busy = new Set(); // recipients with a share in flight: their next one waits for it
    this.paceMs = 0; // 0: full width; else one at a time, this far apart
    this.notBefore = 0; // performance.now() before which nothing is sent
    this.lastRefusal = -Infinity;
    this.timer = null;
    this.epoch = 0; // clear() makes what is in flight of no account
    this.idlers = [];
  }

  // The share of `generation` with `secret` for `recipient`, after those queued.
  push(recipient, generation, secret) {
    if (this.queue.delete(recipient)) this.stats.sharesDropped++; // superseded
    this.latest.set(recipient, generation);
    this.queue.set(recipient, { generation, secret, attempts: 0 });
    this.counted();
    this.pump();
  }

  // `recipient` left: its queued share is dropped, a refused one is not tried again.
  forget(recipient) {
    if (this.queue.delete(recipient)) this.stats.sharesDropped++;
    this.latest.delete(recipient);
    this.counted();
  }

  // A new key pair: nothing queued or in flight is sent (again).
  clear() {
    this.stats.sharesDropped += this.queue.size;
    this.queue.clear();
    this.latest.clear();
    this.epoch++;
    this.counted();
    clearTimeout(this.timer);
    this.timer = null;
    this.wakeIdlers();
  }

  // Resolves once nothing is queued or in flight.
  idle() {
    if (this.queue.size === 0 && this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idlers.push(resolve));
  }

  counted() {
    this.stats.sharesQueued = this.queue.size;
  }

  wakeIdlers() {
    if (this.queue.size > 0 || this.inFlight > 0) return;
    for (const resolve of this.idlers.splice(0)) resolve();
  }

  pump() {
    const now = performance.now();
    if (this.paceMs > 0 && now - this.lastRefusal > PACE_RESET_MS) this.paceMs = 0;
    const width = this.paceMs > 0 ? 1 : this.maxInFlight;
    while (this.inFlight < width) {
      const next = this.next();
      if (next === null) break;
      if (now < this.notBefore) {
        if (this.timer === null) {
          this.timer = setTimeout(() => {
            this.timer = null;
            this.pump();
          }, this.notBefore - now);
        }
        return;
      }
      const [recipient, entry] = next;
      this.queue.delete(recipient);
      this.counted();
      this.busy.add(recipient);
      this.inFlight++;
      if (this.paceMs > 0) this.notBefore = now + this.paceMs;
      this.deliver(recipient, entry, this.paceMs);
    }
    this.wakeIdlers();
  }

  // The oldest queued share whose recipient has none in flight (so that each recipient gets its
  // shares in generation order), or null.
  next() {
    for (const item of this.queue) if (!this.busy.has(item[0])) return item;
    return null;
  }

  async deliver(recipient, entry, pace) {
    const epoch = this.epoch;
    try {
      const body = await this.seal(recipient, entry.generation, entry.secret);
      if (body === null || epoch !== this.epoch) {
        this.stats.sharesDropped++;
        return;
      }
      await this.send(body);
      this.stats.sharesSent++;
    } catch (e) {
      this.refused(recipient, entry, pace, e, epoch);
    } finally {
      this.inFlight--;
      this.busy.delete(recipient);
      this.pump();
    }
  }

  refused(recipient, entry, pace, error, epoch) {
    if (error?.code !== ErrorCode.RATE_LIMITED || epoch !== this.epoch) {
      this.stats.sharesFailed++;
      return;
    }
    const now = performance.now();
    const asked = Number.parseFloat(error.details?.retry_after_s) * 1000;
    const wait = Math.min(MAX_WAIT_MS, Math.max(MIN_PACE_MS, asked || 0));
    // Refused while paced already: the pace was too fast for the MC, so it slows down.
    this.paceMs = Math.min(MAX_PACE_MS, Math.max(this.paceMs, wait, pace * 2));
    this.notBefore = Math.max(this.notBefore, now + wait);
    this.lastRefusal = now;
    entry.attempts++;
    if (entry.attempts >= this.maxAttempts) {
      this.stats.sharesFailed++;
    } else if (this.latest.get(recipient) !== entry.generation || this.queue.has(recipient)) {
      this.stats.sharesDropped++; // a newer share (or none: it left) took its place
    } else {
      this.stats.sharesRetried++;
      this.queue.set(recipient, entry);
      this.counted();
    }
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
  }
}
