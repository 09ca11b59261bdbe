"""Test vectors of the E2EE format (docs/protocol.md §16), shared with the browser's tests.

``tests/e2ee/vectors.json`` holds fixed inputs (secrets, X25519 private keys, frame headers,
counters, a key share's nonce) and every output the format defines for them: derived frame
keys and salts, the ratchet chain, nonces, associated data, whole encrypted wire frames, key
share ciphertexts and safety numbers. The test below recomputes the file with darktower.e2ee
and fails on any difference; the browser's E2EE test loads the same file.

After a deliberate change of the format, regenerate the file with::

    .nox/tests/bin/python -m tests.e2ee.test_vectors --write
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
import uuid
from typing import Any

from darktower.e2ee import (
    KeyPair,
    Keyring,
    SenderKey,
    fingerprint,
    key_id,
    open_share,
    ratchet_secret,
    seal_share,
)
from darktower.e2ee._frame import PREFIX, GenerationKeys
from darktower.e2ee._primitives import (
    LABEL_FINGERPRINT,
    LABEL_FRAME_KEY,
    LABEL_FRAME_SALT,
    LABEL_RATCHET,
    LABEL_SHARE,
    LABEL_SHARE_KEY,
    OVERHEAD,
    hkdf,
)
from darktower.e2ee._shares import share_aad, share_key
from darktower.frames import Frame, FrameFlags, FrameHeader, FrameType

PATH = pathlib.Path(__file__).with_name("vectors.json")


def _fixed(name: str, size: int = 32) -> bytes:
    """Fixed bytes for an input, named so the file says where they came from."""
    return hashlib.sha256(f"darktower e2ee test vector {name}".encode()).digest()[:size]


SECRETS = {
    "s0": _fixed("secret s0"),
    "zeros": bytes(32),
    "counting": bytes(range(32)),
}
KEY_PAIRS = {
    "alice": _fixed("private alice"),
    "bob": _fixed("private bob"),
    "carol": _fixed("private carol"),
}
IDS = {
    "alice": "5f0c7b8e-52d2-4a4c-9c7e-1f3b2a9d8e01",
    "bob": "a3c1e2d4-0b6f-4e8a-b1c2-d3e4f5a6b7c8",
    "carol": "zoë ✓",  # not a UUID: the ids are UTF-8 in the associated data
}
STREAM_ID = uuid.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")

# name, secret, generation, counter, header fields, plaintext
FRAMES: list[tuple[str, str, int, int, dict[str, int], bytes]] = [
    (
        "audio, generation 0, counter 0",
        "s0",
        0,
        0,
        {"frame_type": 0, "timestamp_us": 1_700_000_000_000_000, "sequence": 1, "flags": 1},
        b"opus frame",
    ),
    (
        "video key frame, counter with every byte set",
        "counting",
        7,
        0x0102030405060708,
        {"frame_type": 1, "timestamp_us": 123_456_789, "sequence": 0x1122334455667788, "flags": 1},
        bytes(range(256)) * 4 + b"tail",
    ),
    (
        "discardable video delta, last generation, last counter, empty payload",
        "zeros",
        0xFFFF_FFFF,
        0xFFFF_FFFF_FFFF_FFFF,
        {"frame_type": 2, "timestamp_us": 0, "sequence": 0, "flags": 3},
        b"",
    ),
    (
        "audio, generation 1 of s0 by ratchet, counter 3",
        "s0>1",
        1,
        3,
        {"frame_type": 0, "timestamp_us": 42, "sequence": 9, "flags": 1},
        b"after a join",
    ),
]

# from, to, generation, secret, nonce
SHARES: list[tuple[str, str, int, str, bytes]] = [
    ("alice", "bob", 0, "s0", _fixed("share nonce 1", 12)),
    ("bob", "alice", 5, "counting", _fixed("share nonce 2", 12)),
    ("alice", "carol", 4294967295, "zeros", bytes(12)),
]


def _secret(name: str) -> bytes:
    base, _, steps = name.partition(">")
    secret = SECRETS[base]
    for _ in range(int(steps or 0)):
        secret = ratchet_secret(secret)
    return secret


def _derivation(secret: bytes) -> dict[str, str]:
    return {
        "secret": secret.hex(),
        "frame_key": hkdf(secret, LABEL_FRAME_KEY, 16).hex(),
        "frame_salt": hkdf(secret, LABEL_FRAME_SALT, 12).hex(),
        "ratchet": ratchet_secret(secret).hex(),
    }


def _frame(
    name: str, secret_name: str, generation: int, counter: int, fields: dict[str, int], text: bytes
) -> dict[str, Any]:
    secret = _secret(secret_name)
    header = FrameHeader(
        frame_type=FrameType(fields["frame_type"]),
        stream_id=STREAM_ID,
        timestamp_us=fields["timestamp_us"],
        sequence=fields["sequence"],
        flags=FrameFlags(fields["flags"]),
    )
    wire = SenderKey(secret, generation, counter=counter).encrypt(header, text)
    keys = GenerationKeys(secret, generation)
    prefix = PREFIX.pack(1, generation, counter)
    return {
        "name": name,
        "secret": secret.hex(),
        "generation": generation,
        "counter": counter,
        "header": {"version": 1, "stream_id": str(STREAM_ID), **fields},
        "plaintext": text.hex(),
        "plain_frame": Frame.build(header, text).raw.tobytes().hex(),
        "prefix": prefix.hex(),
        "nonce": keys.nonce(counter).hex(),
        "aad": (wire[:46] + prefix).hex(),
        "wire": wire.hex(),
    }


def _share(
    sender: str, recipient: str, generation: int, secret_name: str, nonce: bytes
) -> dict[str, Any]:
    own = KeyPair.from_private_bytes(KEY_PAIRS[sender])
    peer = KeyPair.from_private_bytes(KEY_PAIRS[recipient])
    secret = _secret(secret_name)
    return {
        "from": sender,
        "to": recipient,
        "from_id": IDS[sender],
        "to_id": IDS[recipient],
        "generation": generation,
        "key_id": key_id(generation),
        "secret": secret.hex(),
        "nonce": nonce.hex(),
        "shared_secret": own.exchange(peer.public).hex(),
        "share_key": share_key(own, peer.public, own.public, peer.public).hex(),
        "aad": share_aad(IDS[sender], IDS[recipient], generation).hex(),
        "ciphertext": seal_share(
            own, IDS[sender], peer.public, IDS[recipient], generation, secret, nonce=nonce
        ).hex(),
    }


def build() -> dict[str, Any]:
    """Every vector, computed with darktower.e2ee from the fixed inputs above."""
    chain = [SECRETS["s0"]]
    for _ in range(4):
        chain.append(ratchet_secret(chain[-1]))
    pairs = {name: KeyPair.from_private_bytes(private) for name, private in KEY_PAIRS.items()}
    return {
        "about": (
            "Test vectors of the Dark Tower E2EE format v1 (docs/protocol.md §16). Bytes are "
            "lowercase hex, ids UTF-8 strings. Regenerate: "
            ".nox/tests/bin/python -m tests.e2ee.test_vectors --write"
        ),
        "overhead": OVERHEAD,
        "labels": {
            "frame_key": LABEL_FRAME_KEY.decode(),
            "frame_salt": LABEL_FRAME_SALT.decode(),
            "ratchet": LABEL_RATCHET.decode(),
            "share": LABEL_SHARE.decode(),
            "share_key": LABEL_SHARE_KEY.decode(),
            "fingerprint": LABEL_FINGERPRINT.decode(),
        },
        "derivations": [_derivation(secret) for secret in SECRETS.values()],
        "ratchet_chain": [
            {"generation": generation, "secret": secret.hex()}
            for generation, secret in enumerate(chain)
        ],
        "frames": [_frame(*spec) for spec in FRAMES],
        "key_pairs": [
            {
                "name": name,
                "id": IDS[name],
                "private": KEY_PAIRS[name].hex(),
                "public": pair.public.hex(),
                "fingerprint": pair.fingerprint,
            }
            for name, pair in pairs.items()
        ],
        "shares": [_share(*spec) for spec in SHARES],
        "fingerprints": [
            {"public_key": key.hex(), "fingerprint": fingerprint(key)}
            for key in (bytes(32), b"\xff" * 32, bytes(range(32)))
        ],
    }


def _dump(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def test_the_vectors_file_is_what_darktower_e2ee_computes() -> None:
    assert PATH.read_text(encoding="utf-8") == _dump(build()), (
        "tests/e2ee/vectors.json differs from what darktower.e2ee computes; after a deliberate "
        "format change: .nox/tests/bin/python -m tests.e2ee.test_vectors --write"
    )


def test_the_vectors_decrypt_and_open() -> None:
    # The file read back through the receiving side: every wire frame decrypts to its plain
    # frame, every share opens to its secret.
    vectors = json.loads(PATH.read_text(encoding="utf-8"))
    for vector in vectors["frames"]:
        keyring = Keyring()
        keyring.add("sender", vector["generation"], bytes.fromhex(vector["secret"]), 0.0)
        plain = keyring.decrypt("sender", Frame.from_wire(bytes.fromhex(vector["wire"])), 0.0)
        assert plain is not None, vector["name"]
        assert plain.raw.tobytes().hex() == vector["plain_frame"]
        assert plain.payload.tobytes().hex() == vector["plaintext"]
        assert keyring.drops.total() == 0
    pairs = {
        p["name"]: KeyPair.from_private_bytes(bytes.fromhex(p["private"]))
        for p in vectors["key_pairs"]
    }
    for share in vectors["shares"]:
        secret = open_share(
            pairs[share["to"]],
            share["to_id"],
            pairs[share["from"]].public,
            share["from_id"],
            share["generation"],
            bytes.fromhex(share["ciphertext"]),
        )
        assert secret.hex() == share["secret"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.e2ee.test_vectors --write")
    PATH.write_text(_dump(build()), encoding="utf-8")
    print(f"wrote {PATH}")
