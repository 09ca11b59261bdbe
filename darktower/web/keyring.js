// The receive side of end-to-end encryption (docs/protocol.md §16): the other senders' keys by
// generation, frames held for a key not yet shared, and what was dropped, by reason. The same
// rules as darktower/e2ee's Keyring; time is the `clock`'s (milliseconds).
//
// WebCrypto is asynchronous, but frames must reach the decoders in order: every operation on one
// sender (a frame, a share) is a step of that sender's queue, and each step's promise resolves
// in queue order with the frames it releases. A frame of a generation whose key is already held
// starts decrypting as soon as it arrives; only its delivery waits for the steps before it.
//
// A frame up to MAX_GENERATION_STEP generations ahead of the newest held is tried with the key
// ratcheted forward (a join; each secret derived once, a few keys kept); one that does not
// verify waits for the share of a fresh key (a leave). A share overrides what a ratchet derived;
// generations a share skipped keep their ratchet as candidates; a counter decrypts once (§16.4).

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
export const MAX_GENERATION_STEP = 256;
// Ratcheted keys of generations ahead of the newest kept for their next frames.
const MAX_CANDIDATES = 8;
// Limits: frames held for a key per sender. Policy: the oldest go first (counted `no_key`)
// beyond PENDING_MAX_FRAMES or PENDING_MAX_BYTES, and any older than PENDING_MAX_AGE_MS.
export const PENDING_MAX_AGE_MS = 2000;
export const PENDING_MAX_FRAMES = 64;
export const PENDING_MAX_BYTES = 4 * 1024 * 1024;
// Limits: frames held for a key across all senders of a keyring; the oldest of any sender goes
// first (`no_key`).
export const KEYRING_PENDING_MAX_FRAMES = 512;
export const KEYRING_PENDING_MAX_BYTES = 16 * 1024 * 1024;
// Limits: older generations of a sender are erased OLD_GENERATION_TTL_MS after a newer one is
// first used (frames in flight across a rotation still decrypt), and beyond MAX_OLD_GENERATIONS
// (the oldest first). A frame of an erased generation is dropped (`stale_key`).
export const OLD_GENERATION_TTL_MS = 5000;
export const MAX_OLD_GENERATIONS = 4;
// Counters remembered per sender and generation: one seen, or this many or more older than the
// newest, is dropped (`replayed`).
export const REPLAY_WINDOW = 1024;
export const DROP_REASONS = Object.freeze([
  "auth_failed", // a frame of a held generation whose tag does not verify
  "no_key", // held for a key that did not come in time, or pushed out of the pending bounds
  "stale_key", // a frame of an older generation no longer (or never) held
  "malformed", // shorter than the overhead, an unknown format version
  "bad_share", // a key share that does not open, or of an older generation than one shared
  "replayed", // a (generation, counter) already decrypted, or too old to tell
]);

const WINDOW = BigInt(REPLAY_WINDOW);

// The counters seen of one (sender, generation): the newest and the REPLAY_WINDOW before.
class ReplayWindow {
  constructor() {
    this.top = -1n;
    this.seen = new Uint8Array(REPLAY_WINDOW);
  }

  replayed(counter) {
    if (counter > this.top) return false;
    return this.top - counter >= WINDOW || this.seen[Number(counter % WINDOW)] === 1;
  }

  mark(counter) {
    if (counter > this.top) {
      if (counter - this.top >= WINDOW) this.seen.fill(0);
      else for (let c = this.top + 1n; c < counter; c++) this.seen[Number(c % WINDOW)] = 0;
      this.top = counter;
    }
    this.seen[Number(counter % WINDOW)] = 1;
  }
}

const sameBytes = (a, b) => a.byteLength === b.byteLength && a.every((x, i) => x === b[i]);

// One sender's keys, the ratchet ahead of them, pending frames and step queue.
class Sender {
  constructor() {
    this.generations = new Map(); // generation -> keys (e2ee.js's generationKeys)
    this.derived = new Set(); // held generations derived by ratchet, not shared
    this.windows = new Map(); // held generation -> ReplayWindow
    this.newest = -1; // the newest generation held, -1 for none
    this.shared = -1; // the newest generation a share gave, -1 for none
    this.used = -1; // the newest generation a frame decrypted with
    this.retireAt = new Map(); // older generation -> when it is erased
    // The secrets of newest+1, newest+2, ... by ratchet, as far as a frame asked, and the keys
    // of a few of them.
    this.chain = [];
    this.candidates = new Map();
    // Generations a share skipped: their keys by ratchet from the newest before it, unverified.
    this.gaps = new Map();
    this.pending = []; // [{at, seq, generation, frame}], oldest first
    this.pendingBytes = 0;
    this.queue = Promise.resolve();
  }

  // Whether a frame of `generation` that did not decrypt waits for a share: newer than every
  // shared key and held by none, or only by a ratchet (which a share overrides).
  waits(generation) {
    if (generation <= this.shared) return false;
    return !this.generations.has(generation) || this.derived.has(generation);
  }

  // The secret of `generation` by ratchet from the newest; each step derived once.
  async ratcheted(generation) {
    const chain = this.chain;
    const base = this.generations.get(this.newest).secret;
    while (chain.length < generation - this.newest) {
      chain.push(await ratchetSecret(chain.length ? chain[chain.length - 1] : base));
    }
    return chain[generation - this.newest - 1];
  }

  // The keys `generation` (newer than the newest, within the step) would have if the sender
  // ratcheted to it.
  async candidate(generation) {
    let keys = this.candidates.get(generation);
    if (!keys) {
      keys = await generationKeys(generation, await this.ratcheted(generation));
      if (this.candidates.size >= MAX_CANDIDATES) {
        this.candidates.delete(this.candidates.keys().next().value);
      }
      this.candidates.set(generation, keys);
    }
    return keys;
  }

  // A ratchet to `generation` verified: it and the few generations before it are held (derived).
  async adopt(generation) {
    const old = this.newest;
    for (let g = Math.max(old + 1, generation - MAX_OLD_GENERATIONS); g <= generation; g++) {
      const keys = this.candidates.get(g) ?? (await generationKeys(g, await this.ratcheted(g)));
      this.candidates.delete(g);
      this.generations.set(g, keys);
      this.derived.add(g);
      this.windows.set(g, new ReplayWindow());
    }
    this.chain = this.chain.slice(generation - old);
    for (const g of [...this.candidates.keys()]) if (g <= generation) this.candidates.delete(g);
    this.newest = generation;
    this.trim();
  }

  // A skipped generation's candidate verified: it is held (derived).
  adoptGap(generation) {
    this.generations.set(generation, this.gaps.get(generation));
    this.gaps.delete(generation);
    this.derived.add(generation);
    this.windows.set(generation, new ReplayWindow());
  }

  // Whether a share of `generation` contradicts a key derived by ratchet: another secret for
  // it, or one whose ratchet does not give the next derived generation above.
  async conflicts(generation, secret) {
    const held = this.generations.get(generation);
    if (held) return !sameBytes(held.secret, secret);
    const above = [...this.derived].filter((g) => g > generation);
    if (above.length === 0) return false;
    const target = Math.min(...above);
    if (target - generation > MAX_GENERATION_STEP) return true;
    let s = secret;
    for (let g = generation; g < target; g++) s = await ratchetSecret(s);
    return !sameBytes(s, this.generations.get(target).secret);
  }

  // Erase the keys derived by ratchet from `generation` on (a share contradicted them).
  discardDerived(generation) {
    for (const g of [...this.derived]) if (g >= generation) this.erase(g);
    for (const g of [...this.gaps.keys()]) if (g >= generation) this.erase(g);
    this.newest = this.generations.size ? Math.max(...this.generations.keys()) : -1;
    // The erased generations no longer count as used: an older key's window starts anew.
    this.used = Math.min(this.used, this.newest);
    for (const g of [...this.retireAt.keys()]) if (g >= this.used) this.retireAt.delete(g);
    this.chain = [];
    this.candidates.clear();
  }

  // A key from a share, newer than every shared one.
  async hold(keys) {
    const generation = keys.generation;
    const previous = this.newest;
    if (generation > previous) {
      if (previous >= 0 && generation - previous <= MAX_GENERATION_STEP) {
        // Generations skipped (a join then a leave): their frames in flight may still come.
        const low = Math.max(previous + 1, generation - MAX_OLD_GENERATIONS);
        for (let g = low; g < generation; g++) {
          this.gaps.set(g, await generationKeys(g, await this.ratcheted(g)));
        }
      }
      this.newest = generation;
      this.chain = [];
      this.candidates.clear();
    }
    this.generations.set(generation, keys);
    this.windows.set(generation, new ReplayWindow());
    this.derived.delete(generation);
    this.shared = generation;
    this.trim();
  }

  trim() {
    const older = [...this.generations.keys(), ...this.gaps.keys()]
      .filter((g) => g < this.newest)
      .sort((a, b) => a - b);
    for (const g of older.slice(0, Math.max(0, older.length - MAX_OLD_GENERATIONS))) this.erase(g);
  }

  erase(generation) {
    this.generations.delete(generation);
    this.gaps.delete(generation);
    this.derived.delete(generation);
    this.windows.delete(generation);
    this.retireAt.delete(generation);
  }

  markUsed(generation, now) {
    if (generation <= this.used) return;
    this.used = generation;
    const at = now + OLD_GENERATION_TTL_MS;
    for (const g of [...this.generations.keys(), ...this.gaps.keys()]) {
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
    this.arrivals = 0; // orders held frames across senders
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
    let generation, counter;
    try {
      ({ generation, counter } = parsePrefix(payload));
    } catch {
      this.drop("malformed");
      return Promise.resolve([]);
    }
    const s = this.state(sender, this.clock());
    const keys = s.generations.get(generation);
    // A frame of a held generation starts decrypting now; its result is used in order, if the
    // key is still the one held then.
    const attempt = keys ? tryDecrypt(keys, frame) : null;
    return this.enqueue(s, async () => {
      const now = this.clock();
      const plain = await this.open(s, frame, generation, counter, now, keys, attempt);
      if (plain) return [plain];
      if (s.waits(generation)) this.hold(s, generation, frame, now);
      return [];
    });
  }

  // Decrypted with a held key, a skipped generation's candidate or a ratchet of the newest;
  // null when it is not: dropped and counted, unless it waits for a share (`s.waits`: the
  // caller holds it). `attempt` is a decryption already started with `started` keys.
  async open(s, frame, generation, counter, now, started = null, attempt = null) {
    const keys = s.generations.get(generation);
    if (keys) {
      // A derived key's window may hold a forged frame's counter: a frame under another key
      // (a share to come) waits whatever its counter, so its tag is checked first.
      const window = s.windows.get(generation);
      const derived = s.waits(generation);
      if (!derived && window.replayed(counter)) {
        this.drop("replayed");
        return null;
      }
      const plain = await (keys === started ? attempt : tryDecrypt(keys, frame));
      if (!plain) {
        if (!derived) this.drop("auth_failed");
        return null;
      }
      if (derived && window.replayed(counter)) {
        this.drop("replayed");
        return null;
      }
      return this.decrypted_(s, generation, counter, frame, plain, now);
    }
    const gap = s.gaps.get(generation);
    if (gap) {
      const plain = await tryDecrypt(gap, frame);
      if (!plain) {
        this.drop("stale_key");
        return null;
      }
      s.adoptGap(generation);
      return this.decrypted_(s, generation, counter, frame, plain, now);
    }
    if (s.newest >= 0 && generation > s.newest && generation - s.newest <= MAX_GENERATION_STEP) {
      const plain = await tryDecrypt(await s.candidate(generation), frame);
      if (!plain) return null; // a fresh key not shared yet, or a forged frame: it waits
      await s.adopt(generation);
      return this.decrypted_(s, generation, counter, frame, plain, now);
    }
    if (!s.waits(generation)) this.drop("stale_key");
    return null;
  }

  decrypted_(s, generation, counter, frame, plain, now) {
    this.counts.decrypted++;
    s.windows.get(generation).mark(counter);
    s.markUsed(generation, now);
    return plainFrame(frame, plain);
  }

  // `secret` of `sender`'s `generation` (an E2EEKeyShare opened): resolves with the frames that
  // waited for it, decrypted, in order. The same secret again changes nothing; a generation
  // older than the newest shared, or another secret for a shared generation, is ignored and
  // counted (`bad_share`). A share overrides the keys a ratchet derived: one that contradicts
  // them erases them (counted `auth_failed`).
  add(sender, generation, secret) {
    const valid = Number.isInteger(generation) && generation >= 0 && generation <= MAX_GENERATION;
    if (!valid || secret?.byteLength !== SECRET_SIZE) {
      this.drop("bad_share");
      return Promise.resolve([]);
    }
    secret = Uint8Array.from(secret);
    const s = this.state(sender, this.clock());
    return this.enqueue(s, async () => {
      const now = this.clock();
      const held = s.generations.get(generation);
      if (held && sameBytes(held.secret, secret)) {
        if (s.derived.has(generation) && generation > s.shared) {
          s.derived.delete(generation); // confirmed
          s.shared = generation;
        }
        return [];
      }
      if (generation <= s.shared || (held && !s.derived.has(generation))) {
        this.drop("bad_share");
        return [];
      }
      if (await s.conflicts(generation, secret)) {
        s.discardDerived(generation);
        this.drop("auth_failed");
      }
      await s.hold(await generationKeys(generation, secret));
      return this.release(s, now);
    });
  }

  // Every waiting frame tried again, in order, after a new key: decrypted ones are released,
  // those that still wait for a share wait on, the rest are dropped.
  async release(s, now) {
    const waiting = s.pending;
    s.pending = [];
    s.pendingBytes = 0;
    const out = [];
    for (const item of waiting) {
      const { counter } = parsePrefix(item.frame.payload);
      const plain = await this.open(s, item.frame, item.generation, counter, now);
      if (plain) out.push(plain);
      else if (s.waits(item.generation)) {
        s.pending.push(item);
        s.pendingBytes += sizeOf(item.frame);
      }
    }
    return out;
  }

  hold(s, generation, frame, now) {
    s.pending.push({ at: now, seq: ++this.arrivals, generation, frame: copied(frame) });
    s.pendingBytes += sizeOf(frame);
    while (s.pending.length > PENDING_MAX_FRAMES || s.pendingBytes > PENDING_MAX_BYTES) {
      this.dropOldest(s);
    }
    const senders = [...this.senders.values()];
    const total = (f) => senders.reduce((sum, x) => sum + f(x), 0);
    while (
      total((x) => x.pending.length) > KEYRING_PENDING_MAX_FRAMES ||
      total((x) => x.pendingBytes) > KEYRING_PENDING_MAX_BYTES
    ) {
      let oldest = null;
      for (const x of senders) {
        if (x.pending.length > 0 && (!oldest || x.pending[0].seq < oldest.pending[0].seq)) {
          oldest = x;
        }
      }
      this.dropOldest(oldest);
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
