// The receive side of end-to-end encryption (docs/protocol.md §16): the other senders' keys by
// generation, frames held for a key not yet shared, and what was dropped, by reason. The same
// rules as darktower/e2ee's Keyring; time is the `clock`'s (milliseconds).
//
// WebCrypto is asynchronous, but frames must reach the decoders in order: every operation on one
// sender (a frame, a share) is a step of that sender's queue, and each step's promise resolves
// in queue order with the frames it releases. A frame of a generation whose key is already held
// starts decrypting as soon as it arrives; only its delivery waits for the steps before it.
//
// A frame of a newer generation than the newest held (at most MAX_GENERATION_STEP ahead) is
// tried with the key ratcheted forward (a join); one that does not verify is held for the
// share of a fresh key (a leave). Ratcheted keys are kept as candidates, so later frames of
// that generation cost one AES-GCM call and no HKDF, and a forged first frame of it does not
// keep its real frames out.

import {
  MAX_GENERATION,
  SECRET_SIZE,
  decryptPayload,
  generationKeys,
  parsePrefix,
  plainFrame,
  ratchetSecret,
} from "./e2ee.js";
import { HEADER_SIZE } from "./frames.js";

// How far a frame's generation may be ahead of the newest held for the ratchet to be tried.
export const MAX_GENERATION_STEP = 16;
// Limits: frames held for a key per sender. Policy: the oldest go first (counted `no_key`)
// beyond PENDING_MAX_FRAMES or PENDING_MAX_BYTES, and any older than PENDING_MAX_AGE_MS.
export const PENDING_MAX_AGE_MS = 2000;
export const PENDING_MAX_FRAMES = 64;
export const PENDING_MAX_BYTES = 4 * 1024 * 1024;
// Limits: older generations of a sender are erased OLD_GENERATION_TTL_MS after a newer one is
// first used (frames in flight across a rotation still decrypt), and beyond MAX_OLD_GENERATIONS
// (the oldest first). A frame of an erased generation is dropped (`stale_key`).
export const OLD_GENERATION_TTL_MS = 5000;
export const MAX_OLD_GENERATIONS = 4;
export const DROP_REASONS = Object.freeze([
  "auth_failed", // a frame of a held generation whose tag does not verify
  "no_key", // held for a key that did not come in time, or pushed out of the pending bound
  "stale_key", // a frame of an older generation no longer (or never) held
  "malformed", // shorter than the overhead, an unknown format version
  "bad_share", // a key share that does not open, or of an older generation than one held
]);

// One sender's keys, pending frames and step queue.
class Sender {
  constructor() {
    this.generations = new Map(); // generation -> keys (e2ee.js's generationKeys)
    this.newest = -1; // the newest generation held, -1 for none
    this.used = -1; // the newest generation a frame decrypted with
    this.retireAt = new Map(); // older generation -> when it is erased
    // Generations newest+1 .. newest+MAX_GENERATION_STEP derived by ratchet, not yet confirmed
    // by a frame.
    this.candidates = new Map();
    this.pending = []; // [{at, generation, frame}], oldest first
    this.pendingBytes = 0;
    this.queue = Promise.resolve();
  }

  // The keys `generation` would have if the sender ratcheted to it from the newest held.
  async candidate(generation) {
    let step = generation;
    while (step > this.newest && !this.candidates.has(step)) step--;
    let keys = step > this.newest ? this.candidates.get(step) : this.generations.get(this.newest);
    while (keys.generation < generation) {
      keys = await generationKeys(keys.generation + 1, await ratchetSecret(keys.secret));
      this.candidates.set(keys.generation, keys);
    }
    return keys;
  }

  // A ratchet to `generation` verified: it and the generations before it are held.
  adopt(generation) {
    for (let g = this.newest + 1; g <= generation; g++) {
      this.generations.set(g, this.candidates.get(g));
      this.candidates.delete(g);
    }
    this.newest = generation;
    this.trim();
  }

  // A shared key newer than the newest.
  hold(keys) {
    this.generations.set(keys.generation, keys);
    this.newest = keys.generation;
    this.candidates.clear();
    this.trim();
  }

  trim() {
    const older = [...this.generations.keys()].filter((g) => g < this.newest).sort((a, b) => a - b);
    for (const g of older.slice(0, Math.max(0, older.length - MAX_OLD_GENERATIONS))) this.erase(g);
  }

  erase(generation) {
    this.generations.delete(generation);
    this.retireAt.delete(generation);
  }

  markUsed(generation, now) {
    if (generation <= this.used) return;
    this.used = generation;
    const at = now + OLD_GENERATION_TTL_MS;
    for (const g of this.generations.keys()) {
      if (g < generation && !this.retireAt.has(g)) this.retireAt.set(g, at);
    }
  }
}

async function tryDecrypt(keys, frame) {
  try {
    return await decryptPayload(keys, frame);
  } catch {
    return null;
  }
}

// What a held frame counts against PENDING_MAX_BYTES: all of it.
const sizeOf = (frame) => HEADER_SIZE + frame.payload.byteLength;

// A frame to hold: copied, so that it does not pin the whole chunk it was read from.
function copied(frame) {
  return { ...frame, payload: frame.payload.slice(), headerBytes: frame.headerBytes?.slice() };
}

// What a Keyring counts: frames decrypted, and dropped by reason.
export function keyringCounts() {
  return { decrypted: 0, drops: Object.fromEntries(DROP_REASONS.map((reason) => [reason, 0])) };
}

export class Keyring {
  // `counts` (keyringCounts()) is counted into: a session keeps one across its keyrings.
  constructor({ clock = () => performance.now(), counts = keyringCounts() } = {}) {
    this.clock = clock;
    this.counts = counts;
    this.senders = new Map(); // participant id -> Sender
  }

  get drops() {
    return this.counts.drops;
  }

  drop(reason, n = 1) {
    this.counts.drops[reason] += n;
  }

  // The sender's state, its expired frames and keys gone.
  state(sender, now) {
    let s = this.senders.get(sender);
    if (!s) {
      s = new Sender();
      this.senders.set(sender, s);
    } else this.expireSender(s, now);
    return s;
  }

  // Runs `step()` after the sender's earlier steps; resolves with the frames it released.
  // Never rejects: an unexpected failure drops the frame (counted `malformed`).
  enqueue(s, step) {
    const result = s.queue.then(step).catch(() => {
      this.drop("malformed");
      return [];
    });
    s.queue = result;
    return result;
  }

  // The frames `frame` (encrypted, of participant `sender`) releases, in the order frames of
  // that sender were given: [] while it waits for its key or when it was dropped (counted),
  // else [its plaintext frame]. Never rejects.
  decrypt(sender, frame) {
    const payload = frame.payload;
    let generation;
    try {
      ({ generation } = parsePrefix(payload));
    } catch {
      this.drop("malformed");
      return Promise.resolve([]);
    }
    const s = this.state(sender, this.clock());
    const keys = s.generations.get(generation);
    if (keys) {
      const attempt = tryDecrypt(keys, frame); // started now, delivered in order
      return this.enqueue(s, async () => {
        const plain = await attempt;
        if (!plain) {
          this.drop("auth_failed");
          return [];
        }
        return [this.decrypted_(s, generation, frame, plain)];
      });
    }
    return this.enqueue(s, async () => {
      const now = this.clock();
      const plain = await this.open(s, frame, generation, now);
      if (plain) return [plain];
      if (generation > s.newest) this.hold(s, generation, frame, now);
      return [];
    });
  }

  // Decrypted with a held key or a ratchet of the newest; null when it is not (dropped and
  // counted, unless it is newer than the newest: the caller holds it).
  async open(s, frame, generation, now) {
    const keys = s.generations.get(generation);
    if (keys) {
      const plain = await tryDecrypt(keys, frame);
      if (!plain) {
        this.drop("auth_failed");
        return null;
      }
      return this.decrypted_(s, generation, frame, plain, now);
    }
    if (generation < s.newest) {
      this.drop("stale_key");
      return null;
    }
    if (s.newest < 0 || generation - s.newest > MAX_GENERATION_STEP) return null;
    const plain = await tryDecrypt(await s.candidate(generation), frame);
    if (!plain) return null; // a fresh key not shared yet, or a forged frame
    s.adopt(generation);
    if (s.pending.length > 0) this.purge(s);
    return this.decrypted_(s, generation, frame, plain, now);
  }

  // After a ratchet verified: the frames that waited for a generation it reached had failed
  // that very ratchet, so they are forged or damaged (docs/decisions.md, "A receiver remembers
  // a ratchet's keys, not its failure").
  purge(s) {
    const kept = s.pending.filter((item) => item.generation > s.newest);
    if (kept.length === s.pending.length) return;
    this.drop("auth_failed", s.pending.length - kept.length);
    s.pending = kept;
    s.pendingBytes = kept.reduce((sum, item) => sum + sizeOf(item.frame), 0);
  }

  decrypted_(s, generation, frame, plain, now = this.clock()) {
    this.counts.decrypted++;
    s.markUsed(generation, now);
    return plainFrame(frame, plain);
  }

  // `secret` of `sender`'s `generation` (an E2EEKeyShare opened): resolves with the frames that
  // waited for it, decrypted, in order. The same secret again changes nothing; a generation
  // older than the newest held, or another secret for a generation held, is ignored and
  // counted (`bad_share`).
  add(sender, generation, secret) {
    const valid = Number.isInteger(generation) && generation >= 0 && generation <= MAX_GENERATION;
    if (!valid || secret?.byteLength !== SECRET_SIZE) {
      this.drop("bad_share");
      return Promise.resolve([]);
    }
    const s = this.state(sender, this.clock());
    return this.enqueue(s, async () => {
      const now = this.clock();
      const held = s.generations.get(generation);
      if (held) {
        if (!held.secret.every((b, i) => b === secret[i])) this.drop("bad_share");
        return [];
      }
      if (generation < s.newest) {
        this.drop("bad_share");
        return [];
      }
      s.hold(await generationKeys(generation, secret));
      return this.release(s, now);
    });
  }

  // Every waiting frame tried again, in order, after a new key: decrypted ones are released,
  // those still newer than every key wait on, the rest are dropped.
  async release(s, now) {
    const waiting = s.pending;
    s.pending = [];
    s.pendingBytes = 0;
    const out = [];
    for (const item of waiting) {
      const plain = await this.open(s, item.frame, item.generation, now);
      if (plain) out.push(plain);
      else if (item.generation > s.newest) {
        s.pending.push(item);
        s.pendingBytes += sizeOf(item.frame);
      }
    }
    return out;
  }

  hold(s, generation, frame, now) {
    s.pending.push({ at: now, generation, frame: copied(frame) });
    s.pendingBytes += sizeOf(frame);
    while (s.pending.length > PENDING_MAX_FRAMES || s.pendingBytes > PENDING_MAX_BYTES) {
      this.dropOldest(s);
    }
  }

  dropOldest(s) {
    s.pendingBytes -= sizeOf(s.pending.shift().frame);
    this.drop("no_key");
  }

  expireSender(s, now) {
    while (s.pending.length > 0 && now >= s.pending[0].at + PENDING_MAX_AGE_MS) this.dropOldest(s);
    for (const [g, at] of s.retireAt) if (now >= at) s.erase(g);
  }

  // Drops the frames that waited too long (`no_key`) and erases the older generations whose
  // time is over.
  expire(now = this.clock()) {
    for (const s of this.senders.values()) this.expireSender(s, now);
  }

  // When expire() next has something to do (clock time), or null.
  nextDeadline() {
    let next = null;
    const earlier = (t) => {
      if (next === null || t < next) next = t;
    };
    for (const s of this.senders.values()) {
      if (s.pending.length > 0) earlier(s.pending[0].at + PENDING_MAX_AGE_MS);
      for (const at of s.retireAt.values()) earlier(at);
    }
    return next;
  }

  // Erases `sender`'s keys (it left); its waiting frames are dropped (`no_key`). Its queued
  // steps still settle.
  forget(sender) {
    const s = this.senders.get(sender);
    if (!s) return;
    this.senders.delete(sender);
    this.drop("no_key", s.pending.length);
    s.pending = [];
    s.pendingBytes = 0;
  }

  // The generations held for `sender`, oldest first.
  generations(sender) {
    return [...(this.senders.get(sender)?.generations.keys() ?? [])].sort((a, b) => a - b);
  }

  // How many frames of `sender` wait for a key.
  pending(sender) {
    return this.senders.get(sender)?.pending.length ?? 0;
  }
}
