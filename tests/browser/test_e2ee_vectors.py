"""The page's E2EE format (darktower/web/e2ee.js, keyring.js) in Chromium's WebCrypto against the
shared test vectors of the Python core (tests/e2ee/vectors.json, docs/protocol.md §16): derived
frame keys, salts and the ratchet chain; whole encrypted wire frames with their prefix, nonce and
associated data, and their decryption by a Keyring (one by ratcheting forward); X25519 public
keys, agreed secrets, share keys and key share ciphertexts with the fixed nonce, opened back;
safety numbers."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import trio

from .._browser import run_page_script
from ._static import BLANK_PAGE, serve_web

pytestmark = pytest.mark.browser

VECTORS = pathlib.Path(__file__).parents[1] / "e2ee" / "vectors.json"
# JSON numbers the page would round (counters, sequence numbers, timestamps up to 2^64 - 1)
# travel as strings; the page reads them as BigInt.
SAFE_INTEGER = 2**53 - 1


def _strings_for_big_ints(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strings_for_big_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings_for_big_ints(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and value > SAFE_INTEGER:
        return str(value)
    return value


VECTORS_SCRIPT = """
async (v) => {
  const E = await import("/static/e2ee.js");
  const K = await import("/static/keyring.js");
  const F = await import("/static/frames.js");
  const B = await import("/static/bytes.js");
  const hex = B.toHex, bin = B.fromHex;
  const out = {derivations: [], chain: [], frames: [], keyPairs: [], shares: [], fingerprints: []};
  for (const d of v.derivations) {
    const m = await E.frameKeyMaterial(bin(d.secret));
    out.derivations.push({frame_key: hex(m.key), frame_salt: hex(m.salt),
                          ratchet: hex(await E.ratchetSecret(bin(d.secret)))});
  }
  let secret = bin(v.ratchet_chain[0].secret);
  for (const step of v.ratchet_chain) {
    out.chain.push({generation: step.generation, secret: hex(secret)});
    secret = await E.ratchetSecret(secret);
  }
  for (const f of v.frames) {
    const h = f.header;
    const header = {version: h.version, frameType: h.frame_type, streamId: h.stream_id,
                    timestampUs: BigInt(h.timestamp_us), sequence: BigInt(h.sequence), flags: h.flags};
    const key = await E.SenderKey.create(bin(f.secret), f.generation, BigInt(f.counter));
    const wire = await key.encrypt(header, bin(f.plaintext));
    const salt = (await E.frameKeyMaterial(bin(f.secret))).salt;
    // The receiver: the generation's key shared, the wire frame decrypted.
    const ring = new K.Keyring();
    const none = await ring.add("sender", f.generation, bin(f.secret));
    const plain = await ring.decrypt("sender", F.decodeFrame(bin(f.wire)));
    out.frames.push({
      wire: hex(wire),
      prefix: hex(wire.subarray(F.HEADER_SIZE, F.HEADER_SIZE + E.PREFIX_SIZE)),
      nonce: hex(E.frameNonce(salt, BigInt(f.counter))),
      aad: hex(wire.subarray(0, F.HEADER_SIZE + E.PREFIX_SIZE)),
      plain_frame: plain.map((p) => hex(F.encodeFrame(p, p.payload))),
      released: none.length,
      drops: ring.drops,
    });
  }
  // Ratcheting forward: generation 0's key only, the generation 1 frame decrypts.
  const ring = new K.Keyring();
  await ring.add("sender", 0, bin(v.ratchet_chain[0].secret));
  const ratcheted = v.frames.find((f) => f.generation === 1);
  const got = await ring.decrypt("sender", F.decodeFrame(bin(ratcheted.wire)));
  out.ratchetForward = {plain: got.map((p) => hex(F.encodeFrame(p, p.payload))),
                        generations: ring.generations("sender"), drops: ring.drops};
  const pairs = {};
  for (const p of v.key_pairs) {
    const pair = await E.KeyPair.fromPrivateBytes(bin(p.private));
    pairs[p.name] = pair;
    out.keyPairs.push({public: hex(pair.publicKey), fingerprint: pair.fingerprint});
  }
  for (const s of v.shares) {
    const from = pairs[s.from], to = pairs[s.to];
    const shared = await E.agree(from, to.publicKey);
    const ciphertext = await E.sealShare(from, s.from_id, to.publicKey, s.to_id, s.generation,
                                         bin(s.secret), bin(s.nonce));
    const opened = await E.openShare(to, s.to_id, from.publicKey, s.from_id,
                                     E.parseKeyId(s.key_id), bin(s.ciphertext));
    // One bit of the ciphertext flipped, or the share read as another generation: no secret.
    const flipped = bin(s.ciphertext);
    flipped[20] ^= 1;
    const refusals = [];
    for (const [bytes, generation] of [[flipped, s.generation], [bin(s.ciphertext), s.generation === 0 ? 1 : s.generation - 1]]) {
      try { await E.openShare(to, s.to_id, from.publicKey, s.from_id, generation, bytes); refusals.push("opened"); }
      catch (e) { refusals.push(e.name); }
    }
    out.shares.push({
      shared_secret: hex(shared),
      peer_agrees: hex(await E.agree(to, from.publicKey)) === hex(shared),
      share_key: hex(await E.shareKeyBytes(shared, from.publicKey, to.publicKey)),
      aad: hex(E.shareAad(s.from_id, s.to_id, s.key_id)),
      ciphertext: hex(ciphertext),
      opened: hex(opened),
      refusals,
    });
  }
  for (const f of v.fingerprints) out.fingerprints.push(await E.fingerprint(bin(f.public_key)));
  out.overhead = E.OVERHEAD;
  return out;
}
"""


async def test_the_page_reproduces_every_vector() -> None:
    vectors = json.loads(VECTORS.read_text())
    with serve_web({"/blank": BLANK_PAGE}) as base:
        got = await trio.to_thread.run_sync(
            run_page_script, base + "/blank", VECTORS_SCRIPT, _strings_for_big_ints(vectors)
        )

    assert got["overhead"] == vectors["overhead"] == 29
    assert got["derivations"] == [
        {k: d[k] for k in ("frame_key", "frame_salt", "ratchet")} for d in vectors["derivations"]
    ]
    assert got["chain"] == vectors["ratchet_chain"]
    assert len(got["frames"]) == len(vectors["frames"]) >= 4
    no_drops = dict.fromkeys(
        ["auth_failed", "no_key", "stale_key", "malformed", "bad_share", "replayed"], 0
    )
    for mine, theirs in zip(got["frames"], vectors["frames"], strict=True):
        name = theirs["name"]
        for field in ("wire", "prefix", "nonce", "aad"):
            assert mine[field] == theirs[field], (name, field)
        assert mine["plain_frame"] == [theirs["plain_frame"]], name
        assert (mine["released"], mine["drops"]) == (0, no_drops), name
    assert got["ratchetForward"] == {
        "plain": [next(f["plain_frame"] for f in vectors["frames"] if f["generation"] == 1)],
        "generations": [0, 1],
        "drops": no_drops,
    }
    assert got["keyPairs"] == [
        {"public": p["public"], "fingerprint": p["fingerprint"]} for p in vectors["key_pairs"]
    ]
    assert len(got["shares"]) == len(vectors["shares"]) >= 2
    for mine, theirs in zip(got["shares"], vectors["shares"], strict=True):
        for field in ("shared_secret", "share_key", "aad", "ciphertext"):
            assert mine[field] == theirs[field], (theirs["from"], theirs["to"], field)
        assert mine["peer_agrees"]
        assert mine["opened"] == theirs["secret"]
        assert mine["refusals"] == ["E2EEError", "E2EEError"]
    assert got["fingerprints"] == [f["fingerprint"] for f in vectors["fingerprints"]]
