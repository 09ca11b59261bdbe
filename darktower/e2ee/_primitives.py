"""The primitives of end-to-end encryption: labels, HKDF-SHA256, key ids, one error class.

Everything here is the exact byte-level definition both clients share; the labels are ASCII
and never change within format version 1.
"""

from __future__ import annotations

import hmac
from typing import Final

LABEL_FRAME_KEY: Final = b"darktower e2ee v1 frame key"
LABEL_FRAME_SALT: Final = b"darktower e2ee v1 frame salt"
LABEL_RATCHET: Final = b"darktower e2ee v1 ratchet"
LABEL_SHARE: Final = b"darktower e2ee v1 share"
LABEL_SHARE_KEY: Final = b"darktower e2ee v1 share key"
LABEL_FINGERPRINT: Final = b"darktower e2ee v1 fingerprint"

# The E2EE format version, the first byte of every encrypted payload.
FORMAT_VERSION: Final = 1
SECRET_SIZE: Final = 32  # a sender secret S
PUBLIC_KEY_SIZE: Final = 32  # an X25519 public key
FRAME_KEY_SIZE: Final = 16  # AES-128-GCM
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
PREFIX_SIZE: Final = 13  # version (1) || generation (4) || counter (8)
OVERHEAD: Final = PREFIX_SIZE + TAG_SIZE
# Generations are uint32 and never wrap: a sender at the last one can go no further.
MAX_GENERATION: Final = 0xFFFF_FFFF
MAX_COUNTER: Final = 0xFFFF_FFFF_FFFF_FFFF
# How far a receiver ratchets a sender's newest secret forward by itself to meet a frame of a
# newer generation (joins it has not seen the frames of yet; each join ratchets the sender).
MAX_GENERATION_STEP: Final = 256

_ZERO_SALT: Final = bytes(32)
_HASH_LEN: Final = 32


class E2EEError(Exception):
    """Input that end-to-end encryption refuses: a share that does not open, a key of the wrong
    size, a key id that is not one, a generation or counter at its end."""


def hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``secret`` with the all-zero 32-byte salt.

    Written out with ``hmac`` (what the ``cryptography`` HKDF computes, bit for bit) because a
    receiver derives three keys per generation and the object set-up would cost more than the
    two HMACs.
    """
    if not 0 < length <= 255 * _HASH_LEN:
        raise ValueError(f"HKDF output length {length} out of range")
    prk = hmac.digest(_ZERO_SALT, secret, "sha256")
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        out += block
        counter += 1
    return out[:length]


def key_id(generation: int) -> str:
    """The key id of ``generation`` as ``E2EEKeyShare.key_id`` carries it: its decimal form."""
    check_generation(generation)
    return str(generation)


def parse_key_id(text: str) -> int:
    """The generation a key id names: ASCII decimal digits, no sign, no leading zero (but
    ``"0"``), at most 2^32 - 1. Raises :class:`E2EEError` for anything else."""
    if not (0 < len(text) <= 10 and text.isascii() and text.isdigit()):
        raise E2EEError(f"not a key id: {text[:16]!r}")
    if text[0] == "0" and len(text) > 1:
        raise E2EEError(f"not a key id: {text!r}")
    generation = int(text)
    if generation > MAX_GENERATION:
        raise E2EEError(f"key id {text} is beyond the last generation")
    return generation


def check_generation(generation: int) -> None:
    if not 0 <= generation <= MAX_GENERATION:
        raise E2EEError(f"generation {generation} is not a uint32")


def check_secret(secret: bytes) -> None:
    if len(secret) != SECRET_SIZE:
        raise E2EEError(f"a sender secret is {SECRET_SIZE} bytes, got {len(secret)}")
