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
// and the shares they bring are one queue, so shares go out in generation order. A received
// frame is decrypted by its publisher's keys and reaches `deliver` in order; one that fails is
// dropped and counted in `stats.e2ee`, never decoded.

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

// How often frames waiting for a key are timed out while none arrives (keyring.js's bounds).
const EXPIRE_INTERVAL_MS = 500;

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
      sharesSent: 0,
      sharesOpened: 0, // the bad ones count in drops.bad_share
      unknownStream: 0, // frames of a stream no known participant publishes
    };
    this.keyPair = null;
    this.selfId = null;
    this.encrypted = false;
    this.senderKey = null;
    this.keyring = new Keyring({ counts: this.stats });
    this.peers = new Map(); // participant id -> {publicKey, fingerprint (null until computed)}
    this.changes = Promise.resolve(); // the sender key's changes and their shares, in order
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

  reset() {
    this.epoch++;
    this.encrypted = this.stats.encrypted = false;
    this.stats.generation = null;
    this.senderKey = null;
    this.keyring = new Keyring({ counts: this.stats });
    this.peers.clear();
    this.changes = this.incoming = this.ready = Promise.resolve();
    clearInterval(this.timer);
    this.timer = null;
  }

  // A JoinResponse (a join or a rejoin) as participant `selfId`: in an encrypted meeting a new
  // sender key, shared with each of the others. Synchronous: the events that follow the
  // JoinResponse queue behind it. `ready` settles once the key exists.
  start(joined, selfId) {
    this.selfId = selfId;
    this.encrypted = this.stats.encrypted = Boolean(joined.encryptionKeys);
    if (!this.encrypted) return;
    for (const p of joined.existingParticipants) this.addPeer(p);
    this.timer ??= setInterval(() => this.keyring.expire(), EXPIRE_INTERVAL_MS);
    this.ready = this.change(async () => {
      this.senderKey = await SenderKey.create();
      return [...this.peers.keys()];
    });
    this.onChange();
  }

  // The frames' encryption for publishers (media.js): the whole wire frame of `payload`.
  async seal(header, payload) {
    if (!this.senderKey) {
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
    this.keyring.decrypt(publisher, frame).then((frames) => this.deliverAll(frames));
  }

  deliverAll(frames) {
    for (const frame of frames) this.deliver(frame);
  }

  // --- signaling events --------------------------------------------------------------------------

  // ParticipantJoined: ratchet, and the joiner gets the new key.
  joined(participant) {
    if (!this.encrypted || participant.participantId === this.selfId) return;
    this.addPeer(participant);
    this.change(async () => {
      await this.senderKey.ratchet();
      return [participant.participantId];
    });
  }

  // ParticipantLeft (a leave or a kick): a fresh key the departed never gets, for every one left.
  left(participantId) {
    if (!this.encrypted || !this.peers.has(participantId)) return;
    this.peers.delete(participantId);
    this.keyring.forget(participantId);
    this.onChange();
    this.change(async () => {
      await this.senderKey.rotate();
      return [...this.peers.keys()];
    });
  }

  // ParticipantUpdated: one back from reconnecting gets the current key again (shares sent
  // while it was away may be lost).
  connected(participantId) {
    if (!this.encrypted || !this.peers.has(participantId)) return;
    this.change(async () => [participantId]);
  }

  // The own signaling session was resumed with the room as `list`: a key change for who left
  // (a rotation) or joined (a ratchet) meanwhile, then the current key to everyone (shares sent
  // while the session was lost may be lost too).
  resumed(list) {
    if (!this.encrypted) return;
    const now = new Set(list.map((p) => p.participantId));
    const gone = [...this.peers.keys()].filter((id) => !now.has(id));
    const added = list.filter((p) => !this.peers.has(p.participantId));
    for (const id of gone) {
      this.peers.delete(id);
      this.keyring.forget(id);
    }
    for (const p of added) this.addPeer(p);
    this.change(async () => {
      if (gone.length > 0) await this.senderKey.rotate();
      else if (added.length > 0) await this.senderKey.ratchet();
      return [...this.peers.keys()];
    });
    this.onChange();
  }

  // E2EEKeyShare: opened with its sender's public key, its frames released.
  keyShare(share) {
    if (!this.encrypted) return;
    const epoch = this.epoch;
    this.incoming = this.incoming.then(async () => {
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
    });
  }

  // --- the own sender key ------------------------------------------------------------------------

  // Runs `step()` (-> the participant ids to share the key with) after the earlier changes,
  // then seals the key for each of them and sends the shares. An exhausted key is fatal.
  change(step) {
    const epoch = this.epoch;
    const done = this.changes.then(async () => {
      if (epoch !== this.epoch) return;
      const to = await step();
      if (epoch !== this.epoch) return;
      const { generation, secret } = this.senderKey;
      this.stats.generation = generation;
      await Promise.all(to.map((id) => this.share(id, generation, secret)));
    });
    this.changes = done.catch((e) => {
      if (e instanceof E2EEError) this.onFatal(e);
    });
    return this.changes;
  }

  async share(participantId, generation, secret) {
    const peer = this.peers.get(participantId);
    if (!peer) return;
    let ciphertext;
    try {
      const { keyPair, selfId } = this;
      const to = peer.publicKey;
      ciphertext = await sealShare(keyPair, selfId, to, participantId, generation, secret);
    } catch {
      return; // a public key that gives no agreement: that participant gets no key
    }
    this.stats.sharesSent++;
    const body = {
      fromParticipantId: this.selfId,
      toParticipantId: participantId,
      keyId: String(generation),
      ciphertext,
    };
    // Not awaited: the MC's Ack is of no interest, and a lost session re-shares on resume.
    Promise.resolve()
      .then(() => this.send(body))
      .catch(() => {});
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
  }
}
