// End-to-end encryption of media frames (docs/protocol.md §16) with WebCrypto: X25519 key
// agreement, HKDF-SHA256, AES-GCM. The same format as darktower/e2ee (the Python clients).
//
//   sender secret S (32 bytes), generation g (uint32)
//     frame key  K    = HKDF(S, "darktower e2ee v1 frame key", 16)   AES-128-GCM
//     frame salt SALT = HKDF(S, "darktower e2ee v1 frame salt", 12)
//     ratchet    S'   = HKDF(S, "darktower e2ee v1 ratchet", 32)     generation g + 1
//   encrypted payload = PREFIX (version 1, g: uint32 BE, counter c: uint64 BE) || ciphertext || tag
//     nonce = SALT XOR (4 zero bytes || c), AAD = the 46-byte header as sent || PREFIX
//   key share (E2EEKeyShare.ciphertext) = nonce (12) || AES-256-GCM(KS, S) (32 + 16)
//     KS = HKDF(X25519, "darktower e2ee v1 share key" || from public || to public, 32)
//
// CryptoKeys are imported once per generation: a frame costs one AES-GCM call. The receive side
// (Keyring) is keyring.js's.

import { concatBytes } from "./bytes.js";
import { FrameFlags, HEADER_SIZE, encodeHeader } from "./frames.js";

export const FORMAT_VERSION = 1;
export const PREFIX_SIZE = 13;
export const TAG_SIZE = 16;
export const OVERHEAD = PREFIX_SIZE + TAG_SIZE; // 29
export const SECRET_SIZE = 32;
export const PUBLIC_KEY_SIZE = 32;
export const SHARE_NONCE_SIZE = 12;
export const SHARE_SIZE = SHARE_NONCE_SIZE + SECRET_SIZE + TAG_SIZE; // 60
// The largest plaintext an encrypted frame carries (its payload stays within 1 MiB).
export const MAX_PLAINTEXT = 1024 * 1024 - OVERHEAD;
export const MAX_GENERATION = 0xffffffff;
export const MAX_COUNTER = 2n ** 64n - 1n;

const utf8 = (text) => new TextEncoder().encode(text);
const LABEL = Object.freeze({
  frameKey: utf8("darktower e2ee v1 frame key"),
  frameSalt: utf8("darktower e2ee v1 frame salt"),
  ratchet: utf8("darktower e2ee v1 ratchet"),
  shareKey: utf8("darktower e2ee v1 share key"),
  share: utf8("darktower e2ee v1 share"),
  fingerprint: utf8("darktower e2ee v1 fingerprint"),
});
const ZERO_SALT = new Uint8Array(32);
// An X25519 private key as PKCS#8 is this prefix and the 32 raw bytes (RFC 8410).
const PKCS8_X25519 = Uint8Array.from([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
]);

// Anything wrong with a key, a share or a frame. The receive path counts it and goes on.
export class E2EEError extends Error {
  constructor(message) {
    super(message);
    this.name = "E2EEError";
  }
}

const subtle = () => globalThis.crypto.subtle;

const concat = (...parts) => concatBytes(parts);

// HKDF-SHA256 of `ikm` with the all-zero salt: `length` bytes.
export async function hkdf(ikm, info, length) {
  const key = await subtle().importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  const params = { name: "HKDF", hash: "SHA-256", salt: ZERO_SALT, info };
  return new Uint8Array(await subtle().deriveBits(params, key, length * 8));
}

export function randomSecret() {
  return crypto.getRandomValues(new Uint8Array(SECRET_SIZE));
}

// S' of `secret` (the next generation's secret after a ratchet).
export function ratchetSecret(secret) {
  return hkdf(secret, LABEL.ratchet, SECRET_SIZE);
}

// The raw frame key (16 bytes) and salt (12 bytes) of `secret`.
export async function frameKeyMaterial(secret) {
  const [key, salt] = await Promise.all([
    hkdf(secret, LABEL.frameKey, 16),
    hkdf(secret, LABEL.frameSalt, 12),
  ]);
  return { key, salt };
}

// One generation's keys, ready for frames: {generation, secret, key (AES-GCM CryptoKey), salt}.
export async function generationKeys(generation, secret) {
  if (!Number.isInteger(generation) || generation < 0 || generation > MAX_GENERATION) {
    throw new E2EEError(`bad generation ${generation}`);
  }
  if (secret?.byteLength !== SECRET_SIZE) throw new E2EEError("a sender secret is 32 bytes");
  const material = await frameKeyMaterial(secret);
  const key = await subtle().importKey("raw", material.key, "AES-GCM", false, [
    "encrypt",
    "decrypt",
  ]);
  return { generation, secret: Uint8Array.from(secret), key, salt: material.salt };
}

// The 12-byte nonce of the counter whose 8 bytes (big-endian) are `counterBytes`, under `salt`.
function nonceOf(salt, counterBytes) {
  const nonce = Uint8Array.from(salt);
  for (let i = 0; i < 8; i++) nonce[4 + i] ^= counterBytes[i];
  return nonce;
}

// SALT XOR (4 zero bytes || counter as 8 bytes big-endian); `counter` a Number or a BigInt.
export function frameNonce(salt, counter) {
  return nonceOf(salt, framePrefix(0, counter).subarray(5));
}

// Version, generation, counter: the 13 bytes before the ciphertext.
export function framePrefix(generation, counter) {
  const prefix = new Uint8Array(PREFIX_SIZE);
  const view = new DataView(prefix.buffer);
  view.setUint8(0, FORMAT_VERSION);
  view.setUint32(1, generation);
  view.setBigUint64(5, BigInt(counter));
  return prefix;
}

// The 46-byte header, the prefix and the encrypted payload of one frame (the whole wire frame)
// under `keys` (generationKeys()) with counter `counter`. `header`: frames.js's encodeHeader
// fields; its payload length becomes the encrypted payload's, END_OF_FRAME is set (an encrypted
// frame is one part).
export async function encryptFrame(keys, counter, header, payload) {
  if (payload.byteLength > MAX_PLAINTEXT) {
    throw new E2EEError(`a frame of ${payload.byteLength} bytes is over ${MAX_PLAINTEXT}`);
  }
  const flags = (header.flags ?? 0) | FrameFlags.END_OF_FRAME;
  const head = encodeHeader({ ...header, flags, payloadLength: payload.byteLength + OVERHEAD });
  const prefix = framePrefix(keys.generation, counter);
  const params = {
    name: "AES-GCM",
    iv: nonceOf(keys.salt, prefix.subarray(5)),
    additionalData: concat(head, prefix),
    tagLength: TAG_SIZE * 8,
  };
  const sealed = new Uint8Array(await subtle().encrypt(params, keys.key, payload));
  return concat(head, prefix, sealed);
}

// {generation, counter (BigInt)} of an encrypted payload; throws E2EEError when malformed.
export function parsePrefix(payload) {
  if (payload.byteLength < OVERHEAD) throw new E2EEError("an encrypted payload is ≥ 29 bytes");
  const view = new DataView(payload.buffer, payload.byteOffset, PREFIX_SIZE);
  const version = view.getUint8(0);
  if (version !== FORMAT_VERSION) throw new E2EEError(`unknown E2EE format version ${version}`);
  return { generation: view.getUint32(1), counter: view.getBigUint64(5) };
}

// The header bytes of a received frame exactly as they came (frames.js keeps them), else as
// encoded from its fields.
function headerBytes(frame) {
  if (frame.headerBytes?.byteLength === HEADER_SIZE) return frame.headerBytes;
  return encodeHeader({ ...frame, payloadLength: frame.payload.byteLength });
}

// The plaintext of an encrypted `frame` (frames.js form) under `keys`; rejects (OperationError)
// when the tag does not verify.
export async function decryptPayload(keys, frame) {
  const payload = frame.payload;
  const prefix = payload.subarray(0, PREFIX_SIZE);
  const params = {
    name: "AES-GCM",
    iv: nonceOf(keys.salt, prefix.subarray(5)),
    additionalData: concat(headerBytes(frame), prefix),
    tagLength: TAG_SIZE * 8,
  };
  return new Uint8Array(await subtle().decrypt(params, keys.key, payload.subarray(PREFIX_SIZE)));
}

// A decrypted frame: the same header, the plaintext as its payload.
export function plainFrame(frame, plaintext) {
  const plain = { ...frame, payloadLength: plaintext.byteLength, payload: plaintext };
  delete plain.headerBytes; // the encrypted frame's
  return plain;
}

// --- the sender side -----------------------------------------------------------------------------

// The own sender key: secret, generation and the counter of its frames. Changes (rotate,
// ratchet) are serialised and take effect at once for every frame encrypted after them; a
// frame takes its generation and counter when encrypt() is called, so frames keep the
// counter order of their calls.
export class SenderKey {
  static async create(secret = randomSecret(), generation = 0, counter = 0) {
    const key = new SenderKey();
    key.state = { ...(await generationKeys(generation, secret)), counter: BigInt(counter) };
    return key;
  }

  constructor() {
    this.state = null;
    this.changing = Promise.resolve();
  }

  get generation() {
    return this.state.generation;
  }

  get secret() {
    return this.state.secret;
  }

  // A fresh random secret, generation + 1 (a participant left: docs/protocol.md §16).
  rotate() {
    return this.change(async () => randomSecret());
  }

  // S', generation + 1 (a participant joined).
  ratchet() {
    return this.change(() => ratchetSecret(this.state.secret));
  }

  // Resolves with {generation, secret} once the new key is in use.
  change(nextSecret) {
    const step = this.changing.then(async () => {
      const generation = this.state.generation + 1;
      if (generation > MAX_GENERATION) throw new E2EEError("the sender key generations ran out");
      const keys = await generationKeys(generation, await nextSecret());
      this.state = { ...keys, counter: 0n };
      return { generation, secret: keys.secret };
    });
    this.changing = step.catch(() => {});
    return step;
  }

  // The whole wire frame of `payload` under `header` (frames.js fields: frameType, streamId,
  // timestampUs, sequence, flags), encrypted with the current key.
  encrypt(header, payload) {
    const state = this.state;
    const counter = state.counter;
    if (counter > MAX_COUNTER) {
      return Promise.reject(new E2EEError("this generation's frame counter is used up: rotate"));
    }
    state.counter = counter + 1n;
    return encryptFrame(state, counter, header, payload);
  }
}

// --- key agreement and shares --------------------------------------------------------------------

// An X25519 key pair: `privateKey` (a CryptoKey for deriveBits), `publicKey` (32 raw bytes),
// `fingerprint` (the safety number of the public key).
export class KeyPair {
  static async generate() {
    const pair = await subtle().generateKey({ name: "X25519" }, false, ["deriveBits"]);
    const raw = new Uint8Array(await subtle().exportKey("raw", pair.publicKey));
    return new KeyPair(pair.privateKey, raw, await fingerprint(raw));
  }

  // From 32 raw private key bytes (test vectors).
  static async fromPrivateBytes(bytes) {
    if (bytes.byteLength !== 32) throw new E2EEError("an X25519 private key is 32 bytes");
    const pkcs8 = concat(PKCS8_X25519, bytes);
    const key = await subtle().importKey("pkcs8", pkcs8, { name: "X25519" }, true, ["deriveBits"]);
    const jwk = await subtle().exportKey("jwk", key);
    const raw = Uint8Array.from(atob(jwk.x.replaceAll("-", "+").replaceAll("_", "/")), (c) =>
      c.charCodeAt(0),
    );
    return new KeyPair(key, raw, await fingerprint(raw));
  }

  constructor(privateKey, publicKey, print) {
    this.privateKey = privateKey;
    this.publicKey = publicKey;
    this.fingerprint = print;
  }
}

// X25519(own private, peer public): 32 bytes; E2EEError for a key that gives no agreement.
export async function agree(own, peerPublic) {
  if (peerPublic?.byteLength !== PUBLIC_KEY_SIZE) throw new E2EEError("a public key is 32 bytes");
  try {
    const peer = await subtle().importKey("raw", peerPublic, { name: "X25519" }, false, []);
    const bits = await subtle().deriveBits({ name: "X25519", public: peer }, own.privateKey, 256);
    return new Uint8Array(bits);
  } catch (e) {
    throw new E2EEError(`no key agreement with that public key (${e.name})`);
  }
}

// KS (32 bytes) of a share from `fromPublic` to `toPublic` with the agreed `shared` secret.
export function shareKeyBytes(shared, fromPublic, toPublic) {
  return hkdf(shared, concat(LABEL.shareKey, fromPublic, toPublic), 32);
}

async function shareKey(own, peerPublic, fromPublic, toPublic) {
  const raw = await shareKeyBytes(await agree(own, peerPublic), fromPublic, toPublic);
  return subtle().importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
}

// The associated data of a share.
export function shareAad(fromId, toId, keyId) {
  const zero = new Uint8Array(1);
  return concat(LABEL.share, zero, utf8(fromId), zero, utf8(toId), zero, utf8(keyId));
}

// The generation a share's key_id names ("0", "1", …); throws E2EEError for anything else.
export function parseKeyId(keyId) {
  if (!/^(0|[1-9][0-9]{0,9})$/.test(keyId ?? "") || Number(keyId) > MAX_GENERATION) {
    throw new E2EEError(`bad key id ${JSON.stringify(keyId)}`);
  }
  return Number(keyId);
}

// E2EEKeyShare.ciphertext giving `secret` of `generation` from `own` (id `ownId`) to the
// participant `peerId` with public key `peerPublic`. `nonce` is random unless given (vectors).
export async function sealShare(own, ownId, peerPublic, peerId, generation, secret, nonce = null) {
  if (secret.byteLength !== SECRET_SIZE) throw new E2EEError("a sender secret is 32 bytes");
  const key = await shareKey(own, peerPublic, own.publicKey, peerPublic);
  const iv = nonce ?? crypto.getRandomValues(new Uint8Array(SHARE_NONCE_SIZE));
  const additionalData = shareAad(ownId, peerId, String(generation));
  const params = { name: "AES-GCM", iv, additionalData, tagLength: TAG_SIZE * 8 };
  return concat(iv, new Uint8Array(await subtle().encrypt(params, key, secret)));
}

// The secret a share from `peerId` (public key `peerPublic`) to `own` (`ownId`) carries;
// throws E2EEError when it does not open.
export async function openShare(own, ownId, peerPublic, peerId, generation, ciphertext) {
  if (ciphertext?.byteLength !== SHARE_SIZE) throw new E2EEError("a key share is 60 bytes");
  const key = await shareKey(own, peerPublic, peerPublic, own.publicKey);
  const params = {
    name: "AES-GCM",
    iv: ciphertext.subarray(0, SHARE_NONCE_SIZE),
    additionalData: shareAad(peerId, ownId, String(generation)),
    tagLength: TAG_SIZE * 8,
  };
  try {
    return new Uint8Array(
      await subtle().decrypt(params, key, ciphertext.subarray(SHARE_NONCE_SIZE)),
    );
  } catch {
    throw new E2EEError("the key share does not open");
  }
}

// The safety number of a public key: "01234 56789 01234 56789".
export async function fingerprint(publicKey) {
  const digest = new Uint8Array(
    await subtle().digest("SHA-256", concat(LABEL.fingerprint, publicKey)),
  );
  const groups = [];
  for (let i = 0; i < 20; i += 5) {
    let value = 0;
    for (let j = i; j < i + 5; j++) value = value * 256 + digest[j];
    groups.push(String(value % 100000).padStart(5, "0"));
  }
  return groups.join(" ");
}
