// End-to-end encryption of one meeting session (docs/protocol.md §16), for session.js: the key
// pair offered in every JoinRequest, the own sender key and when it changes, the key shares
// sent and opened, the published frames' encryption and the received frames' decryption
// (e2ee.js's format, keyring.js's receive rules).
//
// A key pair per join (a resume keeps it, a rejoin makes a new one). In an encrypted meeting
// (JoinResponse.encryption_keys set) the own sender key is shared with each participant there
// after the join; a ParticipantJoined ratchets it and shares it with the joiner (the others
// ratchet it themselves); a ParticipantLeft rotates it and shares it with every one left; a
// participant back from reconnecting (ParticipantUpdated CONNECTED) gets it again. Key changes
// are one queue, so shares go out in generation order; the shares wait in sharequeue.js's queue
// (bounded width, RATE_LIMITED tried again, a superseded one dropped). While a rotation after a
// leave is under way, the frames sent wait for its key (HOLD_MAX_MS, HOLD_MAX_FRAMES; beyond,
// dropped and counted): none is encrypted with a key the departed holds. A received frame is
// decrypted by its publisher's keys and reaches `deliver` in order; one that fails is dropped and
// counted in `stats.e2ee`, never decoded.
//
// Once the page has been in an encrypted meeting it stays encrypted for the life of its session,
// rejoins included: accepts() says whether a later JoinResponse keeps the encryption (one without
// encryption_keys does not, and the session ends), and nothing is ever sent in clear.

import {
  E2EEError,
  KeyPair,
  SenderKey,
  fingerprint,
  openShare,
  parseKeyId,
  sealShare,
} from "./e2ee.js";
import { Keyring, keyringCounts } from "./keyring.js";
import { ShareQueue, shareCounts } from "./sharequeue.js";

// How often frames waiting for a key are timed out while none arrives (keyring.js's bounds).
const EXPIRE_INTERVAL_MS = 500;
// Limit: frames sent while a rotation is under way wait for its key at most this long, and at
// most this many at once; beyond either they are dropped (stats.e2ee.heldDropped).
export const HOLD_MAX_MS = 500;
export const HOLD_MAX_FRAMES = 64;

export class MeetingEncryption {
  // `send(body)` sends an E2EEKeyShare (-> promise); `publisherOf(streamId)` -> participant id
  // or undefined; `deliver(frame)` takes a decrypted frame; `onChange()` after the encryption
  // state or a safety number changed; `onFatal(error)` when the sender key cannot go on.
  constructor({ stats, send, publisherOf, deliver, onChange, onFatal }) {
    this.send = send;
    this.publisherOf = publisherOf;
    this.deliver = deliver;
    this.onChange = onChange;
    this.onFatal = onFatal;
    this.stats = stats.e2ee = {
      encrypted: false,
      generation: null, // the own sender key's
      ...keyringCounts(), // decrypted, drops by reason
      sealed: 0, // own frames encrypted
      sealFailures: 0, // own frames not sent: the key could not encrypt them
      held: 0, // own frames that waited for a rotation's key
      heldDropped: 0, // own frames not sent: the rotation's key came too late, or too many waited
      ...shareCounts(), // sent, failed, dropped, retried, queued (sharequeue.js)
      sharesOpened: 0, // the bad ones count in drops.bad_share
      unknownStream: 0, // frames of a stream no known participant publishes
      deliverFailures: 0, // decrypted frames or opened shares whose handling threw
    };
    this.keyPair = null;
    this.selfId = null;
    this.encrypted = false; // once true, for good (see the top of this file)
    this.live = false; // start() ran for the current key pair, in an encrypted meeting
    this.failed = false; // the sender key cannot go on: nothing more is encrypted
    this.senderKey = null;
    this.hold = null; // while rotations are under way: {rotations, frames, released, release}
    this.shares = new ShareQueue({
      stats: this.stats,
      send: (body) => this.send(body),
      seal: (id, generation, secret) => this.sealShareFor(id, generation, secret),
    });
    this.keyring = new Keyring({ counts: this.stats });
    this.peers = new Map(); // participant id -> {publicKey, fingerprint (null until computed)}
    this.changes = Promise.resolve(); // the sender key's changes, in order
    this.incoming = Promise.resolve(); // received shares, opened in order
    this.ready = Promise.resolve(); // the sender key exists (an encrypted meeting)
    this.timer = null;
    this.epoch = 0; // each key pair's: queued work of an earlier one does nothing
  }

  // The public key every JoinRequest offers (32 bytes), or undefined before newKeyPair().
  get publicKey() {
    return this.keyPair?.publicKey;
  }

  // A fresh key pair for a join or a rejoin; what the last join had is forgotten.
  async newKeyPair() {
    const keyPair = await KeyPair.generate();
    this.reset();
    this.keyPair = keyPair;
  }

  // Whatever the last key pair had is forgotten; an encrypted session stays encrypted.
  reset() {
    this.epoch++;
    this.live = false;
    this.stats.generation = null;
    this.senderKey = null;
    this.release(false);
    this.shares.clear();
    this.keyring = new Keyring({ counts: this.stats });
    this.peers.clear();
    this.changes = this.incoming = this.ready = Promise.resolve();
    clearInterval(this.timer);
    this.timer = null;
  }

  // Whether the JoinResponse `joined` (a resume or a rejoin) may go on: not when it has no
  // encryption_keys after an encrypted one (the MC cannot turn the encryption off).
  accepts(joined) {
    return !this.encrypted || Boolean(joined?.encryptionKeys);
  }

  // A JoinResponse (a join or a rejoin) as participant `selfId`: in an encrypted meeting a new
  // sender key, shared with each of the others. Synchronous: the events that follow the
  // JoinResponse queue behind it. `ready` settles once the key exists. False (nothing done)
  // for a JoinResponse accepts() refuses.
  start(joined, selfId) {
    if (!this.accepts(joined)) return false;
    this.selfId = selfId;
    this.encrypted = this.stats.encrypted = Boolean(joined.encryptionKeys);
    if (!this.encrypted) return true;
    this.live = true;
    for (const p of joined.existingParticipants) this.addPeer(p);
    this.timer ??= setInterval(() => this.keyring.expire(), EXPIRE_INTERVAL_MS);
    this.ready = this.change(async () => {
      this.senderKey = await SenderKey.create();
      return [...this.peers.keys()];
    });
    this.onChange();
    return true;
  }

  // The frames' encryption for publishers (media.js): the whole wire frame of `payload`, once
  // any rotation under way has its key in use.
  seal(header, payload) {
    if (this.hold) return this.sealHeld(this.hold, header, payload);
    return this.sealNow(header, payload);
  }

  async sealHeld(hold, header, payload) {
    if (hold.frames >= HOLD_MAX_FRAMES) {
      this.stats.heldDropped++;
      throw new E2EEError("too many frames wait for a new key");
    }
    hold.frames++;
    this.stats.held++;
    let timer;
    const late = new Promise((resolve) => {
      timer = setTimeout(() => resolve(false), HOLD_MAX_MS);
    });
    const ready = await Promise.race([hold.released, late]);
    clearTimeout(timer);
    hold.frames--;
    if (!ready) {
      this.stats.heldDropped++;
      throw new E2EEError("the new key was not ready in time");
    }
    return this.sealNow(header, payload);
  }

  async sealNow(header, payload) {
    if (!this.senderKey || this.failed) {
      this.stats.sealFailures++;
      throw new E2EEError("no sender key yet");
    }
    try {
      const wire = await this.senderKey.encrypt(header, payload);
      this.stats.sealed++;
      return wire;
    } catch (e) {
      this.stats.sealFailures++;
      throw e;
    }
  }

  // A received frame: decrypted by its publisher's keys, then delivered (in order per
  // publisher); dropped and counted when it does not decrypt.
  receive(frame) {
    const publisher = this.publisherOf(frame.streamId);
    if (!publisher) {
      this.stats.unknownStream++;
      return;
    }
    this.keyring.decrypt(publisher, frame).then(
      (frames) => this.deliverAll(frames),
      () => this.stats.deliverFailures++,
    );
  }

  // Each frame on its own: one whose handling throws is counted, the next is delivered.
  deliverAll(frames) {
    for (const frame of frames) {
      try {
        this.deliver(frame);
      } catch {
        this.stats.deliverFailures++;
      }
    }
  }

  // --- signaling events --------------------------------------------------------------------------

  // ParticipantJoined: ratchet, and the joiner gets the new key.
  joined(participant) {
    if (!this.live || participant.participantId === this.selfId) return;
    this.addPeer(participant);
    this.change(async () => {
      await this.senderKey.ratchet();
      return [participant.participantId];
    });
  }

  // ParticipantLeft (a leave or a kick): a fresh key the departed never gets, for every one left.
  left(participantId) {
    if (!this.live || !this.peers.has(participantId)) return;
    this.peers.delete(participantId);
    this.keyring.forget(participantId);
    this.shares.forget(participantId);
    this.onChange();
    this.rotation();
  }

  // ParticipantUpdated: one back from reconnecting gets the current key again (shares sent
  // while it was away may be lost).
  connected(participantId) {
    if (!this.live || !this.peers.has(participantId)) return;
    this.change(async () => [participantId]);
  }

  // The own signaling session was resumed with the room as `list`: a key change for who left
  // (a rotation) or joined (a ratchet) meanwhile, then the current key to everyone (shares sent
  // while the session was lost may be lost too).
  resumed(list) {
    if (!this.live) return;
    const now = new Set(list.map((p) => p.participantId));
    const gone = [...this.peers.keys()].filter((id) => !now.has(id));
    const added = list.filter((p) => !this.peers.has(p.participantId));
    for (const id of gone) {
      this.peers.delete(id);
      this.keyring.forget(id);
      this.shares.forget(id);
    }
    for (const p of added) this.addPeer(p);
    if (gone.length > 0) {
      this.rotation();
    } else {
      this.change(async () => {
        if (added.length > 0) await this.senderKey.ratchet();
        return [...this.peers.keys()];
      });
    }
    this.onChange();
  }

  // E2EEKeyShare: opened with its sender's public key, its frames released. A step that throws
  // is counted and the next share is opened all the same.
  keyShare(share) {
    if (!this.live) return;
    const epoch = this.epoch;
    this.incoming = this.incoming.then(() => this.openOne(share, epoch)).catch(() => {
      this.stats.deliverFailures++;
    });
  }

  async openOne(share, epoch) {
    if (epoch !== this.epoch) return;
    const from = share.fromParticipantId;
    const peer = this.peers.get(from);
    const keyring = this.keyring;
    let generation;
    let secret;
    try {
      if (!peer || share.toParticipantId !== this.selfId) throw new E2EEError("not for us");
      generation = parseKeyId(share.keyId);
      const { keyPair, selfId } = this;
      const { ciphertext } = share;
      secret = await openShare(keyPair, selfId, peer.publicKey, from, generation, ciphertext);
    } catch {
      keyring.drop("bad_share");
      return;
    }
    this.stats.sharesOpened++;
    this.deliverAll(await keyring.add(from, generation, secret));
  }

  // --- the own sender key ------------------------------------------------------------------------

  // Runs `step()` (-> the participant ids to share the key with) after the earlier changes,
  // then queues the key's share for each of them. A change that fails (an exhausted key) is
  // fatal: nothing more is encrypted.
  change(step) {
    const epoch = this.epoch;
    const done = this.changes.then(async () => {
      if (epoch !== this.epoch) return;
      const to = await step();
      if (epoch !== this.epoch) return;
      const { generation, secret } = this.senderKey;
      this.stats.generation = generation;
      for (const id of to) this.shares.push(id, generation, secret);
    });
    this.changes = done.catch((e) => {
      if (epoch !== this.epoch) return;
      this.failed = true;
      this.release(false);
      this.onFatal(e instanceof E2EEError ? e : new E2EEError(`the sender key failed: ${e}`));
    });
    return this.changes;
  }

  // A rotation for every one left: the frames sent from now on wait until its key is in use.
  rotation() {
    if (!this.hold) {
      let release;
      const released = new Promise((resolve) => {
        release = resolve;
      });
      this.hold = { rotations: 0, frames: 0, released, release };
    }
    const hold = this.hold;
    hold.rotations++;
    this.change(async () => {
      await this.senderKey.rotate();
      if (--hold.rotations === 0 && this.hold === hold) this.release(true);
      return [...this.peers.keys()];
    });
  }

  // The frames waiting for a rotation go on (`ready`), or are dropped.
  release(ready) {
    const hold = this.hold;
    this.hold = null;
    hold?.release(ready);
  }

  // The E2EEKeyShare body of `secret` for `participantId` (sharequeue.js): null when it left;
  // throws when its public key gives no agreement (it gets no key).
  async sealShareFor(participantId, generation, secret) {
    const peer = this.peers.get(participantId);
    if (!peer) return null;
    const { keyPair, selfId } = this;
    const to = peer.publicKey;
    const ciphertext = await sealShare(keyPair, selfId, to, participantId, generation, secret);
    return {
      fromParticipantId: selfId,
      toParticipantId: participantId,
      keyId: String(generation),
      ciphertext,
    };
  }

  addPeer(p) {
    if (p.participantId === this.selfId || this.peers.has(p.participantId)) return;
    const peer = { publicKey: p.publicKey, fingerprint: null };
    this.peers.set(p.participantId, peer);
    if (p.publicKey?.byteLength !== 32) return;
    fingerprint(p.publicKey).then((print) => {
      peer.fingerprint = print;
      this.onChange();
    });
  }

  // participant id -> safety number, the own one included (an encrypted meeting only).
  safetyNumbers() {
    const out = {};
    if (!this.encrypted) return out;
    if (this.selfId && this.keyPair) out[this.selfId] = this.keyPair.fingerprint;
    for (const [id, peer] of this.peers) if (peer.fingerprint) out[id] = peer.fingerprint;
    return out;
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.release(false);
    this.shares.clear();
  }
}
